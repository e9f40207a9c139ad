"""Finite-difference wave data against the analytic standing wave; pairs layout; errors."""

from __future__ import annotations

import math

import pytest
import torch

from regimen.data.wave import laplacian_5point, wave_pairs, wave_step, wave_trajectories


def _standing_wave_error(n: int) -> float:
    """Max error at t = 0.5 of u = sin(πx) sin(2πy) cos(ωt), ω = π√5, on [0, 1]² with u = 0 on the boundary."""
    h = 1.0 / (n + 1)
    grid = torch.arange(1, n + 1, dtype=torch.float64) * h  # interior nodes: the zero padding is the boundary
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    omega = math.pi * math.sqrt(5.0)
    courant = 0.5
    dt = courant * h
    steps = round(0.5 / dt)

    def exact(t):
        return torch.sin(math.pi * xx) * torch.sin(2 * math.pi * yy) * math.cos(omega * t)
    u_prev, u = exact(0.0), exact(dt)
    for _ in range(steps - 1):
        u, u_prev = wave_step(u, u_prev, courant, "dirichlet"), u
    return float((u - exact(steps * dt)).abs().max())


def test_leapfrog_converges_to_the_standing_wave_at_second_order():
    coarse, fine = _standing_wave_error(31), _standing_wave_error(63)
    assert fine < 2e-3
    assert 3.0 < coarse / fine < 5.0  # halving h divides the error by about 4


def test_laplacian_is_the_five_point_stencil_by_loop():
    u = torch.randn(5, 6, dtype=torch.float64)
    lap = laplacian_5point(u, "periodic")
    for i in range(5):
        for j in range(6):
            expected = u[(i + 1) % 5, j] + u[i - 1, j] + u[i, (j + 1) % 6] + u[i, j - 1] - 4 * u[i, j]
            assert abs(float(lap[i, j] - expected)) < 1e-12


def test_trajectories_are_reproducible_and_pairs_line_up():
    first = wave_trajectories(3, size=16, frames=5, stride=2, generator=torch.Generator().manual_seed(0))
    second = wave_trajectories(3, size=16, frames=5, stride=2, generator=torch.Generator().manual_seed(0))
    assert first.shape == (3, 5, 16, 16) and torch.equal(first, second)
    inputs, targets = wave_pairs(first)
    assert inputs.shape == (9, 2, 16, 16) and targets.shape == (9, 1, 16, 16)
    torch.testing.assert_close(inputs[4], torch.stack([first[1, 1], first[1, 2]]))
    torch.testing.assert_close(targets[4, 0], first[1, 3])


def test_unstable_courant_and_bad_sizes_are_refused():
    u = torch.zeros(4, 4)
    with pytest.raises(ValueError, match="courant"):
        wave_step(u, u, 0.8)
    with pytest.raises(ValueError, match="frames must be >= 1"):
        wave_trajectories(1, frames=0)
