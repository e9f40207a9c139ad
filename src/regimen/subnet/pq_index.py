"""PQ Index (PQI) of weight sparsity and Sparsity-informed Adaptive Pruning (SAP).

Paper: Diao, Wang, Zhang, Yang, Ding, Tarokh, "Pruning Deep Neural Networks from a Sparsity Perspective", ICLR 2023,
arXiv 2302.05601 (reference code ``diaoenmao/Pruning-Deep-Neural-Networks-from-a-Sparsity-Perspective``,
``src/modules/sparsity_index.py`` and ``src/modules/compression.py``).

Formulas. For the ``d`` unmasked entries of a weight vector ``w`` and ``0 < p < q``:

    PQI_{p,q}(w) = 1 − d^{1/q − 1/p} · ‖w‖_p / ‖w‖_q            (0 for a dense constant vector, → 1 when sparse)

computed on the masked vector (masked entries are zero and do not count in ``d``). SAP keeps at least

    r = d · (1 + η)^{−q/(q−p)} · (1 − PQI)^{qp/(q−p)}            (rounded up)

of the ``d`` remaining weights and prunes ``c = ⌊d · min(γ·(1 − r/d), β)⌋`` of them (clamped at 0), the smallest in
magnitude: the pivot is the ``c``-th smallest remaining ``|w|`` and entries strictly below it are removed (as the
reference, so ties at the pivot stay). Scopes: ``"neuron"`` (one PQI and count per output row), ``"layer"`` (per
weight tensor), ``"global"`` (all weight tensors pooled). Only weights with ``dim > 1`` are pruned (never biases or
norm layers). Reference defaults ``p=0.5, q=1, η=0, γ=1, β=0.9``.

Check by hand: for i.i.d. Gaussian weights ``PQI_{0.5,1} = 1 − (E√|w|)²/E|w| = 1 − √2·Γ(3/4)²/(π·√(2/π)) ≈ 0.1528``,
so one SAP round at the defaults prunes about 15 % of the weights.

Pitfalls handled: ``d`` counts only surviving weights; the bound's exponents keep their signs (swapping ``p`` and
``q`` is refused); ``β`` caps a round; masked weights stay exactly zero during training (``apply_masks`` after every
optimizer step, since momentum and weight decay would revive them). The reference rewinds surviving weights to
initialisation after each round (lottery-ticket style) and selects each round's model on the *test* split; the
``SAPMethod`` here prunes inside one run at evenly spaced epochs without rewinding (a regimen choice for one-run
recipes), and any selection uses validation data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, is_ignored

__all__ = [
    "SAPMethod",
    "apply_masks",
    "pq_index",
    "prunable_weights",
    "sap_prune",
    "sap_prune_counts",
    "sparsity_of",
]

SAP_SCOPES = ("neuron", "layer", "global")


def _check_pq(p: float, q: float) -> None:
    if not (0 < p < q):
        raise ValueError(f"need 0 < p < q, got p={p!r}, q={q!r}")


@checked_arguments
def pq_index(weight: torch.Tensor, p: float = 0.5, q: float = 1.0, mask: torch.Tensor | None = None,
             dim: int | None = None) -> torch.Tensor:
    """``PQI_{p,q}`` of ``weight`` (whole tensor when ``dim`` is None, else along ``dim``, e.g. ``dim=1`` on a
    ``(rows, d)`` matrix for one index per row). ``mask`` (bool, same shape) marks the surviving entries; a vector
    with no survivors, or all zeros, has index 0."""
    _check_pq(p, q)
    w = weight.detach().double()
    if mask is not None:
        if mask.shape != weight.shape:
            raise ValueError(f"mask must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}")
        w = w * mask.to(w.dtype)
        d = mask.to(w.dtype).sum() if dim is None else mask.to(w.dtype).sum(dim)
    else:
        d = torch.tensor(float(w.numel()), dtype=w.dtype) if dim is None else \
            torch.full(w.sum(dim).shape, float(w.shape[dim]), dtype=w.dtype)
    a = w.abs()
    if dim is None:
        norm_p, norm_q = a.pow(p).sum().pow(1 / p), a.pow(q).sum().pow(1 / q)
    else:
        norm_p, norm_q = a.pow(p).sum(dim).pow(1 / p), a.pow(q).sum(dim).pow(1 / q)
    index = 1 - d.clamp_min(1).pow(1 / q - 1 / p) * norm_p / norm_q.clamp_min(1e-300)
    index = torch.where((d > 0) & (norm_q > 0), index, torch.zeros_like(index))
    return index.clamp_min(0.0).to(weight.dtype if weight.is_floating_point() else torch.float32)


@checked_arguments
def sap_prune_counts(index: torch.Tensor, remaining: torch.Tensor, p: float = 0.5, q: float = 1.0,
                     eta: float = 0.0, gamma: float = 1.0, beta: float = 0.9) -> torch.Tensor:
    """How many of ``remaining`` weights SAP prunes given their ``index`` (PQI): ``⌊d·min(γ(1 − r/d), β)⌋``,
    clamped at 0, with ``r = ⌈d (1+η)^{q/(p−q)} (1−I)^{qp/(q−p)}⌉``. Elementwise over tensors of equal shape."""
    _check_pq(p, q)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    d = remaining.double()
    index = index.double()
    retained = torch.ceil(d * (1 + eta) ** (q / (p - q)) * (1 - index).clamp_min(0).pow(q * p / (q - p)))
    ratio = (gamma * (1 - retained / d.clamp_min(1))).clamp(0.0, beta)
    return torch.floor(d * ratio).long().clamp_min(0)


@checked_arguments
def prunable_weights(model: nn.Module, ignore: Sequence[str] = ()) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of every weight with ``dim > 1`` (conv and linear weights; never biases or norm
    layers), outside the modules named in ``ignore``."""
    ignore = check_ignore(model, ignore)
    found = {}
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if param.dim() > 1 and name.endswith("weight") and not is_ignored((module_name,), ignore):
            found[name] = param
    if not found:
        raise ValueError("model has no weight with more than one dimension to prune (outside ignore)")
    return found


