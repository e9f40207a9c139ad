"""Polarization regularisation of channel scaling factors (BatchNorm scales or gates), one-pass pruning.

Paper: Zhuang, Zhang, Huang, Zeng, Shuang, Li, "Neuron-level Structured Pruning using Polarization Regularizer",
NeurIPS 2020 (reference code ``polarizationpruning/PolarizationPruning``); the user-set sparsity term and one-pass
extraction follow Zhi et al., "Learning a Consensus Sub-Network with Polarization Regularization and One Pass
Training", arXiv 2302.10798.

Formula (paper eq. 2). For the scaling factors ``γ`` of all prunable channels of the network (``n`` of them),

    R_s(γ) = Σ_i ( t·|γ_i| − |γ_i − α·γ̄| ),    γ̄ = (1/n) Σ_i γ_i  (the GLOBAL mean over every layer)

added to the loss as ``λ·R_s``, with ``γ`` projected to ``[0, a]`` after every optimizer step (Theorem 3.2 holds only
on that cube: the minimisers put about ``n·ρ`` factors at ``a`` and the rest at ``0``, ``ρ = 1/2 − t/4``). The
gradient flows through ``γ̄`` as in the reference code (``bn_sparsity`` sums ``m.weight`` without detaching).

User-set sparsity (arXiv 2302.10798's sparsity loss applied to the polarised factors, a regimen choice): with a target
fraction ``κ = 1 − sparsity`` of channels kept, ``L_κ = μ·(mean(γ)/a − κ)²``; since polarised factors sit at 0 or
``a``, ``mean(γ)/a`` is the fraction kept.

Threshold (reference ``search_threshold(alg="grad")``): a 100-bin histogram of ``γ/a`` on ``[0, 1]``; the first bin
``i`` with ``diff[i] ≤ 0 ≤ diff[i+1]`` (the first local minimum) gives the threshold ``edge[i+1]·a``; without such a
bin the ``"fixed"`` rule (the first bin edge, ``0.01·a``) is used. Channels with ``γ > threshold`` are kept.

Gates. ``apply_gates`` inserts a per-channel ``ChannelGate`` (initialised to 1) after every BatchNorm, as the
reference's ``SparseGate``; the regulariser then acts on the gates and ``fold_gates`` multiplies each gate into its
BatchNorm's ``weight`` and ``bias`` and removes the gate before physical removal. A model without norm layers is
refused (``ValueError`` naming ``model``), since the factors are the norm layers' scales.

Pitfalls handled: the global (not per-layer) mean; the projection after every step; no weight decay on ``γ`` (the
regimen optimizer excludes norm parameters; the reference runs use ``--bn-wd``); channels coupled by a residual
addition are scored together (dependency groups; a group's score is the mean of its factors).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, is_ignored
from regimen.subnet._ranking import plan_by_rank, plan_to_macs
from regimen.subnet.dependency import Group, UntraceableError, trace_dependencies
from regimen.subnet.measure import count_macs, count_params
from regimen.subnet.prune import prune_groups

__all__ = [
    "ChannelGate",
    "PolarizationMethod",
    "apply_gates",
    "fold_gates",
    "polarization_penalty",
    "polarization_plan",
    "polarized_fraction",
    "scaling_factors",
    "search_threshold",
]

_NORMS = (nn.modules.batchnorm._BatchNorm,)


class ChannelGate(nn.Module):
    """``y = x · g`` per channel (dim 1), ``g`` initialised to ones; the reference's ``SparseGate``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be an int >= 1, got {channels!r}")
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"ChannelGate of {self.weight.shape[0]} channels got input of shape {tuple(x.shape)}")
        return x * self.weight.view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}"


def _norm_layers(model: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, _NORMS) and m.affine and not is_ignored((name,), ignore)]
    if not found:
        raise ValueError("model has no BatchNorm layer with affine scales (outside ignore): polarization needs "
                         "channel scaling factors (BatchNorm weights, or gates placed after BatchNorm layers)")
    return found


@checked_arguments
def apply_gates(model: nn.Module, ignore: Sequence[str] = ()) -> list[str]:
    """Wrap every affine BatchNorm ``bn`` of ``model`` (in place) as ``nn.Sequential(bn, ChannelGate)``; return
    the names of the new gates. A model without such norm layers raises ``ValueError`` and is left unchanged."""
    ignore = check_ignore(model, ignore)
    layers = _norm_layers(model, ignore)
    names = []
    for name, norm in layers:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = nn.Sequential(norm, ChannelGate(norm.num_features))
        wrapper.to(device=norm.weight.device, dtype=norm.weight.dtype)
        setattr(parent, attr, wrapper)
        names.append(f"{name}.1")
    return names


