"""LAMB: layer-wise adaptive moments for large-batch training (Adam direction × per-tensor trust ratio).

Paper: You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh, "Large Batch Optimization for Deep
Learning: Training BERT in 76 minutes", ICLR 2020, arXiv 1904.00962. For each parameter tensor ``w`` at step ``t``::

    m ← β₁ m + (1 − β₁) g             v ← β₂ v + (1 − β₂) g²
    m̂ = m / (1 − β₁ᵗ)                 v̂ = v / (1 − β₂ᵗ)           (bias_correction=True)
    u = m̂ / (sqrt(v̂) + eps) + λ w
    ratio = φ(‖w‖) / ‖u‖              φ(z) = min(z, max_weight_norm) (identity by default); 1 if a norm is 0
    w ← w − lr · ratio · u

Pitfalls handled:
  * Bias and normalisation parameters are **excluded** from the trust ratio *and* weight decay (they get plain
    Adam steps): a group with ``exclude_from_trust_ratio=True`` is excluded, and by default (``exclude_1d=True``)
    so is every ``ndim ≤ 1`` parameter of a group that does not set the key.
  * Weight decay is decoupled (added to the Adam direction, as in the paper), not added to the gradient.
  * Zero norms (fresh zero-initialised tensors) give ratio 1 instead of 0 or NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from regimen.batch.lars import _closure_loss, _params_with_grads, excluded_from_trust_ratio
from regimen.method import checked_arguments

__all__ = ["LAMB"]


@checked_arguments
class LAMB(torch.optim.Optimizer):
    """Adam direction with decoupled weight decay, scaled per tensor by ``‖w‖ / ‖update‖`` (You et al. 2020).

    Args:
        params: parameters or param groups; a group may set ``exclude_from_trust_ratio``.
        lr: learning rate.
        betas: ``(β₁, β₂)``.
        eps: added to ``sqrt(v̂)``.
        weight_decay: ``λ`` (not applied to excluded parameters).
        bias_correction: use the bias-corrected moments.
        max_weight_norm: clamp ``‖w‖`` in the trust ratio (``φ``); ``None`` for the identity.
        exclude_1d: exclude ``ndim ≤ 1`` parameters in groups that do not set ``exclude_from_trust_ratio``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, bias_correction: bool = True,
                 max_weight_norm: float | None = None, exclude_1d: bool = True) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if max_weight_norm is not None and not max_weight_norm > 0:
            raise ValueError(f"max_weight_norm must be > 0 or None, got {max_weight_norm}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, max_weight_norm=max_weight_norm, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param, grad in _params_with_grads(group, "LAMB"):
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float64)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                step = float(state["step"])
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1 - beta1**step)
                    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(group["eps"])
                else:
                    m_hat = exp_avg
                    denom = exp_avg_sq.sqrt().add_(group["eps"])
                update = m_hat / denom
                if excluded_from_trust_ratio(group, param):
                    param.add_(update, alpha=-group["lr"])
                    continue
                if group["weight_decay"] != 0:
                    update.add_(param, alpha=group["weight_decay"])
                w_norm = torch.linalg.vector_norm(param)
                if group["max_weight_norm"] is not None:
                    w_norm = w_norm.clamp(max=group["max_weight_norm"])
                u_norm = torch.linalg.vector_norm(update)
                ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                param.add_(update * ratio, alpha=-group["lr"])
        return loss
