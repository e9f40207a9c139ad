"""Temporal dropout: drop whole time steps of a sequence (every feature of a step together).

Related work: Yarin Gal, Zoubin Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural
Networks", 2016, arXiv 1512.05287 (word / time-step dropout); the learned-rate variant is
:class:`~regimen.dropout.ConcreteTemporalDropout`.

Formula: for ``x`` of shape (N, T, ...), m_{n,t} ~ Bernoulli(1 - p) and y_{n,t,...} = x_{n,t,...} m_{n,t} / (1 - p)
(``scale_by_keep``); E[y] = x.

Pitfalls handled:

- One mask value per (sample, time step), broadcast over the remaining dimensions, so a dropped step is all zeros.
- ``dim`` names the time dimension (1 for batch-first sequences); the batch dimension 0 is rejected.
- Identity in eval; keep it active at inference for Monte-Carlo uncertainty with :func:`regimen.dropout.mc_predict`.
"""

from __future__ import annotations

import torch

from regimen.dropout._common import (
    StochasticLayer,
    check_dim_of,
    check_feature_dim,
    check_probability,
    check_tensor,
    rand,
)
from regimen.method import checked_arguments

__all__ = ["TemporalDropout", "temporal_dropout", "time_step_mask_shape"]


@checked_arguments
def time_step_mask_shape(x: torch.Tensor, dim: int) -> list[int]:
    """Shape of a per-(sample, step) mask broadcastable against ``x``: N and T kept, 1 elsewhere."""
    shape = [1] * x.dim()
    shape[0] = x.shape[0]
    shape[dim] = x.shape[dim]
    return shape


@checked_arguments
def temporal_dropout(
    x: torch.Tensor,
    p: float = 0.1,
    dim: int = 1,
    *,
    training: bool = True,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero whole time steps of ``x (N, T, ...)`` with probability ``p`` each (per sample), scaled by 1/(1-p).

    Args:
        x: floating tensor with a batch dimension 0 and the time dimension ``dim``.
        p: drop probability in [0, 1). dim: the time dimension (default 1).
        training: identity when False. scale_by_keep: divide kept steps by 1 - p.
        generator: random source.
    """
    check_tensor(x, "x", min_dim=2)
    dim = check_dim_of(x, dim)
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = (rand(time_step_mask_shape(x, dim), x, generator) < keep).to(x.dtype)
    if scale_by_keep:
        mask = mask / keep
    return x * mask


@checked_arguments
class TemporalDropout(StochasticLayer):
    """Module form of :func:`temporal_dropout` (identity in eval)."""

    def __init__(
        self, p: float = 0.1, dim: int = 1, scale_by_keep: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        self.p = check_probability(p)
        self.dim = check_feature_dim(dim)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_dropout(
            x, self.p, self.dim, training=self.training, scale_by_keep=self.scale_by_keep, generator=self.generator
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}"