@checked_arguments
def fold_gates(model: nn.Module) -> dict[str, torch.Tensor]:
    """Fold every ``nn.Sequential(bn, ChannelGate)`` made by ``apply_gates`` back into ``bn`` (``weight`` and ``bias``
    multiplied by the gate; exact in eval mode) and put ``bn`` back in its place; return ``{bn name: gate values}``
    (the factors to prune by: ``polarization_plan(..., factors=...)``)."""
    folded: dict[str, torch.Tensor] = {}
    for name, module in list(model.named_modules()):
        if (isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], ChannelGate)
                and isinstance(module[0], _NORMS)):
            norm, gate = module[0], module[1]
            with torch.no_grad():
                norm.weight.mul_(gate.weight)
                norm.bias.mul_(gate.weight)
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, norm)
            folded[name] = gate.weight.detach().clone()
    return folded


@checked_arguments
def scaling_factors(model: nn.Module, ignore: Sequence[str] = ()) -> list[nn.Parameter]:
    """The prunable scaling factors of ``model``: the ``ChannelGate`` weights when the model has gates, else the
    weights of its affine BatchNorm layers. Raises ``ValueError`` (naming ``model``) when there are none."""
    ignore = check_ignore(model, ignore)
    gates = [m.weight for name, m in model.named_modules()
             if isinstance(m, ChannelGate) and not is_ignored((name,), ignore)]
    if gates:
        return gates
    return [m.weight for _, m in _norm_layers(model, ignore)]


@checked_arguments
def polarization_penalty(factors: Sequence[torch.Tensor] | torch.Tensor, t: float = 1.2,
                         alpha: float = 1.0) -> torch.Tensor:
    """``R_s = Σ_i (t·|γ_i| − |γ_i − α·γ̄|)`` with ``γ̄`` the mean of all factors of all tensors (differentiable)."""
    if isinstance(factors, torch.Tensor):
        factors = [factors]
    factors = list(factors)
    if not factors or any(not isinstance(f, torch.Tensor) for f in factors):
        raise TypeError("factors must be a tensor or a non-empty sequence of tensors")
    flat = torch.cat([f.reshape(-1) for f in factors])
    if flat.numel() == 0:
        raise ValueError("factors must not be empty")
    mean = flat.mean()
    return t * flat.abs().sum() - (flat - alpha * mean).abs().sum()


@checked_arguments
def search_threshold(factors: Sequence[torch.Tensor] | torch.Tensor, upper: float = 1.0, bins: int = 100) -> float:
    """The reference's histogram rule: the left edge of the bin after the first local minimum of the histogram of
    ``factors / upper`` on ``[0, 1]`` (``bins`` bins), times ``upper``; the first bin edge when there is no minimum."""
    if not upper > 0:
        raise ValueError(f"upper must be > 0, got {upper!r}")
    if bins < 3:
        raise ValueError(f"bins must be >= 3, got {bins!r}")
    if isinstance(factors, torch.Tensor):
        factors = [factors]
    flat = torch.cat([f.detach().reshape(-1).float().cpu() for f in factors]) / upper
    counts = torch.histc(flat.clamp(0.0, 1.0), bins=bins, min=0.0, max=1.0)
    diff = counts[1:] - counts[:-1]
    for i in range(diff.numel() - 1):
        if diff[i] <= 0 <= diff[i + 1]:
            threshold = (i + 1) / bins
            if threshold > 0.2:
                warnings.warn(f"polarization threshold {threshold * upper:.3g} is large: the factors may not be "
                              "polarised yet (train longer or raise lam)", RuntimeWarning, stacklevel=2)
            return threshold * upper
    return upper / bins


@checked_arguments
def polarized_fraction(factors: Sequence[torch.Tensor] | torch.Tensor, upper: float = 1.0,
                       tolerance: float = 0.01) -> tuple[float, float]:
    """``(fraction ≤ tolerance·upper, fraction ≥ (1 − 0.1)·upper)``: how bimodal the factors are."""
    if not upper > 0:
        raise ValueError(f"upper must be > 0 (the factors' upper bound), got {upper}")
    if isinstance(factors, torch.Tensor):
        factors = [factors]
    flat = torch.cat([f.detach().reshape(-1) for f in factors]) / upper
    return float((flat <= tolerance).float().mean()), float((flat >= 0.9).float().mean())


