"""Maestro: trainable low-rank layers with an importance ordering over the rank.

Every ``Linear`` / ``Conv2d`` becomes two factors, ``W ≈ U V`` with ``V: in → r`` and ``U: r → out``, initialised
from the SVD ``W = P diag(S) Qᵀ`` as ``U = P diag(√S)`` and ``V = diag(√S) Qᵀ`` (the square root of the spectrum is
split between the factors, so at full rank the layer computes exactly what the original computed). During training,
*ordered dropout* over the rank keeps only a prefix ``U[:, :b] V[:b]`` of the components (``b`` sampled per step), so
the first components learn to carry the most information and any prefix is a usable low-rank model. A hierarchical
group lasso on the *tails* of the factors pushes the trailing components to zero, and *progressive shrinking* drops
components whose importance falls below a threshold. ``truncate(rank)`` exports a physically smaller layer.

Paper: Horváth, Laskaridis, Rajput, Wang — "Maestro: Uncovering Low-Rank Structures via Trainable Decomposition",
2023, arXiv 2308.14929.

Formulas (``r`` = rank, ``U ∈ R^{out×r}``, ``V ∈ R^{r×in}``; a conv's ``V`` is a ``k×k`` conv ``in → r`` and its ``U``
a ``1×1`` conv ``r → out``)::

    y_b(x)          = U[:, :b] (V[:b] x) + bias                        ordered dropout keeps the first b components
    b               ~ Uniform{1, ..., r}                                one layer per step ("single_layer" sampler)
    R_hgl(U, V)     = Σ_{b=1..r} ( ‖V[b:, :]‖_F + ‖U[:, b:]‖_F )         hierarchical group lasso (nested tail groups)
    importance_b    = ‖V[b:, :]‖_F · ‖U[:, b:]‖_F                       non-increasing in b, so shrinking keeps a prefix

Pitfalls handled:
    * ``√S`` split: putting all of ``S`` into one factor makes the factors' scales (and their learning dynamics and
      group-lasso weights) lopsided; the split keeps ``‖U[:, i]‖ = ‖V[i]‖ = √s_i``.
    * The tail norm ``√(Σ x²)`` has an infinite derivative at zero: the square root is taken of ``max(Σ x², tiny)``
      so components that reached exactly zero give zero (not NaN) gradients.
    * Conv layers: the rank of ``(out, in·kh·kw)`` is ``min(out, in·kh·kw)``; stride, padding and dilation go on the
      ``V`` convolution and the ``U`` convolution is ``1×1``; grouped convs and non-zero padding modes are refused.
    * Surgery builds the layers through their constructors (``skip_init``: no throw-away SVD) and moves the original
      ``bias`` Parameter in (so its optimizer state survives); it rebinds the optimizer: the dense weight leaves its
      param group and ``U``, ``V`` join the same group.
    * Ordered dropout applies only in training mode; evaluation uses the layer's current (shrunk) rank.
    * A low-rank layer is cheaper than the dense one only when ``r < out·in / (out + in)`` (per output pixel for
      convs); at full rank Maestro costs *more* than the original, which ``OrderedLowRankLinear.saves_compute`` reports.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device
from regimen.subnet._common import unignored_modules
from regimen.subnet._surgery import replace_parameters

__all__ = [
    "MaestroMethod",
    "OrderedLowRankConv2d",
    "OrderedLowRankLinear",
    "apply_maestro",
    "hierarchical_group_lasso",
    "low_rank_conv2d",
    "low_rank_linear",
    "low_rank_layers",
    "rank_importance",
    "sample_rank",
    "set_rank_fraction",
    "svd_factors",
    "truncate_model",
]

_TINY = 1e-20


# ----------------------------------------------------------------------------------------------------------- functional
def _check_rank(rank: int | None, max_rank: int, name: str = "rank") -> int:
    if rank is None:
        return max_rank
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{name} must be an int or None, got {type(rank).__name__}")
    if not 1 <= rank <= max_rank:
        raise ValueError(f"{name} must be in [1, {max_rank}] (min of the layer's in and out sizes), got {rank}")
    return rank


@checked_arguments
def svd_factors(weight: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a weight matrix into ``U (out, r)`` and ``V (r, in)`` with ``U @ V`` its best rank-``r`` approximation.

    ``U = P[:, :r] diag(√S[:r])`` and ``V = diag(√S[:r]) Qᵀ[:r]`` from ``weight = P diag(S) Qᵀ``.

    Args:
        weight: a 2-D float tensor ``(out, in)`` (flatten conv kernels to ``(out, in·kh·kw)`` first).
        rank: components to keep, in ``[1, min(out, in)]``; ``None`` keeps all.

    Returns:
        ``(u, v)``, new tensors (the input is not modified); SVD is computed in float64 and cast back.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.is_floating_point() and not weight.is_meta and not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be finite (an SVD of NaN/inf does not converge)")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be floating point, got {weight.dtype}")
    rank = _check_rank(rank, min(weight.shape))
    p, s, qh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    u = (p[:, :rank] * root).to(weight.dtype)
    v = (root[:, None] * qh[:rank]).to(weight.dtype)
    return u.contiguous(), v.contiguous()


@checked_arguments
def low_rank_linear(
    x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None, rank: int | None = None
) -> torch.Tensor:
    """``x V[:rank]ᵀ U[:, :rank]ᵀ + bias``: a linear layer through the first ``rank`` components."""
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[0]:
        raise ValueError(f"u (out, r) and v (r, in) must share r, got {tuple(u.shape)} and {tuple(v.shape)}")
    if not (x.dtype == u.dtype == v.dtype and x.is_floating_point()):
        raise TypeError(f"x, u and v must share one floating point dtype, got {x.dtype}, {u.dtype}, {v.dtype}")
    rank = _check_rank(rank, v.shape[0])
    return F.linear(F.linear(x, v[:rank]), u[:, :rank], bias)


@checked_arguments
def low_rank_conv2d(
    x: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None = None,
    rank: int | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """A ``k×k`` conv to ``rank`` channels (``v[:rank]``, shape ``(r, in, kh, kw)``) then a ``1×1`` conv by ``u``."""
    if u.ndim != 2 or v.ndim != 4 or u.shape[1] != v.shape[0]:
        raise ValueError(f"u (out, r) and v (r, in, kh, kw) must share r, got {tuple(u.shape)} and {tuple(v.shape)}")
    if u.numel() == 0 or v.numel() == 0:
        raise ValueError(f"u and v must not be empty (a conv needs >= 1 output channel and rank), got "
                         f"{tuple(u.shape)} and {tuple(v.shape)}")
    if not (x.dtype == u.dtype == v.dtype and x.is_floating_point()):
        raise TypeError(f"x, u and v must share one floating point dtype, got {x.dtype}, {u.dtype}, {v.dtype}")
    if x.dim() not in (3, 4):
        raise ValueError(f"x must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    rank = _check_rank(rank, v.shape[0])
    hidden = F.conv2d(x, v[:rank], None, stride, padding, dilation)
    return F.conv2d(hidden, u[:, :rank, None, None], bias)


def _tail_norms(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(‖V[b:]‖_F, ‖U[:, b:]‖_F)`` for every ``b`` (vectors of length r), with a NaN-free gradient at zero."""
    v_rows = v.reshape(v.shape[0], -1).pow(2).sum(dim=1)  # (r,)
    u_cols = u.pow(2).sum(dim=0)  # (r,)
    v_tail = v_rows.flip(0).cumsum(0).flip(0)
    u_tail = u_cols.flip(0).cumsum(0).flip(0)
    return v_tail.clamp_min(_TINY).sqrt(), u_tail.clamp_min(_TINY).sqrt()


