"""Loss of multi-sample dropout (Inoue 2019, "Multi-Sample Dropout for Accelerated Training and Better
Generalization", arXiv 1905.09788).

L = (1/K) sum_k CE(z_k, y) over the K dropout samples' logits z_k. The paper averages the K *losses*; averaging
the logits first (``average="logits"``) is a different objective, offered only under that explicit name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regimen.losses.soft_ce import classification_loss
from regimen.method import checked_arguments, require_same_device

__all__ = ["multi_sample_cross_entropy"]


@checked_arguments
def multi_sample_cross_entropy(
    logits_k: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, average: str = "losses"
) -> torch.Tensor:
    """Mean over K of the cross-entropy of ``logits_k (K, N, C)`` against index ``(N,)`` or soft ``(N, C)`` targets."""
    require_same_device(logits_k=logits_k, target=target)
    if logits_k.dim() != 3:
        raise ValueError(f"logits_k must be (K, N, C), got shape {tuple(logits_k.shape)}")
    if not logits_k.is_floating_point():
        raise TypeError(f"logits_k must be floating point, got {logits_k.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    num_samples, batch, classes = logits_k.shape
    if target.shape[0] != batch:
        raise ValueError(f"target must have {batch} rows to match logits_k, got shape {tuple(target.shape)}")
    if average == "logits":
        return classification_loss(logits_k.mean(dim=0), target, label_smoothing)
    if average != "losses":
        raise ValueError(f"average must be 'losses' (the paper) or 'logits', got {average!r}")
    flat = logits_k.reshape(num_samples * batch, classes)
    if target.dim() == 1:
        if target.is_floating_point():
            raise TypeError(f"index targets must be integer, got {target.dtype}")
        return F.cross_entropy(flat, target.repeat(num_samples), label_smoothing=label_smoothing)
    return classification_loss(flat, target.repeat(num_samples, 1), label_smoothing)