def _group_factor_scores(group: Group, factors: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Mean factor per unit over the group's norm layers that have factors (``{module name: (C,) factors}``)."""
    scores = []
    for s in group.slices:
        if s.is_buffer or s.param != "weight" or s.module not in factors or s.dim != 0:
            continue
        values = factors[s.module].detach().reshape(-1).float()
        scores.append(values[s.indices.reshape(-1)].reshape(s.indices.shape[0], -1).abs().mean(1))
    return torch.stack(scores).mean(0) if scores else None


@checked_arguments
def polarization_plan(model: nn.Module, example_inputs: Any, sparsity: float | None = None,
                      threshold: float | None = None, upper: float = 1.0, ignore: Sequence[str] = (),
                      macs: float | None = None, factors: dict[str, torch.Tensor] | None = None
                      ) -> dict[Group, torch.Tensor]:
    """Which units of each dependency group to keep, from the (polarised) scaling factors.

    Exactly one rule applies: ``macs`` (keep the highest-factor units across groups until the MACs per sample are at
    most ``macs``), ``sparsity`` (remove that fraction of the scored units, lowest factors first, across groups),
    else ``threshold`` (keep ``γ > threshold``; default ``search_threshold``). Every group keeps at least one unit;
    groups without a factor are left whole. ``factors`` maps norm-layer names to their per-channel factors (default:
    the BatchNorm weights; after ``fold_gates`` pass what it returned). A model without norm layers, or with gates
    still in place, raises ``ValueError``.
    """
    if sparsity is not None and (isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if macs is not None and not macs > 0:
        raise ValueError(f"macs must be > 0, got {macs!r}")
    ignore = check_ignore(model, ignore)
    if any(isinstance(m, ChannelGate) for m in model.modules()):
        raise ValueError("model still has ChannelGates: call fold_gates(model) first and pass its result as factors")
    if factors is None:
        factors = {name: norm.weight for name, norm in _norm_layers(model, ignore)}
    elif not factors:
        raise ValueError("factors must map at least one norm layer name to its factors")
    params = list(factors.values())
    graph = trace_dependencies(model, example_inputs)
    scored: dict[Group, torch.Tensor] = {}
    for g in graph.groups:
        if is_ignored(g.modules, ignore):
            continue
        scores = _group_factor_scores(g, factors)
        if scores is not None:
            scored[g] = scores
    if not scored:
        raise ValueError("no dependency group of model holds a scaling factor (BatchNorm weight or gate)")
    if macs is not None:
        return plan_to_macs(model, example_inputs, scored, macs)
    if sparsity is not None:
        return plan_by_rank(scored, int(math.floor(float(sparsity) * sum(s.numel() for s in scored.values()))))
    if threshold is None:
        threshold = search_threshold(params, upper=upper)
    plan = {}
    for g, scores in scored.items():
        keep = (scores > threshold).nonzero().reshape(-1)
        plan[g] = keep if keep.numel() else scores.argmax().reshape(1)
    return plan


@register_method
class PolarizationMethod(Method):
    """Polarization regulariser on BatchNorm scales (or gates), projection to [0, a], one-pass pruning at the end.

    ``forward_loss`` adds ``lam·R_s(γ)`` (and ``mu·(mean(γ)/a − (1 − sparsity))²`` when ``sparsity`` is set);
    ``after_step`` clamps ``γ`` to ``[0, upper]``; ``on_train_end`` removes the channels physically: the
    ``sparsity`` lowest-factor units when ``sparsity`` is set, else those at or below the histogram threshold.
    Logs ``polarization/penalty``, ``polarization/low`` and ``polarization/high`` (fractions of factors at ≤ 0.01·a
    and ≥ 0.9·a), and at the end ``polarization/threshold``, ``polarization/params``, ``polarization/macs_ratio``.

    Args:
        lam: weight λ of R_s (reference CIFAR runs 3e-5–5e-5 per sample-mean loss; 1e-4 default in main.py).
        t: the polarization strength (larger t ⇒ more factors at 0); reference 1.2–1.5.
        alpha: multiplier of the mean (reference default 1).
        upper: ``a``, the upper bound of the projection (reference 1).
        init: value the factors are set to in ``setup`` (reference 0.5; ``None`` keeps the model's).
        sparsity: fraction of channels to remove (user-set, in [0, 1)); ``None``: the histogram threshold decides.
        mu: weight of the sparsity-target term (only with ``sparsity``).
        gates: regularise ``ChannelGate``s inserted after every BatchNorm instead of the BatchNorm scales.
        ignore: module names whose norm layers are neither regularised nor pruned.
        prune_at_end: physically remove the channels in ``on_train_end``.
    """

    name = "polarization"
    paper_id = "NeurIPS 2020 (Zhuang et al., Polarization Regularizer); arXiv:2302.10798"
    claim = ("the polarization regulariser separates pruned from kept channels, so pruning to ~50% FLOPs costs "
             "<1% accuracy (ResNet-56 CIFAR-10 93.80 -> 93.83 at 47% FLOPs reduction)")
    claimed_effect = "no_worse"
    inputs = ("image",)
    before = ("nm_sparsity",)
    after = ("trp", "multi_sample_dropout")
    # weight_std: traced again at the end, its WSConv2d (std_mean) is untraceable in either order
    conflicts = ("maestro", "hesso", "nested_dropout", "random_search", "weight_std")
    constraint_reason = ("polarization traces the channel-dependency graph and removes channels by name at the end: it "
                         "cannot trace weight-standardized, N:M-parametrized, low-rank or nested-dropout (functional) "
                         "layers, and must see the head that multi-sample dropout and TRP wrap; hesso and "
                         "random_search prune the same channels")

    def __init__(self, lam: float = 1e-4, t: float = 1.2, alpha: float = 1.0, upper: float = 1.0,
                 init: float | None = 0.5, sparsity: float | None = None, mu: float = 1.0, gates: bool = False,
                 ignore: list[str] | None = None, prune_at_end: bool = True) -> None:
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        if not upper > 0:
            raise ValueError(f"upper must be > 0, got {upper!r}")
        if init is not None and not 0 <= init <= upper:
            raise ValueError(f"init must be in [0, upper={upper}] or None, got {init!r}")
        if sparsity is not None and (isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0):
            raise ValueError(f"sparsity must be a number in [0, 1) or None, got {sparsity!r}")
        if not mu >= 0:
            raise ValueError(f"mu must be >= 0, got {mu!r}")
        self.lam, self.t, self.alpha, self.upper, self.init = lam, t, alpha, upper, init
        self.sparsity, self.mu, self.gates = sparsity, mu, gates
        self.ignore, self.prune_at_end = list(ignore or []), prune_at_end
        self._factors: list[nn.Parameter] = []
        self._example: Any = None

    def setup(self, ctx: Context) -> None:
        model = ctx.model
        try:
            ignore = check_ignore(model, self.ignore)
            _norm_layers(model, ignore)  # refuse before any change
        except ValueError as error:
            raise ConfigurationError(f"polarization: {error}") from error
        self._example, _ = ctx.example_batch()
        try:
            trace_dependencies(model, self._example)
        except UntraceableError as error:
            raise ConfigurationError(f"polarization cannot trace this model's channel dependencies: {error}") from error
        if self.gates:
            apply_gates(model, ignore)
            gates = [m.weight for m in model.modules() if isinstance(m, ChannelGate)]
            ctx.optimizer.add_param_group({"params": gates, "weight_decay": 0.0})
        self._factors = scaling_factors(model, ignore)
        if self.init is not None:
            with torch.no_grad():
                for f in self._factors:
                    f.fill_(self.init)
        self.log(ctx, "factors", sum(f.numel() for f in self._factors))

    def _extra_loss(self) -> torch.Tensor:
        n = sum(f.numel() for f in self._factors)
        loss = self.lam * polarization_penalty(self._factors, self.t, self.alpha)
        if self.sparsity is not None and self.mu > 0:
            mean = torch.cat([f.reshape(-1) for f in self._factors]).sum() / n
            loss = loss + self.mu * (mean / self.upper - (1.0 - self.sparsity)) ** 2
        return loss

    def forward_loss(self, model, x, y, next, ctx: Context):
        loss, output = next(model, x, y)
        extra = self._extra_loss()
        self.log(ctx, "penalty", extra.detach())
        return loss + extra, output

    def after_step(self, ctx: Context) -> None:
        with torch.no_grad():
            for f in self._factors:
                f.clamp_(0.0, self.upper)

    def on_epoch_end(self, ctx: Context) -> None:
        low, high = polarized_fraction(self._factors, self.upper)
        self.log(ctx, "low", low)
        self.log(ctx, "high", high)

    def on_train_end(self, ctx: Context) -> None:
        if not self.prune_at_end or not self._factors:
            return
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        threshold = search_threshold(self._factors, upper=self.upper)
        self.log(ctx, "threshold", threshold)
        before_params, before_macs = count_params(model), count_macs(model, self._example)
        factors = fold_gates(model) if self.gates else None
        plan = polarization_plan(model, self._example, sparsity=self.sparsity, threshold=threshold,
                                 upper=self.upper, ignore=self.ignore, factors=factors)
        prune_groups(model, plan, optimizer=ctx.optimizer, example_inputs=self._example)
        self.log(ctx, "params", count_params(model))
        self.log(ctx, "param_ratio", count_params(model) / max(1, before_params))
        self.log(ctx, "macs_ratio", count_macs(model, self._example) / max(1, before_macs))
