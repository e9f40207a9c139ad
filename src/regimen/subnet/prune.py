"""Structured pruning with physical removal of channels (and attention heads), carrying the optimizer state over.

``prune(model, example_inputs, ratio=0.5)`` traces the model into dependency groups (``dependency/``), scores every unit
(``importance.py``), chooses the units to remove per group (``scope="uniform"``) or across groups
(``scope="global"``, scores normalised by their group mean), and removes them in place: every parameter and buffer
slice of the group is cut with ``index_select``, module attributes (``out_channels``, ``in_features``, ``groups``,
``num_features``...) follow the new shapes, and packed ``nn.MultiheadAttention`` becomes ``PrunedMultiheadAttention``
(its inner width may differ from the embedding width). Reference: Fang et al., "DepGraph: Towards Any Structural
Pruning", CVPR 2023, arXiv 2301.12900; Torch-Pruning is the peer.

Pitfalls handled:

* Torch-Pruning creates new Parameters and leaves the optimizer pointing at the old ones. With ``optimizer=`` the
  param groups are rebound to the new Parameters and per-parameter state of the same shape (``momentum_buffer``,
  ``exp_avg``, ``exp_avg_sq``, ...) is sliced with the same indices; scalar state (``step``) is copied.
* Removal is all-or-nothing: inputs are validated first, the forward pass is re-run on ``example_inputs`` after
  surgery, and any failure re-assigns the original Parameters, attributes and modules (``SurgeryLog``) and leaves
  the optimizer untouched.
* A unit is exactly removable when its ``"out"`` slices (filter, bias, BN gamma **and** beta) are zero and the group is
  ``lossless``; zeroing only the filters still leaves ``beta`` flowing (see ``dependency.zero_units``).

Layout: the attention layer lives in ``modules.py``, measuring (``count_macs``, ``PruneReport``) in ``measure.py``,
surgery helpers in ``_surgery.py``; this module chooses what to remove and removes it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regimen.method import checked_arguments
from regimen.subnet._common import check_ignore, check_ratio, check_scope, evaluating, is_ignored, run_model
from regimen.subnet._surgery import (
    Replaced,
    SurgeryLog,
    attention_attributes,
    module_info,
    rebind_sliced,
    size_attributes,
    to_pruned_attention,
)
from regimen.subnet.dependency import Group, trace_dependencies
from regimen.subnet.importance import Importance, check_importance, normalized_scores
from regimen.subnet.measure import PruneReport, count_macs, count_params, layer_widths
from regimen.subnet.modules import PrunedMultiheadAttention

# PruneReport, count_macs, count_params, layer_widths and PrunedMultiheadAttention were defined here in v1 and are
# still importable from this module; their homes are measure.py and modules.py.
__all__ = ["plan_pruning", "prune", "prune_groups"]


def _validate_plan(plan: Mapping[Group, Any]) -> dict[Group, torch.Tensor]:
    keeps: dict[Group, torch.Tensor] = {}
    for group, keep in plan.items():
        if not isinstance(group, Group):
            raise TypeError(f"plan keys must be Groups, got {type(group).__name__}")
        keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
        if keep.numel() == 0:
            raise ValueError(
                f"pruning group {group.id} ({group.name!r}) would leave zero channels; keep at least one unit"
            )
        if bool((keep < 0).any()) or bool((keep >= group.size).any()):
            raise ValueError(f"keep indices of group {group.id} ({group.name!r}) must be in [0, {group.size})")
        if keep.unique().numel() != keep.numel():
            raise ValueError(f"keep indices of group {group.id} ({group.name!r}) contain duplicates")
        keeps[group] = keep.sort().values
    return keeps


@checked_arguments
def prune_groups(model: nn.Module, plan: Mapping[Group, torch.Tensor | Sequence[int]],
                 optimizer: torch.optim.Optimizer | None = None, example_inputs: Any = None) -> nn.Module:
    """Keep only the given units of each group, physically, in place; every other group is left as is.

    Args:
        model: the model the groups were traced from.
        plan: ``{group: keep_units}``; units not listed are removed (at least one must stay).
        optimizer: rebound to the new Parameters, per-parameter state sliced to match (see module docstring).
        example_inputs: when given, the pruned model is run once; if that fails, the surgery is undone.

    Returns:
        ``model`` (same object; attention modules inside may have been replaced).
    """
    keeps = _validate_plan(plan)
    removals, touched = _removals(model, keeps)
    if not removals:
        return model
    infos = {name: module_info(module) for name, module in touched.items()}  # before any tensor changes
    log = SurgeryLog()
    try:
        replaced = _sliced_tensors(removals)
        _swap_tensors(model, replaced, log)
        for name, module in touched.items():
            log.set_attributes(module, size_attributes(module, infos[name]))
        for name, module in touched.items():
            if isinstance(module, nn.MultiheadAttention):  # its inner width no longer equals embed_dim
                log.set_submodule(model, name, to_pruned_attention(module, infos[name]["head_dim"]))
        for name, (before, after) in _head_counts(keeps).items():  # modules calling scaled_dot_product_attention
            log.set_attributes(model.get_submodule(name), attention_attributes(model.get_submodule(name), before,
                                                                               after))
        if example_inputs is not None:
            with evaluating(model):
                run_model(model, example_inputs, "the pruned model does not run on example_inputs (surgery undone)")
    except Exception:
        log.undo()
        raise
    if optimizer is not None:
        rebind_sliced(optimizer, replaced)
    return model


Removals = dict[int, tuple[torch.Tensor, dict[int, set[int]]]]  # id(tensor) -> (tensor, {dim: dropped positions})


def _head_counts(keeps: Mapping[Group, torch.Tensor]) -> dict[str, tuple[dict[str, int], dict[str, int]]]:
    """``{attention module: (counts before, counts after)}`` for every module whose heads lose units."""
    counts: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for group, keep in keeps.items():
        kept = torch.zeros(group.size, dtype=torch.bool)
        kept[keep] = True
        for site in group.attention:
            heads, kv_heads = site.q_units.numel(), site.kv_units.numel()
            before = {"heads": heads, "kv_heads": kv_heads, "inner": heads * site.head_dim}
            old = counts.get(site.module, (before, dict(before)))[1]
            lost_q = int(((site.q_units >= 0) & ~kept[site.q_units.clamp(min=0)]).sum())
            lost_kv = int(((site.kv_units >= 0) & ~kept[site.kv_units.clamp(min=0)]).sum())
            after = {"heads": old["heads"] - lost_q, "kv_heads": old["kv_heads"] - lost_kv}
            after["inner"] = after["heads"] * site.head_dim
            if lost_q or lost_kv:
                counts[site.module] = (counts.get(site.module, (before, None))[0], after)
    return counts


def _removals(model: nn.Module, keeps: Mapping[Group, torch.Tensor]) -> tuple[Removals, dict[str, nn.Module]]:
    """The positions to drop from every tensor, and every module whose tensors (or owned projection) change."""
    removals: Removals = {}
    touched: dict[str, nn.Module] = {}
    for group, keep in keeps.items():
        drop = torch.ones(group.size, dtype=torch.bool)
        drop[keep] = False
        dropped = drop.nonzero().reshape(-1)
        if dropped.numel() == 0:
            continue
        for s in group.slices:
            module = model.get_submodule(s.module)
            tensor = getattr(module, s.param)
            entry = removals.setdefault(id(tensor), (tensor, {}))
            entry[1].setdefault(s.dim, set()).update(group.positions(s, dropped).tolist())
            touched[s.module] = module
            if s.module.endswith("out_proj"):  # the attention module owning a projection changes as well
                parent = s.module.rpartition(".")[0]
                owner = model.get_submodule(parent) if parent else model
                if isinstance(owner, nn.MultiheadAttention | PrunedMultiheadAttention):
                    touched[parent] = owner
    return removals, touched


def _sliced_tensors(removals: Removals) -> Replaced:
    """``{id(old): (old, new, [(dim, kept positions), ...])}``; a Parameter's replacement is a new Parameter."""
    replaced: Replaced = {}
    for key, (old, dims) in removals.items():
        new = old.detach()
        kept_per_dim = []
        for dim in sorted(dims):
            keep = torch.tensor(sorted(set(range(old.shape[dim])) - dims[dim]), dtype=torch.long)
            if keep.numel() == 0:
                raise ValueError("pruning would leave a tensor with zero channels")
            new = new.index_select(dim, keep.to(new.device))
            kept_per_dim.append((dim, keep))
        new = new.clone()
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        replaced[key] = (old, new, kept_per_dim)
    return replaced


