"""Offline 2-D wave-equation data by finite differences: the surrogate-modelling setting of arXiv 2304.04964.

The scalar wave equation ``u_tt = c² (u_xx + u_yy)`` on an ``n x n`` grid with spacing ``dx`` is stepped with the
second-order leapfrog scheme

    u^{t+1} = 2 u^t − u^{t−1} + λ² Δ_h u^t,    λ = c dt / dx,

with ``Δ_h`` the 5-point Laplacian (stable for ``λ ≤ 1/√2``). The first step uses the Taylor start
``u^1 = u^0 + dt v^0 + ½ λ² Δ_h u^0``. Boundaries: ``"dirichlet"`` (u = 0 outside the grid: fixed, reflecting with
sign change), ``"neumann"`` (mirror: reflecting) and ``"periodic"``. :func:`wave_trajectories` starts from random
Gaussian pulses at rest and records every ``stride``-th step; :func:`wave_pairs` turns trajectories into the
supervised pairs ``(u_{k−1}, u_k) → u_{k+1}`` of a one-step surrogate.

Check: a standing wave ``sin(πpx/L) sin(πqy/L) cos(ωt)`` with ``ω = cπ√(p²+q²)/L`` solves the Dirichlet problem on
``[0, L]²``; the scheme converges to it at second order (``tests/data/test_wave.py``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from regimen.method import checked_arguments

__all__ = ["laplacian_5point", "wave_pairs", "wave_step", "wave_trajectories"]

Boundary = Literal["dirichlet", "neumann", "periodic"]
_PAD = {"dirichlet": "constant", "neumann": "replicate", "periodic": "circular"}
_STENCIL = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


@checked_arguments
def laplacian_5point(u: torch.Tensor, boundary: Boundary = "dirichlet") -> torch.Tensor:
    """``(u[i+1,j] + u[i−1,j] + u[i,j+1] + u[i,j−1] − 4 u[i,j])`` (grid units) of ``u (..., n, m)``."""
    if boundary not in _PAD:
        raise ValueError(f"boundary must be one of {sorted(_PAD)}, got {boundary!r}")
    if u.dim() < 2:
        raise ValueError(f"u must have at least 2 dimensions (..., n, m), got shape {tuple(u.shape)}")
    shape = u.shape
    flat = u.reshape(-1, 1, shape[-2], shape[-1])
    padded = F.pad(flat, (1, 1, 1, 1), mode=_PAD[boundary])
    return F.conv2d(padded, _STENCIL.to(u)[None, None]).reshape(shape)


@checked_arguments
def wave_step(u: torch.Tensor, u_prev: torch.Tensor, courant: float, boundary: Boundary = "dirichlet"
              ) -> torch.Tensor:
    """One leapfrog step: ``2 u − u_prev + courant² Δ_h u``."""
    if not 0.0 < courant <= 1.0 / math.sqrt(2.0):
        raise ValueError(f"courant (c dt / dx) must be in (0, 1/sqrt(2)] for a stable 2-D leapfrog, got {courant}")
    if u.shape != u_prev.shape:
        raise ValueError(f"u and u_prev must have the same shape, got {tuple(u.shape)} and {tuple(u_prev.shape)}")
    return 2.0 * u - u_prev + courant ** 2 * laplacian_5point(u, boundary)


@checked_arguments
def wave_trajectories(samples: int, size: int = 64, frames: int = 24, stride: int = 4, courant: float = 0.5,
                      pulses: int = 2, width: float = 0.06, boundary: Boundary = "neumann",
                      generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(samples, frames, size, size)`` wave fields from random Gaussian pulses at rest, every ``stride`` steps.

    Args:
        samples: number of trajectories.
        size: grid points per side (the domain is the unit square).
        frames: recorded frames per trajectory (frame 0 is the initial field).
        stride: leapfrog steps between recorded frames.
        courant: ``c dt / dx`` (≤ 1/√2).
        pulses: Gaussian pulses per initial field (random centres in the inner 80 %, amplitudes in [0.5, 1] with a
            random sign).
        width: pulse standard deviation as a fraction of the side.
        boundary: ``"neumann"`` (reflecting), ``"dirichlet"`` or ``"periodic"``.
        generator: draws the pulses.
        dtype: of the result (the simulation runs in float64).
    """
    for name, value in (("samples", samples), ("size", size), ("frames", frames), ("stride", stride),
                        ("pulses", pulses)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if size < 3:
        raise ValueError(f"size must be >= 3, got {size}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    grid = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centres = 0.1 + 0.8 * torch.rand(samples, pulses, 2, generator=generator, dtype=torch.float64)
    amplitude = 0.5 + 0.5 * torch.rand(samples, pulses, generator=generator, dtype=torch.float64)
    sign = torch.where(torch.rand(samples, pulses, generator=generator) < 0.5, -1.0, 1.0).double()
    d2 = (yy[None, None] - centres[..., 0, None, None]) ** 2 + (xx[None, None] - centres[..., 1, None, None]) ** 2
    u0 = ((amplitude * sign)[..., None, None] * torch.exp(-d2 / (2 * width ** 2))).sum(1)
    u_prev = u0
    u = u0 + 0.5 * courant ** 2 * laplacian_5point(u0, boundary)  # at rest: v0 = 0
    out = [u0]
    step = 1
    while len(out) < frames:
        if step % stride == 0:
            out.append(u)
        u, u_prev = wave_step(u, u_prev, courant, boundary), u
        step += 1
    return torch.stack(out, 1).to(dtype)


@checked_arguments
def wave_pairs(trajectories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised one-step pairs of ``trajectories (N, T, n, m)``: inputs ``(N·(T−2), 2, n, m)`` holding
    ``(u_{k−1}, u_k)`` and targets ``(N·(T−2), 1, n, m)`` holding ``u_{k+1}``."""
    if trajectories.dim() != 4 or trajectories.shape[1] < 3:
        raise ValueError(f"trajectories must be (N, T >= 3, n, m), got shape {tuple(trajectories.shape)}")
    inputs = torch.stack([trajectories[:, :-2], trajectories[:, 1:-1]], 2)
    targets = trajectories[:, 2:, None]
    n, m = trajectories.shape[-2:]
    return inputs.reshape(-1, 2, n, m), targets.reshape(-1, 1, n, m)
