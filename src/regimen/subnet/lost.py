"""LOST: pre-train from scratch with every Linear weight as low-rank factors plus a channel-wise sparse residual.

Paper: Li et al., "LOST: Low-rank and Sparse Pre-training for Large Language Models", 2025, arXiv 2508.02668.

Formula. At initialisation each weight ``W₀ (out, in) = U Σ Vᵀ``. The dominant ``r`` triplets become the trainable
factors ``B = U_r Σ_r^{1/2}`` (out, r) and ``A = Σ_r^{1/2} V_rᵀ`` (r, in). The remaining singular values form the
complement ``W_comp = W₀ − B A``; the ``c`` input channels (columns) with the largest ℓ2 norm of ``W_comp`` are
kept, ``I = top-c ‖W_comp[:, j]‖₂``, and ``S = W_comp[:, I]`` (out, c) is trained. The layer computes

    y = γ · B σ(A x) + (1 − γ) · S x[I] + b

with ``σ`` the identity (or SiLU between the factors, ``activation="silu"``) and ``γ`` the fixed mixing weight.
Channel sparsity is an index-select plus a dense matmul, never a masked dense weight. ``selection="random"`` picks
``I`` uniformly at random instead (the random-sparse ablation, with the same parameter count; SLTrain uses an
unstructured random support), ``channels=0`` gives the pure low-rank (SVD-initialised) layer.

Confirmed (the paper's abstract and the four public ICLR 2026 reviews of it): SVD at initialisation, dominant part
low rank, remaining singular values build a *channel-wise* sparse component; channels chosen by the column-wise
ℓ2 norm of ``W_comp`` (the paper's ablation ``SVD^rem_l2`` against ``SVD^rem_l1``); the sparse path is
``(1 − γ) x[:, I] W_sᵀ`` with a mixing coefficient ``γ`` (ablated in the paper); the paper ablates a nonlinearity
between the factors. Not confirmed (the paper's body and code were not readable here): the default ``γ`` (0.5 here,
as in the first author's public adapter prototype), whether ``S`` starts from ``W_comp[:, I]`` or ``W₀[:, I]``
(``W_comp`` here, the "remaining singular values"), and the default placement of the nonlinearity (none here).

Pitfalls handled: the SVD runs once, in float64, outside autograd; weights tied to another module (a GPT's output
head tied to its embedding) are left dense; ``rank`` must be ≥ 1 and below ``min(in, out)`` and ``channels`` in
``[0, in]`` (errors name the argument); every layer is checked before the model changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_float_tensor, unignored_modules
from regimen.subnet._surgery import replace_parameters

__all__ = [
    "LOSTLinear",
    "LOSTMethod",
    "apply_lost",
    "lost_decompose",
    "lost_linear",
    "lost_parameter_count",
    "select_channels",
]



@checked_arguments
def select_channels(residual: torch.Tensor, channels: int, selection: Literal["l2", "l1", "random"] = "l2",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (sorted) of the ``channels`` input channels (columns) of ``residual (out, in)`` with the largest ℓ2
    (or ℓ1) column norm, or a uniformly random choice."""
    check_float_tensor("residual", residual)
    if residual.dim() != 2:
        raise ValueError(f"residual must be a 2-D weight (out, in), got shape {tuple(residual.shape)}")
    if not 0 <= channels <= residual.shape[1]:
        raise ValueError(f"channels must be in [0, {residual.shape[1]}] (the input width), got {channels}")
    if selection == "random":
        index = torch.randperm(residual.shape[1], generator=generator)[:channels]
    elif selection in ("l2", "l1"):
        norms = residual.detach().abs().sum(0) if selection == "l1" else residual.detach().pow(2).sum(0)
        index = torch.topk(norms, channels).indices
    else:
        raise ValueError(f"selection must be 'l2', 'l1' or 'random', got {selection!r}")
    return index.sort().values.to(device=residual.device)


