"""HESSO-style progressive zeroing: drive the least important channels to exactly zero while training, then remove them.

Paper: Chen et al., "HESSO: Towards Automatic Efficient and User Friendly Any Neural Network Training and Pruning",
2024, arXiv 2409.09085 (the successor of OTO/DHSPG, arXiv 2107.07467).

Schedule. After ``warmup_steps``, training runs ``periods`` pruning periods of ``period_steps = T`` steps. At the
start of period ``p`` the lowest-importance units (channels / heads of the dependency groups, scored as in
``importance.py``) are chosen so that ``ratio * (p + 1) / periods`` of all units are selected in total. After every
optimizer step ``t = 0 .. T-1`` of the period, the selected units' parameters are multiplied by
``(T - t - 1) / (T - t)``: the product of these factors is ``(T - t - 1) / T``, a linear decay that reaches
**exactly zero** at ``t = T - 1`` (the last factor is 0). Units zeroed in earlier periods are re-zeroed after every
step (the optimizer's momentum, weight decay and gradients would move them). Because only ``lossless`` groups are
used and every variable of a unit (filters, biases, BN gamma and beta, consumer columns) is zero, ``prune()`` then
removes them physically with no change in the function and no finetuning.

Pitfalls handled: selection happens once per period (scores of already-selected units are not recomputed, so units
cannot flip back); BN running statistics are left alone (gamma = beta = 0 already zeroes the output); state is saved
for bitwise resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, check_ratio, check_scope, is_ignored
from regimen.subnet.dependency import Group, UntraceableError, scale_units, trace_dependencies
from regimen.subnet.importance import IMPORTANCES, Importance, check_importance, normalized_scores
from regimen.subnet.measure import PruneReport, count_params, layer_widths
from regimen.subnet.prune import prune_groups

__all__ = ["HESSOMethod", "HESSOPruner", "hesso_factor"]

_ALL_ROLES = ("out", "in")


@checked_arguments
def hesso_factor(t: int, period: int) -> float:
    """Multiplier at step ``t`` (0-based) of a period of ``period`` steps: ``(T - t - 1) / (T - t)``."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    if not 0 <= t < period:
        raise ValueError(f"t must be in [0, {period}), got {t}")
    return (period - t - 1) / (period - t)


