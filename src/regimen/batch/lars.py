"""LARS: layer-wise adaptive rate scaling for large-batch SGD.

Paper: You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks", 2017, arXiv 1708.03888. For every
parameter tensor ``w`` with gradient ``g``, weight decay ``λ``, trust coefficient ``η`` and momentum ``μ``::

    d     = g + λ w
    ratio = η ‖w‖ / (‖g‖ + λ ‖w‖ + eps)        (1 when ‖w‖ = 0 or ‖g‖ = 0)
    v     ← μ v + ratio · d                    (nesterov: step = d·ratio + μ v)
    w     ← w − lr · v

Pitfalls handled:
  * Bias and normalisation parameters are **excluded** from the trust ratio *and* from weight decay (plain
    momentum SGD): a param group with ``exclude_from_trust_ratio=True`` is excluded, and by default
    (``exclude_1d=True``) so is every parameter with ``ndim ≤ 1`` in a group that does not set the key.
  * The trust ratio uses the gradient norm *before* weight decay is added, and ``‖g‖ + λ‖w‖`` in the denominator
    (the paper's form), guarded against zero norms.
  * Gradients and parameters are never read in place before use; the update is ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from regimen.method import checked_arguments

__all__ = ["LARS", "excluded_from_trust_ratio"]


@checked_arguments
def excluded_from_trust_ratio(group: dict[str, Any], param: torch.Tensor) -> bool:
    """A group's ``exclude_from_trust_ratio`` flag when set (the trainer marks norm/bias groups), else whether
    ``exclude_1d`` is on and the parameter is 1-d (biases, norm weights). Excluded: no trust ratio, no decay."""
    flag = group.get("exclude_from_trust_ratio")
    if flag is not None:
        return bool(flag)
    return bool(group["exclude_1d"]) and param.ndim <= 1


def _closure_loss(closure: Callable[[], float] | None) -> float | None:
    """Re-evaluate the loss with gradients enabled, as ``torch.optim`` optimizers do (``None`` without a closure)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _params_with_grads(group: dict[str, Any], optimizer: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(parameter, gradient)`` of a group's parameters that have a gradient; sparse gradients are an error."""
    for param in group["params"]:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients")
        yield param, param.grad


@checked_arguments
class LARS(torch.optim.Optimizer):
    """Momentum SGD with a per-tensor trust ratio (You et al. 2017).

    Args:
        params: parameters or param groups; a group may set ``exclude_from_trust_ratio``.
        lr: global learning rate.
        momentum: momentum ``μ``.
        weight_decay: ``λ`` (not applied to excluded parameters).
        trust_coefficient: ``η``.
        eps: added to the trust-ratio denominator.
        nesterov: Nesterov momentum.
        exclude_1d: exclude ``ndim ≤ 1`` parameters (biases, norm weights) in groups that do not set
            ``exclude_from_trust_ratio`` explicitly.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8, nesterov: bool = False,
                 exclude_1d: bool = True) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not trust_coefficient > 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps, nesterov=nesterov, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for param, grad in _params_with_grads(group, "LARS"):
                if excluded_from_trust_ratio(group, param):
                    direction = grad.clone()
                else:
                    w_norm = torch.linalg.vector_norm(param)
                    g_norm = torch.linalg.vector_norm(grad)
                    direction = grad.add(param, alpha=wd) if wd != 0 else grad.clone()
                    ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                    direction.mul_(ratio)
                if momentum != 0:
                    state = self.state[param]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = direction.clone()
                    else:
                        buf.mul_(momentum).add_(direction)
                    direction = direction.add(buf, alpha=momentum) if group["nesterov"] else buf
                param.add_(direction, alpha=-lr)
        return loss
