"""Two different losses that are both called "z-loss", named apart.

1. **Z-loss** (spherical family): de Brébisson & Vincent, "The Z-loss: a shift and scale invariant classification
   loss belonging to the Spherical Family", 2016, arXiv 1604.08859. With the C outputs ``o`` of one example::

       μ = (1/C) Σ_c o_c,   σ = sqrt((1/C) Σ_c o_c² − μ²)   (population std, as in the paper)
       z_c = (o_c − μ) / σ
       L_Z(o, y) = (1/a) log(1 + exp(a (b − z_y))) = softplus_a(b − z_y)

   It depends on o only through Σ o, Σ o² and o_y (so it is in the spherical family and admits output-size-
   independent exact updates), and it is invariant to shifting and (positively) scaling the logits — like the
   top-k metrics it targets. ``b`` is the z-score the target should reach, ``a`` the sharpness of the hinge. Note
   that z_y ≤ sqrt(C − 1) for any logits, so with few classes a ``b`` above that bound never saturates and the loss
   behaves like a smooth linear "raise the target's z-score" objective. It replaces cross-entropy.

   The paper treats ``a`` and ``b`` as hyper-parameters tuned per task; the defaults ``a = 0.1, b = 10`` are a
   starting point to tune like a learning rate (where they come from: ``reports/losses/README.md``).

2. **Logit z-loss** (PaLM, Chowdhery et al. 2022, arXiv 2204.02311; ST-MoE, Zoph et al. 2022, arXiv 2202.08906):
   the regulariser ``z_loss_coef · (log Σ_j e^{o_j})²`` that pulls the softmax normaliser towards 1 for stability. It is
   *added* to cross-entropy, computed in fp32 and masked exactly like the cross-entropy (``ignore_index``).

Pitfalls handled: σ = 0 (all logits equal, e.g. a zero-initialised classifier) would divide by zero, so the
variance gets ``eps`` (default 1e-6, negligible next to any trained logit spread; exact invariance holds for
σ² ≫ eps); both losses work in fp32 whatever the logits' dtype; NaN/inf logits, targets out of range and
mismatched shapes raise ``ValueError``; soft (mixed) targets are rejected by the Z-loss since it is defined for an
index target only. The class dimension is the **last** dimension (``(N, C)`` or ``(B, T, C)``).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import renamed_arguments
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["LogitZLoss", "LogitZLossMethod", "ZLoss", "ZLossMethod", "logit_z_loss", "z_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _check_logits(logits: torch.Tensor, name: str = "logits", check_values: bool = True) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {getattr(logits, 'dtype', type(logits))}")
    if logits.dim() < 1:
        raise ValueError(f"{name} must have a class dimension (last), got a scalar")
    if check_values:
        require_data(**{name: logits})
    if check_values and not torch.isfinite(logits).all():
        raise ValueError(f"{name} contain NaN or inf ({int((~torch.isfinite(logits)).sum())} entries)")


def _valid_mask(target: torch.Tensor, logits: torch.Tensor, ignore_index: int,
                check_values: bool = True) -> torch.Tensor:
    """Boolean mask of non-ignored rows; checks target dtype, shape and (``check_values``) range."""
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(
            f"target must be an integer tensor of class indices, got {getattr(target, 'dtype', type(target))}"
        )
    if check_values:
        require_data(target=target)
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"target shape {tuple(target.shape)} must equal logits.shape[:-1] {tuple(logits.shape[:-1])}")
    classes = logits.shape[-1]
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= classes))
    if check_values and bad.any():
        raise ValueError(
            f"target values must be in [0, {classes}) or ignore_index={ignore_index}; got e.g. {int(target[bad][0])}"
        )
    return valid


def _reduce(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    per_row = torch.where(valid, per_row, torch.zeros_like(per_row))
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / valid.sum()  # nan when every row is ignored, as F.cross_entropy


@checked_arguments
def z_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    a: float = 0.1,
    b: float = 10.0,
    reduction: str = "mean",
    ignore_index: int = -100,
    eps: float = 1e-6,
    check_values: bool = True,
) -> torch.Tensor:
    """Spherical-family Z-loss ``(1/a) log(1 + exp(a (b − z_y)))`` with ``z = (o − mean(o)) / std(o)``.

    Args:
        logits: ``(..., C)`` pre-activations, C >= 2.
        target: integer class indices of shape ``logits.shape[:-1]`` (``ignore_index`` rows are skipped).
        a: sharpness (> 0); large ``a`` approaches the hinge ``max(0, b − z_y)``.
        b: target z-score. The paper tunes (a, b) per task; with C classes z_y <= sqrt(C − 1), so choose b near or
            below that bound for a loss that saturates once the target clearly stands out. The defaults (0.1, 10)
            give a smooth, non-saturating objective for small C.
        reduction: ``"mean"`` over non-ignored rows, ``"sum"`` or ``"none"``.
        ignore_index: target value to skip.
        eps: added to the variance so equal logits (σ = 0) give a finite loss.
        check_values: reject NaN/inf logits and out-of-range targets. These checks look at the data, which
            ``torch.func`` transforms (``vmap``) cannot; the trainer's Methods turn them off (the trainer checks the
            loss for NaN itself).

    Returns:
        fp32 loss (scalar, or shape of ``target`` for ``reduction="none"``).
    """
    _check_logits(logits, check_values=check_values)
    if logits.shape[-1] < 2:
        raise ValueError(f"z_loss needs at least 2 classes, got logits with last dimension {logits.shape[-1]}")
    if not a > 0:
        raise ValueError(f"a must be > 0, got {a}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    valid = _valid_mask(target, logits, ignore_index, check_values)
    o = logits.float()
    mu = o.mean(dim=-1, keepdim=True)
    var = o.var(dim=-1, unbiased=False, keepdim=True)
    o_y = o.gather(-1, target.clamp(0, o.shape[-1] - 1).long().unsqueeze(-1))
    z_y = ((o_y - mu) / torch.sqrt(var + eps)).squeeze(-1)
    per_row = F.softplus(b - z_y, beta=a, threshold=20.0)
    return _reduce(per_row, valid, reduction)


@renamed_arguments(coef="z_loss_coef")
def logit_z_loss(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    z_loss_coef: float = 1e-4,
    ignore_index: int = -100,
    reduction: str = "mean",
    check_values: bool = True,
) -> torch.Tensor:
    """The logit z-loss regulariser ``z_loss_coef · (log Σ_j exp(o_j))²`` (PaLM / ST-MoE), in fp32.

    Args:
        logits: ``(..., C)`` logits.
        target: optional integer targets of shape ``logits.shape[:-1]``, only used for the mask (rows equal to
            ``ignore_index`` are dropped, exactly like the cross-entropy they accompany); ``None`` keeps every row.
        z_loss_coef: coefficient (PaLM uses 1e-4); the same name as in :func:`linear_cross_entropy`.
        ignore_index: target value of the rows to mask.
        reduction: ``"mean"`` (over kept rows), ``"sum"`` or ``"none"``.
        check_values: reject NaN/inf logits and out-of-range targets (see :func:`z_loss`).

    Returns:
        The regulariser, to be *added* to the classification loss.
    """
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
    if target is not None and not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be an integer tensor or None, got {type(target).__name__} (the coefficient is "
                        "the keyword z_loss_coef)")
    _check_logits(logits, check_values=check_values)
    if isinstance(z_loss_coef, bool) or not isinstance(z_loss_coef, numbers.Real):
        raise TypeError(f"z_loss_coef must be a finite number >= 0, got {z_loss_coef!r}")
    if not (z_loss_coef >= 0 and math.isfinite(z_loss_coef)):
        raise ValueError(f"z_loss_coef must be a finite number >= 0, got {z_loss_coef}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if target is None:
        valid = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    else:
        valid = _valid_mask(target, logits, ignore_index, check_values)
    lse = torch.logsumexp(logits.float(), dim=-1)
    return _reduce(z_loss_coef * lse.square(), valid, reduction)


@checked_arguments
class ZLoss(nn.Module):
    """Module form of :func:`z_loss`: ``ZLoss(a, b)(logits, target)``."""

    def __init__(
        self, a: float = 0.1, b: float = 10.0, reduction: str = "mean", ignore_index: int = -100, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.a, self.b, self.reduction, self.ignore_index, self.eps = a, b, reduction, ignore_index, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return z_loss(logits, target, self.a, self.b, self.reduction, self.ignore_index, self.eps)

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}, reduction={self.reduction!r}"


@checked_arguments
class LogitZLoss(nn.Module):
    """Module form of :func:`logit_z_loss`: ``LogitZLoss(z_loss_coef)(logits, target=None)``."""

    @renamed_arguments(coef="z_loss_coef")
    def __init__(self, z_loss_coef: float = 1e-4, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        if not z_loss_coef >= 0:
            raise ValueError(f"z_loss_coef must be >= 0, got {z_loss_coef}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.z_loss_coef, self.ignore_index, self.reduction = z_loss_coef, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return logit_z_loss(logits, target, self.z_loss_coef, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"z_loss_coef={self.z_loss_coef}"


def _index_targets(y: torch.Tensor, method: str) -> torch.Tensor:
    if y.is_floating_point():
        raise ValueError(
            f"{method} needs index targets, got soft targets of shape {tuple(y.shape)}; it cannot follow a "
            "mixing method (cutmix/mixup/mix) in the recipe"
        )
    return y


@register_method
class ZLossMethod(Method):
    """Train with the spherical-family Z-loss instead of cross-entropy (de Brébisson & Vincent 2016).

    A ``criterion`` link that *replaces* the loss: it never calls ``next``, so it must be the innermost link, listed
    after the methods that wrap the criterion (``logit_z_loss`` adds its regulariser to this loss). Every caller of
    ``ctx.criterion`` (the default step, multi-sample dropout, nested widths) gets it. Needs index targets (not after
    CutMix/MixUp)."""

    name = "z_loss"
    paper_id = "arXiv:1604.08859"
    claim = (
        "the spherical Z-loss (softplus of z-normalised logits) trains classifiers as accurately as "
        "cross-entropy, cheaper at large output sizes"
    )
    claimed_effect = "no_worse"
    targets = ("labels",)
    conflicts = ("cutmix", "mixup", "mix")
    after = ("logit_z_loss",)
    constraint_reason = ("the Z-loss replaces the criterion, so the criterion wrappers (logit_z_loss) come first, and "
                         "it needs index targets (mixing methods train on soft targets)")

    def __init__(self, a: float = 0.1, b: float = 10.0) -> None:
        if not a > 0:
            raise ValueError(f"z_loss: a must be > 0, got {a}")
        self.a = float(a)
        self.b = float(b)

    def criterion(self, output: torch.Tensor, target: torch.Tensor, next, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        # no data-dependent checks: the criterion must run under torch.func (adaptive_batch's per-sample
        # gradients); the trainer rejects a NaN loss itself
        return z_loss(output, _index_targets(target, self.name), a=self.a, b=self.b, reduction=reduction,
                      check_values=False)


@register_method
class LogitZLossMethod(Method):
    """Add the logit z-loss z_loss_coef·(log Σ e^o)² to the criterion (PaLM / ST-MoE stabiliser).

    A ``criterion`` link that wraps the next one: ``next(output, target) + logit_z_loss(output)``, on the same
    logits and with the same reduction (rows whose index target is the ignore index are masked in both). So it
    composes with soft targets, with the Z-loss (listed after it) and with every caller of ``ctx.criterion``
    (multi-sample dropout: every sample's logits). Logs ``logit_z_loss/value`` (the last regulariser; mean over
    rows for ``reduction="none"``).

    Args:
        z_loss_coef: coefficient of the regulariser (PaLM: 1e-4).
        coef: deprecated name of ``z_loss_coef``.
    """

    name = "logit_z_loss"
    paper_id = "arXiv:2204.02311"
    claim = (
        "a (log Z)^2 penalty keeps output logits from drifting, stabilising training without costing quality"
    )
    claimed_effect = "no_worse"
    targets = ("labels", "tokens")

    def __init__(self, z_loss_coef: float = 1e-4, coef: float | None = None) -> None:
        if coef is not None:
            warnings.warn("logit_z_loss: 'coef' is deprecated; use 'z_loss_coef'", DeprecationWarning, stacklevel=2)
            z_loss_coef = coef
        if not z_loss_coef >= 0:
            raise ValueError(f"logit_z_loss: z_loss_coef must be >= 0, got {z_loss_coef}")
        self.z_loss_coef = float(z_loss_coef)

    def criterion(self, output: torch.Tensor, target: torch.Tensor, next, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        index = target if not target.is_floating_point() and target.shape == output.shape[:-1] else None
        reg = logit_z_loss(output, index, z_loss_coef=self.z_loss_coef, reduction=reduction,
                           check_values=False)  # torch.func-safe, as in z_loss
        with contextlib.suppress(RuntimeError):  # no value to log inside a torch.func transform
            self.log(ctx, "value", reg.detach().mean())
        base = next(output, target, reduction=reduction)
        if reduction == "none" and reg.dim() > base.dim():  # per-sequence losses of a language model: (N, T) -> (N,)
            reg = reg.flatten(base.dim()).mean(dim=-1)
        return base + reg