def _swap_tensors(model: nn.Module, replaced: Replaced, log: SurgeryLog) -> None:
    """Assign the new tensors wherever the old ones are held (a tied Parameter in every module that holds it)."""
    for module in model.modules():
        held = [*module.named_parameters(recurse=False, remove_duplicate=False),
                *module.named_buffers(recurse=False, remove_duplicate=False)]
        for name, value in held:
            if id(value) in replaced:
                log.set_tensor(module, name, replaced[id(value)][1])


# --------------------------------------------------------------------------------------------------------------------
# the pruning API


def _round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    n_keep = max(1, min(size, n_keep))
    if round_to and round_to > 1:
        if size < round_to:
            return size
        n_keep = max(round_to, int(round(n_keep / round_to)) * round_to)
        n_keep = min(n_keep, size - size % round_to if size % round_to else size)
    return n_keep


@checked_arguments
def plan_pruning(model: nn.Module, groups: Sequence[Group], ratio: float, importance: Importance = "l2",
                 scope: str = "global", round_to: int | None = None) -> dict[Group, torch.Tensor]:
    """Choose the units to keep in each group: ``{group: keep_units}`` (sorted), removing about ``ratio`` of units."""
    ratio = _check_plan_arguments(ratio, importance, scope, round_to)
    return _plan(model, groups, ratio, importance, scope, round_to)


