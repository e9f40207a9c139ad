"""Trained Rank Pruning (TRP): keep conv weights low-rank *during* training, then factorise them into two thin convs.

Paper: Xu et al., "Trained Rank Pruning for Efficient Deep Neural Networks", 2019, arXiv 1812.02402 (IJCAI 2020
version: arXiv 2004.14566).

Formula. A conv weight ``W (N, C, kh, kw)`` is reshaped to ``M (C*kh, N*kw)`` with ``M[(c,i),(n,j)] = W[n,c,i,j]``
(the channel-wise/spatial-wise decomposition of Jaderberg et al. 2014). Every ``period`` steps ``M = U S V^T`` is
truncated at the smallest rank ``r`` whose energy ``sum_{i<=r} s_i^2 / sum_i s_i^2 >= energy`` (0.99) and written
back, so training continues from the low-rank point. Optionally a nuclear-norm regulariser ``lambda ||M||_*`` is added
through its sub-gradient ``lambda U_r V_r^T`` (the paper's stochastic sub-gradient). At the end ``factorize`` (at the
numerical rank right after a truncation, else at ``energy``) replaces a conv by ``(kh x 1) conv C->r`` followed by
``(1 x kw) conv r->N``: exact for a rank-r ``M``, and cheaper only when ``r < m n / (m + n)`` with ``m = C*kh``, ``n =
N*kw`` (the parameter/MAC break-even); other layers stay dense.
Linear layers (``M = W``) are optional (``include_linear``).

Pitfalls handled: stride, padding and dilation are split between the two convs (vertical in the first, horizontal in
the second) so the factorised layer is exactly the truncated conv; grouped convs and non-zero padding modes are left
dense; the truncation never runs inside the autograd graph (``no_grad`` write-back) and never modifies its input in
the functional API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method, require_data
from regimen.subnet._common import unignored_modules
from regimen.subnet._surgery import replace_parameters

__all__ = [
    "FactorizedConv2d",
    "FactorizedLinear",
    "TrainedRankPruningMethod",
    "conv_to_matrix",
    "energy_rank",
    "factorize",
    "matrix_to_conv",
    "nuclear_subgradient",
    "restore_lowrank",
    "truncate_weight",
]


_NUMERICAL_ENERGY = 1.0 - 1e-10  # energy threshold that only drops round-off singular values


@checked_arguments
def conv_to_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``(N, C, kh, kw)`` -> ``(C*kh, N*kw)``; a 2-D (linear) weight is returned as is."""
    if weight.dim() == 2:
        return weight
    if weight.dim() != 4:
        raise ValueError(f"weight must be 2-D (linear) or 4-D (conv2d), got shape {tuple(weight.shape)}")
    n, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, n * kw)