@checked_arguments
def hierarchical_group_lasso(u: torch.Tensor, v: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """``Σ_{b<rank} (‖V[b:rank]‖_F + ‖U[:, b:rank]‖_F)``: the nested tail-group penalty of Maestro (differentiable).

    Args:
        u: ``(out, r)`` output factor.
        v: ``(r, in)`` or ``(r, in, kh, kw)`` input factor.
        rank: only the first ``rank`` components take part (the layer's active rank); ``None`` uses all.
    """
    require_same_device(u=u, v=v)
    if u.ndim != 2 or u.shape[1] != v.shape[0]:
        raise ValueError(f"u (out, r) and v (r, ...) must share r, got {tuple(u.shape)} and {tuple(v.shape)}")
    rank = _check_rank(rank, v.shape[0])
    v_tail, u_tail = _tail_norms(u[:, :rank], v[:rank])
    return (v_tail + u_tail).sum()


@checked_arguments
@torch.no_grad()
def rank_importance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``‖V[b:]‖_F · ‖U[:, b:]‖_F`` for every component ``b`` (non-increasing, so thresholding keeps a prefix)."""
    require_data(u=u, v=v)
    if u.ndim != 2 or u.shape[1] != v.shape[0]:
        raise ValueError(f"u (out, r) and v (r, ...) must share r, got {tuple(u.shape)} and {tuple(v.shape)}")
    v_tail, u_tail = _tail_norms(u, v)
    return v_tail * u_tail


@checked_arguments
def sample_rank(max_rank: int, generator: torch.Generator | None = None, min_rank: int = 1) -> int:
    """Ordered dropout's draw: ``b ~ Uniform{min_rank, ..., max_rank}``."""
    if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank must be an int >= 1, got {max_rank!r}")
    if isinstance(min_rank, bool) or not isinstance(min_rank, int) or not 1 <= min_rank <= max_rank:
        raise ValueError(f"min_rank must be an int in [1, max_rank={max_rank}], got {min_rank!r}")
    draw = torch.randint(min_rank, max_rank + 1, (1,), generator=generator)
    return int(draw.item())


# -------------------------------------------------------------------------------------------------------------- modules
class _OrderedLowRank(nn.Module):
    """Shared state of the ordered low-rank layers: factors ``u`` / ``v``, the active rank and the sampled rank."""

    u: nn.Parameter
    v: nn.Parameter
    bias: nn.Parameter | None
    active_rank: torch.Tensor

    def _init_rank_state(self, max_rank: int, device: torch.device | str | None) -> None:
        self.register_buffer("active_rank", torch.tensor(max_rank, dtype=torch.long, device=device))
        #: rank used by the next training-mode forward (ordered dropout); ``None`` means the active rank.
        self.sample_rank: int | None = None

    def _reset_rank_state(self) -> None:
        """All stored components active, no sampled rank (also re-initialises the buffer after ``skip_init``)."""
        self.active_rank.fill_(self.max_rank)
        self.sample_rank = None

    def _load_factors(self, weight: torch.Tensor) -> None:
        """``u``, ``v`` := the SVD factors of a dense ``(out, fan_in)`` weight at the stored rank."""
        u, v = svd_factors(weight.detach(), self.max_rank)
        with torch.no_grad():
            self.u.copy_(u)
            self.v.copy_(v.reshape(self.v.shape))

    def _init_like_dense(self, dense_shape: tuple[int, ...]) -> None:
        """Initialise as the SVD of the dense layer's default init (``nn.Linear`` / ``nn.Conv2d``: Kaiming uniform
        with ``a = √5``, bias uniform in ``±1/√fan_in``), drawing from the global RNG in the same order."""
        dense = torch.empty(dense_shape, device=self.u.device, dtype=self.u.dtype)
        nn.init.kaiming_uniform_(dense, a=math.sqrt(5))
        self._load_factors(dense.reshape(dense_shape[0], -1))
        if self.bias is not None:
            fan_in = math.prod(dense_shape[1:])
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)
        self._reset_rank_state()

    @property
    def max_rank(self) -> int:
        """Number of stored components (the rank the layer was built with)."""
        return self.v.shape[0]

    @property
    def rank(self) -> int:
        """Components a forward uses now: the sampled rank in training (capped by the active rank), else active."""
        active = int(self.active_rank)
        if self.training and self.sample_rank is not None:
            return max(1, min(self.sample_rank, active))
        return active

    def set_active_rank(self, rank: int) -> None:
        """Keep only the first ``rank`` components from now on (progressive shrinking; parameters stay allocated)."""
        rank = _check_rank(rank, self.max_rank)
        self.active_rank.fill_(rank)

    def group_lasso(self) -> torch.Tensor:
        """Hierarchical group lasso over the active components."""
        return hierarchical_group_lasso(self.u, self.v, int(self.active_rank))

    def importance(self) -> torch.Tensor:
        """Per-component importance ``‖V[b:]‖·‖U[:, b:]‖`` over the stored components."""
        return rank_importance(self.u, self.v)

    def _sliced(self, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        rank = _check_rank(rank, self.max_rank) if rank is not None else int(self.active_rank)
        return self.u.detach()[:, :rank].clone(), self.v.detach()[:rank].clone(), rank

    def _take(self, u: torch.Tensor, v: torch.Tensor, bias: nn.Parameter | None) -> None:
        """Move ``u``, ``v`` (as new Parameters) and ``bias`` into this layer (a ``skip_init`` shell)."""
        self.u, self.v = nn.Parameter(u), nn.Parameter(v)
        self.bias = bias
        self._reset_rank_state()


@checked_arguments
class OrderedLowRankLinear(_OrderedLowRank):
    """``y = U[:, :b] (V[:b] x) + bias`` with ``U (out, r)``, ``V (r, in)``; ``b`` = ordered-dropout rank in training.

    A fresh layer is the SVD of a freshly initialised ``nn.Linear``; ``from_linear`` starts from a trained one.

    Args:
        in_features: input size.
        out_features: output size.
        rank: stored components, in ``[1, min(in, out)]``; ``None`` is full rank.
        bias: learn an additive bias.
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(self, in_features: int, out_features: int, rank: int | None = None, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        rank = _check_rank(rank, min(in_features, out_features))
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.u = nn.Parameter(torch.empty(out_features, rank, **factory))
        self.v = nn.Parameter(torch.empty(rank, in_features, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter("bias", None)
        self._init_rank_state(rank, device)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_like_dense((self.out_features, self.in_features))

    @classmethod
    def from_linear(cls, layer: nn.Linear, rank: int | None = None) -> OrderedLowRankLinear:
        """A low-rank layer initialised from ``layer``'s SVD; it takes over ``layer.bias`` (the same Parameter)."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        rank = _check_rank(rank, min(layer.in_features, layer.out_features))
        weight = layer.weight
        module = nn.utils.skip_init(cls, layer.in_features, layer.out_features, rank, bias=False,
                                    device=weight.device, dtype=weight.dtype)
        module._load_factors(weight)
        module.bias = layer.bias  # moved in: the same Parameter keeps its optimizer state
        module._reset_rank_state()  # skip_init left the buffer uninitialised
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return low_rank_linear(x, self.u, self.v, self.bias, self.rank)

    def truncate(self, rank: int | None = None) -> OrderedLowRankLinear:
        """A new, physically smaller layer with the first ``rank`` components (``None``: the active rank)."""
        u, v, rank = self._sliced(rank)
        out = nn.utils.skip_init(OrderedLowRankLinear, self.in_features, self.out_features, rank, bias=False,
                                 device=u.device, dtype=u.dtype)
        out._take(u, v, None if self.bias is None else nn.Parameter(self.bias.detach().clone()))
        return out.train(self.training)

    def to_dense(self) -> nn.Linear:
        """The dense ``nn.Linear`` with weight ``U[:, :b] V[:b]`` at the active rank."""
        rank = int(self.active_rank)
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.u.device,
                          dtype=self.u.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.u[:, :rank] @ self.v[:rank])
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def saves_compute(self) -> bool:
        """True when the active rank costs fewer multiply-adds than the dense layer: ``r (in + out) < in · out``."""
        return int(self.active_rank) * (self.in_features + self.out_features) < self.in_features * self.out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={int(self.active_rank)}/"
                f"{self.max_rank}, bias={self.bias is not None}")


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@checked_arguments
class OrderedLowRankConv2d(_OrderedLowRank):
    """A ``k×k`` conv ``in → b`` (factor ``V``, shape ``(r, in, kh, kw)``) then a ``1×1`` conv ``b → out`` (``U``).

    A fresh layer is the SVD of a freshly initialised ``nn.Conv2d``; ``from_conv`` starts from a trained one.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (``groups=1``,
            ``padding_mode="zeros"`` only).
        rank: stored components, in ``[1, min(out, in·kh·kw)]``; ``None`` is full rank.
        bias: learn an additive bias.
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        rank: int | None = None,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"padding must be 'valid', 'same' or ints, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding: tuple[int, int] | str = padding
        else:
            self.padding = _pair(padding)
        kh, kw = self.kernel_size
        rank = _check_rank(rank, min(out_channels, in_channels * kh * kw))
        factory = {"device": device, "dtype": dtype}
        self.u = nn.Parameter(torch.empty(out_channels, rank, **factory))
        self.v = nn.Parameter(torch.empty(rank, in_channels, kh, kw, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self._init_rank_state(rank, device)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._init_like_dense((self.out_channels, self.in_channels, *self.kernel_size))

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, rank: int | None = None) -> OrderedLowRankConv2d:
        """A low-rank conv initialised from ``layer``'s SVD (kernel flattened to ``(out, in·kh·kw)``); it takes over
        ``layer.bias`` (the same Parameter)."""
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"layer must be an nn.Conv2d, got {type(layer).__name__}")
        if layer.groups != 1:
            raise ValueError(f"OrderedLowRankConv2d supports groups=1 only, got groups={layer.groups}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"OrderedLowRankConv2d supports padding_mode='zeros' only, got {layer.padding_mode!r}")
        weight = layer.weight
        module = nn.utils.skip_init(cls, layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                    layer.padding, layer.dilation, rank=rank, bias=False, device=weight.device,
                                    dtype=weight.dtype)
        module._load_factors(weight.reshape(layer.out_channels, -1))
        module.bias = layer.bias  # moved in: the same Parameter keeps its optimizer state
        module._reset_rank_state()  # skip_init left the buffer uninitialised
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return low_rank_conv2d(x, self.u, self.v, self.bias, self.rank, self.stride, self.padding, self.dilation)

    def truncate(self, rank: int | None = None) -> OrderedLowRankConv2d:
        """A new, physically smaller conv with the first ``rank`` components (``None``: the active rank)."""
        u, v, rank = self._sliced(rank)
        out = nn.utils.skip_init(OrderedLowRankConv2d, self.in_channels, self.out_channels, self.kernel_size,
                                 self.stride, self.padding, self.dilation, rank=rank, bias=False, device=u.device,
                                 dtype=u.dtype)
        out._take(u, v, None if self.bias is None else nn.Parameter(self.bias.detach().clone()))
        return out.train(self.training)

    def to_dense(self) -> nn.Conv2d:
        """The dense ``nn.Conv2d`` whose kernel is ``U[:, :b] V[:b]`` at the active rank."""
        rank = int(self.active_rank)
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, bias=self.bias is not None, device=self.u.device, dtype=self.u.dtype)
        with torch.no_grad():
            kernel = self.u[:, :rank] @ self.v[:rank].reshape(rank, -1)
            dense.weight.copy_(kernel.reshape(dense.weight.shape))
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def saves_compute(self) -> bool:
        """True when ``r (in·kh·kw + out) < out · in·kh·kw`` (multiply-adds per output pixel)."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return int(self.active_rank) * (fan_in + self.out_channels) < fan_in * self.out_channels

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, rank={int(self.active_rank)}/{self.max_rank}, bias={self.bias is not None}")


