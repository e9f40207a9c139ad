"""A-priori factorised convolutions: every k x k kernel is a sum of R outer products of 1-D filters, from scratch.

Paper: Chiu et al. (ONERA / Sorbonne), "A-priori compression of convolutional neural networks for wave
simulators", 2023, arXiv 2304.04964.

Formula. A conv weight ``K (O, I, kh, kw)`` is parametrised, before training, per (output, input) kernel as

    K[o, i] = Σ_{r=1..R} a[o, i, r] ⊗ b[o, i, r],    a[o, i, r] ∈ R^kh, b[o, i, r] ∈ R^kw

(a rank-R CP decomposition of each 2-D kernel; for 2-D kernels the same as a truncated SVD of each kernel). The
layer stores ``a (O, I, R, kh)`` and ``b (O, I, R, kw)``: ``R (kh + kw)`` numbers per kernel instead of
``kh · kw``, so it saves parameters when ``R < kh kw / (kh + kw)`` (R = 1 for 3x3: 6 of 9, R = 1 or 2 for 5x5).
Each forward builds ``K`` with one einsum and calls ``F.conv2d``; the FLOPs of the convolution are unchanged (only
separable convs with factors shared across (o, i) would cut them, which is a different model).

Initialisation: ``a`` and ``b`` are normal with standard deviation ``(σ² / R)^{1/4}`` so that ``Var(K) = R Var(a)
Var(b) = σ²`` equals the variance of ``nn.Conv2d``'s default init (``1 / (3 fan_in)``). ``from_conv`` instead takes
the best rank-R approximation of every kernel of a trained conv (exact when ``R ≥ min(kh, kw)``).

Confirmed (the abstract; third-party summaries): kernels factorised a priori (CP, "equivalently SVD for 2-D
kernels"), trained from scratch in the compressed format, wave-equation surrogate. Not confirmed (the paper's body
was not readable here): its ranks, architecture and initialisation; the 3-D (``⊗ c``) case is not implemented.

Pitfalls handled: ``rank ≤ 0`` is an error naming ``rank``; a rank that would not save parameters is allowed but
``apply_cp_kernels(..., only_if_smaller=True)`` skips those layers; 1x1 convs and grouped convs with groups > 1 are
handled (groups as ``nn.Conv2d``; 1x1 kernels are skipped by ``apply_cp_kernels``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_float_tensor, unignored_modules
from regimen.subnet._surgery import replace_parameters

__all__ = [
    "CPKernelConv2d",
    "CPKernelMethod",
    "apply_cp_kernels",
    "cp_kernel",
    "cp_kernel_factors",
]


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]



@checked_arguments
def cp_kernel(factor_h: torch.Tensor, factor_w: torch.Tensor) -> torch.Tensor:
    """``K[o, i] = Σ_r a[o, i, r] ⊗ b[o, i, r]``: ``a (O, I, R, kh)``, ``b (O, I, R, kw)`` give ``(O, I, kh, kw)``."""
    check_float_tensor("factor_h", factor_h)
    check_float_tensor("factor_w", factor_w)
    if factor_h.dtype != factor_w.dtype:
        raise TypeError(f"factor_h and factor_w must share a dtype, got {factor_h.dtype} and {factor_w.dtype}")
    if factor_h.dim() != 4 or factor_w.dim() != 4 or factor_h.shape[:3] != factor_w.shape[:3]:
        raise ValueError(f"factor_h (O, I, R, kh) and factor_w (O, I, R, kw) must share (O, I, R), got shapes "
                         f"{tuple(factor_h.shape)} and {tuple(factor_w.shape)}")
    return torch.einsum("oirh,oirw->oihw", factor_h, factor_w)


@checked_arguments
def cp_kernel_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors of every kernel of ``weight (O, I, kh, kw)`` (per-kernel SVD, ``√σ`` split);
    ranks beyond ``min(kh, kw)`` get zero factors."""
    check_float_tensor("weight", weight)
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D conv weight (O, I, kh, kw), got shape {tuple(weight.shape)}")
    if isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must be a finite floating point tensor (an SVD of NaN/inf does not converge)")
    o, i, kh, kw = weight.shape
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)  # batched over (O, I)
    k = min(rank, s.shape[-1])
    root = s[..., :k].sqrt()
    a = torch.zeros(o, i, rank, kh, dtype=torch.float64, device=weight.device)
    b = torch.zeros(o, i, rank, kw, dtype=torch.float64, device=weight.device)
    a[:, :, :k] = (u[..., :k] * root[..., None, :]).transpose(-1, -2)
    b[:, :, :k] = vh[..., :k, :] * root[..., None]
    return a.to(weight.dtype), b.to(weight.dtype)


