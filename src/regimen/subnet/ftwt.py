"""Fire Together Wire Together (FTWT): per-input channel masks from small predictors trained self-supervised.

Paper: Elkerdawy, Elhoushi, Zhang, Ray, "Fire Together Wire Together: A Dynamic Pruning Approach with
Self-Supervised Mask Prediction", CVPR 2022, arXiv 2110.08232 (reference code: selkerdawy/FTWT, ``utils/layers.py``
``MaskPredictorNN`` / ``ConvWithMask`` / ``get_fmap_criteria``, ``utils/utils.py`` ``compute_mask_loss_per_input``).

Formula. For a conv→BN→ReLU layer with input ``x`` and (unmasked) output ``O``, the heat of channel ``c`` of sample
``n`` is ``h_nc = max_hw |O_nchw|``. Self-generated targets: ``"mass"`` — normalise ``ĥ = h / Σ_c h``, sort
descending, keep the channels whose cumulative mass stays within ``threshold`` (``threshold = 1`` keeps every channel
with ``ĥ > 1e-5``, i.e. drops dead channels); ``"uniform"`` — drop the ``⌊threshold · C⌋`` lowest-heat channels of
every sample, and every dead channel (``h ≤ 1e-5``). A predictor ``logits = Linear(softmax_c(avgpool(x)))`` (the
reference: global average pooling, optional softmax over input channels, 1×1 conv with bias) is trained with
``BCEWithLogits(logits, target)`` only (summed over channels, averaged over samples and layers); the output is
``O ⊙ b`` with ``b = 1[σ(logits) > 0.5]``, which carries no gradient (the reference binarises under ``no_grad``, so the
task loss never reaches the predictors). ``decoupled`` (the reference default) feeds the predictor ``x.detach()`` so
the mask loss does not reach the backbone either; the mask loss is switched off after ``cooldown`` of the run.

Dynamic MACs. A conv whose input channel ``i`` is zero for a sample and whose output channel ``c`` is masked need not
compute those products: executed MACs per sample = ``dense MACs × active inputs / C_in × kept outputs / C_out``, for
every conv/linear (``ftwt_dynamic_macs``). On CPU the masked network still runs densely: the saving needs a gather
kernel, so wall-clock is not reduced (reported as MACs, not time).

Pitfalls handled: targets come from the *unmasked* output of the same forward; masks are applied after the ReLU (after
this layer's BN), so BN statistics are learned under masking and evaluation keeps the masks on; at least one channel
is kept per sample (the reference can drop all); predictors start with every channel on (weight 0, bias
``init_bias``) so fine-tuning starts from the trained network (a deviation from the reference's default init).
Surgery applies to conv→BN→ReLU runs inside ``nn.Sequential`` containers; a model without one is refused before any
change.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import evaluating, run_model

__all__ = ["FTWTGate", "FTWTMethod", "MaskPredictor", "apply_ftwt", "channel_heat", "ftwt_dynamic_macs",
           "ftwt_mask_loss", "ftwt_targets"]

MODES = ("mass", "uniform")


@checked_arguments
def channel_heat(output: torch.Tensor) -> torch.Tensor:
    """``h[n, c] = max over positions of |output[n, c, ...]|`` (a ``(N, C)`` tensor)."""
    if not output.is_floating_point():
        raise TypeError(f"output must be a floating-point tensor, got {output.dtype}")
    if output.dim() < 2:
        raise ValueError(f"output must be (N, C, ...), got shape {tuple(output.shape)}")
    flat = output.detach().abs().reshape(output.shape[0], output.shape[1], -1)
    return flat.amax(2) if flat.shape[2] > 0 else flat.sum(2)


@checked_arguments
def ftwt_targets(heat: torch.Tensor, mode: str = "mass", threshold: float = 0.9) -> torch.Tensor:
    """Per-sample keep targets ``(N, C)`` in {0., 1.} from channel heat (see the module docstring); at least the
    hottest channel of every sample is kept."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if heat.dim() != 2 or not heat.is_floating_point():
        raise ValueError(f"heat must be a floating-point (N, C) tensor, got {heat.dtype} of shape "
                         f"{tuple(heat.shape)}")
    if mode == "mass" and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold (mass) must be in (0, 1], got {threshold}")
    if mode == "uniform" and not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold (uniform: fraction dropped) must be in [0, 1), got {threshold}")
    n, c = heat.shape
    order = torch.sort(heat, dim=1, descending=True, stable=True).indices
    keep_sorted = torch.zeros(n, c, dtype=torch.bool, device=heat.device)
    if mode == "uniform":
        keep_sorted[:, :c - int(math.floor(threshold * c + 1e-9))] = True
        keep_sorted &= torch.gather(heat, 1, order) > 1e-5  # dead channels are dropped too
    else:
        normed = heat / heat.sum(1, keepdim=True).clamp_min(1e-12)
        if threshold >= 1.0:
            keep_sorted = torch.gather(normed, 1, order) > 1e-5
        else:
            cumulative = torch.gather(normed, 1, order).cumsum(1)
            keep_sorted = cumulative <= threshold + 1e-5
    keep_sorted[:, 0] = True
    target = torch.zeros(n, c, device=heat.device)
    target.scatter_(1, order, keep_sorted.float())
    return target


