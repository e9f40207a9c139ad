"""Concrete (learned-rate) temporal dropout: the drop rate of whole time steps is a trained parameter.

Paper: Yarin Gal, Jiri Hron, Alex Kendall, "Concrete Dropout", 2017, arXiv 1705.07832.

Formula: p = sigmoid(θ) is learned. For u ~ U(0, 1) per (sample, time step) the relaxed drop indicator is
z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / t) with temperature t (0.1 in the paper) and the output is
y = x (1 - z) / (1 - p), differentiable in p. The objective adds
R = weight_regularizer · Σ||W||² / (1 - p) + dropout_regularizer · K · (p log p + (1 - p) log(1 - p)),
K = the number of independently dropped units per sample (here the number of time steps), the negative Bernoulli
entropy term pushing p up; the paper's choices are weight_regularizer = l²/(τ N_data) and
dropout_regularizer = 2/(τ N_data).

Pitfalls handled:

- The rate lives in logit space (always in (0, 1)); ``eps`` guards every log.
- The regulariser must be added to the loss by the caller (``loss + layer.regularization(weights)``); without it
  p drifts to 0 (no dropout is always the lowest training loss).
- Identity in eval; keep it on at inference with :func:`regimen.dropout.mc_predict` for uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from regimen.dropout._common import (
    StochasticLayer,
    check_dim_of,
    check_feature_dim,
    check_probability,
    check_tensor,
    rand,
)
from regimen.dropout.temporal import time_step_mask_shape
from regimen.method import checked_arguments

__all__ = ["ConcreteTemporalDropout", "concrete_dropout_mask"]


@checked_arguments
def concrete_dropout_mask(
    p: torch.Tensor, noise: torch.Tensor, temperature: float = 0.1, eps: float = 1e-7
) -> torch.Tensor:
    """Relaxed *keep* mask ``(1 - z) / (1 - p)`` for uniform ``noise``; differentiable in ``p``."""
    if not isinstance(p, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError(f"p and noise must be tensors, got {type(p).__name__} and {type(noise).__name__}")
    if not (p.is_floating_point() and noise.is_floating_point()):
        raise TypeError(f"p and noise must be floating point, got {p.dtype} and {noise.dtype}")
    if p.device != noise.device:
        raise ValueError(f"p and noise must be on one device, got {p.device} and {noise.device}")
    if not temperature > 0 or not eps >= 0:
        raise ValueError(f"temperature must be > 0 and eps >= 0, got {temperature} and {eps}")
    drop = torch.sigmoid(
        (torch.log(p + eps) - torch.log1p(-p + eps) + torch.log(noise + eps) - torch.log1p(-noise + eps))
        / temperature
    )
    return (1.0 - drop) / (1.0 - p)


@checked_arguments
class ConcreteTemporalDropout(StochasticLayer):
    """Temporal dropout with a learned drop rate (concrete relaxation).

    Args:
        init_p: initial drop rate in (0, 1).
        dim: the time dimension of ``(N, T, ...)`` inputs (default 1).
        temperature: relaxation temperature t > 0 (paper: 0.1).
        weight_regularizer: coefficient of Σ||W||² / (1 - p) in :meth:`regularization`.
        dropout_regularizer: coefficient of the entropy term in :meth:`regularization`.
        generator: random source.

    Attributes:
        p_logit: the trained parameter θ; ``p`` = sigmoid(θ).
    """

    def __init__(
        self,
        init_p: float = 0.1,
        dim: int = 1,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        eps: float = 1e-7,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        init_p = check_probability(init_p, "init_p")
        if init_p == 0.0:
            raise ValueError("init_p must be in (0, 1), got 0.0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if weight_regularizer < 0 or dropout_regularizer < 0:
            raise ValueError("weight_regularizer and dropout_regularizer must be >= 0")
        check_feature_dim(dim)
        self.p_logit = nn.Parameter(torch.tensor(math.log(init_p) - math.log1p(-init_p)))
        self.dim = dim
        self.temperature = float(temperature)
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.eps = float(eps)
        self.num_units = 0  # time steps of the last training input (the entropy term's K)

    @property
    def p(self) -> torch.Tensor:
        """The current drop rate sigmoid(θ) (a differentiable scalar tensor)."""
        return torch.sigmoid(self.p_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        dim = check_dim_of(x, self.dim)
        if not self.training:
            return x
        self.num_units = x.shape[dim]
        noise = rand(time_step_mask_shape(x, dim), x, self.generator)
        p = self.p.to(x.dtype)
        return x * concrete_dropout_mask(p, noise, self.temperature, self.eps)

    def regularization(self, weights: Iterable[torch.Tensor] = (), num_units: int | None = None) -> torch.Tensor:
        """R = wr · Σ||W||² / (1 - p) + dr · K · (p log p + (1 - p) log(1 - p)); add it to the loss.

        Args:
            weights: parameters of the layer that consumes this dropout's output (the paper's W).
            num_units: K, the number of independently dropped units; default the last input's time steps.
        """
        units = self.num_units if num_units is None else num_units
        if units < 0:
            raise ValueError(f"num_units must be >= 0, got {units}")
        p = self.p
        square = sum((w.pow(2).sum() for w in weights), torch.zeros((), device=p.device, dtype=p.dtype))
        weight_term = self.weight_regularizer * square / (1.0 - p)
        entropy = p * torch.log(p + self.eps) + (1.0 - p) * torch.log1p(-p + self.eps)
        return weight_term + self.dropout_regularizer * units * entropy

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, dim={self.dim}, temperature={self.temperature}"
