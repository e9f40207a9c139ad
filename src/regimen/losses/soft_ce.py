"""Cross-entropy with soft targets (mixing, distillation), with optional label smoothing: the one home of the
soft-target losses.

L = -(1/N) sum_i sum_c q_ic log softmax(o_i)_c, where q = (1 - eps) * t + eps / C for label smoothing eps.
With one-hot ``t`` and ``eps`` this equals ``F.cross_entropy(o, y, label_smoothing=eps)``.

:func:`mixed_cross_entropy` is the loss of CutMix/MixUp's pair form ``(targets_a, targets_b, lam)``: cross-entropy
is linear in the target, so ``lam CE(o, a) + (1 - lam) CE(o, b) = CE(o, lam q(a) + (1 - lam) q(b))`` and it is
computed as :func:`soft_target_cross_entropy` of the mixed targets.

Multi-sample dropout's training output ``(K, N, C)`` is refused here with the loss to use instead
(:func:`regimen.losses.multi_sample_cross_entropy`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regimen._compat import renamed_arguments
from regimen.method import checked_arguments, require_same_device

__all__ = ["check_single_sample_logits", "classification_loss", "mixed_cross_entropy", "soft_target_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


@checked_arguments
def check_single_sample_logits(logits: torch.Tensor, target: torch.Tensor | None = None) -> None:
    """Raise ValueError for ``(K, N, C)`` logits of multi-sample dropout in training, naming the loss to use.

    A 3-D output is refused when the target has one row per sample (index ``(N,)`` or soft ``(N, C)``), which is
    what F.cross_entropy would fail on with a shape message; ``(N, C, d)`` logits with index targets ``(N, d)``
    (per-position cross-entropy, which torch supports) pass."""
    if logits.dim() != 3:
        return
    if target is not None and target.dim() == 2 and not target.is_floating_point():
        return
    raise ValueError(f"got (K, N, C) logits {tuple(logits.shape)} (multi-sample dropout in training): use "
                     "regimen.losses.multi_sample_cross_entropy, or the multi_sample_dropout Method, which flattens "
                     "them")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@renamed_arguments(targets="target")
@checked_arguments
def soft_target_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of ``logits (N, C)`` against probability ``target (N, C)`` (rows summing to 1)."""
    check_single_sample_logits(logits)
    require_same_device(logits=logits, target=target)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if target.shape != logits.shape:
        raise ValueError(f"target must have the shape of logits {tuple(logits.shape)}, got {tuple(target.shape)}")
    if not target.is_floating_point():
        raise TypeError(f"target must be a floating tensor of probabilities, got {target.dtype}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    _check_reduction(reduction)
    if label_smoothing > 0:
        target = target * (1.0 - label_smoothing) + label_smoothing / logits.shape[1]
    return _reduce(-(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1), reduction)


@renamed_arguments(targets="target")
@checked_arguments
def classification_loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                        reduction: str = "mean") -> torch.Tensor:
    """The trainer's default criterion: index ``target (N,)`` or soft ``target (N, C)``; ``reduction`` as in
    ``F.cross_entropy`` (``"none"`` gives the per-sample losses)."""
    check_single_sample_logits(logits, target)
    if not logits.is_floating_point():
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if target.dim() == 2 and target.is_floating_point():
        return soft_target_cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices (N,) or soft targets (N, C), got {target.dtype} "
                        f"{tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"target must be on the device of logits ({logits.device}), got {target.device}")
    _check_reduction(reduction)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction=reduction)


def _probabilities(target: torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    """Index ``(N,)`` targets as one-hot rows, soft ``(N, C)`` targets as they are (float32)."""
    if target.dim() == 2:
        if not target.is_floating_point():
            raise TypeError(f"{name}: soft targets (N, C) must be floating point, got {target.dtype}")
        return target.float()
    if target.dim() != 1 or target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class indices (N,) or probabilities (N, C), got {target.dtype} "
                        f"{tuple(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"{name} must be class indices in [0, {num_classes}), got values in "
                         f"[{target.min().item()}, {target.max().item()}]")
    return F.one_hot(target.long(), num_classes).float()


@renamed_arguments(targets_a="target_a", targets_b="target_b")
@checked_arguments
def mixed_cross_entropy(
    logits: torch.Tensor,
    target_a: torch.Tensor,
    target_b: torch.Tensor,
    lam: torch.Tensor | float,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """``lam_i CE(logits_i, a_i) + (1 - lam_i) CE(logits_i, b_i)``, reduced over ``i``, for index ``(N,)`` or soft
    ``(N, C)`` targets ``target_a``, ``target_b`` and weights ``lam`` (a number or ``(N,)``): the pair form of
    :func:`regimen.augment.cutmix` / :func:`regimen.augment.mixup` (``return_pair=True``). Computed as
    :func:`soft_target_cross_entropy` of ``lam q(a) + (1 - lam) q(b)`` (cross-entropy is linear in the target);
    ``targets_a=``/``targets_b=`` are the deprecated spellings."""
    check_single_sample_logits(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    n, num_classes = logits.shape
    for name, target in (("target_a", target_a), ("target_b", target_b)):
        if target.shape[:1] != (n,):
            raise ValueError(f"{name} must have {n} rows to match logits, got shape {tuple(target.shape)}")
    weight = torch.as_tensor(lam, dtype=torch.float32, device=logits.device)
    if weight.dim() > 1 or weight.numel() not in (1, n):
        raise ValueError(f"lam must be a number or have shape ({n},), got shape {tuple(weight.shape)}")
    weight = weight.expand(n).view(n, 1)
    a = _probabilities(target_a, num_classes, "target_a").to(logits.device)
    b = _probabilities(target_b, num_classes, "target_b").to(logits.device)
    return soft_target_cross_entropy(logits, weight * a + (1.0 - weight) * b, label_smoothing, reduction)
