"""Package-internal helpers for unstructured (weight-level) sparsity: the prunable layers of a model, the sparsity
argument check, magnitude masks and re-applying masks after an optimizer step.

Shared by ``lottery_jackpots.py``, ``layer_dp.py`` and ``tscnc.py``. Nothing here is public API.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from regimen.subnet._common import unignored_modules

__all__ = ["apply_masks", "check_sparsity", "global_magnitude_masks", "magnitude_mask", "nonzero_params",
           "prunable_layers"]

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def check_sparsity(sparsity: object, name: str = "sparsity") -> float:
    """``sparsity`` (a fraction of weights to remove) as a float in [0, 1); anything else is a ``ValueError``."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0.0 <= float(sparsity) < 1.0 \
            or math.isnan(float(sparsity)):
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def prunable_layers(model: nn.Module, ignore: Iterable[str] = (),
                    skip_last: bool = False) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every Conv/Linear outside ``ignore``, in registration order; ``skip_last`` leaves out
    the last one (the classifier, which Lottery Jackpots keeps dense)."""
    layers = [(name, m) for name, m in unignored_modules(model, ignore) if isinstance(m, _PRUNABLE)
              and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if skip_last and layers:
        layers = layers[:-1]
    return layers


def magnitude_mask(weight: torch.Tensor, amount: float) -> torch.Tensor:
    """Boolean mask that zeroes the ``floor(amount * n)`` smallest ``|w|`` (ties broken by position)."""
    n = weight.numel()
    k = int(math.floor(amount * n + 1e-9))
    mask = torch.ones(n, dtype=torch.bool, device=weight.device)
    if k > 0:
        order = torch.sort(weight.detach().abs().reshape(-1), stable=True).indices
        mask[order[:k]] = False
    return mask.reshape(weight.shape)


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global ``|w|`` ranking over all tensors: the ``floor(sparsity * N)`` smallest are masked out."""
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().reshape(-1) for n in names]) if names else torch.zeros(0)
    k = int(math.floor(sparsity * flat.numel() + 1e-9))
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if k > 0:
        keep[torch.sort(flat, stable=True).indices[:k]] = False
    masks, start = {}, 0
    for n in names:
        size = weights[n].numel()
        masks[n] = keep[start:start + size].reshape(weights[n].shape).to(weights[n].device)
        start += size
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the masked-out weights of each named layer, in place."""
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        weight.mul_(mask.to(weight.dtype))


def nonzero_params(model: nn.Module) -> int:
    """Parameters that are not exactly zero (shared parameters counted once)."""
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