@checked_arguments
def lost_decompose(weight: torch.Tensor, rank: int, channels: int, selection: Literal["l2", "l1", "random"] = "l2",
                   generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """LOST's initialisation of ``weight (out, in)``: returns ``(B, A, S, I)`` with ``B A`` the best rank-``rank``
    part (``√Σ`` split evenly), ``I`` the chosen input channels of ``W_comp = W − B A`` and ``S = W_comp[:, I]``."""
    check_float_tensor("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be a finite floating point tensor (an SVD of NaN/inf does not converge)")
    out_features, in_features = weight.shape
    if isinstance(rank, bool) or rank < 1 or rank >= min(out_features, in_features):
        raise ValueError(f"rank must be >= 1 and below min(out, in) = {min(out_features, in_features)} of weight "
                         f"{tuple(weight.shape)}, got {rank}")
    matrix = weight.detach().double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = s[:rank].sqrt()
    b = u[:, :rank] * root
    a = root[:, None] * vh[:rank]
    residual = matrix - b @ a
    index = select_channels(residual, channels, selection, generator)
    sparse = residual[:, index]
    dtype = weight.dtype
    return b.to(dtype), a.to(dtype), sparse.to(dtype), index


@checked_arguments
def lost_linear(x: torch.Tensor, lora_b: torch.Tensor, lora_a: torch.Tensor, sparse: torch.Tensor,
                index: torch.Tensor, bias: torch.Tensor | None = None, gamma: float = 0.5,
                activation: Literal["none", "silu"] = "none") -> torch.Tensor:
    """``γ · B σ(A x) + (1 − γ) · S x[..., I] + b`` over the last dimension of ``x``."""
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if activation not in ("none", "silu"):
        raise ValueError(f"activation must be 'none' or 'silu', got {activation!r}")
    for name, value in (("x", x), ("lora_b", lora_b), ("lora_a", lora_a), ("sparse", sparse)):
        check_float_tensor(name, value)
        if value.dtype != lora_a.dtype:
            raise TypeError(f"{name} must have lora_a's dtype {lora_a.dtype}, got {value.dtype}")
    if lora_a.dim() != 2 or lora_b.dim() != 2 or sparse.dim() != 2 or x.dim() < 1:
        raise ValueError("lora_a, lora_b and sparse must be 2-D and x at least 1-D")
    if x.shape[-1] != lora_a.shape[1] or lora_b.shape[1] != lora_a.shape[0] or sparse.shape[0] != lora_b.shape[0]:
        raise ValueError(f"x (..., {x.shape[-1]}), lora_a {tuple(lora_a.shape)}, lora_b {tuple(lora_b.shape)} and "
                         f"sparse {tuple(sparse.shape)} do not fit (x (..., in), A (r, in), B (out, r), S (out, c))")
    if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.dim() != 1 \
            or index.numel() != sparse.shape[1]:
        raise ValueError(f"index must be a 1-D int64 tensor of sparse's {sparse.shape[1]} channels")
    hidden = F.linear(x, lora_a)
    if activation == "silu":
        hidden = F.silu(hidden)
    out = F.linear(hidden, lora_b) * gamma
    if index.numel():
        out = out + F.linear(x.index_select(-1, index), sparse) * (1.0 - gamma)
    return out if bias is None else out + bias


@checked_arguments
def lost_parameter_count(in_features: int, out_features: int, rank: int, channels: int, bias: bool = True) -> int:
    """Trainable parameters of one LOST layer: ``r (in + out) + c · out (+ out)``."""
    for name, value, minimum in (("in_features", in_features, 1), ("out_features", out_features, 1),
                                 ("rank", rank, 1), ("channels", channels, 0)):
        if value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return rank * (in_features + out_features) + channels * out_features + (out_features if bias else 0)


@checked_arguments
class LOSTLinear(nn.Module):
    """A Linear layer stored as LOST's low-rank factors plus channel-sparse columns (see the module docstring).

    Args:
        in_features, out_features: as ``nn.Linear``.
        rank: ``r`` (≥ 1, below ``min(in, out)``).
        channels: ``c`` sparse input channels (0: pure low rank).
        gamma: the mixing weight ``γ`` of the low-rank path.
        activation: ``"none"`` or ``"silu"`` between the factors.
        bias: learn a bias.
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, channels: int, gamma: float = 0.5,
                 activation: Literal["none", "silu"] = "none", bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if rank < 1 or rank >= min(in_features, out_features):
            raise ValueError(f"rank must be >= 1 and below min(in_features, out_features) = "
                             f"{min(in_features, out_features)}, got {rank}")
        if not 0 <= channels <= in_features:
            raise ValueError(f"channels must be in [0, {in_features}] (in_features), got {channels}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        if activation not in ("none", "silu"):
            raise ValueError(f"activation must be 'none' or 'silu', got {activation!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank, self.channels = in_features, out_features, rank, channels
        self.gamma, self.activation = gamma, activation
        self.lora_a = nn.Parameter(torch.zeros(rank, in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **factory))
        self.sparse = nn.Parameter(torch.zeros(out_features, channels, **factory))
        self.register_buffer("index", torch.arange(channels, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, **factory)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, channels: int, gamma: float = 0.5,
                    activation: Literal["none", "silu"] = "none", selection: Literal["l2", "l1", "random"] = "l2",
                    generator: torch.Generator | None = None) -> LOSTLinear:
        """LOST's initialisation from ``linear``'s weight; takes over ``linear.bias`` (the same Parameter)."""
        weight = linear.weight
        b, a, s, index = lost_decompose(weight, rank, channels, selection, generator)
        layer = cls(linear.in_features, linear.out_features, rank, channels, gamma, activation, bias=False,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            layer.lora_a.copy_(a)
            layer.lora_b.copy_(b)
            layer.sparse.copy_(s)
        layer.index = index.to(weight.device)
        layer.bias = linear.bias
        return layer

    def effective_weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight of the layer (only for ``activation="none"``)."""
        if self.activation != "none":
            raise ValueError("effective_weight exists only without an activation between the factors")
        weight = self.gamma * (self.lora_b @ self.lora_a)
        return weight.index_add(1, self.index, (1.0 - self.gamma) * self.sparse)

    @property
    def weight(self) -> torch.Tensor:
        """The effective dense weight (differentiable in the factors and ``S``), so code that reads ``layer.weight``
        of a Linear sees what the layer computes; only without an activation between the factors."""
        if self.activation != "none":
            raise AttributeError("a LOSTLinear with an activation between its factors has no dense weight")
        return self.effective_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lost_linear(x, self.lora_b, self.lora_a, self.sparse, self.index, self.bias, self.gamma,
                           self.activation)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"channels={self.channels}, gamma={self.gamma}, activation={self.activation}")


