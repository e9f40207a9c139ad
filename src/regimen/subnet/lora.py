"""LoRA and ALLoRA: fine-tune a frozen network through trainable low-rank updates of its Linear and Conv2d weights.

Paper (LoRA): Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv 2106.09685.
Paper (ALLoRA): Huang and Balestriero, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws", 2024,
arXiv 2410.09692.

Formula (LoRA). A frozen weight ``W (out, in)`` gets a rank-``r`` update ``ΔW = (α/r) B A`` with ``A (r, in)``
Kaiming-uniform and ``B (out, r) = 0``, so training starts at the pre-trained function:
``y = W x + b + (α/r) B A dropout(x)``. A conv (groups 1) gets ``A`` as a conv with the layer's kernel, stride,
padding and dilation (``r`` output channels) and ``B`` as a 1x1 conv, so ``ΔW[o, c] = (α/r) Σ_k B[o, k] A[k, c]``
(a kernel of the layer's size). ``merge`` adds ``ΔW`` into ``W`` (inference without the extra matmuls) and
``unmerge`` subtracts it again; a merged layer computes the same function as the unmerged one.

Formula (ALLoRA). No dropout and no ``α/r`` factor (``y = W x + b + B A x``). Each row ``i`` of ``A`` and of ``B``
(for a conv: each output channel of the factor) has its gradient (mode ``"gradient"``) or its optimizer step (mode
``"update"``, an adaptive per-row learning rate, which Adam does not cancel) multiplied by
``c_i = 1 / sqrt(‖θ_i‖² + 1/η²)``: the rows of ``B`` start at ``‖θ_i‖ = 0`` and so learn ``η`` times faster, which
speeds the escape from ``B = 0``; later the rate falls as ``1/‖θ_i‖``. The coefficient depends on the parameter,
not on the sample, so the paper's "per sample and per parameter" scaling equals scaling the batch gradient.
Confirmed: the abstract (no dropout, no scaling factor, a coefficient inversely proportional to the parameters' ℓ2
norm); the row-wise form with ``1/η²`` inside the square root matches a third-party optimizer that cites the paper
(Automagic's ``row_scaling = 1/sqrt(row_norm + 1/η²)``, which omits the square of the norm). The paper's body was
not readable here, so ``η`` (default 2, as in that optimizer) and the choice gradient/update are ours.

Pitfalls handled: ``rank`` must be below ``min(in, out)`` of every adapted layer (otherwise the update is not low
rank: a ``ValueError`` naming ``rank`` and the layer); the base Parameters are moved into the new layer (same
objects) and frozen, so an optimizer that held them simply stops updating them; ``apply_lora`` checks everything
before it changes the model; merging twice or unmerging an unmerged layer is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_float_tensor, unignored_modules

__all__ = [
    "ALLoRAMethod",
    "LoRAConv2d",
    "LoRALinear",
    "LoRAMethod",
    "allora_row_scale",
    "allora_scale_",
    "apply_lora",
    "lora_delta",
    "lora_layers",
    "lora_parameters",
    "merge_lora",
    "unmerge_lora",
]



@checked_arguments
def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """``scaling · B A`` shaped like the adapted weight: ``A (r, in)``, ``B (out, r)`` give ``(out, in)``; a conv's
    ``A (r, C, kh, kw)`` and ``B (N, r, 1, 1)`` give ``(N, C, kh, kw)``."""
    check_float_tensor("lora_a", lora_a, (2, 4))
    check_float_tensor("lora_b", lora_b, (2, 4))
    if lora_a.dtype != lora_b.dtype:
        raise TypeError(f"lora_a and lora_b must share a dtype, got {lora_a.dtype} and {lora_b.dtype}")
    if lora_a.dim() not in (2, 4) or lora_b.dim() != lora_a.dim():
        raise ValueError(f"lora_a and lora_b must both be 2-D (linear) or 4-D (conv), got shapes "
                         f"{tuple(lora_a.shape)} and {tuple(lora_b.shape)}")
    if lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(f"lora_b must have lora_a's rank {lora_a.shape[0]} as its second dimension, got "
                         f"{tuple(lora_b.shape)}")
    if lora_a.dim() == 2:
        return (lora_b @ lora_a) * scaling
    if lora_b.shape[2:] != (1, 1):
        raise ValueError(f"a conv's lora_b must be a 1x1 kernel, got {tuple(lora_b.shape)}")
    return torch.einsum("or,rckl->ockl", lora_b[:, :, 0, 0], lora_a) * scaling


def _dropout(x: torch.Tensor, p: float, training: bool, generator: torch.Generator | None) -> torch.Tensor:
    if p <= 0.0 or not training:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p if generator is not None \
        else torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class _LoRA(nn.Module):
    base: nn.Module
    lora_a: nn.Parameter
    lora_b: nn.Parameter

    def _setup(self, rank: int, alpha: float | None, dropout: float, scale: bool) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        alpha = float(rank) if alpha is None else alpha
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.scaling = alpha / rank if scale else 1.0
        self.merged = False
        self.generator: torch.Generator | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + (α/r) B A`` (differentiable in the factors; ``W`` alone once merged), so code
        that reads ``layer.weight`` of a Linear/Conv2d sees what the layer computes."""
        return self.base.weight if self.merged else self.base.weight + self.delta_weight()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def reset_lora(self) -> None:
        """``A`` Kaiming-uniform (as ``nn.Linear``), ``B = 0``: the update starts at zero."""
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def delta_weight(self) -> torch.Tensor:
        """``(α/r) B A`` shaped like ``base.weight``."""
        return lora_delta(self.lora_a, self.lora_b, self.scaling)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the frozen weight (the forward then skips the low-rank path)."""
        if self.merged:
            raise RuntimeError("this LoRA layer is already merged; unmerge it first")
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update from the weight again (training continues on the factors)."""
        if not self.merged:
            raise RuntimeError("this LoRA layer is not merged")
        self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scaling={self.scaling:g}, dropout={self.dropout}, merged={self.merged}"


