"""From a finished label propagation to ``Group``s: units are merged elements; units touching the same set of
parameter slices form one group (their positions become the group's ``Slice.indices``)."""

from __future__ import annotations

from typing import Any

import torch

from regimen.subnet.dependency.group import AttentionSite, DependencyGraph, Group, Slice
from regimen.subnet.dependency.ops import tree_leaves
from regimen.subnet.dependency.propagate import Propagator

__all__ = ["build_graph"]

SliceKey = tuple[str, str, int]  # (module, param, dim)


def build_graph(prop: Propagator, output_labels: Any) -> DependencyGraph:
    """The ``DependencyGraph`` of a propagation whose model returned tensors labeled ``output_labels``."""
    for lab in tree_leaves(output_labels):
        if isinstance(lab, torch.Tensor):
            prop.block(lab, "model output")  # the model's outputs are never pruned
    _place_parameter_labels(prop)
    _merge_shared_positions(prop)
    _repair_grids(prop)
    _block_fixed_selections(prop)
    units, roles, order = _collect_units(prop)
    blocked = {prop.uf.find(int(v)) for t in prop.blocked for v in t.tolist()}
    inexact = {prop.uf.find(int(v)) for t in prop.inexact for v in t.tolist()}
    signatures: dict[tuple[SliceKey, ...], list[int]] = {}
    for root, slices in units.items():
        if root not in blocked:
            signatures.setdefault(tuple(sorted(slices, key=lambda k: order[k])), []).append(root)
    groups: list[Group] = []
    skipped = list(dict.fromkeys(prop.skipped))
    unit_of: dict[int, tuple[Group, int]] = {}
    for signature, roots in sorted(signatures.items(), key=lambda item: order[item[0][0]]):
        made = _make_group(prop, len(groups), signature, roots, units, roles, inexact, skipped)
        if made is not None:
            group, sorted_roots = made
            groups.append(group)
            unit_of.update({root: (group, i) for i, root in enumerate(sorted_roots)})
    _attach_attention_sites(prop, unit_of)
    return DependencyGraph(groups=groups, skipped=list(dict.fromkeys(skipped)))


def _attach_attention_sites(prop: Propagator, unit_of: dict[int, tuple[Group, int]]) -> None:
    """Tell each head group which modules call attention on its heads (their head counts follow pruning)."""
    for site in prop.head_sites:  # owner "" is the model itself
        q_roots = [prop.uf.find(int(e)) if e >= 0 else -1 for e in site.q_heads.tolist()]
        kv_roots = [prop.uf.find(int(e)) if e >= 0 else -1 for e in site.kv_heads.tolist()]
        for group in dict.fromkeys(unit_of[r][0] for r in q_roots + kv_roots if r in unit_of):
            def units(roots: list[int], group: Group = group) -> torch.Tensor:
                return torch.tensor([unit_of[r][1] if r in unit_of and unit_of[r][0] is group else -1 for r in roots],
                                    dtype=torch.long)

            group.attention = (*group.attention, AttentionSite(site.owner, units(q_roots), units(kv_roots),
                                                               site.head_dim))


def _block_fixed_selections(prop: Propagator) -> None:
    """Indexing that keeps fixed positions of a dim holding several units (``x[:, :3]`` of channels): after pruning
    those positions would hold other channels, so every channel of the indexed tensor is left alone."""
    for along, labels, where in prop.selections:
        roots = prop.uf.roots(along)
        if roots[roots >= 0].unique().numel() > 1:
            prop.block(labels, f"{where} keeps channels at positions fixed in the code; these channels are not "
                               "pruned")


def _repair_grids(prop: Propagator) -> None:
    """Views that cut a channel dim into a grid (heads x head_dim, groups x channels per group) only stay right after
    pruning when whole slices of the grid go: whole heads, or the same channel of every group. A grid whose units
    are not unions of whole slices along one dim gets them merged along every dim but the last (channel shuffle:
    channel ``j`` of every group is one unit)."""
    for _ in range(4):  # repairs merge elements, which can break another grid; a few passes settle it
        changed = False
        for grid, where in prop.grids:
            roots = prop.uf.roots(grid)
            if _slabs_along_some_dim(roots):
                continue
            columns = grid.reshape(-1, grid.shape[-1])
            for j in range(columns.shape[1]):
                prop.uf.union_all(columns[:, j])
            prop.skipped.append(f"view ({where}) cuts channels into a grid of {tuple(grid.shape)}: channel j of "
                                "every slice is pruned together")
            changed = True
        if not changed:
            return


