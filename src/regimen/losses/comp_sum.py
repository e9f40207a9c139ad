"""Comp-sum losses: the τ family that contains the sum-exponential loss, cross-entropy, generalised cross-entropy and
the mean absolute error.

Paper: Anqi Mao, Mehryar Mohri & Yutao Zhong, "Cross-Entropy Loss Functions: Theoretical Analysis and
Applications", ICML 2023, arXiv 2304.07288.

With the scores ``h`` of one example and its label ``y``, a comp-sum loss composes a non-decreasing ``Φ`` with the
sum of exponentiated score differences::

    u = Σ_{y' ≠ y} exp(h_{y'} − h_y)                   (so 1 / (1 + u) = softmax(h)_y = p_y)
    ℓ^τ(h, y) = Φ^τ(u),   Φ^τ(u) = log(1 + u)                          τ = 1
                          Φ^τ(u) = ((1 + u)^{1−τ} − 1) / (1 − τ)       τ ≥ 0, τ ≠ 1

and therefore, in terms of ``p_y``::

    ℓ^τ = −log p_y                       τ = 1   cross-entropy (logistic loss)
    ℓ^τ = (1 − p_y^{τ−1}) / (τ − 1)      τ ≠ 1
        τ = 0:        1/p_y − 1 = u      the sum-exponential loss
        τ ∈ (1, 2):   GCE with q = τ − 1 (Zhang & Sabuncu 2018: (1 − p_y^q) / q)
        τ = 2:        1 − p_y            the mean absolute error (‖e_y − p‖₁ = 2(1 − p_y), up to the factor 2)

ℓ^τ is continuous in τ (τ → 1 gives −log p_y) and decreasing in τ for a fixed ``p_y``; large τ bounds the loss
(ℓ ≤ 1/(τ−1) for τ > 1), which is what makes GCE and MAE robust to label noise, and slows learning of hard examples.

Computation: ``log p_y = log_softmax(h)_y`` (stable for any logits) and ``ℓ^τ = −expm1((τ−1) log p_y) / (τ−1)``
(``expm1`` keeps the value exact near τ = 1, where the two terms nearly cancel).

Pitfalls handled:
  * For τ < 1 the loss (and its gradient, ∝ p_y^{τ−1}) is unbounded as ``p_y → 0``: ``log p_y`` is clamped at
    ``min_log_prob`` (default −10, so p_y ≥ 4.5e-5) for τ < 1 only; an example beyond the floor stops contributing a
    gradient (it is then as if truncated). ``min_log_prob=None`` turns the floor off.
  * Soft targets ``q`` (mixing, label smoothing) use the expectation ``Σ_c q_c ℓ^τ(h, c)``, which is what the
    loss is for an index target drawn from ``q``; with a one-hot ``q`` it is the index form.
  * The adversarial "smooth adversarial comp-sum" losses of the paper are not implemented here.

The family's form (Φ^τ with τ = 0, 1, (1, 2), 2 giving sum-exponential, logistic, GCE, MAE) is the paper's as recalled:
the abstract (read) names CE, GCE and MAE as members; the equations of the paper could not be read here (see
reports/wave2/training_a.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from regimen.losses.soft_ce import check_single_sample_logits
from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = ["CompSumLoss", "CompSumLossMethod", "comp_sum_loss", "comp_sum_phi"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_tau(tau: object) -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float):
        raise TypeError(f"tau must be a float >= 0, got {type(tau).__name__}")
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite float >= 0 (0: sum-exponential, 1: cross-entropy, 2: MAE), got {tau}")
    return float(tau)


def _check_floor(min_log_prob: object) -> float | None:
    if min_log_prob is None:
        return None
    if isinstance(min_log_prob, bool) or not isinstance(min_log_prob, int | float):
        raise TypeError(f"min_log_prob must be a float < 0 or None, got {type(min_log_prob).__name__}")
    if not (min_log_prob < 0 and math.isfinite(min_log_prob)):
        raise ValueError(f"min_log_prob must be a finite float < 0 (a floor on log p_y) or None, got {min_log_prob}")
    return float(min_log_prob)


@checked_arguments
def comp_sum_phi(u: torch.Tensor, tau: float) -> torch.Tensor:
    """The paper's ``Φ^τ(u)``: ``log(1 + u)`` for τ = 1, ``((1 + u)^{1−τ} − 1) / (1 − τ)`` otherwise (``u ≥ 0``)."""
    tau = _check_tau(tau)
    if tau == 1.0:
        return torch.log1p(u)
    return torch.expm1((1.0 - tau) * torch.log1p(u)) / (1.0 - tau)


