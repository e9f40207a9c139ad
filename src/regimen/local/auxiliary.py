"""Auxiliary networks for supervised local learning: DGL, InfoPro and feature reconstruction (token models).

Every auxiliary is an ``nn.Module`` with ``loss(features, target, *, criterion, image=None, module_input=None)``
returning the scalar local loss of one gradient-isolated module; it is only used in training (the wrapper's eval
forward skips it).

* **DGL** — Belilovsky, Eickenberg, Oyallon, "Decoupled Greedy Learning of CNNs", ICML 2020, arXiv 1901.08164.
  Auxiliary = adaptive average pool to ceil(H/4) → ``depth`` × (1×1 conv + BN + ReLU) → adaptive pool to ≤ 2×2 →
  MLP (two hidden Linear+BN+ReLU, then Linear to classes); loss = cross-entropy. Vector features skip the conv part.
* **InfoPro** — Wang, Ni, Song, Yang, Huang, "Revisiting Locally Supervised Learning: an Alternative to End-to-end
  Training", ICLR 2021, arXiv 2101.10832. Loss = λ_r · BCE(decoder(h), x̃) + λ_c · CE(head(h), y), where the
  decoder upsamples h bilinearly to the image size, conv3×3→12 + BN + ReLU → conv3×3→C + sigmoid, and x̃ is the
  *de-normalised* input in [0, 1]. The weights of module i (0-based, of K-1 auxiliaries) are interpolated:
  r = i / (K - 2), λ = λ_first · (1 - r) + λ_last · r. Defaults (5 → 0 for reconstruction, 1 → 1 for CE) follow the
  reference scripts' ``--ixx_1 5 --ixy_1 1 --ixx_2 0`` except the last CE weight: the scripts' ``--ixy_2 0`` would
  leave the deepest auxiliary with no loss at all for K > 2.
* **Feature reconstruction** (``recon``, token models; e.g. the local ViT training literature): the decoder maps
  the module's output back to the module's *input* features, loss = λ_r · MSE(dec(h), x_in.detach()) + λ_c · CE on
  mean-pooled tokens.

Pitfalls handled: BCE needs targets in [0, 1] — when the normalisation constants are unknown the InfoPro decoder
reconstructs the normalised input with MSE instead (no sigmoid), and says so; the reconstruction target is
always detached; the criterion is the caller's (soft targets and label smoothing compose).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import checked_arguments

__all__ = [
    "AuxiliaryNetwork",
    "ClassifierAuxiliary",
    "InfoProAuxiliary",
    "ReconstructionAuxiliary",
    "dgl_head",
    "infopro_decoder",
    "infopro_head",
    "infopro_weights",
]

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_shape(shape: Sequence[int], what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 2, 3) or any(s < 1 for s in shape):
        raise ValueError(f"{what} must be a per-sample shape (C,H,W), (T,D) or (D,) of positive sizes, got {shape}")
    return shape


def _check_features(features: object) -> None:
    """An auxiliary's ``features`` must be a tensor (its head's layers would fail inside on anything else)."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}")