@checked_arguments
class LoRALinear(_LoRA):
    """``base(x) + scaling · B A dropout(x)`` around a frozen ``nn.Linear`` (moved in, the same Parameters).

    Args:
        base: the layer to adapt; its Parameters are frozen (``requires_grad=False``).
        rank: ``r``, below ``min(in_features, out_features)``.
        alpha: ``α``; the update is scaled by ``α/r`` (``None``: ``α = r``, scale 1).
        dropout: dropout on the input of the low-rank path (plain LoRA; 0 for ALLoRA).
        scale: apply ``α/r`` (False: ALLoRA's scaling-free update).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0,
                 scale: bool = True) -> None:
        super().__init__()
        _check_rank(rank, base, "base")
        self._setup(rank, alpha, dropout, scale)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.empty(base.out_features, rank, **factory))
        self.reset_lora()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must end in in_features = {self.in_features}, got shape {tuple(x.shape)}")
        out = self.base(x)
        if self.merged:
            return out
        hidden = F.linear(_dropout(x, self.dropout, self.training, self.generator), self.lora_a)
        return out + F.linear(hidden, self.lora_b) * self.scaling


@checked_arguments
class LoRAConv2d(_LoRA):
    """``base(x) + scaling · B(A(dropout(x)))`` around a frozen ``nn.Conv2d`` (groups 1, zero padding): ``A`` is a
    conv with the layer's kernel, stride, padding and dilation and ``r`` outputs, ``B`` a 1x1 conv.

    Args: as :class:`LoRALinear`; ``rank`` below ``min(in_channels·kh·kw, out_channels)``.
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float | None = None, dropout: float = 0.0,
                 scale: bool = True) -> None:
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(f"base must be a conv with groups=1 and zero padding, got groups={base.groups}, "
                             f"padding_mode={base.padding_mode!r}")
        _check_rank(rank, base, "base")
        self._setup(rank, alpha, dropout, scale)
        self.in_channels, self.out_channels, self.kernel_size = base.in_channels, base.out_channels, base.kernel_size
        self.stride, self.padding, self.dilation, self.groups = base.stride, base.padding, base.dilation, 1
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        n, c, kh, kw = base.weight.shape
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(rank, c, kh, kw, **factory))
        self.lora_b = nn.Parameter(torch.empty(n, rank, 1, 1, **factory))
        self.reset_lora()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), got shape "
                             f"{tuple(x.shape)}")
        out = self.base(x)
        if self.merged:
            return out
        hidden = F.conv2d(_dropout(x, self.dropout, self.training, self.generator), self.lora_a, None, self.stride,
                          self.padding, self.dilation)
        return out + F.conv2d(hidden, self.lora_b) * self.scaling