@checked_arguments
def matrix_to_conv(matrix: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``conv_to_matrix`` for a weight of ``shape``."""
    if len(shape) not in (2, 4) or matrix.numel() != math.prod(shape):
        raise ValueError(f"matrix must hold the {math.prod(shape)} values of a weight of shape {tuple(shape)} (2-D or "
                         f"4-D), got {tuple(matrix.shape)}")
    if len(shape) == 2:
        return matrix.reshape(shape)
    n, c, kh, kw = shape
    return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).contiguous()


@checked_arguments
def energy_rank(singular_values: torch.Tensor, energy: float = 0.99) -> int:
    """Smallest ``r`` with ``sum(s[:r]^2) >= energy * sum(s^2)`` (at least 1)."""
    require_data(singular_values=singular_values)
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    if singular_values.dim() != 1:
        raise ValueError(f"singular_values must be 1-D, got shape {tuple(singular_values.shape)}")
    power = singular_values.double().pow(2)
    total = power.sum()
    if total <= 0:
        return 1
    cumulative = power.cumsum(0) / total
    rank = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64) - 1e-12).item()) + 1
    return max(1, min(rank, singular_values.numel()))


@checked_arguments
def truncate_weight(weight: torch.Tensor, energy: float = 0.99) -> tuple[torch.Tensor, int]:
    """Rank-truncated copy of a conv/linear weight (via ``conv_to_matrix``) keeping ``energy``; returns (W', r)."""
    if weight.is_meta:
        raise ValueError("weight must hold data; got a tensor on the meta device")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight must be a finite floating point tensor (an SVD of NaN/inf does not converge), got "
                         f"{weight.dtype}")
    matrix = conv_to_matrix(weight.detach()).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    rank = energy_rank(s, energy)
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return matrix_to_conv(approx, weight.shape).to(weight.dtype), rank


@checked_arguments
def nuclear_subgradient(weight: torch.Tensor, tol: float = 1e-7) -> torch.Tensor:
    """``U V^T`` over the non-zero singular values of ``conv_to_matrix(weight)``, shaped like ``weight``."""
    if weight.is_meta:
        raise ValueError("weight must hold data; got a tensor on the meta device")
    if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
        raise ValueError(f"weight must be a finite floating point tensor (an SVD of NaN/inf does not converge), got "
                         f"{weight.dtype}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if weight.numel() == 0:
        raise ValueError(f"weight must not be empty (no singular values), got shape {tuple(weight.shape)}")
    matrix = conv_to_matrix(weight.detach()).double()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = s > tol * s.max().clamp_min(1e-30)
    return matrix_to_conv(u[:, keep] @ vh[keep], weight.shape).to(weight.dtype)


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


@checked_arguments
class FactorizedConv2d(nn.Module):
    """``(kh x 1) conv C->r`` then ``(1 x kw) conv r->N``: a conv whose reshaped weight has rank ``r``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (ints or pairs).
        rank: channels between the two thin convs.
        bias: the second conv learns a bias (the original conv's).
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(self, in_channels: int, out_channels: int, rank: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, bias: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if min(in_channels, out_channels, rank) < 1:
            raise ValueError(f"in_channels, out_channels and rank must be >= 1, got {in_channels}, {out_channels}, "
                             f"{rank}")
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(kernel_size), _pair(stride), _pair(padding),
                                                  _pair(dilation))
        factory = {"device": device, "dtype": dtype}
        self.rank = rank
        self.first = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False, **factory)
        self.second = nn.Conv2d(rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=bias, **factory)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int) -> FactorizedConv2d:
        """Factorise ``conv`` at ``rank`` (exact when its reshaped weight has rank <= ``rank``); the new layer takes
        over ``conv.bias`` (the same Parameter)."""
        weight = conv.weight
        layer = nn.utils.skip_init(cls, conv.in_channels, conv.out_channels, rank, conv.kernel_size, conv.stride,
                                   conv.padding, conv.dilation, bias=False, device=weight.device, dtype=weight.dtype)
        n, c, kh, kw = weight.shape
        u, s, vh = torch.linalg.svd(conv_to_matrix(weight.detach()).double(), full_matrices=False)
        root = s[:rank].sqrt()
        a = (u[:, :rank] * root).reshape(c, kh, rank).permute(2, 0, 1).unsqueeze(-1)  # (r, C, kh, 1)
        b = (root[:, None] * vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2).unsqueeze(2)  # (N, r, 1, kw)
        with torch.no_grad():
            layer.first.weight.copy_(a.to(weight.dtype))
            layer.second.weight.copy_(b.to(weight.dtype))
        layer.second.bias = conv.bias  # moved in: the same Parameter keeps its optimizer state
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            raise ValueError(f"x must be a (C, H, W) or (N, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self.second(self.first(x))


@checked_arguments
class FactorizedLinear(nn.Module):
    """``Linear(in, r)`` then ``Linear(r, out)``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        rank: width between the two layers.
        bias: the second layer learns a bias (the original layer's).
        device, dtype: where and how the parameters are allocated.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if min(in_features, out_features, rank) < 1:
            raise ValueError(f"in_features, out_features and rank must be >= 1, got {in_features}, {out_features}, "
                             f"{rank}")
        factory = {"device": device, "dtype": dtype}
        self.rank = rank
        self.first = nn.Linear(in_features, rank, bias=False, **factory)
        self.second = nn.Linear(rank, out_features, bias=bias, **factory)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int) -> FactorizedLinear:
        """Factorise ``linear`` at ``rank`` (its best rank-``rank`` approximation); takes over ``linear.bias``."""
        weight = linear.weight
        layer = nn.utils.skip_init(cls, linear.in_features, linear.out_features, rank, bias=False,
                                   device=weight.device, dtype=weight.dtype)
        u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
        root = s[:rank].sqrt()
        with torch.no_grad():
            layer.first.weight.copy_((root[:, None] * vh[:rank]).to(weight.dtype))
            layer.second.weight.copy_((u[:, :rank] * root).to(weight.dtype))
        layer.second.bias = linear.bias  # moved in: the same Parameter keeps its optimizer state
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        return self.second(self.first(x))


def _targets(model: nn.Module, include_linear: bool, ignore: Iterable[str]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in unignored_modules(model, ignore):
        if isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
                and not isinstance(module.padding, str) and module.weight.shape[2] * module.weight.shape[3] > 1:
            out.append((name, module))
        elif include_linear and isinstance(module, nn.Linear):
            out.append((name, module))
    return out


def _break_even(module: nn.Module, rule: str = "params") -> float:
    """Rank below which factorising saves parameters (``mn/(m+n)``) or, with ``rule="macs"``, also MACs.

    For a conv with horizontal stride ``s`` the first thin conv runs on a map ``s`` times wider than the output, so
    MACs drop only when ``r < N*C*kh*kw / (C*kh*s + N*kw)``.
    """
    m, n = conv_to_matrix(module.weight).shape
    threshold = m * n / (m + n)
    if rule == "macs" and isinstance(module, nn.Conv2d):
        out_c, in_c, kh, kw = module.weight.shape
        stride_w = _pair(module.stride)[1]
        threshold = min(threshold, out_c * in_c * kh * kw / (in_c * kh * stride_w + out_c * kw))
    return threshold


@checked_arguments
def factorize(model: nn.Module, energy: float = 0.99, include_linear: bool = False, ignore: Iterable[str] = (),
              optimizer: torch.optim.Optimizer | None = None, rule: str = "params") -> dict[str, int]:
    """Replace each conv (and linear) whose energy rank ``r < mn/(m+n)`` by two thin layers, in place.

    ``rule="macs"`` additionally requires a MAC saving (stricter for strided convs, see ``_break_even``).

    Returns ``{layer name: rank}`` of the replaced layers. With ``optimizer=``, each replaced weight leaves its param
    group (with its state) and the two factors join that group with fresh state (they are new variables); the bias
    is the same Parameter, so it keeps its state.
    """
    if rule not in ("params", "macs"):
        raise ValueError(f"rule must be 'params' or 'macs', got {rule!r}")
    replaced: dict[str, int] = {}
    factors: dict[nn.Parameter, list[nn.Parameter]] = {}
    for name, module in _targets(model, include_linear, ignore):
        _, s, _ = torch.linalg.svd(conv_to_matrix(module.weight.detach()).double(), full_matrices=False)
        rank = energy_rank(s, energy)
        if rank >= _break_even(module, rule):
            continue
        if isinstance(module, nn.Conv2d):
            new: FactorizedConv2d | FactorizedLinear = FactorizedConv2d.from_conv(module, rank)
        else:
            new = FactorizedLinear.from_linear(module, rank)
        model.set_submodule(name, new.train(module.training))
        replaced[name] = rank
        factors[module.weight] = [new.first.weight, new.second.weight]
    if optimizer is not None:
        replace_parameters(optimizer, factors)
    return replaced


@checked_arguments
def restore_lowrank(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Replace the layers that a ``state_dict`` shows as factorised (``<name>.first.weight``) by factorised layers."""
    for key, value in state_dict.items():
        if not key.endswith(".first.weight"):
            continue
        name = key[: -len(".first.weight")]
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        rank = value.shape[0]
        if isinstance(module, nn.Conv2d):
            new: nn.Module = FactorizedConv2d(module.in_channels, module.out_channels, rank, module.kernel_size,
                                              module.stride, module.padding, module.dilation, module.bias is not None)
        elif isinstance(module, nn.Linear):
            new = FactorizedLinear(module.in_features, module.out_features, rank, module.bias is not None)
        else:
            continue
        model.set_submodule(name, new)
    return model


@register_method
class TrainedRankPruningMethod(Method):
    """Trained Rank Pruning: periodic energy-truncated SVD of conv weights, optional nuclear norm, factorise at end.

    Logs ``trp/rank_ratio`` (mean kept rank over full rank, at each truncation), ``trp/layers_factorized`` and
    ``trp/param_ratio`` (after factorising).

    Args:
        energy: fraction of squared singular-value energy kept at every truncation (0.99).
        period: truncate every ``period`` optimizer steps.
        nuclear: weight ``lambda`` of the nuclear-norm sub-gradient added to the gradients (0 = off).
        factorize_at_end: replace layers by two thin ones at the end of training where it saves compute.
        include_linear: also treat Linear layers.
        ignore: module names to leave alone.
        rule: factorise when it saves ``"params"`` (``r < mn/(m+n)``, the paper's rule) or also ``"macs"``.
    """

    name = "trp"
    paper_id = "arXiv:1812.02402"
    claim = "periodic energy-truncated SVD during training yields low-rank convs with little accuracy loss"
    claimed_effect = "no_worse"

    def __init__(self, energy: float = 0.99, period: int = 20, nuclear: float = 0.0, factorize_at_end: bool = True,
                 include_linear: bool = False, ignore: list[str] | None = None, rule: str = "params") -> None:
        if not 0.0 < energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {energy}")
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if nuclear < 0:
            raise ValueError(f"nuclear must be >= 0, got {nuclear}")
        if rule not in ("params", "macs"):
            raise ValueError(f"rule must be 'params' or 'macs', got {rule!r}")
        self.rule = rule
        self.energy, self.period, self.nuclear = energy, period, nuclear
        self.factorize_at_end, self.include_linear = factorize_at_end, include_linear
        self.ignore = list(ignore or [])
        self.steps = 0
        self.ranks: dict[str, int] = {}
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        self._model = ctx.model
        _targets(ctx.model, self.include_linear, self.ignore)  # validates ignore names

    def after_backward(self, ctx: Context) -> None:
        if self.nuclear <= 0 or self._model is None:
            return
        for _, module in _targets(self._model, self.include_linear, self.ignore):
            if module.weight.grad is not None:
                module.weight.grad.add_(nuclear_subgradient(module.weight), alpha=self.nuclear)

    def after_step(self, ctx: Context) -> None:
        self.steps += 1
        if self._model is None or self.steps % self.period:
            return
        ratios = []
        with torch.no_grad():
            for name, module in _targets(self._model, self.include_linear, self.ignore):
                approx, rank = truncate_weight(module.weight, self.energy)
                module.weight.copy_(approx)
                self.ranks[name] = rank
                ratios.append(rank / min(conv_to_matrix(module.weight).shape))
        if ratios:
            self.log(ctx, "rank_ratio", sum(ratios) / len(ratios))

    def on_train_end(self, ctx: Context) -> None:
        if not self.factorize_at_end or self._model is None:
            return
        before = sum(p.numel() for p in self._model.parameters())
        # right after a truncation the weights are exactly low-rank: factorise at their numerical rank; otherwise
        # truncate at ``energy`` only the layers that get factorised (the others would lose accuracy for nothing)
        energy = _NUMERICAL_ENERGY if self.steps % self.period == 0 else self.energy
        replaced = factorize(self._model, energy, self.include_linear, self.ignore, rule=self.rule)
        after = sum(p.numel() for p in self._model.parameters())
        self.log(ctx, "layers_factorized", len(replaced))
        self.log(ctx, "param_ratio", after / max(before, 1))

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "ranks": dict(self.ranks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.ranks = dict(state.get("ranks", {}))


__getattr__ = deprecated_aliases(__name__, {"TrainedRankPruning": "TrainedRankPruningMethod",
                                            "LowRankConv2d": "FactorizedConv2d", "LowRankLinear": "FactorizedLinear"},
                                 globals())
