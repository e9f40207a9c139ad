"""Structured pruning with physical removal of channels (and attention heads), carrying the optimizer state over.

``prune(model, example_inputs, ratio=0.5)`` traces the model into dependency groups (``graph.py``), scores every unit
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
  surgery, and any failure restores the modules and leaves the optimizer untouched.
* A unit is exactly removable when its ``"out"`` slices (filter, bias, BN gamma **and** beta) are zero and the group is
  ``lossless``; zeroing only the filters still leaves ``beta`` flowing (see ``graph.zero_units``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.subnet._modules import check_ignore as _check_ignore
from regimen.subnet.graph import Group, _run_model, evaluating, normalize_inputs, trace_dependencies
from regimen.subnet.importance import IMPORTANCES, Importance, normalized_scores

__all__ = [
    "PruneReport",
    "PrunedMultiheadAttention",
    "count_macs",
    "count_params",
    "layer_widths",
    "plan_pruning",
    "prune",
    "prune_groups",
]


class PrunedMultiheadAttention(nn.Module):
    """Packed multi-head self-attention whose inner width ``num_heads * head_dim`` may differ from ``embed_dim``.

    Same parameter names and forward signature as ``nn.MultiheadAttention`` (``in_proj_weight (3*inner, embed_dim)``,
    ``in_proj_bias``, ``out_proj``), so state dicts line up; returns ``(output, weights or None)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1 or embed_dim < 1:
            raise ValueError(f"embed_dim, num_heads and head_dim must be >= 1, got {embed_dim}, {num_heads}, "
                             f"{head_dim}")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, _ = query.shape
        source = key.shape[1]
        inner = self.num_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(inner)
        q = F.linear(query, w_q, b_q).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(batch, self.num_heads, length, source)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(batch, 1, 1, source)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        attn = scores.softmax(dim=-1)
        weights = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(batch, length, inner)
        out = self.out_proj(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            weights = weights.squeeze(0)
        return out, weights


# --------------------------------------------------------------------------------------------------------------------
# measuring


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates per sample of one forward pass (conv, linear, attention), measured with hooks."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(module, nn.modules.conv._ConvNd):
            kernel = math.prod(module.kernel_size)
            if module.transposed:
                total[0] += inputs[0].numel() * (module.out_channels // module.groups) * kernel
            else:
                total[0] += out.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features
        elif isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
            inner = module.num_heads * module.head_dim
            tokens = inputs[0].numel() // module.embed_dim
            source = inputs[1].numel() // module.embed_dim
            length = inputs[0].shape[1 if module.batch_first else 0] if inputs[0].dim() == 3 else inputs[0].shape[0]
            src_len = inputs[1].shape[1 if module.batch_first else 0] if inputs[1].dim() == 3 else inputs[1].shape[0]
            total[0] += tokens * module.embed_dim * inner + 2 * source * module.embed_dim * inner
            total[0] += 2 * tokens * src_len * inner + tokens * inner * module.embed_dim
            del length

    handles = []
    skip: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
            skip.add(id(module.out_proj))
    for module in model.modules():
        if id(module) in skip:
            continue
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear | nn.MultiheadAttention | PrunedMultiheadAttention):
            handles.append(module.register_forward_hook(hook))
    args, _ = normalize_inputs(example_inputs)
    try:
        with evaluating(model):
            _run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else 1
    return total[0] // max(batch, 1)


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer and number of heads of every attention layer."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
        elif isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
            widths[name + " (heads)"] = module.num_heads
    return widths


@dataclass
class PruneReport:
    """What ``prune`` did: parameters and MACs (per sample) before/after, per-layer widths, groups pruned."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    groups_pruned: int
    units_removed: int
    units_total: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%})",
            f"MACs/sample {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_after / max(self.macs_before, 1):.1%})",
            f"units removed {self.units_removed}/{self.units_total} in {self.groups_pruned} groups",
            f"{'layer':<40} {'before':>7} {'after':>7}",
        ]
        for name, before in self.widths_before.items():
            after = self.widths_after.get(name, before)
            lines.append(f"{name or '<root>':<40} {before:>7} {after:>7}{'' if after == before else '  *'}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# surgery


def _module_info(module: nn.Module) -> dict[str, Any]:
    if isinstance(module, nn.modules.conv._ConvNd):
        ipg = module.in_channels // module.groups
        opg = module.out_channels // module.groups
        return {"depthwise": (not module.transposed) and module.groups > 1 and ipg == 1, "opg": opg}
    if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
        return {"head_dim": module.head_dim}
    return {}


def _fix_module(module: nn.Module, info: dict[str, Any]) -> None:
    """Update a module's size attributes from its (already sliced) tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight
        if module.transposed:
            module.in_channels = weight.shape[0]
            module.out_channels = weight.shape[1] * module.groups
        elif info.get("depthwise"):
            module.out_channels = weight.shape[0]
            module.groups = module.out_channels // info["opg"]
            module.in_channels = module.groups
        else:
            module.out_channels = weight.shape[0]
            module.in_channels = weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        tensor = module.weight if module.weight is not None else module.running_mean
        if tensor is not None:
            module.num_features = tensor.shape[0]
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)
    elif isinstance(module, nn.Embedding):
        module.embedding_dim = module.weight.shape[1]
    elif isinstance(module, nn.PReLU):
        module.num_parameters = module.weight.numel()
    elif isinstance(module, PrunedMultiheadAttention):
        module.embed_dim = module.in_proj_weight.shape[1]
        module.num_heads = module.in_proj_weight.shape[0] // (3 * module.head_dim)


