"""A coordinate MLP for neural fields: Fourier features of the coordinates, ReLU layers, a sigmoid read-out.

Paper: Tancik, Srinivasan, Mildenhall, Fridovich-Keil, Raghavan, Singhal, Ramamoorthi, Barron, Ng, "Fourier
Features Let Networks Learn High Frequency Functions in Low Dimensional Domains", NeurIPS 2020, arXiv 2006.10739.

Formula: for a coordinate v in [0, 1]^d, γ(v) = [sin(2π B v), cos(2π B v)] with a fixed B ∈ R^{m×d}, B_ij ~ N(0, σ²)
(the "Gaussian" mapping); then ``depth`` Linear+ReLU layers of ``width`` and a Linear+sigmoid head to the C output
values (RGB in [0, 1], as NeRF's colour head). σ sets the bandwidth: too small blurs, too large interpolates with
noise between the training pixels (the paper's 2-D images: σ = 10 for 512-pixel images; scale it with the
resolution of the pixels you train on).

Why Fourier features rather than SIREN (sine activations, Sitzmann et al. 2020): a plain ReLU MLP with a fixed
encoding trains with Adam at ordinary learning rates and needs no special initialisation, and the encoding is the
same kind (sinusoids of the coordinates) as the positional encoding of the NeRF models the S3IM paper measured.

Built as explicit stages (``model.stages``): ``[FourierFeatures, Linear+ReLU, ..., Linear+Sigmoid]``. B is a buffer
(saved in checkpoints, not trained), drawn from the global RNG, which the trainer seeds with the recipe's seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regimen.models.staged import StagedModel

__all__ = ["CoordinateMLP", "FourierFeatures"]


class FourierFeatures(nn.Module):
    """γ(v) = [sin(2π v Bᵀ), cos(2π v Bᵀ)] with a fixed Gaussian B (``num_frequencies × in_features``, std ``sigma``).

    Args:
        in_features: d, the coordinate dimension.
        num_frequencies: m; the output has 2m features.
        sigma: standard deviation of B's entries (cycles per unit of the coordinates).
        generator: random source of B (default: the global RNG).
    """

    def __init__(self, in_features: int = 2, num_frequencies: int = 128, sigma: float = 10.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("num_frequencies", num_frequencies)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma > 0 or math.isinf(sigma):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        frequencies = torch.randn(num_frequencies, in_features, generator=generator) * float(sigma)
        self.register_buffer("frequencies", frequencies)
        self.sigma = float(sigma)

    @property
    def out_features(self) -> int:
        return 2 * self.frequencies.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.frequencies.shape[1]:
            raise ValueError(f"coordinates must be (N, {self.frequencies.shape[1]}), got {tuple(x.shape)}")
        angles = (2 * math.pi) * (x @ self.frequencies.to(x.dtype).T)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    def extra_repr(self) -> str:
        return f"in_features={self.frequencies.shape[1]}, num_frequencies={self.frequencies.shape[0]}, " \
               f"sigma={self.sigma}"


class CoordinateMLP(StagedModel):
    """Coordinates ``(N, d)`` → values ``(N, C)`` in (0, 1): Fourier features, ``depth`` Linear+ReLU, Linear+sigmoid.

    Args:
        in_features: d (2 for an image); set by the task.
        out_features: C (3 for RGB, 1 for grey); set by the task.
        width: hidden width. depth: hidden layers (>= 1).
        num_frequencies: m of the Fourier features; 0 feeds the raw coordinates (the paper's "no mapping" baseline).
        sigma: standard deviation of the Gaussian frequencies.
    """

    def __init__(self, in_features: int = 2, out_features: int = 3, width: int = 128, depth: int = 3,
                 num_frequencies: int = 128, sigma: float = 10.0) -> None:
        for name, value, low in (("in_features", in_features, 1), ("out_features", out_features, 1),
                                 ("width", width, 1), ("depth", depth, 1), ("num_frequencies", num_frequencies, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        stages: list[nn.Module] = []
        if num_frequencies:
            encoding = FourierFeatures(in_features, num_frequencies, sigma)
            stages.append(encoding)
            features = encoding.out_features
        else:
            features = in_features
        for _ in range(depth):
            stages.append(nn.Sequential(nn.Linear(features, width), nn.ReLU(inplace=True)))
            features = width
        stages.append(nn.Sequential(nn.Linear(features, out_features), nn.Sigmoid()))
        super().__init__(stages)
        self.config = dict(in_features=in_features, out_features=out_features, width=width, depth=depth,
                           num_frequencies=num_frequencies, sigma=sigma)