def _check_plan_arguments(ratio: Any, importance: Any, scope: Any, round_to: Any) -> float:
    ratio = check_ratio(ratio)
    check_scope(scope)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be None or an int >= 1, got {round_to!r}")
    check_importance(importance)
    return ratio


def _plan(model: nn.Module, groups: Sequence[Group], ratio: float, importance: Importance, scope: str,
          round_to: int | None) -> dict[Group, torch.Tensor]:
    scores = {g: normalized_scores(model, g, importance) for g in groups}
    plan: dict[Group, torch.Tensor] = {}
    if scope == "uniform":
        # keep floor((1 - ratio) * size) units (at least one), as Torch-Pruning does, so equal ratios compare
        counts = {g: max(1, int(math.floor((1.0 - ratio) * g.size + 1e-9))) for g in groups}
    else:
        total = sum(g.size for g in groups)
        n_remove = int(math.floor(ratio * total + 1e-9))
        counts = {g: g.size for g in groups}
        if n_remove > 0:
            flat = torch.cat([scores[g] for g in groups])
            owner = torch.cat([torch.full((g.size,), i) for i, g in enumerate(groups)])
            order = torch.argsort(flat, stable=True)
            removed = 0
            for index in order.tolist():
                if removed >= n_remove:
                    break
                g = groups[int(owner[index])]
                if counts[g] > 1:
                    counts[g] -= 1
                    removed += 1
    for g in groups:
        n_keep = _round_keep(counts[g], g.size, round_to if g.kind == "channel" else None)
        plan[g] = torch.argsort(scores[g], descending=True, stable=True)[:n_keep].sort().values
    return plan