def _width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features)
    n, c, kh, kw = module.weight.shape
    return min(n, c * kh * kw)


def _check_rank(rank: int, module: nn.Module, name: str) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    width = _width(module)
    if rank >= width:
        raise ValueError(f"rank must be below the layer width min(in, out) = {width} of {name} "
                         f"({type(module).__name__} {tuple(module.weight.shape)}), got rank={rank}: the update would "
                         f"not be low rank")


def _adaptable(module: nn.Module, layers: str) -> bool:
    # plain layers only: a subclass (another method's NestedLinear, a weight-standardised conv) has its own forward
    if type(module) is nn.Linear and layers in ("all", "linear"):
        return True
    return (type(module) is nn.Conv2d and layers in ("all", "conv") and module.groups == 1
            and module.padding_mode == "zeros")


@checked_arguments
def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear | LoRAConv2d]]:
    """The LoRA layers of ``model`` with their names."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear | LoRAConv2d)]


@checked_arguments
def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable factors ``A`` and ``B`` of every LoRA layer of ``model``."""
    return [p for _, layer in lora_layers(model) for p in (layer.lora_a, layer.lora_b)]


@checked_arguments
def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0, scale: bool = True,
               layers: Literal["all", "linear", "conv"] = "all", ignore: Iterable[str] = (),
               trainable: Iterable[str] = (), optimizer: torch.optim.Optimizer | None = None,
               generator: torch.Generator | None = None) -> dict[str, int]:
    """Wrap every plain ``nn.Linear``/``nn.Conv2d`` (groups 1; not subclasses) of ``model`` outside ``ignore`` in a
    LoRA layer, in place, and freeze the rest of the model except the modules named in ``trainable`` (e.g. a new
    classifier head).

    Args:
        model: the pre-trained network.
        rank: ``r`` of every adapted layer (each must have ``min(in, out) > r``; ``ignore`` the narrow ones).
        alpha, dropout, scale: as :class:`LoRALinear` (plain LoRA: ``alpha=2r, dropout=0.1``; ALLoRA: ``scale=False,
            dropout=0``).
        layers: ``"all"``, ``"linear"`` or ``"conv"``.
        ignore: module names to leave alone (and everything inside them).
        trainable: module names whose own Parameters stay trainable (and are not adapted).
        optimizer: if given, the factors join its first param group (the frozen weights stay but get no gradient).
        generator: drives the LoRA dropout masks.

    Returns:
        ``{layer name: rank}`` of the adapted layers.
    """
    ignore, trainable = tuple(ignore), tuple(trainable)
    names = {name for name, _ in model.named_modules()}
    unknown = [name for name in trainable if not isinstance(name, str) or name not in names]
    if unknown:
        raise ValueError(f"trainable names modules that do not exist: {unknown}")
    inside = tuple(name + "." for name, _ in lora_layers(model))  # the frozen base of an existing LoRA layer
    targets = [(name, m) for name, m in unignored_modules(model, ignore + trainable)
               if name and _adaptable(m, layers) and not isinstance(m, _LoRA) and not name.startswith(inside)]
    if not targets:
        raise ValueError(f"apply_lora found no {layers!r} layer (nn.Linear / nn.Conv2d with groups=1) outside "
                         f"ignore={list(ignore)} and trainable={list(trainable)}")
    for name, module in targets:  # check everything before the model changes
        _check_rank(rank, module, name)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    keep = {id(p) for name in trainable for p in model.get_submodule(name).parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    adapted: dict[str, int] = {}
    new_params: list[nn.Parameter] = []
    for name, module in targets:
        cls = LoRALinear if isinstance(module, nn.Linear) else LoRAConv2d
        layer = cls(module, rank, alpha, dropout, scale).train(module.training)
        layer.generator = generator
        if generator is not None:  # the factors' init from the generator too: same seed, same weights
            with torch.no_grad():
                bound = 1.0 / math.sqrt(layer.lora_a[0].numel())
                layer.lora_a.copy_(torch.rand(layer.lora_a.shape, generator=generator) * 2 * bound - bound)
        model.set_submodule(name, layer)
        adapted[name] = rank
        new_params += [layer.lora_a, layer.lora_b]
    if optimizer is not None:
        optimizer.param_groups[0]["params"].extend(new_params)
    return adapted


@checked_arguments
def merge_lora(model: nn.Module) -> int:
    """Merge every unmerged LoRA layer of ``model`` (``W += (α/r) B A``); returns how many were merged."""
    layers = [layer for _, layer in lora_layers(model) if not layer.merged]
    for layer in layers:
        layer.merge()
    return len(layers)


@checked_arguments
def unmerge_lora(model: nn.Module) -> int:
    """Unmerge every merged LoRA layer of ``model``; returns how many were unmerged."""
    layers = [layer for _, layer in lora_layers(model) if layer.merged]
    for layer in layers:
        layer.unmerge()
    return len(layers)


@checked_arguments
def allora_row_scale(param: torch.Tensor, eta: float = 2.0) -> torch.Tensor:
    """ALLoRA's coefficient per row (first dimension): ``1 / sqrt(‖θ_i‖² + 1/η²)``, shaped to broadcast on
    ``param`` (``(rows, 1, ...)``)."""
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    check_float_tensor("param", param)
    if param.dim() < 1:
        raise ValueError("param must have at least one dimension (rows)")
    rows = param.detach()
    squared = (rows.flatten(1) if rows.dim() > 1 else rows[:, None]).pow(2).sum(1)
    scale = (squared + 1.0 / eta ** 2).rsqrt()
    return scale.reshape((-1,) + (1,) * (param.dim() - 1))


@checked_arguments
def allora_scale_(params: Sequence[torch.Tensor], eta: float = 2.0) -> None:
    """Multiply each parameter's ``.grad`` row-wise by :func:`allora_row_scale` in place (``None`` grads skipped)."""
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    for index, p in enumerate(params):
        check_float_tensor(f"params[{index}]", p)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(allora_row_scale(p, eta).to(p.grad.dtype))


class _LoRABase(Method):
    _surgery = ("lora", "allora", "maestro", "trp", "hesso", "nm_sparsity", "nested_width", "lost", "cp_kernels",
                "layer_freezing", "mup", "frugal", "agvm")
    constraint_reason = ("LoRA freezes the network and wraps its layers: other surgery or freezing of the same "
                         "layers, or a method that differentiates every parameter (agvm)")

    def __init__(self) -> None:
        self._params: list[nn.Parameter] = []

    def _apply(self, ctx: Context, rank: int, alpha: float | None, dropout: float, scale: bool) -> None:
        try:
            adapted = apply_lora(ctx.model, rank, alpha, dropout, scale, self.layers, self.ignore, self.trainable,
                                 optimizer=ctx.optimizer, generator=ctx.generator)
        except ValueError as error:
            raise ConfigurationError(f"{self.name}: {error}") from error
        self._params = lora_parameters(ctx.model)
        self.log(ctx, "layers", len(adapted))
        trainable = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
        self.log(ctx, "trainable_params", trainable)

    def on_train_end(self, ctx: Context) -> None:
        if self.merge_at_end:
            merge_lora(ctx.model)


@register_method
class LoRAMethod(_LoRABase):
    """LoRA fine-tuning: freeze the model, train rank-``r`` updates of its Linear/Conv2d layers (arXiv 2106.09685).

    Logs ``lora/layers`` and ``lora/trainable_params``.

    Args:
        rank: ``r`` of every adapted layer.
        alpha: ``α`` (the update is scaled by ``α/r``; ``None``: ``2r``, scale 2).
        dropout: dropout on the low-rank path's input.
        layers: ``"all"``, ``"linear"`` or ``"conv"``.
        ignore: module names to leave dense and frozen.
        trainable: module names trained in full (not adapted), e.g. a new head.
        merge_at_end: merge the updates into the weights after training.
    """

    name = "lora"
    conflicts = tuple(n for n in _LoRABase._surgery if n != "lora")
    paper_id = "arXiv:2106.09685"
    claim = "rank-r updates of frozen weights fine-tune as well as full fine-tuning with far fewer trainable parameters"
    claimed_effect = "no_worse"

    def __init__(self, rank: int = 4, alpha: float | None = None, dropout: float = 0.1,
                 layers: Literal["all", "linear", "conv"] = "all", ignore: list[str] | None = None,
                 trainable: list[str] | None = None, merge_at_end: bool = False) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.rank, self.alpha, self.dropout = rank, (2.0 * rank if alpha is None else alpha), dropout
        self.layers, self.ignore, self.trainable = layers, list(ignore or []), list(trainable or [])
        self.merge_at_end = merge_at_end

    def setup(self, ctx: Context) -> None:
        self._apply(ctx, self.rank, self.alpha, self.dropout, True)


@register_method
class ALLoRAMethod(_LoRABase):
    """ALLoRA: LoRA without dropout and without ``α/r``, each factor row's learning rate scaled by
    ``1/sqrt(‖θ_i‖² + 1/η²)`` (arXiv 2410.09692).

    Logs ``allora/layers``, ``allora/trainable_params`` and ``allora/mean_scale`` (the mean row coefficient).

    Args:
        rank: ``r`` of every adapted layer.
        eta: ``η``, the coefficient at ``θ_i = 0`` (the rate multiplier of the rows of ``B`` at the start).
        mode: ``"update"`` scales each row's optimizer step (an adaptive learning rate; Adam does not cancel it) or
            ``"gradient"`` scales the gradients before the step (identical for plain SGD).
        layers, ignore, trainable, merge_at_end: as ``lora``.
    """

    name = "allora"
    conflicts = tuple(n for n in _LoRABase._surgery if n != "allora")
    paper_id = "arXiv:2410.09692"
    claim = "dropout-free, scaling-free LoRA with a per-row learning rate inversely proportional to the row norm " \
            "fine-tunes more accurately than LoRA in short runs"
    claimed_effect = "better"

    def __init__(self, rank: int = 4, eta: float = 2.0, mode: Literal["update", "gradient"] = "update",
                 layers: Literal["all", "linear", "conv"] = "all", ignore: list[str] | None = None,
                 trainable: list[str] | None = None, merge_at_end: bool = False) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if mode not in ("update", "gradient"):
            raise ValueError(f"mode must be 'update' or 'gradient', got {mode!r}")
        self.rank, self.eta, self.mode = rank, eta, mode
        self.layers, self.ignore, self.trainable = layers, list(ignore or []), list(trainable or [])
        self.merge_at_end = merge_at_end

    def setup(self, ctx: Context) -> None:
        self._apply(ctx, self.rank, None, 0.0, False)

    def after_backward(self, ctx: Context) -> None:
        if self.mode == "gradient":
            allora_scale_(self._params, self.eta)

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        if self.mode != "update":
            return next(closure)
        before = [p.detach().clone() for p in self._params]
        scales = [allora_row_scale(p, self.eta) for p in before]
        result = next(closure)
        with torch.no_grad():
            for p, old, scale in zip(self._params, before, scales):
                p.copy_(old + (p - old) * scale.to(p.dtype))
        if scales:
            self.log(ctx, "mean_scale", float(torch.cat([s.flatten() for s in scales]).mean()))
        return result