def _tied(model: nn.Module) -> set[int]:
    count: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        count[id(p)] = count.get(id(p), 0) + 1
    return {key for key, n in count.items() if n > 1}


def _size(value: float, width: int, what: str, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} as a fraction must be in [0, 1], got {value}")
    return max(minimum, int(round(value * width)))


@checked_arguments
def apply_lost(model: nn.Module, rank: int | float = 0.25, channels: int | float = 0.05, gamma: float = 0.5,
               activation: Literal["none", "silu"] = "none", selection: Literal["l2", "l1", "random"] = "l2",
               ignore: Iterable[str] = (), optimizer: torch.optim.Optimizer | None = None,
               generator: torch.Generator | None = None) -> dict[str, tuple[int, int]]:
    """Replace every plain ``nn.Linear`` (not a subclass) of ``model`` outside ``ignore`` (and not weight-tied)
    by a :class:`LOSTLinear` initialised from its current weight, in place.

    Args:
        model: a freshly initialised network (LOST pre-trains from scratch).
        rank: ``r`` per layer: an int, or a float in (0, 1] as a fraction of ``min(in, out)``.
        channels: ``c`` per layer: an int, or a float in [0, 1] as a fraction of ``in``.
        gamma, activation: as :class:`LOSTLinear`.
        selection: ``"l2"`` (the paper), ``"l1"`` or ``"random"`` (the random-sparse ablation).
        ignore: module names to keep dense.
        optimizer: each replaced weight leaves its param group; the factors and ``S`` join it (fresh state).
        generator: drives ``selection="random"``.

    Returns:
        ``{layer name: (rank, channels)}`` of the replaced layers.
    """
    if isinstance(rank, bool) or (isinstance(rank, int) and rank < 1) or (isinstance(rank, float) and rank <= 0):
        raise ValueError(f"rank must be an int >= 1 or a fraction in (0, 1], got {rank!r}")
    if isinstance(channels, bool) or (isinstance(channels, int) and channels < 0):
        raise ValueError(f"channels must be an int >= 0 or a fraction in [0, 1], got {channels!r}")
    tied = _tied(model)
    plans = []
    for name, module in unignored_modules(model, ignore):
        if not name or type(module) is not nn.Linear or id(module.weight) in tied:  # plain layers, not subclasses
            continue
        r = _size(rank, min(module.in_features, module.out_features), "rank", 1)
        c = _size(channels, module.in_features, "channels", 0)
        if r >= min(module.in_features, module.out_features):
            raise ValueError(f"rank must be below min(in, out) = {min(module.in_features, module.out_features)} of "
                             f"{name}, got rank={r}")
        if c > module.in_features:
            raise ValueError(f"channels must be at most in_features = {module.in_features} of {name}, got {c}")
        plans.append((name, module, r, c))
    if not plans:
        raise ValueError(f"apply_lost found no untied nn.Linear outside ignore={list(ignore)}")
    replaced: dict[str, tuple[int, int]] = {}
    factors: dict[nn.Parameter, list[nn.Parameter]] = {}
    for name, module, r, c in plans:
        layer = LOSTLinear.from_linear(module, r, c, gamma, activation, selection, generator).train(module.training)
        model.set_submodule(name, layer)
        replaced[name] = (r, c)
        factors[module.weight] = [layer.lora_a, layer.lora_b, layer.sparse]
    if optimizer is not None:
        replace_parameters(optimizer, factors)
    return replaced


