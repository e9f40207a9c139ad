"""Learning from aggregate responses: bag-level, instance-level and interpolating losses.

Paper: Javanmard, Chen, Mirrokni, Badanidiyuru & Fu, "Learning from Aggregate Responses: Instance Level versus Bag
Level Loss Functions", ICLR 2024, arXiv 2401.11081.

The training data come in bags a of k_a samples labelled only by their mean response ȳ_a. With predictions f_i and
bag means f̄_a = (1/k_a) Σ_{i ∈ a} f_i, the squared instance-level loss splits exactly into the bag-level loss plus
the within-bag spread of the predictions::

    (1/k) Σ_{i ∈ a} (ȳ_a - f_i)²  =  (ȳ_a - f̄_a)²  +  (1/k) Σ_{i ∈ a} (f_i - f̄_a)²

so the instance-level loss is the bag-level loss plus a regulariser. The paper's interpolating estimator weighs it::

    L_ρ(a) = (ȳ_a - f̄_a)² + ρ · (1/k_a) Σ_{i ∈ a} (f_i - f̄_a)²

ρ = 0 is the bag-level loss (unbiased for random bags, high variance), ρ = 1 the instance-level loss (biased, lower
variance); the paper shows an interior ρ trades the two off (its exact parameterisation is not restated here: the
form above is the identity's natural interpolation). The reduction averages over bags. Evaluation is per instance.

Pitfalls: the bag loss is unbiased only for *random* bags (the regression task's bags are a seeded random
partition); a bag with no members has no mean and is refused.
"""

from __future__ import annotations

import torch

from regimen.method import Context, Method, checked_arguments, register_method, require_same_device

__all__ = ["AggregateLossMethod", "aggregate_loss"]


@checked_arguments
def aggregate_loss(prediction: torch.Tensor, bags: torch.Tensor, bag_targets: torch.Tensor, rho: float = 0.0,
                   reduction: str = "mean") -> torch.Tensor:
    """``L_ρ`` of each bag (module docstring) for bags of any sizes.

    Args:
        prediction: ``(n,)`` instance predictions f_i.
        bags: ``(n,)`` int64 bag index of each instance, in ``[0, B)``.
        bag_targets: ``(B,)`` the bags' mean responses ȳ_a.
        rho: ρ >= 0 (0: bag-level, 1: instance-level).
        reduction: ``"mean"`` over bags, ``"sum"`` or ``"none"`` (``(B,)``).
    """
    require_same_device(prediction=prediction, bags=bags, bag_targets=bag_targets)
    if prediction.dim() != 1 or bags.dim() != 1 or prediction.shape != bags.shape:
        raise ValueError(f"prediction and bags must be (n,) each, got {tuple(prediction.shape)} and "
                         f"{tuple(bags.shape)}")
    if bags.dtype != torch.int64 or bag_targets.dim() != 1:
        raise ValueError("bags must be int64 (n,) and bag_targets (B,)")
    if not rho >= 0:
        raise ValueError(f"rho must be >= 0, got {rho}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    b = bag_targets.shape[0]
    if len(bags) and (bags.min() < 0 or bags.max() >= b):
        raise ValueError(f"bags: indices must lie in [0, {b}), got [{int(bags.min())}, {int(bags.max())}]")
    sizes = torch.bincount(bags, minlength=b)
    empty = (sizes == 0).nonzero()
    if len(empty):
        raise ValueError(f"bags: bag {int(empty[0, 0])} has no members")
    f = prediction.float()
    means = torch.zeros(b, device=f.device).index_add_(0, bags, f) / sizes
    spread = torch.zeros(b, device=f.device).index_add_(0, bags, (f - means[bags]).square()) / sizes
    per_bag = (bag_targets.float() - means).square() + rho * spread
    if reduction == "none":
        return per_bag
    return per_bag.sum() if reduction == "sum" else per_bag.mean()


@register_method
class AggregateLossMethod(Method):
    """Train on bag-mean labels with the interpolating aggregate loss L_ρ (ρ = 0 bag-level, 1 instance-level)."""

    name = "aggregate_loss"
    paper_id = "arXiv:2401.11081"
    claim = ("the bag-level loss is unbiased, the instance-level loss is a regularised (biased, lower-variance) bag "
             "loss, and an interpolation between them beats both endpoints in instance-level test error")
    claimed_effect = "better"
    targets = ("real",)

    def __init__(self, rho: float = 0.0) -> None:
        if isinstance(rho, bool) or not isinstance(rho, int | float) or not rho >= 0:
            raise ValueError(f"aggregate_loss: rho must be a number >= 0, got {rho!r}")
        self.rho = float(rho)

    def criterion(self, output, target, next, ctx: Context, reduction: str = "mean"):
        if not isinstance(output, torch.Tensor) or output.dim() != target.dim() + 1:
            return next(output, target, reduction=reduction)  # instance labels, not bags: the task's loss
        b, k = output.shape
        bags = torch.arange(b, device=output.device).repeat_interleave(k)
        return aggregate_loss(output.reshape(-1), bags, target, self.rho, reduction=reduction)
