"""Layer-adaptive weight pruning by dynamic programming over per-layer rate-distortion curves.

Paper: Xu, Wang, Geng, Wu, Li, Lin, "Efficient Joint Optimization of Layer-Adaptive Weight Pruning in Deep Neural
Networks", ICCV 2023, arXiv 2308.10438 (reference code: Akimoto-Cris/RD_PRUNE, ``tools/pruners.py`` ``gen_rd_curves``,
``tools/algo.py`` ``dp_pruning``).

Formula. For each prunable layer ``l`` and each amount ``a_d`` of a grid, magnitude-prune *only* layer ``l`` at
``a_d`` (zero the ``⌊a_d n_l⌋`` smallest ``|w|``), run the calibration inputs and record the output distortion
``D_l(a_d) = mean_k (Y - Ŷ)²`` reduced over samples by the mean or, as in the reported runs, the maximum
(``worst_case``); all other layers stay dense and the weights are restored after every point. Assuming the distortion
is additive over layers, ``D(a_1..a_L) ≈ Σ_l D_l(a_l)``, the allocation

    minimise Σ_l D_l(a_l)   subject to   Σ_l c_l · n_l (1 - a_l) ≤ budget

is a multiple-choice knapsack, solved exactly by dynamic programming over the (integer) cost of the surviving
weights: ``dp_l[b] = min_d dp_{l-1}[b - cost_l(d)] + D_l(a_d)``, then back-tracking. ``c_l = 1`` budgets parameters
(the paper); ``c_l`` = the layer's output positions per weight budgets the multiply-accumulates of the nonzero weights.

Pitfalls handled: curves are measured in eval mode with every other layer dense (weights restored, BN statistics
untouched); large budgets are quantised (``resolution`` bins, costs rounded *up* so the budget always holds); a budget
below the smallest reachable cost is refused naming the minimum, before any weight changes. One-shot only (the paper's
iterative schedule, ``a_l ≥ a_l^prev`` across rounds, is not implemented).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, evaluating, normalize_inputs, run_model
from regimen.subnet._sparse import apply_masks, check_sparsity, magnitude_mask, prunable_layers

__all__ = ["LayerDPMethod", "apply_layer_dp", "dp_allocate", "layer_costs", "rd_curves"]

COSTS = ("params", "macs")


def _amounts(grid: int, max_amount: float) -> torch.Tensor:
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an int >= 2, got {grid!r}")
    if not 0.0 < max_amount < 1.0:
        raise ValueError(f"max_amount must be in (0, 1), got {max_amount}")
    return torch.linspace(0.0, max_amount, grid, dtype=torch.float64)


def _output(model: nn.Module, inputs: Any) -> torch.Tensor:
    out = run_model(model, inputs, "calibration inputs do not run the model")
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a tensor (or a tuple starting with one), got {type(out).__name__}")
    return out.detach().float().reshape(out.shape[0], -1) if out.dim() > 0 else out.detach().float().reshape(1, 1)


@checked_arguments
def rd_curves(model: nn.Module, calib_inputs: Any, layers: Sequence[str] | None = None, grid: int = 21,
              max_amount: float = 0.95, worst_case: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Per-layer output-distortion curves ``D[l, d]`` at amounts ``linspace(0, max_amount, grid)``.

    Returns ``(curves (L, grid), amounts (grid,), layer names)``; the model is unchanged afterwards.
    """
    amounts = _amounts(grid, max_amount)
    names = list(layers) if layers is not None else [n for n, _ in prunable_layers(model)]
    if not names:
        raise ValueError("rd_curves found no conv/linear layer")
    modules = []
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise ValueError(f"layers names a module that does not exist: {name!r}") from error
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise ValueError(f"layer {name!r} has no weight tensor")
        modules.append(module)
    curves = torch.zeros(len(names), grid, dtype=torch.float64)
    with evaluating(model):
        reference = _output(model, calib_inputs)
        for i, module in enumerate(modules):
            weight = module.weight
            original = weight.detach().clone()
            try:
                for d, amount in enumerate(amounts.tolist()):
                    if d == 0:
                        continue  # nothing pruned: no distortion
                    weight.data.mul_(magnitude_mask(original, amount).to(weight.dtype))
                    per_sample = (_output(model, calib_inputs) - reference).pow(2).mean(1)
                    curves[i, d] = float(per_sample.max() if worst_case else per_sample.mean())
                    weight.data.copy_(original)
            finally:
                weight.data.copy_(original)
    return curves, amounts, names


