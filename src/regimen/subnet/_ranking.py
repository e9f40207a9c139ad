"""Package-internal: turn per-unit scores of dependency groups into keep plans (by count, or by a MAC budget).

Shared by ``polarization.py`` and ``random_search.py``; nothing here is public API.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from regimen.subnet.dependency import Group
from regimen.subnet.measure import count_macs
from regimen.subnet.prune import prune_groups

__all__ = ["plan_by_rank", "plan_to_macs"]


def plan_by_rank(scored: dict[Group, torch.Tensor], n_remove: int) -> dict[Group, torch.Tensor]:
    """Remove the ``n_remove`` lowest-scoring units across all groups (ties by position), at least one unit kept
    per group; ``{group: sorted kept units}``."""
    groups = list(scored)
    flat = torch.cat([scored[g].reshape(-1).float() for g in groups])
    owner = torch.cat([torch.full((scored[g].numel(),), i) for i, g in enumerate(groups)])
    position = torch.cat([torch.arange(scored[g].numel()) for g in groups])
    dropped: dict[Group, set[int]] = {g: set() for g in groups}
    removed = 0
    for index in torch.argsort(flat, stable=True).tolist():
        if removed >= n_remove:
            break
        g = groups[int(owner[index])]
        if len(dropped[g]) < scored[g].numel() - 1:
            dropped[g].add(int(position[index]))
            removed += 1
    return {g: torch.tensor([i for i in range(scored[g].numel()) if i not in dropped[g]], dtype=torch.long)
            for g in groups}


def plan_to_macs(model: nn.Module, example_inputs: Any, scored: dict[Group, torch.Tensor],
                 macs: float) -> dict[Group, torch.Tensor]:
    """The plan removing the fewest lowest-scoring units (binary search over the count, each trial on a copy of
    ``model``) whose pruned model has at most ``macs`` MACs per sample; the most-pruned plan if none fits."""
    total = sum(s.numel() for s in scored.values())
    low, high = 0, total
    best = None
    while low < high:
        mid = (low + high) // 2
        plan = plan_by_rank(scored, mid)
        trial = copy.deepcopy(model)
        prune_groups(trial, plan)
        if count_macs(trial, example_inputs) <= macs:
            high, best = mid, plan
        else:
            low = mid + 1
    return best if best is not None else plan_by_rank(scored, total)