def _per_class_losses(log_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """ℓ^τ as a function of ``log p`` (element-wise)."""
    if tau == 1.0:
        return -log_probs
    return -torch.expm1((tau - 1.0) * log_probs) / (tau - 1.0)


@checked_arguments
def comp_sum_loss(logits: torch.Tensor, target: torch.Tensor, tau: float = 1.0, reduction: str = "mean",
                  min_log_prob: float | None = -10.0, label_smoothing: float = 0.0,
                  check_values: bool = True) -> torch.Tensor:
    """The comp-sum loss ``ℓ^τ = (1 − p_y^{τ−1}) / (τ − 1)`` (``−log p_y`` at τ = 1) of ``logits (N, C)``.

    Args:
        logits: ``(N, C)`` scores (any dtype; computed in fp32 or fp64).
        target: class indices ``(N,)`` or probabilities ``(N, C)`` (the loss is then ``Σ_c q_c ℓ^τ(h, c)``).
        tau: τ >= 0: 0 sum-exponential, 1 cross-entropy, (1, 2) GCE with q = τ − 1, 2 MAE.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per example).
        min_log_prob: floor on ``log p_y`` for τ < 1 (the loss is unbounded there); ``None``: no floor.
        label_smoothing: ε in [0, 1): the target becomes ``(1 − ε) q + ε / C``.
        check_values: check that index targets are in range (a look at the data, which ``torch.func`` transforms
            cannot do; the trainer's Method turns it off).

    Returns:
        the loss (scalar, or ``(N,)`` for ``reduction="none"``).
    """
    tau = _check_tau(tau)
    floor = _check_floor(min_log_prob)
    check_single_sample_logits(logits, target)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if check_values:
        require_data(logits=logits, target=target)
    require_same_device(logits=logits, target=target)
    n, classes = logits.shape
    work = logits if logits.dtype == torch.float64 else logits.float()
    log_probs = F.log_softmax(work, dim=1)
    if floor is not None and tau < 1.0:
        log_probs = log_probs.clamp(min=floor)
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    soft = target.dim() == 2 and target.is_floating_point()
    if soft:
        if target.shape != logits.shape:
            raise ValueError(f"soft target must have the shape of logits {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}")
        q = target.to(work.dtype)
    else:
        if target.shape != (n,) or target.is_floating_point() or target.dtype == torch.bool:
            raise TypeError(f"target must be class indices (N,) = ({n},) or probabilities (N, C), got {target.dtype} "
                            f"{tuple(target.shape)}")
        if check_values and n and (int(target.min()) < 0 or int(target.max()) >= classes):
            raise ValueError(f"target values must be in [0, {classes}), got values in [{int(target.min())}, "
                             f"{int(target.max())}]")
        q = None
    if label_smoothing > 0:
        q = F.one_hot(target.long(), classes).to(work.dtype) if q is None else q
        q = q * (1.0 - label_smoothing) + label_smoothing / classes
    if q is None:
        per_example = _per_class_losses(log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1), tau)
    else:
        per_example = (q * _per_class_losses(log_probs, tau)).sum(dim=1)
    if reduction == "mean":
        return per_example.mean()
    if reduction == "sum":
        return per_example.sum()
    return per_example


@checked_arguments
class CompSumLoss(nn.Module):
    """Module form of :func:`comp_sum_loss`: ``CompSumLoss(tau)(logits, target)``."""

    def __init__(self, tau: float = 1.0, reduction: str = "mean", min_log_prob: float | None = -10.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.tau = _check_tau(tau)
        self.min_log_prob = _check_floor(min_log_prob)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return comp_sum_loss(logits, target, self.tau, self.reduction, self.min_log_prob, self.label_smoothing)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}"


@register_method
class CompSumLossMethod(Method):
    """Train with a comp-sum loss ℓ^τ instead of cross-entropy (Mao, Mohri & Zhong 2023): τ = 0 sum-exponential,
    1 cross-entropy, (1, 2) generalised cross-entropy, 2 mean absolute error.

    A ``criterion`` link that *replaces* the task's loss (it never calls ``next``), so criterion wrappers
    (``logit_z_loss``) are listed before it; it cannot share a recipe with the other loss replacement ``z_loss``.
    Soft targets (CutMix/MixUp) use the expectation over the target; the task's ``train.label_smoothing`` applies.

    Args:
        tau: τ >= 0 (paper's family; 1 is cross-entropy).
        min_log_prob: floor on log p_y for τ < 1 (the loss is unbounded there); ``None`` for none.
    """

    name = "comp_sum"
    paper_id = "arXiv:2304.07288"
    claim = ("comp-sum losses (cross-entropy, GCE, MAE, sum-exponential) admit H-consistency bounds; empirically their "
             "accuracy differs with the minimizability gap, cross-entropy-like losses performing best on clean data")
    claimed_effect = "no_worse"
    targets = ("labels",)
    after = ("logit_z_loss",)
    conflicts = ("z_loss",)
    constraint_reason = ("comp_sum replaces the criterion, so criterion wrappers (logit_z_loss) come first, and it "
                         "cannot share a recipe with the other replacement, z_loss")

    def __init__(self, tau: float = 1.5, min_log_prob: float | None = -10.0) -> None:
        self.tau = _check_tau(tau)
        self.min_log_prob = _check_floor(min_log_prob)

    def criterion(self, output: torch.Tensor, target: torch.Tensor, next, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        return comp_sum_loss(output, target, self.tau, reduction, self.min_log_prob, ctx.run.label_smoothing,
                             check_values=False)