@checked_arguments
def ftwt_mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``Σ_c mean_n BCEWithLogits(logits[n, c], target[n, c])`` (the reference's per-layer mask loss)."""
    if logits.shape != target.shape or logits.dim() != 2 or not logits.is_floating_point() \
            or not target.is_floating_point():
        raise ValueError(f"logits and target must be floating-point (N, C) tensors of one shape, got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(0).sum()


@checked_arguments
class MaskPredictor(nn.Module):
    """``Linear(softmax_c(global average pool of x))``: one logit per output channel of the gated layer
    (``softmax=False``: the pooled input itself, the reference's ``--softmax 0``)."""

    def __init__(self, in_channels: int, out_channels: int, init_bias: float = 3.0, softmax: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        self.linear = nn.Linear(in_channels, out_channels)
        self.softmax = softmax
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, init_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.reshape(x.shape[0], x.shape[1], -1).mean(2)
        return self.linear(torch.softmax(pooled, dim=1) if self.softmax else pooled)


@checked_arguments
class FTWTGate(nn.Module):
    """A conv→BN→ReLU ``block`` whose output channels are masked per input by a ``MaskPredictor``.

    After a training-mode forward, ``loss`` holds this layer's mask loss; after any forward ``last_mask`` holds the
    binary mask ``(N, C_out)``. ``masking = False`` passes the block's output through unmasked (the predictor still
    runs and learns: a warm-up of the predictors).
    """

    def __init__(self, block: nn.Module, in_channels: int, out_channels: int, mode: str = "mass",
                 threshold: float = 0.9, decoupled: bool = True, init_bias: float = 3.0, softmax: bool = True) -> None:
        super().__init__()
        ftwt_targets(torch.ones(1, 2), mode, threshold)  # validates mode / threshold
        self.block = block
        self.predictor = MaskPredictor(in_channels, out_channels, init_bias, softmax)
        self.mode, self.threshold, self.decoupled = mode, threshold, decoupled
        self.masking = True
        self.loss: torch.Tensor | None = None
        self.last_mask: torch.Tensor | None = None

    @property
    def conv(self) -> nn.Module:
        return self.block[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        logits = self.predictor(x.detach() if self.decoupled else x)
        if self.training:
            self.loss = ftwt_mask_loss(logits, ftwt_targets(channel_heat(out), self.mode, self.threshold))
        prob = torch.sigmoid(logits)
        hard = (prob > 0.5).to(out.dtype)
        self.last_mask = hard.detach()
        if not self.masking:
            return out
        return out * self.last_mask.reshape(*hard.shape, *([1] * (out.dim() - 2)))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, threshold={self.threshold}, decoupled={self.decoupled}"


def _runs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    found = []
    for module in model.modules():
        if isinstance(module, nn.Sequential) and not isinstance(module, FTWTGate):
            children = list(module)
            i = 0
            while i + 2 < len(children):
                conv, bn, act = children[i:i + 3]
                if isinstance(conv, nn.Conv2d) and conv.groups == 1 and isinstance(bn, nn.BatchNorm2d) \
                        and isinstance(act, nn.ReLU) and bn.num_features == conv.out_channels:
                    found.append((module, i))
                    i += 3
                else:
                    i += 1
    return found


@checked_arguments
def apply_ftwt(model: nn.Module, mode: str = "mass", threshold: float = 0.9, decoupled: bool = True,
               init_bias: float = 3.0, softmax: bool = True,
               optimizer: torch.optim.Optimizer | None = None) -> list[FTWTGate]:
    """Wrap every conv→BN→ReLU run inside an ``nn.Sequential`` of ``model`` in an ``FTWTGate``, in place.

    The conv's slot holds the gate (``block`` = the original three modules, same Parameters); the BN and ReLU slots
    become ``nn.Identity`` so indices (and every other module name) stay. With ``optimizer`` the predictors' parameters
    are added as a new param group. Returns the gates in model order.

    Raises:
        ValueError: bad ``mode``/``threshold``, or no conv→BN→ReLU run inside an ``nn.Sequential``.
    """
    ftwt_targets(torch.ones(1, 2), mode, threshold)
    runs = _runs(model)
    if not runs:
        raise ValueError("apply_ftwt found no conv -> BatchNorm2d -> ReLU run inside an nn.Sequential to gate")
    device = next(model.parameters()).device
    gates = []
    for container, i in runs:
        conv, bn, act = container[i], container[i + 1], container[i + 2]
        gate = FTWTGate(nn.Sequential(conv, bn, act), conv.in_channels, conv.out_channels, mode, threshold,
                        decoupled, init_bias, softmax).to(device)
        container[i] = gate
        container[i + 1] = nn.Identity()
        container[i + 2] = nn.Identity()
        gates.append(gate)
    if optimizer is not None:
        optimizer.add_param_group({"params": [p for g in gates for p in g.predictor.parameters()]})
    return gates


def _gates(model: nn.Module) -> list[FTWTGate]:
    return [m for m in model.modules() if isinstance(m, FTWTGate)]


@checked_arguments
def ftwt_dynamic_macs(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Executed multiply-accumulates of every sample of ``inputs`` (a ``(N,)`` tensor), in eval mode.

    Every conv/linear counts ``dense MACs × (input channels not all zero) / C_in × (output channels kept) / C_out``;
    the kept outputs of a gated conv are its gate's mask, other layers keep every output.
    """
    gate_of = {id(g.conv): g for g in _gates(model)}
    parts: list[torch.Tensor] = []
    pending: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        n = x.shape[0]
        if isinstance(module, nn.Linear):
            c_in = module.in_features
            active = (x.reshape(n, -1, c_in) != 0).any(1).float().sum(1)
            dense = output[0].numel() * c_in
        else:
            c_in = module.in_channels
            active = (x.reshape(n, c_in, -1) != 0).any(2).float().sum(1)
            dense = output[0].numel() * (c_in // module.groups) * math.prod(module.kernel_size)
        pending.append((module, dense * active / c_in))

    predictors = {id(p) for g in _gates(model) for p in g.predictor.modules()}
    layers = [m for m in model.modules()
              if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear) and id(m) not in predictors]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with evaluating(model):
            run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    for module, macs in pending:
        gate = gate_of.get(id(module))
        if gate is not None and gate.masking and gate.last_mask is not None:
            macs = macs * gate.last_mask.float().mean(1)
        parts.append(macs)
    return torch.stack(parts).sum(0) if parts else torch.zeros(0)


@register_method
class FTWTMethod(Method):
    """Fire Together Wire Together: gate every conv→BN→ReLU run with a self-supervised mask predictor.

    Predictors get their own param group (``predictor_lr``); the mask loss (weight ``mask_weight``) is added to the
    task loss until ``cooldown`` of the run. Logs ``ftwt/mask_loss`` and, at epoch ends, ``ftwt/kept_fraction`` (mean
    fraction of gated channels kept on the last batch). Measure executed MACs with ``ftwt_dynamic_macs``.

    Args:
        mode: ``"mass"`` (cumulative heat within ``threshold``) or ``"uniform"`` (drop ``threshold`` of channels).
        threshold: see ``mode``.
        decoupled: the predictors see ``x.detach()`` (the reference default).
        predictor_lr: learning rate of the predictors (0.1 in the reference, backbone 0.01).
        mask_weight: weight of the mask loss.
        cooldown: fraction of the run after which the mask loss is switched off.
        init_bias: initial predictor bias (every channel on at the start).
    """

    name = "ftwt"
    paper_id = "arXiv:2110.08232"
    claim = ("input-dependent channel masks predicted by small self-supervised heads reach similar accuracy at "
             "15-24% larger FLOPs reductions than static pruning (CIFAR)")
    claimed_effect = "no_worse"
    before = ("hesso", "nm_sparsity", "lottery_jackpots", "layer_dp", "tscnc", "trp", "maestro")
    conflicts = ("nested_width",)
    constraint_reason = ("ftwt wraps conv-BN-ReLU runs in gates with predictors sized to the full widths (module names "
                         "change): pruning and factorising methods must see the wrapped model, and nested widths "
                         "cannot slice the gated layers")

    def __init__(self, mode: str = "mass", threshold: float = 0.9, decoupled: bool = True, predictor_lr: float = 0.1,
                 mask_weight: float = 1.0, cooldown: float = 0.5, init_bias: float = 3.0) -> None:
        ftwt_targets(torch.ones(1, 2), mode, threshold)
        if predictor_lr <= 0:
            raise ValueError(f"predictor_lr must be > 0, got {predictor_lr}")
        if mask_weight < 0:
            raise ValueError(f"mask_weight must be >= 0, got {mask_weight}")
        if not 0.0 <= cooldown <= 1.0:
            raise ValueError(f"cooldown must be in [0, 1], got {cooldown}")
        self.mode, self.threshold, self.decoupled = mode, threshold, decoupled
        self.predictor_lr, self.mask_weight, self.cooldown, self.init_bias = predictor_lr, mask_weight, cooldown, \
            init_bias
        self.gates: list[FTWTGate] = []

    def setup(self, ctx: Context) -> None:
        try:
            self.gates = apply_ftwt(ctx.model, self.mode, self.threshold, self.decoupled, self.init_bias)
        except ValueError as error:
            raise ConfigurationError(f"ftwt: {error}") from error
        if ctx.optimizer is not None:
            ctx.optimizer.add_param_group({"params": [p for g in self.gates for p in g.predictor.parameters()],
                                           "lr": self.predictor_lr})
        self.log(ctx, "gates", len(self.gates))

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        loss, output = next(model, x, y)
        active = ctx.epoch < self.cooldown * ctx.run.epochs
        losses = [g.loss for g in self.gates if g.loss is not None]
        if losses and active and self.mask_weight > 0:
            mask_loss = torch.stack(losses).mean()
            self.log(ctx, "mask_loss", mask_loss)
            loss = loss + self.mask_weight * mask_loss
        for g in self.gates:
            g.loss = None
        return loss, output

    def on_epoch_end(self, ctx: Context) -> None:
        masks = [g.last_mask for g in self.gates if g.last_mask is not None]
        if masks:
            self.log(ctx, "kept_fraction", float(torch.stack([m.mean() for m in masks]).mean()))