@register_method
class LOSTMethod(Method):
    """LOST: every untied Linear trained from scratch as SVD-initialised low-rank factors plus channel-sparse columns
    of the SVD residual (arXiv 2508.02668).

    Logs ``lost/layers`` and ``lost/trainable_params``.

    Args:
        rank: rank per layer as a fraction in (0, 1) of ``min(in, out)``.
        channels: sparse input channels per layer as a fraction of ``in`` (0: pure low rank).
        gamma: mixing weight of the low-rank path.
        activation: ``"none"`` or ``"silu"`` between the factors.
        selection: ``"l2"`` (the paper's rule), ``"l1"`` or ``"random"`` (random-sparse ablation).
        ignore: module names to keep dense.
    """

    name = "lost"
    paper_id = "arXiv:2508.02668"
    claim = "low-rank plus channel-sparse pre-training matches or beats full-rank perplexity with less memory"
    claimed_effect = "no_worse"
    conflicts = ("lora", "allora", "maestro", "trp", "hesso", "nm_sparsity", "nested_width", "mup", "frugal",
                 "polarization")
    constraint_reason = "LOST replaces the Linear layers by factorised ones; other surgery on the same layers"

    def __init__(self, rank: float = 0.25, channels: float = 0.05, gamma: float = 0.5,
                 activation: Literal["none", "silu"] = "none", selection: Literal["l2", "l1", "random"] = "l2",
                 ignore: list[str] | None = None) -> None:
        if not 0.0 < rank < 1.0:
            raise ValueError(f"rank must be a fraction in (0, 1), got {rank}")
        if not 0.0 <= channels <= 1.0:
            raise ValueError(f"channels must be a fraction in [0, 1], got {channels}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.rank, self.channels, self.gamma = float(rank), float(channels), gamma
        self.activation, self.selection, self.ignore = activation, selection, list(ignore or [])

    def setup(self, ctx: Context) -> None:
        try:
            replaced = apply_lost(ctx.model, self.rank, self.channels, self.gamma, self.activation, self.selection,
                                  self.ignore, optimizer=ctx.optimizer, generator=ctx.generator)
        except ValueError as error:
            raise ConfigurationError(f"lost: {error}") from error
        self.log(ctx, "layers", len(replaced))
        self.log(ctx, "trainable_params", sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))