def _check_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
    if masks is None:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    out = {}
    for name, w in weights.items():
        if name not in masks:
            raise ValueError(f"masks has no entry for weight {name!r}")
        m = masks[name]
        if not isinstance(m, torch.Tensor) or m.shape != w.shape:
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(w.shape)}")
        out[name] = m.to(torch.bool)
    return out


def _scale_counts(counts: torch.Tensor, remaining: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.minimum(torch.floor(counts.double() * scale).long(), (remaining - 1).clamp_min(0).long())


@checked_arguments
def sap_prune(model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None, scope: str = "layer",
              p: float = 0.5, q: float = 1.0, eta: float = 0.0, gamma: float = 1.0, beta: float = 0.9,
              ignore: Sequence[str] = (), scale: float = 1.0) -> dict[str, torch.Tensor]:
    """One SAP round: the new masks ``{weight name: bool}``; the model is not changed (``apply_masks`` zeroes the
    pruned weights). ``masks`` are the current ones (default all kept). ``scale`` multiplies every prune count (≤ 1
    to stop at a budget; 1 is the paper's rule). At least one weight of each scope unit survives."""
    if scope not in SAP_SCOPES:
        raise ValueError(f"scope must be one of {SAP_SCOPES}, got {scope!r}")
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale!r}")
    _check_pq(p, q)
    weights = {name: w.detach() for name, w in prunable_weights(model, ignore).items()}
    masks = _check_masks(weights, masks)
    new = {}
    if scope == "global":
        flat = torch.cat([weights[n].reshape(-1) for n in weights])
        flat_mask = torch.cat([masks[n].reshape(-1) for n in weights])
        d = flat_mask.sum()
        count = sap_prune_counts(pq_index(flat, p, q, flat_mask), d, p, q, eta, gamma, beta)
        count = int(_scale_counts(count, d, scale))
        pivot = _pivot(flat.abs(), flat_mask, count)
        for n in weights:
            new[n] = masks[n] & ~(weights[n].abs() < pivot)
        return new
    for n, w in weights.items():
        if scope == "layer":
            d = masks[n].sum()
            count = sap_prune_counts(pq_index(w, p, q, masks[n]), d, p, q, eta, gamma, beta)
            count = int(_scale_counts(count, d, scale))
            pivot = _pivot(w.abs().reshape(-1), masks[n].reshape(-1), count)
            new[n] = masks[n] & ~(w.abs() < pivot)
        else:  # neuron: one index and count per output row
            rows, rmask = w.reshape(w.shape[0], -1), masks[n].reshape(w.shape[0], -1)
            d = rmask.sum(1)
            counts = _scale_counts(sap_prune_counts(pq_index(rows, p, q, rmask, dim=1), d, p, q, eta, gamma, beta),
                                   d, scale)
            # pivot per row: the counts-th smallest surviving |w| (masked entries sort last)
            keyed = torch.where(rmask, rows.abs(), torch.full_like(rows, math.inf))
            ordered = keyed.sort(dim=1).values
            pivots = ordered.gather(1, counts.clamp_max(rows.shape[1] - 1).view(-1, 1))
            pivots = torch.where(counts.view(-1, 1) > 0, pivots, torch.full_like(pivots, -math.inf))
            new[n] = (rmask & ~(rows.abs() < pivots)).reshape(w.shape)
    return new