def _to_pruned_attention(mha: nn.MultiheadAttention, head_dim: int) -> PrunedMultiheadAttention:
    new = PrunedMultiheadAttention.__new__(PrunedMultiheadAttention)
    nn.Module.__init__(new)
    new.embed_dim = mha.in_proj_weight.shape[1]
    new.head_dim = head_dim
    new.num_heads = mha.in_proj_weight.shape[0] // (3 * head_dim)
    new.dropout, new.batch_first = mha.dropout, mha.batch_first
    new.in_proj_weight = mha.in_proj_weight
    new.register_parameter("in_proj_bias", mha.in_proj_bias)
    new.out_proj = mha.out_proj
    new.train(mha.training)
    return new


class _Snapshot:
    """Saves every module's attribute dict so a failed surgery can be undone exactly."""

    def __init__(self, model: nn.Module) -> None:
        self.saved = []
        for module in model.modules():
            state = dict(module.__dict__)
            for key in ("_parameters", "_buffers", "_modules"):
                state[key] = dict(module.__dict__[key])
            self.saved.append((module, state))

    def restore(self) -> None:
        for module, state in self.saved:
            module.__dict__.clear()
            module.__dict__.update(state)


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
    removals: dict[int, dict[int, set[int]]] = {}
    tensors: dict[int, torch.Tensor] = {}
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
            tensors[id(tensor)] = tensor
            removals.setdefault(id(tensor), {}).setdefault(s.dim, set()).update(group.positions(s, dropped).tolist())
            touched[s.module] = module
            if s.module.endswith("out_proj"):  # the attention module owning a projection changes as well
                parent = s.module.rpartition(".")[0]
                owner = model.get_submodule(parent) if parent else model
                if isinstance(owner, nn.MultiheadAttention | PrunedMultiheadAttention):
                    touched[parent] = owner
    if not removals:
        return model
    infos = {name: _module_info(module) for name, module in touched.items()}
    snapshot = _Snapshot(model)
    replaced: dict[int, tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]]]] = {}
    try:
        for key, dims in removals.items():
            old = tensors[key]
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
        for module in model.modules():
            for store in (module._parameters, module._buffers):
                for pname, value in list(store.items()):
                    if value is not None and id(value) in replaced:
                        store[pname] = replaced[id(value)][1]
        for name, module in touched.items():
            _fix_module(module, infos[name])
        for name, module in touched.items():
            if isinstance(module, nn.MultiheadAttention):
                model.set_submodule(name, _to_pruned_attention(module, infos[name]["head_dim"]))
        if example_inputs is not None:
            with evaluating(model):
                _run_model(model, example_inputs)
    except Exception:
        snapshot.restore()
        raise
    if optimizer is not None:
        _rebind_optimizer(optimizer, replaced)
    return model


def _slice_like(value: Any, old: torch.Tensor, kept: list[tuple[int, torch.Tensor]]) -> Any:
    if isinstance(value, torch.Tensor) and value.shape == old.shape and value.dim() > 0:
        out = value
        for dim, keep in kept:
            out = out.index_select(dim, keep.to(out.device))
        return out.clone()
    return value


