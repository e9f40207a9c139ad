"""Layer-wise sparsity allocations for unstructured magnitude pruning: uniform, global magnitude, LAMP and ERK.

These are the baselines every layer-adaptive allocation (``layer_dp``) is compared with: each decides *how many*
weights of each conv/linear layer to remove for a global sparsity; the weights removed inside a layer are always the
smallest ``|w|`` (``apply_allocation``).

Paper (LAMP): Lee, Park, Mo, Ahn, Shin, "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021,
arXiv 2010.07611 (reference code ``jaeho-lee/layer-adaptive-sparsity``, ``tools/pruners.py`` ``_normalize_scores``).
With the entries of one weight tensor sorted by magnitude, ``|w_1| ≤ |w_2| ≤ … ≤ |w_n|`` (ties by position), the
LAMP score of entry ``u`` is

    score(u) = w_u² / Σ_{v ≥ u} w_v²

(the largest entry of every layer scores 1). LAMP removes the ``⌊s·N⌋`` lowest scores over all layers at once.

Paper (ERK): Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
arXiv 1911.11134 (reference code ``google-research/rigl``, ``sparse_utils.get_sparsities``). The density of layer ``l``
with weight shape ``(n_out, n_in, k_h, k_w)`` (or ``(n_out, n_in)``: Erdős–Rényi) is

    d_l = ε · ((n_out + n_in + k_h + k_w) / (n_out · n_in · k_h · k_w))^p,    p = 1 (``power``)

with ``ε`` chosen so that ``Σ_l d_l n_l = (1 − s) Σ_l n_l``; a layer whose ``d_l`` would exceed 1 is made dense and
``ε`` is solved again over the others (repeated until no layer exceeds 1), as the reference does.

Uniform removes ``⌊s·n_l⌋`` of every layer; global magnitude removes the ``⌊s·N⌋`` smallest ``|w|`` over all layers
(one threshold).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from regimen.method import checked_arguments
from regimen.subnet._common import check_float_tensor, check_ignore
from regimen.subnet._sparse import (
    apply_masks,
    check_sparsity,
    global_magnitude_masks,
    magnitude_mask,
    prunable_layers,
)

__all__ = ["allocate_sparsity", "apply_allocation", "erk_densities", "lamp_scores"]

RULES = ("uniform", "global", "lamp", "erk")


@checked_arguments
def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """The LAMP score of every entry of ``weight`` (same shape, float64): ``w_u² / Σ_{v ≥ u} w_v²`` over the entries
    sorted by ``|w|`` (stable: ties by position); an entry whose tail sum is 0 (all remaining weights zero) scores 0.

    Raises:
        TypeError: ``weight`` is not a floating-point tensor.
        ValueError: ``weight`` is on the meta device or holds NaN/inf.
    """
    check_float_tensor("weight", weight)
    if weight.numel() and not bool(torch.isfinite(weight).all()):
        raise ValueError("weight must hold finite values (NaN or inf has no magnitude rank)")
    squared = weight.detach().reshape(-1).double().pow(2)
    order = torch.sort(squared, stable=True).indices
    ranked = squared[order]
    # tail[i] = sum of ranked[i:], computed as a reversed cumulative sum
    tail = torch.flip(torch.cumsum(torch.flip(ranked, [0]), 0), [0])
    ranked_scores = torch.where(tail > 0, ranked / tail.clamp_min(torch.finfo(torch.float64).tiny),
                                torch.zeros_like(ranked))
    scores = torch.empty_like(ranked_scores)
    scores[order] = ranked_scores
    return scores.reshape(weight.shape)


def _check_shape(name: object, shape: object) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, Sequence) or isinstance(shape, str) or not shape:
        raise TypeError(f"shapes[{name!r}] must be a non-empty sequence of ints, got {shape!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"shapes[{name!r}] must hold ints >= 1, got {tuple(shape)!r}")
    return tuple(shape)


@checked_arguments
def erk_densities(shapes: Mapping[str, Sequence[int]], density: float, power: float = 1.0) -> dict[str, float]:
    """The Erdős–Rényi-kernel density of every layer (``{name: d_l}``, each in (0, 1]) for a global ``density``
    (fraction of the weights kept over all layers): ``d_l = ε·(Σ shape_l / Π shape_l)^power``, layers that would
    exceed 1 kept dense and ``ε`` re-solved (the reference's loop).

    Raises:
        ValueError: ``density`` outside (0, 1], ``power`` < 0, an empty ``shapes`` or a shape with a dimension < 1.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    if not power >= 0.0:
        raise ValueError(f"power must be >= 0, got {power!r}")
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError("shapes must map at least one layer name to its weight shape")
    checked = {name: _check_shape(name, shape) for name, shape in shapes.items()}
    sizes = {name: math.prod(shape) for name, shape in checked.items()}
    raw = {name: (sum(shape) / sizes[name]) ** power for name, shape in checked.items()}
    dense: set[str] = set()
    while True:
        free = [name for name in checked if name not in dense]
        if not free:
            break
        # kept weights still to place = total kept − the dense layers' weights
        rhs = density * sum(sizes.values()) - sum(sizes[name] for name in dense)
        divisor = sum(raw[name] * sizes[name] for name in free)
        epsilon = rhs / divisor
        largest = max(raw[name] for name in free)
        if epsilon * largest > 1.0:
            dense.update(name for name in free if raw[name] == largest)
            continue
        break
    return {name: 1.0 if name in dense else min(1.0, max(0.0, epsilon * raw[name])) for name in checked}


def _selection_amounts(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, float]:
    """Per-layer amounts when the ``⌊sparsity·N⌋`` lowest (non-negative) scores over all layers are removed: the
    global ranking of ``global_magnitude_masks`` (stable ties), read back as the fraction each layer loses."""
    masks = global_magnitude_masks(scores, sparsity)
    return {name: 1.0 - int(mask.sum()) / mask.numel() for name, mask in masks.items()}


@checked_arguments
def allocate_sparsity(model: nn.Module, sparsity: float, rule: str = "lamp",
                      ignore: Iterable[str] = ()) -> dict[str, float]:
    """Per-layer amounts (fraction of each conv/linear weight to remove, ``{layer: a_l}``) for a global ``sparsity``
    of the weights of those layers, by ``rule``: ``"uniform"`` (``a_l = sparsity``), ``"global"`` (one magnitude
    threshold), ``"lamp"`` (one LAMP-score threshold) or ``"erk"`` (Erdős–Rényi-kernel densities). Layers in
    ``ignore`` stay out of the count. The model is not changed; prune with ``apply_allocation``.

    For ``global`` and ``lamp`` exactly ``⌊sparsity·N⌋`` weights are removed and ``apply_allocation`` reproduces the
    selection (both rank by ``|w|`` inside a layer, ties by position); ``uniform`` and ``erk`` round per layer.

    Raises:
        ValueError: ``sparsity`` outside [0, 1), an unknown ``rule`` or ``ignore`` name, no conv/linear layer.
    """
    sparsity = check_sparsity(sparsity)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    ignore = check_ignore(model, ignore)
    layers = prunable_layers(model, ignore)
    if not layers:
        raise ValueError("model has no conv/linear layer to allocate sparsity to (outside ignore)")
    weights = {name: m.weight.detach() for name, m in layers}
    for name, w in weights.items():
        if w.is_meta or not w.is_floating_point():
            raise ValueError(f"model's layer {name!r} must have a floating-point weight holding data")
    if rule == "uniform":
        return {name: sparsity for name in weights}
    if rule == "erk":
        densities = erk_densities({name: tuple(w.shape) for name, w in weights.items()}, 1.0 - sparsity)
        return {name: 1.0 - d for name, d in densities.items()}
    if rule == "global":
        return _selection_amounts({name: w.abs() for name, w in weights.items()}, sparsity)
    return _selection_amounts({name: lamp_scores(w) for name, w in weights.items()}, sparsity)


@checked_arguments
def apply_allocation(model: nn.Module, amounts: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Zero, in place, the ``⌊a_l·n_l⌋`` smallest-``|w|`` entries of each named layer's weight (ties by position) and
    return the boolean keep masks ``{layer: mask}`` (re-apply them after optimizer steps to keep the sparsity).

    Raises:
        ValueError: a name that is not a conv/linear layer of ``model``, or an amount outside [0, 1); nothing is
            changed then.
    """
    if not isinstance(amounts, Mapping):
        raise TypeError(f"amounts must map layer names to fractions, got {type(amounts).__name__}")
    layers = dict(prunable_layers(model))
    checked = {}
    for name, amount in amounts.items():
        if name not in layers:
            raise ValueError(f"amounts names {name!r}, which is not a conv/linear layer of model")
        checked[name] = check_sparsity(amount, f"amounts[{name!r}]")
    masks = {name: magnitude_mask(layers[name].weight, amount) for name, amount in checked.items()}
    apply_masks(model, masks)
    return masks
