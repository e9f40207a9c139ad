"""Cross-entropy with soft targets (mixing, distillation), with optional label smoothing.

L = -(1/N) sum_i sum_c q_ic log softmax(o_i)_c, where q = (1 - eps) * t + eps / C for label smoothing eps.
With one-hot ``t`` and ``eps`` this equals ``F.cross_entropy(o, y, label_smoothing=eps)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regimen._compat import renamed_arguments

__all__ = ["classification_loss", "soft_target_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


@renamed_arguments(targets="target")
def soft_target_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of ``logits (N, C)`` against probability ``target (N, C)`` (rows summing to 1)."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating tensor of probabilities, got {target.dtype}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    loss = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


@renamed_arguments(targets="target")
def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> torch.Tensor:
    """The trainer's default criterion: index ``target (N,)`` or soft ``target (N, C)``; ``reduction`` as in
    ``F.cross_entropy`` (``"none"`` gives the per-sample losses)."""
    if target.dim() == 2 and target.is_floating_point():
        return soft_target_cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