@checked_arguments
def layer_costs(model: nn.Module, example_inputs: Any, layers: Sequence[str], cost: str = "params") -> list[int]:
    """Cost of one surviving weight of each layer: 1 (``"params"``) or its multiply-accumulates per sample
    (``"macs"``: output positions of a conv, tokens of a linear)."""
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    if cost == "params":
        return [1] * len(layers)
    positions: dict[str, int] = {}
    handles = []
    for name in layers:
        module = model.get_submodule(name)

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            width = mod.out_features if isinstance(mod, nn.Linear) else mod.weight.shape[0]
            per_sample = output[0].numel() // width if output.dim() > 1 else 1
            positions[name] = max(1, int(per_sample))

        handles.append(module.register_forward_hook(hook))
    normalize_inputs(example_inputs)
    try:
        with evaluating(model):
            run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return [positions.get(name, 1) for name in layers]


@checked_arguments
def dp_allocate(curves: torch.Tensor, costs: torch.Tensor, budget: int, resolution: int | None = None) -> list[int]:
    """Exact multiple-choice knapsack: one column ``d_l`` per row minimising ``Σ curves[l, d_l]`` subject to
    ``Σ costs[l, d_l] ≤ budget``.

    Args:
        curves: ``(L, G)`` distortions.
        costs: ``(L, G)`` non-negative integer costs of each choice.
        budget: the largest total cost allowed.
        resolution: quantise costs into about this many bins of the budget (costs rounded up, so the budget still
            holds; the result is then optimal for the rounded costs). ``None``: exact integer costs.

    Returns:
        the chosen column of every row.

    Raises:
        ValueError: shapes differ, negative costs, or ``budget`` below the cheapest allocation (named).
    """
    if curves.dim() != 2 or costs.shape != curves.shape:
        raise ValueError(f"curves and costs must be (L, G) of one shape, got {tuple(curves.shape)} and "
                         f"{tuple(costs.shape)}")
    if curves.numel() == 0:
        raise ValueError("curves must not be empty")
    if costs.is_floating_point() and not bool((costs == costs.round()).all()):
        raise ValueError("costs must be integers")
    costs = costs.long()
    if bool((costs < 0).any()):
        raise ValueError("costs must be >= 0")
    if not bool(torch.isfinite(curves).all()):
        raise ValueError("curves must be finite")
    minimum = int(costs.min(1).values.sum())
    if budget < minimum:
        raise ValueError(f"budget {budget} is below the minimum reachable cost {minimum} (every layer at its largest "
                         "amount); raise the budget or the largest amount")
    if resolution is not None:
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        unit = max(1, math.ceil(budget / resolution))
        costs = (costs + unit - 1) // unit
        budget = budget // unit
        if budget < int(costs.min(1).values.sum()):  # rounding up made the cheapest allocation too expensive
            budget = int(costs.min(1).values.sum())
    n_layers, n_choices = curves.shape
    curves = curves.double()
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    dp = torch.full((budget + 1,), float("inf"), dtype=torch.float64)
    dp[0] = 0.0
    choice = torch.zeros(n_layers, budget + 1, dtype=torch.long)
    for layer in range(n_layers):
        best = torch.full_like(dp, float("inf"))
        arg = torch.zeros(budget + 1, dtype=torch.long)
        for d in range(n_choices):
            c = int(costs[layer, d])
            if c > budget:
                continue
            shifted = torch.cat([inf.expand(c), dp[:budget + 1 - c]]) + curves[layer, d]
            better = shifted < best
            best = torch.where(better, shifted, best)
            arg = torch.where(better, torch.full_like(arg, d), arg)
        dp, choice[layer] = best, arg
    b = int(torch.argmin(dp))
    picks = [0] * n_layers
    for layer in range(n_layers - 1, -1, -1):
        d = int(choice[layer, b])
        picks[layer] = d
        b -= int(costs[layer, d])
    return picks