def _slabs_along_some_dim(roots: torch.Tensor) -> bool:
    """Whether, for some dim ``d``, every slice ``roots[..., i, ...]`` (index ``i`` along ``d``) lies in one unit."""
    big = torch.iinfo(torch.long).max
    for dim in range(roots.ndim):
        moved = roots.movedim(dim, 0).reshape(roots.shape[dim], -1)
        high = moved.amax(dim=1)
        low = torch.where(moved >= 0, moved, torch.full_like(moved, big)).amin(dim=1)
        if bool(((high < 0) | (low == high)).all()):
            return True
    return False


def _place_parameter_labels(prop: Propagator) -> None:
    """Parameters used directly (class tokens, position embeddings): find the dim whose entries follow channels."""
    if not prop.attr_labels:
        return
    sizes: dict[int, int] = {}
    for element in range(len(prop.uf)):
        root = prop.uf.find(element)
        sizes[root] = sizes.get(root, 0) + 1
    for mname, pname, labels in prop.attr_labels.values():
        roots = prop.uf.roots(labels)
        if all(sizes[r] == 1 for r in roots.reshape(-1).tolist()):
            continue  # never combined with channel data
        found = None
        for dim in range(labels.ndim):
            if labels.shape[dim] < 2:
                continue
            moved = roots.movedim(dim, 0).reshape(labels.shape[dim], -1)
            if bool((moved == moved[:, :1]).all()):
                found = dim
                break
        if found is None:
            prop.block(roots, f"parameter {mname}.{pname}: entries do not follow one channel dim")
            continue
        per = roots.movedim(found, 0).reshape(labels.shape[found], -1)[:, 0]
        prop.touch(mname, pname, found, per, "out")


def _merge_shared_positions(prop: Propagator) -> None:
    """A tensor position belongs to one unit: merge every element recorded at the same position (shared modules)."""
    seen: dict[tuple[str, str, int, int], int] = {}
    for mname, pname, dim, positions, elements, _, _ in prop.touches:
        for pos, el in zip(positions.tolist(), elements.tolist(), strict=True):
            key = (mname, pname, dim, pos)
            if key in seen:
                prop.uf.union(seen[key], el)
            else:
                seen[key] = el


def _collect_units(prop: Propagator) -> tuple[dict[int, dict[SliceKey, set[int]]], dict[SliceKey, tuple[str, bool]],
                                              dict[SliceKey, int]]:
    """``{unit root: {slice key: positions}}``, each slice's ``(role, is_buffer)`` and its first-seen order."""
    units: dict[int, dict[SliceKey, set[int]]] = {}
    roles: dict[SliceKey, tuple[str, bool]] = {}
    order: dict[SliceKey, int] = {}
    find = prop.uf.find
    for mname, pname, dim, positions, elements, role, is_buffer in prop.touches:
        key = (mname, pname, dim)
        roles.setdefault(key, (role, is_buffer))
        order.setdefault(key, len(order))
        for pos, el in zip(positions.tolist(), elements.tolist(), strict=True):
            units.setdefault(find(el), {}).setdefault(key, set()).add(pos)
    return units, roles, order


def _make_group(prop: Propagator, group_id: int, signature: tuple[SliceKey, ...], roots: list[int],
                units: dict[int, dict[SliceKey, set[int]]], roles: dict[SliceKey, tuple[str, bool]],
                inexact: set[int], skipped: list[str]) -> tuple[Group, list[int]] | None:
    """The group of the units ``roots`` (which share ``signature``); None when it cannot be one (noted in skipped)."""
    first = signature[0]
    per_unit = {root: {key: sorted(units[root][key]) for key in signature} for root in roots}
    roots = sorted(roots, key=lambda r: per_unit[r][first][0])
    slices = []
    for key in signature:
        role, is_buffer = roles[key]
        name = key[0]
        if len({len(per_unit[r][key]) for r in roots}) != 1:
            owner = next((s.module for s in slices if s.role == "out"), slices[0].module if slices else name)
            skipped.append(f"group at {owner!r}: units occupy different numbers of positions")
            return None
        indices = torch.tensor([per_unit[r][key] for r in roots], dtype=torch.long)
        slices.append(Slice(key[0], key[1], key[2], indices, role, is_buffer))
    if not any(s.role == "out" for s in slices):
        return None  # nothing produces these units: consumers only (e.g. model inputs)
    name = next(s.module for s in slices if s.role == "out")
    group = Group(id=group_id, size=len(roots), slices=slices, kind=prop.uf.kind[roots[0]],
                  lossless=not any(r in inexact for r in roots), name=name,
                  modules=tuple(dict.fromkeys(s.module for s in slices)))
    return group, roots
