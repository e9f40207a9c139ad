"""Per-unit importance scores of a dependency group: magnitude (L1/L2), BatchNorm scale, first-order Taylor.

Scores are computed over every parameter slice of the group (the filters producing a channel *and* the columns
consuming it), reduced per slice, then averaged over slices ("group reduction = mean", as in DepGraph /
Torch-Pruning's ``GroupMagnitudeImportance``). For global ranking across groups, ``normalized_scores`` divides each
group's scores by their mean so that groups of different scale compete fairly.

* ``l1`` / ``l2``: ``sum |w|^p`` over the unit's positions (Li et al., "Pruning Filters for Efficient ConvNets",
  2017, arXiv 1608.08710).
* ``bn_scale``: ``|gamma|`` of the BatchNorm layers in the group (Liu et al., "Learning Efficient Convolutional Networks
  through Network Slimming", 2017, arXiv 1708.06519); groups without a BatchNorm fall back to ``l2``.
* ``taylor``: ``sum |w * dL/dw|`` (Molchanov et al., "Importance Estimation for Neural Network Pruning", 2019,
  arXiv 1906.10771); needs ``.grad`` on the parameters (run a backward pass first).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from regimen.method import checked_arguments
from regimen.subnet.dependency.group import Group, Slice

__all__ = ["IMPORTANCES", "Importance", "group_scores", "normalized_scores"]

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor")

Importance = str | Callable[[nn.Module, Group], torch.Tensor]


def check_importance(importance: Importance) -> Importance:
    """``importance`` if it is one of ``IMPORTANCES`` or a callable ``f(model, group) -> scores``; else ValueError."""
    if not callable(importance) and importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES} or a callable, got {importance!r}")
    return importance


def _per_unit(tensor: torch.Tensor, slice_: Slice) -> torch.Tensor:
    """``(U, k, rest)`` view of the unit positions of ``tensor`` along ``slice_.dim``."""
    moved = tensor.detach().movedim(slice_.dim, 0)
    return moved[slice_.indices.reshape(-1)].reshape(slice_.indices.shape[0], -1)


@checked_arguments
def group_scores(model: nn.Module, group: Group, importance: Importance = "l2") -> torch.Tensor:
    """Scores ``(group.size,)``, higher = more important.

    Raises:
        ValueError: unknown importance, or ``taylor`` without gradients.
    """
    if callable(importance):
        scores = torch.as_tensor(importance(model, group), dtype=torch.float32).reshape(-1)
        if scores.numel() != group.size:
            raise ValueError(f"importance callable returned {scores.numel()} scores for a group of {group.size}")
        return scores
    check_importance(importance)
    params = [s for s in group.slices if not s.is_buffer]
    if importance == "bn_scale":
        bn = [s for s in params if s.param == "weight"
              and isinstance(model.get_submodule(s.module), nn.modules.batchnorm._NormBase)]
        if bn:
            return torch.stack([_per_unit(s.tensor(model), s).abs().sum(1) for s in bn]).mean(0).float()
        importance = "l2"
    per_slice = []
    for s in params:
        tensor = s.tensor(model)
        if importance == "taylor":
            if tensor.grad is None:
                continue
            per_slice.append((_per_unit(tensor, s) * _per_unit(tensor.grad, s)).abs().sum(1))
        else:
            p = 1 if importance == "l1" else 2
            per_slice.append(_per_unit(tensor, s).abs().pow(p).sum(1))
    if not per_slice:
        if importance == "taylor":
            raise ValueError(
                f"importance='taylor' needs gradients: run a backward pass before pruning (group {group.name!r})"
            )
        return torch.zeros(group.size)
    return torch.stack(per_slice).mean(0).float()


@checked_arguments
def normalized_scores(model: nn.Module, group: Group, importance: Importance = "l2") -> torch.Tensor:
    """``group_scores`` divided by their mean (comparable across groups for global ranking)."""
    scores = group_scores(model, group, importance)
    return scores / (scores.mean() + 1e-12)
