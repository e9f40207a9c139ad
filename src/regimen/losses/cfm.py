"""Conditional flow matching (CFM): the training pair, its regression target and the ODE samplers.

Paper: Lipman, Chen, Ben-Hamu, Nickel, Le, "Flow Matching for Generative Modeling", ICLR 2023, arXiv 2210.02747;
Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio, "Improving and generalizing flow-based generative
models with minibatch optimal transport", TMLR 2024, arXiv 2302.00482 (I-CFM, OT-CFM). A source sample ``x0`` and a
data sample ``x1`` are joined by the straight path; a velocity field ``v_θ(x, t)`` regresses its constant speed::

    t ~ U[0, 1],   x_t = (1 − t) x0 + t x1 (+ σ ε),   u_t = x1 − x0
    L(θ) = E ‖v_θ(x_t, t) − u_t‖²                     (mean over the d coordinates, as torchcfm does)

Samples are the solution at t = 1 of ``dx/dt = v_θ(x, t)`` from ``x(0) = x0 ~ N(0, I)`` (Euler or explicit midpoint
steps on a uniform grid).

The batch layout every flow-matching piece of regimen shares (``task = "flow_matching"``): the model's input is
``[x_t, t]`` ``(N, d + 1)``, the target is the pair it came from, ``[x0, x1, t]`` ``(N, 2d + 1)``, so coupling methods
(OT-CFM re-pairs the batch) and pair weights (W-CFM's Gibbs kernel of ``x0`` and ``x1``) read it without recomputing
anything. :func:`cfm_pairs` packs, :func:`split_cfm_target` unpacks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from regimen.method import checked_arguments, require_same_device

__all__ = ["cfm_loss", "cfm_pairs", "integrate_flow", "split_cfm_target"]

_REDUCTIONS = ("mean", "sum", "none")
SOLVERS = ("euler", "midpoint")


def _check_points(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be (N, d) points, got shape {tuple(x.shape)}")


@checked_arguments
def cfm_pairs(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor, sigma: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The CFM training batch of pairs ``(x0[i], x1[i])`` at times ``t[i]``.

    Args:
        x0: source samples ``(N, d)``; x1: data samples ``(N, d)``; t: times ``(N,)`` in [0, 1].
        sigma: width of I-CFM's Gaussian path (``x_t += σ ε``); 0 is the straight path.
        noise: ``ε`` ``(N, d)`` (needed when ``sigma > 0``).

    Returns:
        ``(inputs, target)``: ``[x_t, t]`` ``(N, d + 1)`` and ``[x0, x1, t]`` ``(N, 2d + 1)``.
    """
    _check_points(x0, "x0")
    _check_points(x1, "x1")
    if x0.shape != x1.shape:
        raise ValueError(f"x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)} must have one shape")
    require_same_device(x0=x0, x1=x1, t=t, noise=noise)
    if not isinstance(t, torch.Tensor) or t.shape != (x0.shape[0],):
        raise ValueError(f"t must be a tensor of shape ({x0.shape[0]},), got {tuple(getattr(t, 'shape', ()))}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    tc = t.to(x0.dtype).unsqueeze(1)
    xt = (1 - tc) * x0 + tc * x1
    if sigma > 0:
        if noise is None or noise.shape != x0.shape:
            raise ValueError(f"sigma > 0 needs noise of shape {tuple(x0.shape)}, got "
                             f"{None if noise is None else tuple(noise.shape)}")
        xt = xt + sigma * noise
    return torch.cat([xt, tc], dim=1), torch.cat([x0, x1, tc], dim=1)


@checked_arguments
def split_cfm_target(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x0, x1, t)`` of a packed target ``[x0, x1, t]`` ``(N, 2d + 1)``."""
    if not isinstance(target, torch.Tensor) or target.dim() != 2 or target.shape[1] < 3 or target.shape[1] % 2 != 1:
        raise ValueError(f"a flow-matching target must be [x0, x1, t] of shape (N, 2d + 1), got "
                         f"{tuple(getattr(target, 'shape', ()))}")
    d = (target.shape[1] - 1) // 2
    return target[:, :d], target[:, d:2 * d], target[:, 2 * d]


@checked_arguments
def cfm_loss(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``mean_j (v_ij − (x1_ij − x0_ij))²`` per pair: its mean over the batch, sum, or the ``(N,)`` values."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if isinstance(target, torch.Tensor) and not target.is_floating_point():
        raise TypeError(f"target must be a floating tensor (the pair's points and times), got {target.dtype}")
    x0, x1, _ = split_cfm_target(target)
    if not isinstance(output, torch.Tensor) or output.shape != x0.shape:
        raise ValueError(f"output (the velocity) must be (N, d) = {tuple(x0.shape)} like the pair's points, got "
                         f"{tuple(getattr(output, 'shape', ()))}")
    require_same_device(output=output, target=target)
    per_pair = (output.float() - (x1 - x0).float()).pow(2).mean(dim=1)
    if reduction == "mean":
        return per_pair.mean()
    return per_pair.sum() if reduction == "sum" else per_pair


@checked_arguments
def integrate_flow(velocity: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, steps: int,
                   solver: str = "euler") -> torch.Tensor:
    """``x(1)`` of ``dx/dt = velocity([x, t])`` from ``x(0) = x0`` with ``steps`` uniform steps ``h = 1/steps``.

    Euler: ``x += h v(x, t)`` (``steps`` evaluations). Midpoint: ``x += h v(x + h/2 v(x, t), t + h/2)``
    (``2 · steps`` evaluations)."""
    _check_points(x0, "x0")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    h = 1.0 / steps
    x = x0
    ones = torch.ones(x0.shape[0], 1, dtype=x0.dtype, device=x0.device)

    def v(points: torch.Tensor, time: float) -> torch.Tensor:
        return velocity(torch.cat([points, ones * time], dim=1))

    for k in range(steps):
        t = k * h
        if solver == "euler":
            x = x + h * v(x, t)
        else:
            x = x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)
    return x