@checked_arguments
def apply_layer_dp(model: nn.Module, calib_inputs: Any, sparsity: float = 0.5, grid: int = 21,
                   max_amount: float = 0.95, worst_case: bool = True, cost: str = "params",
                   ignore: Iterable[str] = (), resolution: int | None = 4096) -> dict[str, Any]:
    """Measure the curves, allocate per-layer amounts by DP and magnitude-prune every layer at its amount, in place.

    ``sparsity`` is the fraction of the budgeted total removed: of the prunable weights (``cost="params"``) or of
    their multiply-accumulates (``cost="macs"``). Returns ``{"masks": {layer: bool mask}, "amounts": {layer: a_l},
    "predicted_distortion": Σ D_l(a_l), "budget": ..., "curves": ..., "layers": [...]}``.

    Raises:
        ValueError: sparsity outside [0, 1), a budget below the minimum (a sparsity above what ``max_amount``
            allows), unknown ``cost``/``ignore``; the model is unchanged then.
    """
    sparsity = check_sparsity(sparsity)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    ignore = check_ignore(model, ignore)
    names = [n for n, _ in prunable_layers(model, ignore)]
    if not names:
        raise ValueError("apply_layer_dp found no conv/linear layer outside ignore")
    if sparsity > max_amount:
        raise ValueError(f"sparsity {sparsity} is above max_amount {max_amount}: the budget would be below the "
                         "minimum reachable cost; raise max_amount or lower sparsity")
    curves, amounts, names = rd_curves(model, calib_inputs, names, grid, max_amount, worst_case)
    per_weight = layer_costs(model, calib_inputs, names, cost)
    sizes = [model.get_submodule(n).weight.numel() for n in names]
    survivors = torch.tensor([[n - math.floor(a * n + 1e-9) for a in amounts.tolist()] for n in sizes],
                             dtype=torch.long)
    costs = survivors * torch.tensor(per_weight, dtype=torch.long)[:, None]
    total = int(costs[:, 0].sum())
    budget = int(math.floor((1.0 - sparsity) * total + 1e-9))
    picks = dp_allocate(curves, costs, budget, resolution)
    masks = {}
    for name, d in zip(names, picks):
        masks[name] = magnitude_mask(model.get_submodule(name).weight, float(amounts[d]))
    apply_masks(model, masks)
    return {"masks": masks, "amounts": {n: float(amounts[d]) for n, d in zip(names, picks)},
            "predicted_distortion": float(sum(curves[i, d] for i, d in enumerate(picks))), "budget": budget,
            "total": total, "curves": curves, "layers": names}


@register_method
class LayerDPMethod(Method):
    """Layer-adaptive unstructured pruning: rate-distortion curves on a calibration batch, DP allocation under a global
    budget, magnitude masks per layer in ``setup``; masks are re-applied after every optimizer step (fine-tuning).

    Logs ``layer_dp/sparsity`` (of the masked layers' weights) and ``layer_dp/predicted_distortion``.

    Args:
        sparsity: fraction of the budget removed (weights, or their MACs with ``cost="macs"``).
        grid: points per curve (amounts ``linspace(0, max_amount, grid)``).
        max_amount: the largest per-layer amount considered.
        worst_case: max over calibration samples (the reported runs) instead of the mean.
        calib_size: calibration samples (the first training samples).
        cost: ``"params"`` or ``"macs"``.
        ignore: module names left dense.
    """

    name = "layer_dp"
    paper_id = "arXiv:2308.10438"
    claim = ("per-layer sparsities from a DP over output-distortion curves beat uniform/global/LAMP allocations at "
             "high sparsity")
    claimed_effect = "no_worse"
    # found by training pairs: layers are masked by module name, so methods that replace layers go first
    after = ("batchformer", "blurpool", "squeeze_excite", "multi_sample_dropout")
    conflicts = ("weight_std", "nm_sparsity", "hesso", "maestro", "trp", "lottery_jackpots", "tscnc")
    constraint_reason = ("layer_dp masks individual weights by name and re-applies the masks after every step: weight "
                         "parametrizations, other weight pruning or factorised layers would fight over them")

    def __init__(self, sparsity: float = 0.5, grid: int = 21, max_amount: float = 0.95, worst_case: bool = True,
                 calib_size: int = 256, cost: str = "params", ignore: list[str] | None = None) -> None:
        check_sparsity(sparsity)
        _amounts(grid, max_amount)
        if sparsity > max_amount:
            raise ValueError(f"sparsity {sparsity} is above max_amount {max_amount}")
        if calib_size < 1:
            raise ValueError(f"calib_size must be >= 1, got {calib_size}")
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
        self.sparsity, self.grid, self.max_amount, self.worst_case = sparsity, grid, max_amount, worst_case
        self.calib_size, self.cost, self.ignore = calib_size, cost, list(ignore or [])
        self.masks: dict[str, torch.Tensor] = {}
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        self._model = ctx.model
        if self.masks:  # resumed: the masks came from the checkpoint
            apply_masks(ctx.model, self.masks)
            return
        x, _ = ctx.example_batch(self.calib_size)
        try:
            result = apply_layer_dp(ctx.model, x, self.sparsity, self.grid, self.max_amount, self.worst_case,
                                    self.cost, self.ignore)
        except ValueError as error:
            raise ConfigurationError(f"layer_dp: {error}") from error
        self.masks = result["masks"]
        kept = sum(int(m.sum()) for m in self.masks.values())
        self.log(ctx, "sparsity", 1.0 - kept / max(1, sum(m.numel() for m in self.masks.values())))
        self.log(ctx, "predicted_distortion", result["predicted_distortion"])

    def after_step(self, ctx: Context) -> None:
        if self._model is not None and self.masks:
            apply_masks(self._model, self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in state.get("masks", {}).items()}
        if self._model is not None and self.masks:
            apply_masks(self._model, self.masks)
