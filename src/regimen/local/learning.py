"""Supervised local learning: K gradient-isolated modules, each trained by its own auxiliary loss.

Pattern shared by DGL (arXiv 1901.08164), InfoPro (arXiv 2101.10832), AugLocal (arXiv 2402.17318) and MAN
(arXiv 2407.05623): the network ``stages = [s_0, ..., s_{n-1}, head]`` is cut into K contiguous modules; for
module k < K-1 the step computes ``h_k = module_k(h_{k-1}.detach())``, back-propagates its auxiliary loss
``L_k = aux_k(h_k, y)`` *immediately* and keeps only ``h_k.detach()``; the last module trains with the real head and
criterion. So module k's parameters get ``∂L_k/∂θ_k`` only (no gradient crosses a module boundary) and the autograd
graph of module k — its activations — is freed before module k+1 runs: peak activation memory is that of the
largest module plus its auxiliary, not of the whole network. (One backward on ``Σ L_k`` would give the same
gradients and none of the saving.) At evaluation ``forward`` runs the backbone and the head only.

Pitfalls handled: the detach happens *after* the local backward, so the saved tensors are released; losses are
kept detached; auxiliary parameters (not the MAN EMA copies) are exposed by ``auxiliary_parameters()`` for the
optimizer; with K = 1 the step is exactly ordinary backprop; BatchNorm running statistics of the backbone are
updated once per step as in backprop; the InfoPro reconstruction target is the de-normalised input when the
normalisation constants are known (otherwise the normalised input, reconstructed with MSE — a warning says so).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from regimen._compat import renamed_arguments
from regimen.local.auglocal import auglocal_auxiliary, pyramid_depths
from regimen.local.auxiliary import (
    ClassifierAuxiliary,
    InfoProAuxiliary,
    ReconstructionAuxiliary,
    dgl_head,
    infopro_decoder,
    infopro_head,
    infopro_weights,
)
from regimen.local.man import MomentumAuxiliary
from regimen.local.split import (
    BALANCE_MODES,
    balanced_split_points,
    block_costs,
    resolve_stages,
    split_points_to_ranges,
)
from regimen.losses import classification_loss
from regimen.method import checked_arguments

__all__ = ["AUX_TYPES", "LocalLearning", "LocalStepOutput", "apply_local_learning", "local_step"]

AUX_TYPES = ("dgl", "infopro", "auglocal", "man", "recon")
AuxType = Literal["dgl", "infopro", "auglocal", "man", "recon"]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Default auxiliary depth of each type (DGL/MAN: 1×1 conv layers of the head; AugLocal: sampled layers d).
DEFAULT_AUX_DEPTH = {"dgl": 2, "infopro": 1, "auglocal": 2, "man": 1, "recon": 0}


@dataclass(frozen=True)
class LocalStepOutput:
    """Result of one local step: ``loss`` (the head's loss), ``logits`` and every module's loss, all detached."""

    loss: torch.Tensor
    logits: torch.Tensor
    losses: tuple[torch.Tensor, ...]


def _num_classes_of(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("num_classes: the head has no nn.Linear to read the class count from; pass num_classes")
    return linears[-1].out_features


def _default_backward(loss: torch.Tensor) -> None:
    loss.backward()


@checked_arguments
def local_step(
    stages: Sequence[nn.Module],
    ranges: Sequence[tuple[int, int]],
    auxiliaries: Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    criterion: Criterion = classification_loss,
    backward: Callable[[torch.Tensor], None] = _default_backward,
    image: torch.Tensor | None = None,
) -> LocalStepOutput:
    """Functional core of the local step: forward module by module, back-propagating each local loss at once.

    Args:
        stages: all stages, head last.
        ranges: ``(start, end)`` stage ranges of the K modules, contiguous, covering every stage.
        auxiliaries: K - 1 auxiliary networks with ``loss(h, y, criterion=, image=, module_input=)``.
        x: model input batch. y: targets (indices or soft targets, whatever ``criterion`` takes).
        criterion: loss of logits and targets (auxiliary classifiers and the head).
        backward: called once per module loss (``loss.backward()`` by default; a trainer's precision-aware one).
        image: reconstruction target for InfoPro (the de-normalised input).

    Returns:
        ``LocalStepOutput`` with detached tensors. Gradients are *accumulated* into ``.grad`` (zero them first).
    """
    if len(auxiliaries) != len(ranges) - 1:
        raise ValueError(f"need {len(ranges) - 1} auxiliaries for {len(ranges)} modules, got {len(auxiliaries)}")
    if not ranges or ranges[0][0] != 0 or ranges[-1][1] != len(stages) or any(
        a[1] != b[0] or a[0] >= a[1] for a, b in zip(ranges, ranges[1:], strict=False)
    ):
        raise ValueError(f"ranges must be contiguous, non-empty and cover all {len(stages)} stages, got {list(ranges)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    losses = []
    h = x
    last = len(ranges) - 1
    logits = None
    for k, (start, end) in enumerate(ranges):
        module_input = h
        for stage in stages[start:end]:
            h = stage(h)
        if k < last:
            loss = auxiliaries[k].loss(h, y, criterion=criterion, image=image, module_input=module_input)
            if loss.requires_grad:
                backward(loss)
            h = h.detach()  # frees module k's graph: only the detached output crosses the boundary
        else:
            logits = h
            loss = criterion(logits, y)
            backward(loss)
        losses.append(loss.detach())
        del module_input, loss
    assert logits is not None
    return LocalStepOutput(loss=losses[-1], logits=logits.detach(), losses=tuple(losses))


@checked_arguments
class LocalLearning(nn.Module):
    """A staged network trained as K gradient-isolated modules with auxiliary networks.

    Args:
        stages: a model with ``.stages`` (ModuleList, head last), a Sequential/ModuleList, or a list of modules. A
            plain module without ``stages`` is accepted only with ``split_points`` (its children are the blocks).
        num_modules: K (1 = ordinary backprop). Ignored when ``split_points`` is given (K = len + 1); both given and
            inconsistent is an error.
        aux: ``"dgl"``, ``"infopro"``, ``"auglocal"``, ``"man"`` or ``"recon"``.
        aux_depth: per type: DGL/MAN 1×1 conv layers of the head (default 2 / 1), AugLocal d (default 2),
            InfoPro/recon unused.
        split_points: start stage of modules 2..K; otherwise blocks are balanced by ``balance``.
        balance: ``"params"`` (default), ``"activations"`` (needs an input shape) or ``"blocks"``.
        input_shape: per-sample input shape (C, H, W) used to infer feature shapes; or ``example_inputs``.
        example_inputs: a batch shaped like the training input (alternative to ``input_shape``).
        num_classes: classes of auxiliary classifiers (default: read from the head's last Linear).
        criterion: loss of logits and targets (default: cross-entropy with soft-target support).
        infopro_first, infopro_last: (reconstruction weight, CE weight) of the first and last auxiliary.
        pyramid_coeff: AugLocal's depth decay coefficient c.
        momentum: MAN EMA momentum. man_learnable: ``"bias"`` or ``"copy"``.
        recon_weight: weight of the feature reconstruction loss (``recon``).
        data_mean, data_std: per-channel normalisation constants; InfoPro reconstructs ``x · std + mean``.
        example_input: deprecated name of ``example_inputs``.
    """

    @renamed_arguments(example_input="example_inputs")
    def __init__(
        self,
        stages: nn.Module | Sequence[nn.Module],
        num_modules: int | None = 2,
        aux: AuxType = "dgl",
        aux_depth: int | None = None,
        *,
        split_points: Sequence[int] | None = None,
        balance: Literal["params", "activations", "blocks"] = "params",
        input_shape: Sequence[int] | None = None,
        example_inputs: torch.Tensor | None = None,
        num_classes: int | None = None,
        criterion: Criterion | None = None,
        infopro_first: tuple[float, float] = (5.0, 1.0),
        infopro_last: tuple[float, float] = (0.0, 1.0),
        pyramid_coeff: float = 0.5,
        momentum: float = 0.995,
        man_learnable: Literal["bias", "copy"] = "bias",
        recon_weight: float = 1.0,
        data_mean: torch.Tensor | Sequence[float] | None = None,
        data_std: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= pyramid_coeff <= 1.0:
            raise ValueError(f"pyramid_coeff must be in [0, 1], got {pyramid_coeff}")
        if aux not in AUX_TYPES:
            raise ValueError(f"aux must be one of {AUX_TYPES}, got {aux!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
        if aux_depth is not None and (isinstance(aux_depth, bool) or not isinstance(aux_depth, int) or aux_depth < 0):
            raise ValueError(f"aux_depth must be a non-negative int or None, got {aux_depth!r}")
        if not recon_weight >= 0:
            raise ValueError(f"recon_weight must be >= 0, got {recon_weight}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if aux == "auglocal" and aux_depth is not None and aux_depth < 1:
            raise ValueError(f"aux_depth must be >= 1 for auglocal, got {aux_depth}")
        stage_list = resolve_stages(stages, split_points)
        self.stages = nn.ModuleList(stage_list)
        self.aux_type = aux
        self.aux_depth = DEFAULT_AUX_DEPTH[aux] if aux_depth is None else aux_depth
        self.criterion: Criterion = criterion if criterion is not None else classification_loss
        num_blocks = len(stage_list) - 1
        min_last = self.aux_depth + 1 if aux == "auglocal" else 1

        if example_inputs is None and input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if not shape or any(s < 1 for s in shape):
                raise ValueError(f"input_shape must be positive sizes, got {input_shape}")
            example_inputs = torch.zeros(2, *shape)
        if example_inputs is not None and not isinstance(example_inputs, torch.Tensor):
            raise TypeError(f"example_inputs must be a tensor, got {type(example_inputs).__name__}")

        if split_points is not None:
            points = list(split_points)
            if num_modules is not None and num_modules != len(points) + 1:
                raise ValueError(
                    f"num_modules={num_modules} disagrees with {len(points)} split_points (K = len(split_points) + 1)"
                )
            ranges = split_points_to_ranges(points, len(stage_list), min_last_blocks=min_last)
        else:
            if isinstance(num_modules, bool) or not isinstance(num_modules, int):
                raise TypeError(f"num_modules must be an int, got {num_modules!r}")
            if num_modules < 1:
                raise ValueError(f"num_modules must be >= 1, got {num_modules}")
            if num_modules > num_blocks:
                raise ValueError(
                    f"num_modules={num_modules} is larger than the number of blocks before the head ({num_blocks})"
                )
            costs = block_costs(stage_list, balance, example_inputs)
            points = balanced_split_points(costs, num_modules, min_last_blocks=min_last)
            ranges = split_points_to_ranges(points, len(stage_list), min_last_blocks=min_last)
        self.ranges: list[tuple[int, int]] = ranges
        self.split_points: list[int] = [start for start, _ in ranges[1:]]
        self.num_modules = len(ranges)

        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes) if num_classes is not None else _num_classes_of(stage_list[-1])
        self.data_mean = None if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32).flatten()
        self.data_std = None if data_std is None else torch.as_tensor(data_std, dtype=torch.float32).flatten()
        if (self.data_mean is None) != (self.data_std is None):
            raise ValueError("data_mean and data_std must be given together")
        self.infopro_bce = self.data_mean is not None

        auxiliaries: list[nn.Module] = []
        if self.num_modules > 1:
            if example_inputs is None:
                raise ValueError("input_shape (or example_inputs) is needed to build auxiliary networks for K > 1")
            shapes = self._feature_shapes(example_inputs)
            num_aux = self.num_modules - 1
            depths = pyramid_depths(num_aux, self.aux_depth, pyramid_coeff) if aux == "auglocal" else None
            if aux == "infopro" and not self.infopro_bce:
                warnings.warn(
                    "InfoPro: data_mean/data_std unknown, reconstructing the normalised input with MSE instead of "
                    "the de-normalised image with BCE",
                    stacklevel=2,
                )
            for k in range(num_aux):
                start, end = ranges[k]
                out_shape = shapes[end]
                if aux == "dgl":
                    auxiliaries.append(ClassifierAuxiliary(dgl_head(out_shape, self.num_classes, self.aux_depth)))
                elif aux == "infopro":
                    recon_w, ce_w = infopro_weights(k, num_aux, tuple(infopro_first), tuple(infopro_last))
                    image_shape = shapes[0]
                    decoder = None  # no decoder where its weight is 0 (it would hold untrained parameters)
                    if len(image_shape) == 3 and recon_w != 0.0:
                        decoder = infopro_decoder(out_shape, image_shape, sigmoid=self.infopro_bce)
                    auxiliaries.append(InfoProAuxiliary(infopro_head(out_shape, self.num_classes), decoder, recon_w,
                                                        ce_w, bce=self.infopro_bce))
                elif aux == "auglocal":
                    auxiliaries.append(auglocal_auxiliary(stage_list, shapes, end - 1, depths[k], self.num_classes))
                elif aux == "man":
                    next_start = ranges[k + 1][0]
                    auxiliaries.append(MomentumAuxiliary(stage_list[next_start], shapes[next_start + 1],
                                                         self.num_classes, momentum, man_learnable, self.aux_depth))
                else:
                    auxiliaries.append(ReconstructionAuxiliary(out_shape, shapes[start], self.num_classes,
                                                               recon_weight=recon_weight))
        self.auxiliaries = nn.ModuleList(auxiliaries)

    def _feature_shapes(self, example_inputs: torch.Tensor) -> list[tuple[int, ...]]:
        """Per-sample shapes: the input, then the output of every stage (eval mode, no grad, modes restored)."""
        modes = [m.training for m in self.stages.modules()]
        shapes = [tuple(example_inputs.shape[1:])]
        try:
            self.stages.eval()
            h = example_inputs[:2]
            with torch.no_grad():
                for stage in self.stages:
                    h = stage(h)
                    shapes.append(tuple(h.shape[1:]))
        finally:
            for m, mode in zip(self.stages.modules(), modes, strict=True):
                m.training = mode
        return shapes

    @property
    def head(self) -> nn.Module:
        return self.stages[-1]

    def module_stages(self, k: int) -> list[nn.Module]:
        """The stages of module ``k``."""
        start, end = self.ranges[k]
        return list(self.stages[start:end])

    def backbone_parameters(self, k: int | None = None) -> Iterator[nn.Parameter]:
        """Parameters of the network (or of module ``k``), without auxiliaries."""
        stages = self.stages if k is None else self.module_stages(k)
        for stage in stages:
            yield from stage.parameters()

    def auxiliary_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable auxiliary parameters (MAN's EMA copies excluded): what the optimizer must add."""
        for p in self.auxiliaries.parameters():
            if p.requires_grad:
                yield p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone and head only (auxiliaries skipped): the logits."""
        for stage in self.stages:
            x = stage(x)
        return x

    def reconstruction_target(self, x: torch.Tensor) -> torch.Tensor:
        """InfoPro's target: ``x · std + mean`` per channel when the constants are known, else ``x``."""
        if self.data_mean is None or x.dim() != 4:
            return x
        mean = self.data_mean.to(x.device, x.dtype)
        std = self.data_std.to(x.device, x.dtype)
        if mean.numel() not in (1, x.shape[1]):
            raise ValueError(f"data_mean has {mean.numel()} channels, input has {x.shape[1]}")
        return x * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)

    def local_step(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        backward: Callable[[torch.Tensor], None] | None = None,
        criterion: Criterion | None = None,
        image: torch.Tensor | None = None,
    ) -> LocalStepOutput:
        """One local-learning training step.

        With ``optimizer`` it zeroes the gradients, runs the step, calls ``optimizer.step()`` and updates MAN's EMA
        copies; without, it only accumulates gradients (a trainer then steps and calls ``update_momentum``).

        Args:
            x: input batch (normalised as the model expects). y: targets.
            optimizer: optional optimizer holding backbone and auxiliary parameters.
            backward: per-loss backward (default ``loss.backward()``).
            criterion: overrides the wrapper's criterion.
            image: InfoPro reconstruction target (default ``reconstruction_target(x)``).
        """
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        if image is None and self.aux_type == "infopro" and self.num_modules > 1:
            image = self.reconstruction_target(x)
        out = local_step(
            self.stages, self.ranges, self.auxiliaries, x, y,
            criterion=criterion or self.criterion, backward=backward or _default_backward, image=image,
        )
        if optimizer is not None:
            optimizer.step()
            self.update_momentum()
        return out

    @torch.no_grad()
    def update_momentum(self) -> None:
        """EMA step of every MAN auxiliary (no-op for other types). Call after each optimizer step."""
        for aux in self.auxiliaries:
            if isinstance(aux, MomentumAuxiliary):
                aux.update()

    def extra_repr(self) -> str:
        return f"aux={self.aux_type!r}, num_modules={self.num_modules}, split_points={self.split_points}"


def _add_auxiliary_groups(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    """Add ``params`` as new param groups copying existing hyperparameters (no-decay group for 1-D tensors
    when the optimizer already has a group with ``weight_decay == 0`` next to a decayed one)."""
    if not params:
        return
    groups = optimizer.param_groups
    template = groups[0]
    no_decay = next((g for g in groups if g.get("weight_decay", 0.0) == 0.0), None)
    decayed = next((g for g in groups if g.get("weight_decay", 0.0) != 0.0), template)
    split = no_decay is not None and no_decay is not decayed
    buckets: dict[int, list[nn.Parameter]] = {}
    for p in params:
        group = no_decay if split and p.ndim <= 1 else decayed
        buckets.setdefault(id(group), []).append(p)
    for group in groups:
        if id(group) in buckets:
            optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"},
                                       "params": buckets[id(group)]})


@checked_arguments
def apply_local_learning(
    model: nn.Module, num_modules: int | None = 2, aux: AuxType = "dgl", *,
    optimizer: torch.optim.Optimizer | None = None, **kwargs
) -> LocalLearning:
    """Wrap ``model`` in ``LocalLearning`` (sharing its parameters) and add the auxiliary parameters to ``optimizer``.

    The optimizer gets new param groups copying the hyperparameters of the existing ones (a 1-D / no-decay split is
    kept when present). Returns the wrapper; ``wrapper(x)`` gives the model's logits.
    """
    wrapper = LocalLearning(model, num_modules, aux, **kwargs)
    device = next((p.device for p in model.parameters()), None)
    if device is not None:
        wrapper.auxiliaries.to(device)
    if optimizer is not None:
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [p for p in wrapper.backbone_parameters() if p.requires_grad and id(p) not in known]
        if missing:
            raise ValueError(f"optimizer does not hold {len(missing)} of the model's parameters; build it from "
                             "model.parameters() first")
        _add_auxiliary_groups(optimizer, [p for p in wrapper.auxiliary_parameters() if id(p) not in known])
    return wrapper
