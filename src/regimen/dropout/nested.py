"""Nested (ordered) dropout: keep a random prefix of the units, zero the whole tail.

Paper: Oren Rippel, Michael A. Gelbart, Ryan P. Adams, "Learning Ordered Representations with Nested Dropout",
2014, arXiv 1402.0915.

Formula: per sample, draw an index b ~ Geometric(p) on {1, 2, ...}, P(b = k) = (1 - p)^(k-1) p, keep units
1..b of ``dim`` and zero units b+1..D (b >= D keeps everything). Unit j (1-based) survives with probability
P(b >= j) = (1 - p)^(j-1), so the first units are trained most and become the most informative: the representation
is ordered, and any prefix of it is a usable smaller representation.

Second sampler (``sampler="half_gaussian"``), from Chen et al., "Compressing Features for Learning with Noisy
Labels", TNNLS 2022, arXiv 2206.13140 (reference code ``nested/train_resnet.py::GaussianDist``): **one** index k per
batch (every sample keeps the same prefix), drawn from p(k) ∝ exp(-((k - mu) / sigma)^2) on k = 1..D, mu = 0 (a
half-Gaussian over the unit count), no rescaling. sigma = 10 for CIFAR-10 and 100 for CIFAR-100 in the paper.

Pitfalls handled:

- The paper does not rescale; ``scale=True`` divides unit j by (1 - p)^(j-1) so the expectation is preserved (this
  amplifies late units strongly for large p or D: an option, not the default).
- The index is drawn per sample (one geometric draw per row), with a single uniform draw and the inverse CDF
  b = 1 + floor(log(u) / log(1 - p)), vectorised; the zero pattern is always a contiguous tail.
- p = 0 is the identity; eval mode is the identity.
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

__all__ = ["NESTED_SAMPLERS", "NestedDropout", "half_gaussian_nested_index", "nested_dropout", "nested_dropout_index"]

#: The index samplers of :func:`nested_dropout`: per-sample Geometric(p) (Rippel et al.) or one half-Gaussian index per
#: batch (Chen et al.).
NESTED_SAMPLERS = ("geometric", "half_gaussian")


def _check_sigma(sigma: object, mu: object) -> tuple[float, float]:
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0 or sigma != sigma:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    if isinstance(mu, bool) or not isinstance(mu, int | float) or mu != mu:
        raise ValueError(f"mu must be a finite number, got {mu!r}")
    return float(sigma), float(mu)


@checked_arguments
def half_gaussian_nested_index(units: int, sigma: float = 10.0, mu: float = 0.0,
                               generator: torch.Generator | None = None) -> int:
    """One kept-unit count k in {1..units} with p(k) ∝ exp(-((k - mu) / sigma)^2) (Chen et al. 2022's per-batch
    draw)."""
    if isinstance(units, bool) or not isinstance(units, int) or units < 1:
        raise ValueError(f"units must be an int >= 1, got {units!r}")
    sigma, mu = _check_sigma(sigma, mu)
    k = torch.arange(1, units + 1, dtype=torch.float64)
    logits = -(((k - mu) / sigma) ** 2)
    probs = torch.exp(logits - logits.max())
    return int(torch.multinomial(probs, 1, generator=generator)) + 1


@checked_arguments
def nested_dropout_index(
    batch: int, p: float, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample number of kept units b ~ Geometric(p) on {1, 2, ...} (int64, shape ``(batch,)``)."""
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    p = check_probability(p)
    if p == 0.0:
        return torch.full((batch,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=like.device)
    u = rand((batch,), like, generator).double().clamp_min(torch.finfo(torch.float64).tiny)
    b = torch.floor(torch.log(u) / torch.log1p(torch.tensor(-p, dtype=torch.float64))) + 1
    return b.clamp_max(2**62).to(torch.int64)


@checked_arguments
def nested_dropout(
    x: torch.Tensor,
    p: float = 0.1,
    dim: int = 1,
    *,
    training: bool = True,
    scale: bool = False,
    generator: torch.Generator | None = None,
    index: torch.Tensor | None = None,
    sampler: str = "geometric",
    sigma: float = 10.0,
    mu: float = 0.0,
) -> torch.Tensor:
    """Zero units ``b+1..D`` of ``dim`` for each sample, b ~ Geometric(p) per sample, or one half-Gaussian b per
    batch (``sampler="half_gaussian"``).

    Args:
        x: ``(N, ..., D, ...)`` tensor; units along ``dim`` (not 0).
        p: geometric parameter in [0, 1): the probability of stopping after each unit (larger = shorter prefixes).
        dim: the ordered dimension (1 = channels / features).
        training: identity when False.
        scale: divide unit j by its survival probability (1 - p)^(j-1) to preserve the expectation.
        generator: random source. index: replay these per-sample kept counts ``(N,)`` instead of drawing.
        sampler: ``"geometric"`` (per sample, parameter ``p``) or ``"half_gaussian"`` (per batch, ``sigma``, ``mu``;
            ``p`` and ``scale`` are not used).
        sigma, mu: the half-Gaussian's width and centre (in units).
    """
    check_tensor(x, "x", min_dim=2)
    dim = check_dim_of(x, dim)
    if sampler not in NESTED_SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(NESTED_SAMPLERS)}, got {sampler!r}")
    p = check_probability(p)
    if sampler == "half_gaussian":
        _check_sigma(sigma, mu)
        if scale:
            raise ValueError("scale=True is only defined for the geometric sampler (the paper's half-Gaussian "
                             "sampler does not rescale)")
    if not training or (sampler == "geometric" and p == 0.0):
        return x
    size = x.shape[dim]
    if index is None and sampler == "half_gaussian":
        k = half_gaussian_nested_index(size, sigma, mu, generator)
        index = torch.full((x.shape[0],), k, dtype=torch.int64, device=x.device)
    elif index is None:
        index = nested_dropout_index(x.shape[0], p, x, generator)
    elif index.shape != (x.shape[0],):
        raise ValueError(f"index must have shape ({x.shape[0]},), got {tuple(index.shape)}")
    units = torch.arange(size, device=x.device)
    mask = (units.unsqueeze(0) < index.to(x.device).unsqueeze(1)).to(x.dtype)  # (N, D)
    if scale:
        survival = torch.pow(torch.tensor(1.0 - p, dtype=torch.float64), units.double().cpu())
        mask = mask / survival.to(device=x.device, dtype=x.dtype)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = size
    return x * mask.view(shape)


@checked_arguments
class NestedDropout(StochasticLayer):
    """Module form of :func:`nested_dropout` (identity in eval)."""

    def __init__(
        self, p: float = 0.1, dim: int = 1, scale: bool = False, generator: torch.Generator | None = None,
        sampler: str = "geometric", sigma: float = 10.0, mu: float = 0.0,
    ) -> None:
        super().__init__(generator)
        self.p = check_probability(p)
        self.dim = check_feature_dim(dim)
        if sampler not in NESTED_SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(NESTED_SAMPLERS)}, got {sampler!r}")
        self.sigma, self.mu = _check_sigma(sigma, mu)
        if scale and sampler == "half_gaussian":
            raise ValueError("scale=True is only defined for the geometric sampler")
        self.scale = scale
        self.sampler = sampler

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nested_dropout(
            x, self.p, self.dim, training=self.training, scale=self.scale, generator=self.generator,
            sampler=self.sampler, sigma=self.sigma, mu=self.mu,
        )

    def extra_repr(self) -> str:
        if self.sampler == "half_gaussian":
            return f"sampler=half_gaussian, sigma={self.sigma}, mu={self.mu}, dim={self.dim}"
        return f"p={self.p}, dim={self.dim}, scale={self.scale}"