def _pivot(magnitudes: torch.Tensor, mask: torch.Tensor, count: int) -> float:
    """The ``count``-th smallest surviving magnitude (entries strictly below it are pruned); -inf for 0."""
    if count <= 0:
        return -math.inf
    surviving = magnitudes[mask].sort().values
    return float(surviving[min(count, surviving.numel() - 1)])


@checked_arguments
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out entries of the named parameters of ``model`` in place (``masks[name]`` False = pruned)."""
    params = dict(model.named_parameters())
    unknown = [name for name in masks if name not in params]
    if unknown:
        raise ValueError(f"masks name parameters that model does not have: {unknown}")
    for name, m in masks.items():
        if m.shape != params[name].shape:
            raise ValueError(f"masks[{name!r}] has shape {tuple(m.shape)}, parameter has {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, m in masks.items():
            params[name].mul_(m.to(params[name].dtype))


@checked_arguments
def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the masked weights that are pruned."""
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(1, total)


@register_method
class SAPMethod(Method):
    """Sparsity-informed adaptive pruning (PQ Index): unstructured SAP rounds at evenly spaced epochs of one run,
    masked weights held at exactly zero.

    Round ``k`` of ``rounds`` runs at the end of epoch ``⌊k·epochs/(rounds+1)⌋`` (so training continues after the
    last round); after every optimizer step the masks are re-applied. Logs ``sap/pq_index`` (global PQI of the
    surviving weights before the round), ``sap/density`` (surviving fraction after it).

    Args:
        rounds: number of pruning rounds in the run.
        scope: "neuron", "layer" or "global".
        p, q: the norms of the index (0 < p < q); reference 0.5 and 1.
        eta, gamma, beta: the bound's η, the prune-count multiplier γ and the per-round cap β (reference 0, 1, 0.9).
        ignore: module names never pruned.
    """

    name = "sap"
    paper_id = "arXiv:2302.05601"
    claim = ("sparsity-informed adaptive pruning is superior to iterative pruning such as lottery-ticket pruning in "
             "compression efficiency and robustness")
    claimed_effect = "no_worse"
    before = ("weight_std", "nm_sparsity")
    after = ("trp", "multi_sample_dropout")
    conflicts = ("maestro", "nm_sparsity")
    constraint_reason = ("sap keeps masks over the model's weights by parameter name: parametrized (N:M), low-rank or "
                         "standardized weights are not the weights it masks")

    def __init__(self, rounds: int = 2, scope: str = "layer", p: float = 0.5, q: float = 1.0, eta: float = 0.0,
                 gamma: float = 1.0, beta: float = 0.9, ignore: list[str] | None = None) -> None:
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds!r}")
        if scope not in SAP_SCOPES:
            raise ValueError(f"scope must be one of {SAP_SCOPES}, got {scope!r}")
        _check_pq(p, q)
        if not eta >= 0 or not gamma > 0 or not 0 < beta <= 1:
            raise ValueError(f"need eta >= 0, gamma > 0, 0 < beta <= 1; got eta={eta}, gamma={gamma}, beta={beta}")
        self.rounds, self.scope, self.p, self.q = rounds, scope, p, q
        self.eta, self.gamma, self.beta, self.ignore = eta, gamma, beta, list(ignore or [])
        self.masks: dict[str, torch.Tensor] = {}
        self.done = 0

    def _model(self, ctx: Context) -> nn.Module:
        return ctx.model.module if hasattr(ctx.model, "module") else ctx.model

    def setup(self, ctx: Context) -> None:
        try:
            prunable_weights(ctx.model, self.ignore)
        except ValueError as error:
            raise ConfigurationError(f"sap: {error}") from error

    def on_epoch_end(self, ctx: Context) -> None:
        epochs = ctx.run.epochs
        due = [int(k * epochs / (self.rounds + 1)) for k in range(1, self.rounds + 1)]
        if self.done >= self.rounds or ctx.epoch + 1 < max(1, due[self.done]):
            return
        model = self._model(ctx)
        weights = prunable_weights(model, self.ignore)
        masks = self.masks or None
        current = _check_masks({n: w.detach() for n, w in weights.items()}, masks)
        flat = torch.cat([weights[n].detach().reshape(-1) for n in weights])
        flat_mask = torch.cat([current[n].reshape(-1) for n in weights])
        self.log(ctx, "pq_index", pq_index(flat, self.p, self.q, flat_mask))
        self.masks = sap_prune(model, current, self.scope, self.p, self.q, self.eta, self.gamma, self.beta,
                               self.ignore)
        apply_masks(model, self.masks)
        self.done += 1
        self.log(ctx, "density", 1.0 - sparsity_of(self.masks))

    def after_step(self, ctx: Context) -> None:
        if self.masks:
            apply_masks(self._model(ctx), self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}, "done": self.done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.masks = dict(state.get("masks", {}))
            self.done = int(state.get("done", 0))