def _rebind_optimizer(optimizer: torch.optim.Optimizer,
                      replaced: dict[int, tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]]]]) -> None:
    for param_group in optimizer.param_groups:
        params = param_group["params"]
        for index, param in enumerate(params):
            if id(param) in replaced:
                old, new, kept = replaced[id(param)]
                params[index] = new
                state = optimizer.state.pop(old, None)
                if state is not None:
                    optimizer.state[new] = {k: _slice_like(v, old, kept) for k, v in state.items()}


# --------------------------------------------------------------------------------------------------------------------
# the pruning API


def _is_ignored(group: Group, ignore: tuple[str, ...]) -> bool:
    return any(m == name or m.startswith(name + ".") or name == "" for m in group.modules for name in ignore)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def _round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    n_keep = max(1, min(size, n_keep))
    if round_to and round_to > 1:
        if size < round_to:
            return size
        n_keep = max(round_to, int(round(n_keep / round_to)) * round_to)
        n_keep = min(n_keep, size - size % round_to if size % round_to else size)
    return n_keep


def plan_pruning(model: nn.Module, groups: Sequence[Group], ratio: float, importance: Importance = "l2",
                 scope: str = "global", round_to: int | None = None) -> dict[Group, torch.Tensor]:
    """Choose the units to keep in each group: ``{group: keep_units}`` (sorted), removing about ``ratio`` of units."""
    ratio = _check_ratio(ratio)
    if scope not in ("global", "uniform"):
        raise ValueError(f"scope must be 'global' or 'uniform', got {scope!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be None or an int >= 1, got {round_to!r}")
    if not callable(importance) and importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES} or a callable, got {importance!r}")
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


def prune(model: nn.Module, example_inputs: Any, ratio: float = 0.5, importance: Importance = "l2",
          scope: str = "global", round_to: int | None = None, ignore: Iterable[str] = (),
          optimizer: torch.optim.Optimizer | None = None, tracer: str = "auto", lossless_only: bool = False
          ) -> PruneReport:
    """Remove about ``ratio`` of the channels (and heads) of ``model`` in place; return a ``PruneReport``.

    Args:
        model: any traceable model; it is modified in place (attention modules may be replaced).
        example_inputs: a Tensor, tuple or dict the model accepts (a small batch is enough).
        ratio: fraction of units to remove, in [0, 1).
        importance: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"`` (needs ``.grad``) or ``f(model, group)``.
        scope: ``"global"`` (rank normalised scores across groups) or ``"uniform"`` (the same fraction per group).
        round_to: keep a multiple of this many channels per group (heads are not rounded).
        ignore: module names whose groups are left alone (e.g. the classifier, the stem).
        optimizer: rebound to the new parameters with sliced state.
        tracer: ``"auto"``, ``"fx"`` or ``"eager"`` (see ``graph.trace_dependencies``).
        lossless_only: prune only groups marked ``lossless``.

    Raises:
        ValueError: bad ratio/scope/importance/round_to, unknown ignore names, inputs that do not run the model.
        UntraceableError: an op the tracer cannot map; the model is left unchanged.
    """
    ratio = _check_ratio(ratio)
    ignore = _check_ignore(model, ignore)
    if scope not in ("global", "uniform"):
        raise ValueError(f"scope must be 'global' or 'uniform', got {scope!r}")
    if not callable(importance) and importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES} or a callable, got {importance!r}")
    graph = trace_dependencies(model, example_inputs, tracer)
    groups = [g for g in graph.groups if not _is_ignored(g, ignore) and (g.lossless or not lossless_only)]
    params_before, macs_before = count_params(model), count_macs(model, example_inputs)
    widths_before = layer_widths(model)
    plan = plan_pruning(model, groups, ratio, importance, scope, round_to)
    prune_groups(model, plan, optimizer=optimizer, example_inputs=example_inputs)
    removed = sum(g.size - keep.numel() for g, keep in plan.items())
    return PruneReport(
        params_before=params_before, params_after=count_params(model),
        macs_before=macs_before, macs_after=count_macs(model, example_inputs),
        widths_before=widths_before, widths_after=layer_widths(model),
        groups_pruned=sum(1 for g, keep in plan.items() if keep.numel() < g.size),
        units_removed=removed, units_total=sum(g.size for g in groups), skipped=graph.skipped,
    )