# -------------------------------------------------------------------------------------------------------------- surgery
@checked_arguments
def low_rank_layers(model: nn.Module) -> list[tuple[str, _OrderedLowRank]]:
    """``(name, module)`` of every Maestro low-rank layer in ``model``, in module order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, _OrderedLowRank)]


@checked_arguments
def apply_maestro(
    model: nn.Module,
    rank_ratio: float = 1.0,
    layers: Literal["all", "linear", "conv"] = "all",
    ignore: Iterable[str] = (),
    optimizer: torch.optim.Optimizer | None = None,
    *,
    exclude: Iterable[str] | None = None,
) -> nn.Module:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` (groups=1) layers of ``model`` by SVD-initialised low-rank layers.

    Surgery happens in place on ``model`` (which is also returned). ``optimizer``, when given, is rebound: each
    replaced weight leaves its param group (with its state) and the new ``u``, ``v`` join the same group; the bias
    is the same Parameter object, so its optimizer state is kept.

    Args:
        model: the model to modify.
        rank_ratio: stored rank as a fraction of each layer's full rank, in ``(0, 1]`` (rounded up, at least 1).
        layers: which layer types to decompose.
        ignore: names of modules to leave dense (with everything inside them, e.g. ``"stages.0"``).
        optimizer: optimizer to rebind.
        exclude: deprecated name of ``ignore``.

    Returns:
        ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not 0.0 < rank_ratio <= 1.0:
        raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
    if layers not in ("all", "linear", "conv"):
        raise ValueError(f"layers must be 'all', 'linear' or 'conv', got {layers!r}")
    ignore = _renamed_ignore(ignore, exclude, "apply_maestro")
    types: tuple[type, ...] = {"all": (nn.Linear, nn.Conv2d), "linear": (nn.Linear,), "conv": (nn.Conv2d,)}[layers]
    targets = [
        (name, module) for name, module in unignored_modules(model, ignore)
        if type(module) in types and not (isinstance(module, nn.Conv2d) and module.groups != 1)
    ]
    replaced: dict[nn.Parameter, list[nn.Parameter]] = {}
    for name, module in targets:
        if isinstance(module, nn.Linear):
            full = min(module.in_features, module.out_features)
            new: _OrderedLowRank = OrderedLowRankLinear.from_linear(module, max(1, math.ceil(rank_ratio * full)))
        else:
            kh, kw = _pair(module.kernel_size)
            full = min(module.out_channels, module.in_channels * kh * kw)
            new = OrderedLowRankConv2d.from_conv(module, max(1, math.ceil(rank_ratio * full)))
        new.train(module.training)
        replaced[module.weight] = [new.u, new.v]
        model.set_submodule(name, new)
    if optimizer is not None:
        replace_parameters(optimizer, replaced)
    return model


def _renamed_ignore(ignore: Iterable[str], exclude: Iterable[str] | None, where: str) -> Iterable[str]:
    """``ignore``, or the deprecated ``exclude`` (with a DeprecationWarning); giving both is an error."""
    if exclude is None:
        return ignore
    if tuple(ignore):
        raise TypeError(f"{where}: give ignore= only (exclude= is its deprecated name), not both")
    warnings.warn(f"{where}: exclude= is deprecated; use ignore=", DeprecationWarning, stacklevel=3)
    return exclude


@checked_arguments
def set_rank_fraction(model: nn.Module, fraction: float) -> None:
    """Set every low-rank layer's active rank to ``ceil(fraction · max_rank)`` (evaluate a uniform rank budget)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    for _, layer in low_rank_layers(model):
        layer.set_active_rank(max(1, math.ceil(fraction * layer.max_rank)))