@checked_arguments
class HESSOPruner:
    """Progressive zeroing pruner usable in any training loop: call ``step()`` after each ``optimizer.step()``.

    Args:
        model: the model being trained.
        example_inputs: inputs for tracing dependency groups.
        ratio: fraction of units (channels, heads) to remove, in [0, 1).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"`` or a callable (see ``importance.py``).
        warmup_steps: steps of plain training before the first period.
        period_steps: ``T``, steps per pruning period.
        periods: number of periods; each selects an equal share of ``ratio``.
        scope: ``"global"`` or ``"uniform"`` selection.
        ignore: module names whose groups are never pruned.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance: Importance = "l2",
                 warmup_steps: int = 0, period_steps: int = 100, periods: int = 1, scope: str = "global",
                 ignore: Iterable[str] = ()) -> None:
        self.ratio = check_ratio(ratio)
        check_importance(importance)
        check_scope(scope)
        for label, value, low in (("warmup_steps", warmup_steps, 0), ("period_steps", period_steps, 1),
                                  ("periods", periods, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
        ignore = check_ignore(model, ignore)
        self.model, self.importance, self.scope = model, importance, scope
        self.warmup_steps, self.period_steps, self.periods = warmup_steps, period_steps, periods
        graph = trace_dependencies(model, example_inputs)
        self.groups: list[Group] = [g for g in graph.groups if g.lossless and not is_ignored(g.modules, ignore)]
        self.steps = 0
        self.pending: dict[int, list[int]] = {}  # group index -> units being decayed in the current period
        self.zeroed: dict[int, list[int]] = {}  # group index -> units already exactly zero

    @property
    def total_steps(self) -> int:
        """Steps until every selected unit is zero."""
        return self.warmup_steps + self.period_steps * self.periods

    @property
    def done(self) -> bool:
        return self.steps >= self.total_steps

    def _select(self, period: int) -> None:
        fraction = self.ratio * (period + 1) / self.periods
        taken = {i: set(self.zeroed.get(i, [])) for i in range(len(self.groups))}
        scores = []
        for i, group in enumerate(self.groups):
            s = normalized_scores(self.model, group, self.importance).clone()
            if taken[i]:
                s[list(taken[i])] = -math.inf
            scores.append(s)
        chosen: dict[int, list[int]] = {}
        if self.scope == "uniform":
            for i, group in enumerate(self.groups):
                target = min(group.size - 1, int(math.floor(fraction * group.size + 1e-9)))
                extra = target - len(taken[i])
                if extra > 0:
                    order = [u for u in torch.argsort(scores[i], stable=True).tolist() if u not in taken[i]]
                    chosen[i] = sorted(order[:extra])
        else:
            total = sum(g.size for g in self.groups)
            target = int(math.floor(fraction * total + 1e-9))
            remaining = target - sum(len(t) for t in taken.values())
            if remaining > 0 and scores:
                flat = torch.cat(scores)
                owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(self.groups)])
                offsets = [0]
                for g in self.groups:
                    offsets.append(offsets[-1] + g.size)
                for index in torch.argsort(flat, stable=True).tolist():
                    if remaining <= 0:
                        break
                    i = int(owner[index])
                    unit = index - offsets[i]
                    if unit in taken[i]:
                        continue
                    if len(taken[i]) + len(chosen.get(i, [])) >= self.groups[i].size - 1:
                        continue
                    chosen.setdefault(i, []).append(unit)
                    remaining -= 1
        self.pending = {i: sorted(units) for i, units in chosen.items() if units}

    @torch.no_grad()
    def step(self) -> None:
        """Advance one optimizer step: select at period starts, decay pending units, keep zeroed units at zero."""
        t = self.steps - self.warmup_steps
        if 0 <= t < self.period_steps * self.periods:
            period, t_in = divmod(t, self.period_steps)
            if t_in == 0:
                self._select(period)
            factor = hesso_factor(t_in, self.period_steps)
            for i, units in self.pending.items():
                scale_units(self.model, self.groups[i], units, factor, roles=_ALL_ROLES)
            if t_in == self.period_steps - 1:
                for i, units in self.pending.items():
                    self.zeroed[i] = sorted(set(self.zeroed.get(i, [])) | set(units))
                self.pending = {}
        for i, units in self.zeroed.items():
            scale_units(self.model, self.groups[i], units, 0.0, roles=_ALL_ROLES)
        self.steps += 1

    def prune(self, optimizer: torch.optim.Optimizer | None = None, example_inputs: Any = None) -> PruneReport:
        """Physically remove the zeroed units (lossless); returns a ``PruneReport`` (MACs not measured: 0)."""
        params_before, widths_before = count_params(self.model), layer_widths(self.model)
        plan = {}
        for i, units in self.zeroed.items():
            group = self.groups[i]
            keep = sorted(set(range(group.size)) - set(units))
            plan[group] = keep
        prune_groups(self.model, plan, optimizer=optimizer, example_inputs=example_inputs)
        removed = sum(len(u) for u in self.zeroed.values())
        report = PruneReport(params_before, count_params(self.model), 0, 0, widths_before, layer_widths(self.model),
                             groups_pruned=len(plan), units_removed=removed,
                             units_total=sum(g.size for g in self.groups))
        self.groups, self.zeroed, self.pending = [], {}, {}
        return report

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "pending": {str(k): v for k, v in self.pending.items()},
                "zeroed": {str(k): v for k, v in self.zeroed.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.pending = {int(k): list(v) for k, v in state["pending"].items()}
        self.zeroed = {int(k): list(v) for k, v in state["zeroed"].items()}


@register_method
class HESSOMethod(Method):
    """HESSO: progressively zero the least important channels during training, then remove them losslessly.

    ``setup`` traces ``ctx.example_batch()``; the schedule is fixed at the first step from ``ctx.run`` (epochs ×
    steps per epoch). Logs ``hesso/groups``, ``hesso/period_steps``, ``hesso/zeroed_fraction`` (of the units in the
    prunable groups) and, after the removal, ``hesso/params`` and ``hesso/param_ratio``.

    Args:
        ratio: fraction of channels/heads to remove.
        importance: "l1", "l2", "bn_scale" or "taylor".
        start: fraction of the run trained before the first pruning period.
        end: fraction of the run at which the last period ends (all selected units exactly zero).
        periods: number of pruning periods.
        scope: "global" or "uniform".
        ignore: module names never pruned.
        prune_at_end: physically remove the zeroed channels in ``on_train_end``.
    """

    name = "hesso"
    paper_id = "arXiv:2409.09085"
    claim = "one training run removes structured channel groups with accuracy close to the dense model"
    claimed_effect = "no_worse"
    # found by training every pair of methods (tests/integration/test_method_pairs.py): the tracer cannot map
    # weight-standardized convs or N:M-parametrized weights, and MAESTRO's factorised layers can neither be traced
    # nor pruned by name
    before = ("weight_std", "nm_sparsity")
    after = ("trp", "multi_sample_dropout")
    conflicts = ("maestro",)
    constraint_reason = ("hesso traces the model's channel-dependency graph in setup and prunes its layers by name at "
                         "the end: it cannot trace weight-standardized, N:M-parametrized or low-rank layers, and must "
                         "see the head that multi-sample dropout and TRP wrap")

    def __init__(self, ratio: float = 0.5, importance: str = "l2", start: float = 0.1, end: float = 0.6,
                 periods: int = 2, scope: str = "global", ignore: list[str] | None = None,
                 prune_at_end: bool = True) -> None:
        check_ratio(ratio)
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
        if periods < 1:
            raise ValueError(f"periods must be >= 1, got {periods}")
        check_scope(scope)
        self.ratio, self.importance, self.start, self.end = ratio, importance, start, end
        self.periods, self.scope, self.ignore, self.prune_at_end = periods, scope, list(ignore or []), prune_at_end
        self.pruner: HESSOPruner | None = None
        self._scheduled = False
        self._pending_state: dict[str, Any] | None = None
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        self._model = ctx.model
        example, _ = ctx.example_batch()
        # the schedule is set at the first step, from the run's epochs and steps then (placeholder values until then)
        try:
            self.pruner = HESSOPruner(ctx.model, example, self.ratio, self.importance, 0, 1, self.periods, self.scope,
                                      self.ignore)
        except UntraceableError as error:
            raise ConfigurationError(
                f"hesso traces the model's channel dependencies to prune them and cannot trace this model: {error}. "
                "Use nn modules (Conv, Linear, BatchNorm, MultiheadAttention) for layers with weights, or list "
                "hesso before methods that rewrite layers") from error
        if not self.pruner.groups:
            raise ConfigurationError("hesso found no channel group it can remove without changing the function (a "
                                     "model with convolution or linear layers outside ignore is needed)")
        self.log(ctx, "groups", len(self.pruner.groups))
        self._scheduled = False
        if self._pending_state is not None:
            self.pruner.load_state_dict(self._pending_state)
            self._pending_state = None

    def _schedule(self, ctx: Context) -> None:
        total = max(1, ctx.run.epochs * ctx.run.steps_per_epoch)
        self.pruner.warmup_steps = int(self.start * total)
        self.pruner.period_steps = max(1, int((self.end - self.start) * total / self.periods))
        self._scheduled = True
        self.log(ctx, "period_steps", self.pruner.period_steps)

    def after_step(self, ctx: Context) -> None:
        if self.pruner is not None:
            if not self._scheduled:
                self._schedule(ctx)
            self.pruner.step()
            zeroed = sum(len(u) for u in self.pruner.zeroed.values())
            self.log(ctx, "zeroed_fraction", zeroed / max(1, sum(g.size for g in self.pruner.groups)))

    def on_train_end(self, ctx: Context) -> None:
        if self.pruner is None or not self.prune_at_end:
            return
        report = self.pruner.prune()
        self.log(ctx, "params", report.params_after)
        self.log(ctx, "param_ratio", report.params_after / max(report.params_before, 1))

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.pruner is None:
            self._pending_state = state
        else:
            self.pruner.load_state_dict(state)


__getattr__ = deprecated_aliases(__name__, {"HESSO": "HESSOPruner"}, globals())