@checked_arguments
def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance: Importance = "l2",
          scope: str = "global", round_to: int | None = None, ignore: Iterable[str] = (),
          optimizer: torch.optim.Optimizer | None = None, tracer: str = "auto", lossless_only: bool = False
          ) -> PruneReport:
    """Remove about ``ratio`` of the channels (and heads) of ``model`` in place; return a ``PruneReport``.

    ``ratio`` counts channels, not parameters. A conv (or Linear) whose input and output channels are both pruned
    keeps ``(1 - ratio)**2`` of its weights (``C_out * C_in * k * k``), so ``ratio=0.5`` removes about 75 % of the
    parameters of such layers, and of a plain CNN as a whole; the report's ``params_after`` gives the exact count.
    Pass ``round_to=8`` (or 16, 32) for widths that tensor cores and vectorised kernels run at full speed; odd
    widths such as 13 often save fewer milliseconds than parameters.

    Pruning costs accuracy; fine-tune afterwards at a small learning rate, with ``optimizer=`` so that its state
    (momentum, Adam moments) follows the kept channels::

        report = prune(model, example, ratio=0.5, round_to=8, optimizer=optimizer)
        for inputs, labels in loader:   # a few epochs, learning rate ~1/10 of the original
            optimizer.zero_grad(); F.cross_entropy(model(inputs), labels).backward(); optimizer.step()

    ``save_pruned(model, path)`` then writes the smaller model; ``load_pruned(path, model=YourNet())`` reads it.

    Args:
        model: any traceable model; it is modified in place (attention modules may be replaced).
        example_inputs: a Tensor, tuple or dict the model accepts (a small batch is enough).
        ratio: fraction of channels (units) to remove, in [0, 1); the fraction of parameters removed is larger (see
            above).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"`` (needs ``.grad``) or ``f(model, group)``.
        scope: ``"global"`` (rank normalised scores across groups) or ``"uniform"`` (the same fraction per group).
        round_to: keep a multiple of this many channels per group (heads are not rounded); 8 is a good default
            for GPUs.
        ignore: module names whose groups are left alone (e.g. the classifier, the stem).
        optimizer: rebound to the new parameters with sliced state.
        tracer: ``"auto"``, ``"fx"`` or ``"eager"`` (see ``trace_dependencies``).
        lossless_only: prune only groups marked ``lossless``. The default (False) also prunes lossy groups: the
            residual stream of a transformer (coupled to every LayerNorm/RMSNorm, embedding and position
            embedding), channels feeding a softmax or a non-zero-preserving op; removing their units changes
            outputs even when the units were zeroed first. ``True`` keeps those widths (hidden size) and prunes only
            exactly removable ones (heads, MLP widths, conv channels without LayerNorm).

    Raises:
        ValueError: bad ratio/scope/importance/round_to, unknown ignore names, inputs that do not run the model.
        UntraceableError: an op the tracer cannot map; the model is left unchanged.
    """
    ratio = _check_plan_arguments(ratio, importance, scope, round_to)  # before the (slow) trace
    ignore = check_ignore(model, ignore)
    graph = trace_dependencies(model, example_inputs, tracer)
    groups = [g for g in graph.groups if not is_ignored(g.modules, ignore) and (g.lossless or not lossless_only)]
    params_before, macs_before = count_params(model), count_macs(model, example_inputs)
    widths_before = layer_widths(model)
    plan = _plan(model, groups, ratio, importance, scope, round_to)
    prune_groups(model, plan, optimizer=optimizer, example_inputs=example_inputs)
    removed = sum(g.size - keep.numel() for g, keep in plan.items())
    return PruneReport(
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=count_macs(model, example_inputs),
        widths_before=widths_before, widths_after=layer_widths(model),
        groups_pruned=sum(1 for g, keep in plan.items() if keep.numel() < g.size),
        units_removed=removed, units_total=sum(g.size for g in groups), skipped=graph.skipped,
    )