@checked_arguments
def truncate_model(model: nn.Module, dense_when_cheaper: bool = False) -> nn.Module:
    """Physically truncate every low-rank layer of ``model`` to its active rank (in place; returns ``model``).

    With ``dense_when_cheaper`` a layer whose low-rank form costs more than the dense one is multiplied back out.
    """
    for name, layer in low_rank_layers(model):
        new: nn.Module = layer.truncate()
        if dense_when_cheaper and not layer.saves_compute():
            new = layer.to_dense().train(layer.training)
        model.set_submodule(name, new)
    return model


# --------------------------------------------------------------------------------------------------------------- method
@register_method
class MaestroMethod(Method):
    """Maestro: SVD-initialised low-rank layers trained with ordered dropout over the rank (arXiv 2308.14929).

    ``setup`` decomposes the layers; ``before_forward`` draws each micro-batch's ranks from ``ctx.generator``;
    ``after_backward`` adds the group-lasso gradient; ``on_epoch_end`` shrinks; ``on_train_end`` truncates.
    Logs ``maestro/layers`` and ``maestro/rank_fraction`` (active over stored components).

    Args:
        rank_ratio: stored rank per layer as a fraction of its full rank.
        layers: ``"all"``, ``"linear"`` or ``"conv"`` layers to decompose.
        ignore: names of modules to keep dense (with everything inside them), e.g. ``["stages.0"]`` for the stem.
        sampler: ``"single_layer"`` (the paper: one layer per step gets a random rank, the others stay full),
            ``"all_layers"`` (one random fraction for every layer), ``"independent"`` (a random rank per layer)
            or ``"none"`` (no ordered dropout).
        group_lasso: coefficient λ of the hierarchical group lasso, added to the gradients after backward.
        shrink_threshold: after every epoch, drop the trailing components whose importance is below this (0: off).
        truncate_at_end: at the end of training, physically truncate each layer to its active rank.
        exclude: deprecated name of ``ignore``.
        export: deprecated name of ``truncate_at_end``.
    """

    name = "maestro"
    paper_id = "arXiv:2308.14929"
    claim = (
        "ordered dropout over SVD-initialised ranks finds low-rank layers with accuracy close to the "
        "full-rank model"
    )
    claimed_effect = "no_worse"

    def __init__(
        self,
        rank_ratio: float = 1.0,
        layers: Literal["all", "linear", "conv"] = "all",
        ignore: list[str] | None = None,
        sampler: Literal["single_layer", "all_layers", "independent", "none"] = "single_layer",
        group_lasso: float = 0.0,
        shrink_threshold: float = 0.0,
        truncate_at_end: bool = True,
        exclude: list[str] | None = None,
        export: bool | None = None,
    ) -> None:
        if not 0.0 < rank_ratio <= 1.0:
            raise ValueError(f"rank_ratio must be in (0, 1], got {rank_ratio}")
        if layers not in ("all", "linear", "conv"):
            raise ValueError(f"layers must be 'all', 'linear' or 'conv', got {layers!r}")
        if sampler not in ("single_layer", "all_layers", "independent", "none"):
            raise ValueError(f"sampler must be single_layer/all_layers/independent/none, got {sampler!r}")
        if group_lasso < 0 or shrink_threshold < 0:
            raise ValueError(f"group_lasso and shrink_threshold must be >= 0, got {group_lasso}, {shrink_threshold}")
        ignore = list(_renamed_ignore(ignore or (), exclude, "maestro"))
        if export is not None:
            warnings.warn("maestro: export is deprecated; use truncate_at_end", DeprecationWarning, stacklevel=2)
            truncate_at_end = export
        self.rank_ratio, self.layers, self.ignore = rank_ratio, layers, ignore
        self.sampler, self.group_lasso = sampler, group_lasso
        self.shrink_threshold, self.truncate_at_end = shrink_threshold, truncate_at_end
        self._layers: list[_OrderedLowRank] = []

    def setup(self, ctx: Context) -> None:
        apply_maestro(ctx.model, self.rank_ratio, self.layers, self.ignore, optimizer=ctx.optimizer)
        self._layers = [layer for _, layer in low_rank_layers(ctx.model)]
        if not self._layers:
            raise ConfigurationError(
                f"maestro needs nn.Linear or nn.Conv2d (groups=1) layers to decompose and found none of kind "
                f"{self.layers!r} outside ignore={self.ignore}")
        self.log(ctx, "layers", len(self._layers))

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        self.sample(ctx.generator)

    def sample(self, generator: torch.Generator | None = None) -> None:
        """Draw the ordered-dropout ranks of the next training forward."""
        layers = self._layers
        for layer in layers:
            layer.sample_rank = None
        if self.sampler == "none" or not layers:
            return
        if self.sampler == "single_layer":
            index = int(torch.randint(len(layers), (1,), generator=generator).item())
            layer = layers[index]
            layer.sample_rank = sample_rank(int(layer.active_rank), generator)
        elif self.sampler == "all_layers":
            fraction = 1.0 - float(torch.rand((1,), generator=generator).item())  # in (0, 1]
            for layer in layers:
                layer.sample_rank = max(1, math.ceil(fraction * int(layer.active_rank)))
        else:
            for layer in layers:
                layer.sample_rank = sample_rank(int(layer.active_rank), generator)

    def after_backward(self, ctx: Context) -> None:
        if self.group_lasso <= 0:
            return
        params = [p for layer in self._layers for p in (layer.u, layer.v)]
        with torch.enable_grad():
            penalty = sum(layer.group_lasso() for layer in self._layers)
            grads = torch.autograd.grad(penalty, params)
        for param, grad in zip(params, grads, strict=True):
            scaled = grad * self.group_lasso
            param.grad = scaled if param.grad is None else param.grad.add_(scaled)

    def on_epoch_end(self, ctx: Context) -> None:
        for layer in self._layers:
            layer.sample_rank = None
        if self.shrink_threshold > 0:
            for layer in self._layers:
                keep = int((layer.importance()[: int(layer.active_rank)] >= self.shrink_threshold).sum())
                layer.set_active_rank(max(1, keep))
        kept = sum(int(layer.active_rank) for layer in self._layers)
        stored = sum(layer.max_rank for layer in self._layers)
        self.log(ctx, "rank_fraction", kept / stored)

    def on_train_end(self, ctx: Context) -> None:
        for layer in self._layers:
            layer.sample_rank = None
        if self.truncate_at_end:
            truncate_model(ctx.model)

    def state_dict(self) -> dict[str, Any]:
        return {}  # active ranks are buffers of the layers (saved with the model); sampling uses ctx.generator


__getattr__ = deprecated_aliases(__name__, {"Maestro": "MaestroMethod", "LowRankLinear": "OrderedLowRankLinear",
                                            "LowRankConv2d": "OrderedLowRankConv2d"}, globals())
