"""Gradient clipping by value and adaptive gradient clipping (AGC), beside the trainer's norm clipping.

Paper (AGC): Brock, De, Smith & Simonyan, "High-Performance Large-Scale Image Recognition Without Normalization",
ICML 2021, arXiv 2102.06171.

* ``value``: every gradient entry clamped to ``[−threshold, threshold]`` (``torch.nn.utils.clip_grad_value_``).
* ``adaptive`` (AGC): per unit ``i`` (an output row of a weight: all dims but the first; the whole tensor for a 1-d
  parameter), with ``‖·‖`` the Frobenius norm,

      G_i ← λ · max(‖W_i‖, ε) / ‖G_i‖ · G_i    if ‖G_i‖ / max(‖W_i‖, ε) > λ,   else unchanged

  (λ = ``threshold``, ε = 1e-3 as the paper). The paper leaves the final classifier unclipped; ``ignore`` names the
  parameters to leave alone (Composer clips every parameter, the default here).
* ``norm``: the global norm clipped to ``threshold`` (``torch.nn.utils.clip_grad_norm_``, what ``train.grad_clip``
  does; here for a recipe that wants the same placement as the other two).

In the trainer (:class:`GradientClippingMethod`) clipping wraps the optimizer step, so it clips the gradient that
is applied: listed after ``sam`` it clips SAM's second gradient (the recipe refuses the other order, which would clip
the first gradient only).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["GradientClippingMethod", "adaptive_clip_grad_", "unitwise_norm"]


@checked_arguments
def unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """The Frobenius norm of each output unit: over all dims but the first (kept as size-1 dims), or of the whole
    tensor when it has at most one dim."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.ndim <= 1:
        return x.norm(2)
    return x.norm(2, dim=tuple(range(1, x.ndim)), keepdim=True)


@checked_arguments
@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[torch.Tensor], clipping: float = 0.01, eps: float = 1e-3) -> None:
    """AGC in place on the ``.grad`` of ``parameters`` (see the module docstring)."""
    if not clipping > 0:
        raise ValueError(f"clipping must be > 0, got {clipping!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = unitwise_norm(p.detach()).clamp(min=eps) * clipping
        grad_norm = unitwise_norm(p.grad.detach())
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp(min=1e-12), torch.ones_like(grad_norm))
        p.grad.mul_(scale.to(p.grad.dtype))


@register_method
class GradientClippingMethod(Method):
    """Clip gradients by ``value``, adaptively (``adaptive``: AGC, Brock 2021) or by global ``norm``, before the
    optimizer step.

    Args:
        mode: ``"value"``, ``"adaptive"`` or ``"norm"``.
        threshold: the value bound, AGC's λ, or the max norm (> 0).
        eps: AGC's floor on the weight norm.
        ignore: parameter names (as in ``model.named_parameters()``, a trailing ``.*`` for a prefix) left unclipped.
    """

    name = "gradient_clipping"
    after = ("sam",)
    constraint_reason = "clipping must apply to the gradient the step uses, which SAM recomputes"
    paper_id = "arXiv:2102.06171"
    claim = ("adaptive gradient clipping lets normalizer-free ResNets train stably at large batch sizes and strong "
             "augmentation")
    claimed_effect = "no_worse"

    def __init__(self, mode: Literal["value", "adaptive", "norm"] = "adaptive", threshold: float = 0.01,
                 eps: float = 1e-3, ignore: Sequence[str] = ()) -> None:
        if mode not in ("value", "adaptive", "norm"):
            raise ValueError(f"mode must be 'value', 'adaptive' or 'norm', got {mode!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not threshold > 0:
            raise ValueError(f"threshold must be a float > 0, got {threshold!r}")
        if not (isinstance(eps, int | float) and eps > 0):
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.mode, self.threshold, self.eps, self.ignore = mode, float(threshold), float(eps), tuple(ignore)

    def _params(self, ctx: Context) -> list[torch.Tensor]:
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model

        def ignored(name: str) -> bool:
            return any(name == i or (i.endswith(".*") and name.startswith(i[:-1])) for i in self.ignore)

        return [p for name, p in model.named_parameters() if p.grad is not None and not ignored(name)]

    def optimizer_step(self, closure, next, ctx: Context) -> None:
        params = self._params(ctx)
        if self.mode == "value":
            torch.nn.utils.clip_grad_value_(params, self.threshold)
        elif self.mode == "adaptive":
            adaptive_clip_grad_(params, self.threshold, self.eps)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, self.threshold)
            self.log(ctx, "grad_norm", norm)
        return next(closure)