def _apply(layer: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``layer(features)``; a shape, dtype or device that the layer cannot take is a ``ValueError`` naming
    ``features`` (torch's own message kept after it) instead of an error from deep inside the head."""
    try:
        return layer(features)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as error:
        raise ValueError(f"features of shape {tuple(features.shape)} ({features.dtype}, {features.device}) do not fit "
                         f"the auxiliary network: {str(error).splitlines()[0]}") from error


class _TokenMean(nn.Module):
    """(N, T, D) -> (N, D) by averaging tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


@checked_arguments
def dgl_head(shape: Sequence[int], num_classes: int, depth: int = 2, mlp_layers: int = 2) -> nn.Sequential:
    """DGL auxiliary classifier for features of per-sample ``shape``.

    Image features (C, H, W): pool to ceil(H/4) → ``depth`` × (1×1 conv + BN + ReLU) → pool to min(ceil(H/4), 2)
    → flatten → ``mlp_layers`` × (Linear + BN1d + ReLU) → Linear. Tokens (T, D) are averaged, vectors (D,) go
    straight to the MLP (``depth`` then adds Linear+BN+ReLU layers instead of convolutions).
    """
    shape = _check_shape(shape, "shape")
    if depth < 0 or mlp_layers < 0:
        raise ValueError(f"depth and mlp_layers must be >= 0, got {depth} and {mlp_layers}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    layers: list[nn.Module] = []
    if len(shape) == 3:
        channels, height, width = shape
        size = (math.ceil(height / 4), math.ceil(width / 4))
        layers.append(nn.AdaptiveAvgPool2d(size))
        for _ in range(depth):
            layers += [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        out = (min(size[0], 2), min(size[1], 2))
        layers += [nn.AdaptiveAvgPool2d(out), nn.Flatten()]
        features = channels * out[0] * out[1]
        extra = 0
    else:
        if len(shape) == 2:
            layers.append(_TokenMean())
        features = shape[-1]
        extra = depth
    for _ in range(mlp_layers + extra):
        layers += [nn.Linear(features, features, bias=False), nn.BatchNorm1d(features), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


@checked_arguments
def infopro_head(shape: Sequence[int], num_classes: int, hidden: int = 128) -> nn.Sequential:
    """InfoPro's CE branch: conv3×3 (stride 2 and twice the channels, capped at 64, while H > 8) + BN + ReLU →
    global pool → Linear(→hidden) + ReLU → Linear. Vectors/tokens: Linear + ReLU + Linear."""
    shape = _check_shape(shape, "shape")
    if num_classes < 1 or hidden < 1:
        raise ValueError(f"num_classes and hidden must be >= 1, got {num_classes} and {hidden}")
    if len(shape) == 3:
        channels, height, _ = shape
        wide = height > 8
        out = max(channels, min(2 * channels, 64)) if wide else channels
        return nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=2 if wide else 1, padding=1, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(out, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
    layers: list[nn.Module] = [_TokenMean()] if len(shape) == 2 else []
    return nn.Sequential(*layers, nn.Linear(shape[-1], hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


class _Upsample(nn.Module):
    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=True)


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


@checked_arguments
def infopro_decoder(shape: Sequence[int], image_shape: Sequence[int], width: int = 12, sigmoid: bool = True
                    ) -> nn.Sequential:
    """InfoPro decoder from features of ``shape`` to an image of ``image_shape`` (C, H, W).

    Image features: bilinear upsampling to (H, W) → conv3×3→``width`` + BN + ReLU → conv3×3→C (+ sigmoid).
    Vector/token features: (mean over tokens) → Linear to C·H·W (+ sigmoid), reshaped.
    """
    shape = _check_shape(shape, "shape")
    image_shape = _check_shape(image_shape, "image_shape")
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    channels = image_shape[0]
    tail: list[nn.Module] = [nn.Sigmoid()] if sigmoid else []
    if len(shape) == 3:
        return nn.Sequential(
            _Upsample(image_shape[1:]),
            nn.Conv2d(shape[0], width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, channels, 3, padding=1),
            *tail,
        )
    layers: list[nn.Module] = [_TokenMean()] if len(shape) == 2 else []
    return nn.Sequential(*layers, nn.Linear(shape[-1], math.prod(image_shape)), _Reshape(image_shape), *tail)


@checked_arguments
def infopro_weights(index: int, num_auxiliaries: int, first: tuple[float, float], last: tuple[float, float]
                    ) -> tuple[float, float]:
    """(reconstruction weight, CE weight) of auxiliary ``index`` of ``num_auxiliaries``: linear interpolation.

    r = index / (num_auxiliaries - 1) (0 when there is one auxiliary); λ = first · (1 - r) + last · r.
    """
    if num_auxiliaries < 1:
        raise ValueError(f"num_auxiliaries must be >= 1, got {num_auxiliaries}")
    if not 0 <= index < num_auxiliaries:
        raise ValueError(f"index must be in [0, {num_auxiliaries}), got {index}")
    ratio = index / (num_auxiliaries - 1) if num_auxiliaries > 1 else 0.0
    return (first[0] * (1 - ratio) + last[0] * ratio, first[1] * (1 - ratio) + last[1] * ratio)


class AuxiliaryNetwork(nn.Module):
    """Base class: ``loss(features, target, *, criterion, image=None, module_input=None) -> scalar``."""

    def loss(
        self,
        features: torch.Tensor,
        target: torch.Tensor,
        *,
        criterion: Criterion,
        image: torch.Tensor | None = None,
        module_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Auxiliary logits (for inspection; training uses ``loss``)."""
        return self.head(features)


@checked_arguments
class ClassifierAuxiliary(AuxiliaryNetwork):
    """An auxiliary classifier ``head`` trained with ``weight · criterion(head(h), y)`` (DGL, AugLocal)."""

    def __init__(self, head: nn.Module, weight: float = 1.0) -> None:
        super().__init__()
        if not weight >= 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.head = head
        self.weight = float(weight)

    def loss(self, features, target, *, criterion, image=None, module_input=None):  # noqa: D102
        _check_features(features)
        return self.weight * criterion(_apply(self.head, features), target)


@checked_arguments
class InfoProAuxiliary(AuxiliaryNetwork):
    """InfoPro: ``recon_weight · recon(decoder(h), image) + ce_weight · criterion(head(h), y)``.

    With ``bce=True`` the decoder ends in a sigmoid and the target must be the de-normalised image in [0, 1];
    with ``bce=False`` (normalisation unknown) it reconstructs the model input itself with MSE.
    """

    def __init__(self, head: nn.Module, decoder: nn.Module | None, recon_weight: float, ce_weight: float,
                 bce: bool = True) -> None:
        super().__init__()
        for name, value in (("recon_weight", recon_weight), ("ce_weight", ce_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.head = head
        self.decoder = decoder
        self.recon_weight = float(recon_weight)
        self.ce_weight = float(ce_weight)
        self.bce = bool(bce)

    def loss(self, features, target, *, criterion, image=None, module_input=None):  # noqa: D102
        _check_features(features)
        total = self.ce_weight * criterion(_apply(self.head, features), target)
        if self.decoder is not None and self.recon_weight != 0.0:
            if image is None:
                raise ValueError("InfoPro needs the reconstruction target `image`")
            image = image.detach()
            recon = _apply(self.decoder, features)
            if self.bce:
                try:
                    term = F.binary_cross_entropy(recon.float(), image.float().clamp(0.0, 1.0))
                except RuntimeError:  # torch refuses a reconstruction outside [0, 1]: only NaN gets there
                    if bool(torch.isfinite(recon).all()):
                        raise
                    raise ValueError("features gave a NaN reconstruction (non-finite or huge features?); "
                                     "binary cross-entropy needs values in [0, 1]") from None
            else:
                term = F.mse_loss(recon.float(), image.float())
            total = total + self.recon_weight * term
        return total


def _reconstruction_decoder(shape: tuple[int, ...], input_shape: tuple[int, ...]) -> nn.Module:
    if len(shape) == 3 and len(input_shape) == 3:
        return nn.Sequential(nn.Conv2d(shape[0], input_shape[0], 1), _Upsample(input_shape[1:]))
    if len(shape) == 2 and len(input_shape) == 2:
        if shape[0] != input_shape[0]:
            raise ValueError(f"recon: token counts differ between module input {input_shape} and output {shape}")
        return nn.Sequential(nn.LayerNorm(shape[1]), nn.Linear(shape[1], input_shape[1]))
    layers: list[nn.Module] = []
    if len(shape) == 3:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif len(shape) == 2:
        layers.append(_TokenMean())
    return nn.Sequential(*layers, nn.Linear(shape[0] if len(shape) == 3 else shape[-1], math.prod(input_shape)),
                         _Reshape(input_shape))


@checked_arguments
class ReconstructionAuxiliary(AuxiliaryNetwork):
    """Feature reconstruction: ``recon_weight · MSE(decoder(h), x_in) + ce_weight · criterion(head(h), y)``.

    ``x_in`` is the module's input (detached). Tokens (T, D): LayerNorm + Linear per token; images: 1×1 conv and
    bilinear resize to the input's size; otherwise a Linear to the flattened input.
    """

    def __init__(self, shape: Sequence[int], input_shape: Sequence[int], num_classes: int, recon_weight: float = 1.0,
                 ce_weight: float = 1.0) -> None:
        super().__init__()
        shape = _check_shape(shape, "shape")
        input_shape = _check_shape(input_shape, "input_shape")
        for name, value in (("recon_weight", recon_weight), ("ce_weight", ce_weight)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.decoder = _reconstruction_decoder(shape, input_shape)
        self.head = dgl_head(shape, num_classes, depth=0, mlp_layers=0)
        self.recon_weight = float(recon_weight)
        self.ce_weight = float(ce_weight)

    def loss(self, features, target, *, criterion, image=None, module_input=None):  # noqa: D102
        _check_features(features)
        total = self.ce_weight * criterion(_apply(self.head, features), target)
        if self.recon_weight != 0.0:
            if module_input is None:
                raise ValueError("recon needs the module's input features `module_input`")
            recon = _apply(self.decoder, features).float()
            total = total + self.recon_weight * F.mse_loss(recon, module_input.detach().float())
        return total