@checked_arguments
class CPKernelConv2d(nn.Module):
    """A conv whose every kernel is a sum of ``rank`` outer products of 1-D filters (see the module docstring).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as ``nn.Conv2d``.
        rank: ``R`` outer products per kernel (≥ 1).
        bias: learn a bias.
        generator: draws the initial factors.
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, rank: int, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(rank, bool) or rank < 1:
            raise ValueError(f"rank must be an int >= 1, got {rank!r}")
        if min(in_channels, out_channels, groups) < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be >= 1 and "
                             f"divisible by groups ({groups})")
        kh, kw = _pair(kernel_size)
        if min(kh, kw) < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.in_channels, self.out_channels, self.rank, self.groups = in_channels, out_channels, rank, groups
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), padding if isinstance(padding, str) \
            else _pair(padding), _pair(dilation)
        factory = {"device": device, "dtype": dtype}
        per_group = in_channels // groups
        self.factor_h = nn.Parameter(torch.empty(out_channels, per_group, rank, kh, **factory))
        self.factor_w = nn.Parameter(torch.empty(out_channels, per_group, rank, kw, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Factors with ``Var(K) = 1 / (3 fan_in)`` (``nn.Conv2d``'s default); bias uniform like ``nn.Conv2d``."""
        fan_in = self.factor_h.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        std = (1.0 / (3.0 * fan_in) / self.rank) ** 0.25
        for p in (self.factor_h, self.factor_w):
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)
        if self.bias is not None:
            bound = fan_in ** -0.5
            self.bias.copy_(torch.rand(self.bias.shape, generator=generator, dtype=self.bias.dtype) * 2 * bound
                            - bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> CPKernelConv2d:
        """The best rank-``rank`` kernels of ``conv`` (exact when ``rank ≥ min(kh, kw)``); takes over its bias."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"conv must use zero padding, got padding_mode={conv.padding_mode!r}")
        weight = conv.weight
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride, conv.padding,
                    conv.dilation, conv.groups, bias=False, device=weight.device, dtype=weight.dtype)
        a, b = cp_kernel_factors(weight, rank)
        with torch.no_grad():
            layer.factor_h.copy_(a)
            layer.factor_w.copy_(b)
        layer.bias = conv.bias
        return layer

    def dense_weight(self) -> torch.Tensor:
        """The dense kernel ``(O, I/groups, kh, kw)``."""
        return cp_kernel(self.factor_h, self.factor_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W) or ({self.in_channels}, H, W), got shape "
                             f"{tuple(x.shape)}")
        return F.conv2d(x, self.dense_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


@checked_arguments
def apply_cp_kernels(model: nn.Module, rank: int = 1, init: Literal["random", "svd"] = "random",
                     only_if_smaller: bool = True, ignore: Iterable[str] = (),
                     optimizer: torch.optim.Optimizer | None = None,
                     generator: torch.Generator | None = None) -> dict[str, int]:
    """Replace every plain ``nn.Conv2d`` (not a subclass) with a kernel larger than 1x1 (zero padding) by a
    :class:`CPKernelConv2d`.

    Args:
        model: the network (a-priori compression: apply before training).
        rank: ``R`` outer products per kernel (≥ 1).
        init: ``"random"`` (fresh factors, training from scratch) or ``"svd"`` (the best rank-R kernels of the
            current weights).
        only_if_smaller: skip layers where ``R (kh + kw) ≥ kh kw`` (no parameter saving).
        ignore: module names to leave dense.
        optimizer: each replaced weight leaves its param group; the factors join it (fresh state).
        generator: draws the random factors.

    Returns:
        ``{layer name: rank}`` of the replaced layers.
    """
    if isinstance(rank, bool) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    if init not in ("random", "svd"):
        raise ValueError(f"init must be 'random' or 'svd', got {init!r}")
    targets = []
    for name, module in unignored_modules(model, ignore):
        if not name or type(module) is not nn.Conv2d or module.padding_mode != "zeros":  # plain convs only
            continue
        kh, kw = module.kernel_size
        if kh * kw <= 1 or (only_if_smaller and rank * (kh + kw) >= kh * kw):
            continue
        targets.append((name, module))
    replaced: dict[str, int] = {}
    factors: dict[nn.Parameter, list[nn.Parameter]] = {}
    for name, conv in targets:
        if init == "svd":
            layer = CPKernelConv2d.from_conv(conv, rank)
        else:
            layer = CPKernelConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride,
                                   conv.padding, conv.dilation, conv.groups, bias=conv.bias is not None,
                                   generator=generator, device=conv.weight.device, dtype=conv.weight.dtype)
            if conv.bias is not None:
                with torch.no_grad():
                    layer.bias.copy_(conv.bias)
                layer.bias = conv.bias  # the same Parameter (keeps its optimizer state)
        model.set_submodule(name, layer.train(conv.training))
        replaced[name] = rank
        factors[conv.weight] = [layer.factor_h, layer.factor_w]
    if optimizer is not None:
        replace_parameters(optimizer, factors)
    return replaced


@register_method
class CPKernelMethod(Method):
    """A-priori factorised convolutions: every conv kernel trained from scratch as a sum of ``rank`` outer products
    of 1-D filters (arXiv 2304.04964).

    Logs ``cp_kernels/layers`` and ``cp_kernels/param_ratio`` (parameters after over before).

    Args:
        rank: outer products per kernel.
        init: ``"random"`` (from scratch, the paper) or ``"svd"`` (best rank-R kernels of the initial weights).
        only_if_smaller: leave dense the layers where the factors would not save parameters.
        ignore: module names to keep dense.
    """

    name = "cp_kernels"
    paper_id = "arXiv:2304.04964"
    claim = "convolution kernels trained a priori as sums of outer products of 1-D filters match full kernels with " \
            "fewer trainable parameters"
    claimed_effect = "no_worse"
    conflicts = ("lora", "allora", "maestro", "trp", "hesso", "nm_sparsity", "nested_width", "weight_std", "mup",
                 "tscnc", "polarization")
    before = ("layer_dp",)
    constraint_reason = ("cp_kernels replaces the conv layers by factorised ones (no ``weight``): other surgery or "
                         "penalties on the same layers; layer_dp must see the factorised layers")

    def __init__(self, rank: int = 1, init: Literal["random", "svd"] = "random", only_if_smaller: bool = True,
                 ignore: list[str] | None = None) -> None:
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if init not in ("random", "svd"):
            raise ValueError(f"init must be 'random' or 'svd', got {init!r}")
        self.rank, self.init, self.only_if_smaller, self.ignore = rank, init, only_if_smaller, list(ignore or [])

    def setup(self, ctx: Context) -> None:
        before = sum(p.numel() for p in ctx.model.parameters())
        replaced = apply_cp_kernels(ctx.model, self.rank, self.init, self.only_if_smaller, self.ignore,
                                    optimizer=ctx.optimizer, generator=ctx.generator)
        if not replaced:
            raise ConfigurationError(f"cp_kernels found no conv with a kernel larger than 1x1 to factorise at rank "
                                     f"{self.rank} (only_if_smaller={self.only_if_smaller}) outside "
                                     f"ignore={self.ignore}")
        self.log(ctx, "layers", len(replaced))
        self.log(ctx, "param_ratio", sum(p.numel() for p in ctx.model.parameters()) / max(before, 1))
