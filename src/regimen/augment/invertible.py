"""Invertible geometric augmentation for dense prediction, after AugUndo.

Paper: Wu, Wong et al., "AugUndo: Scaling Up Augmentations for Monocular Depth Completion and Estimation" (2023,
arXiv 2310.09739). Geometric augmentations (flip, scale, rotate, translate) are applied to the input; the network's
dense output, produced in the augmented frame, is warped back to the original frame ("undo") so the loss is computed
against the original images/targets, with a mask of the pixels that have a valid preimage.

Formula (pixel coordinates ``p`` relative to the image centre, ``+x`` right, ``+y`` down): the forward map from the
original to the augmented frame is ``A p = s R(theta) F p + t`` with ``F = diag(-1, 1)`` when flipped, scale ``s``,
rotation ``theta`` (degrees, counter-clockwise on screen) and translation ``t = (u_x W, u_y H)``. The augmented
image is ``x_aug(q) = x(A^-1 q)``; ``undo(pred)(p) = pred(A p)``. Both warps are bilinear
(``grid_sample``, ``align_corners=False``); the matrices act in normalised coordinates, so ``undo`` also accepts a
prediction at another resolution with the same aspect ratio.

Pitfalls handled: rotation is done in pixel units (not normalised units), so non-square images rotate rigidly;
identity parameters reproduce the input exactly (no resampling); ``valid_mask`` is ``True`` where ``A p`` lies
inside the augmented frame **and** every augmented pixel the bilinear undo reads had its own preimage inside the
original image, so a pixel marked valid has a round trip that touched only real data (1-pixel stricter than
"inside the frame" at the borders). ``undo`` works for any number of channels ``K`` (depth, logits); use
``mode="nearest"`` for integer label maps.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import checked_arguments, require_data

__all__ = ["InvertibleAugment", "AugUndo", "invertible_augment"]


def _pair(value, name: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers (low, high), got {value!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be a finite (low, high) with low <= high, got {value!r}")
    return low, high


def _forward_pixel_matrices(flip, scale, angle, tx, ty) -> torch.Tensor:
    """``(N, 3, 3)`` float64 forward maps ``A`` in centred pixel coordinates."""
    n = flip.shape[0]
    theta = torch.deg2rad(angle.double())
    cos, sin = torch.cos(theta), torch.sin(theta)
    fx = torch.where(flip, -1.0, 1.0).double()
    s = scale.double()
    a = torch.zeros(n, 3, 3, dtype=torch.float64)
    # y points down, so a counter-clockwise rotation on screen is [[cos, sin], [-sin, cos]] in (x, y).
    a[:, 0, 0] = s * cos * fx
    a[:, 0, 1] = s * sin
    a[:, 1, 0] = -s * sin * fx
    a[:, 1, 1] = s * cos
    a[:, 0, 2] = tx.double()
    a[:, 1, 2] = ty.double()
    a[:, 2, 2] = 1.0
    return a


def _normalised(a_pix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Conjugate centred-pixel maps into ``affine_grid`` normalised coordinates (``align_corners=False``)."""
    p = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], dtype=torch.float64))
    p_inv = torch.diag(torch.tensor([2.0 / width, 2.0 / height, 1.0], dtype=torch.float64))
    return p_inv @ a_pix @ p


def _inside(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Sample points of ``grid`` ``(N, H, W, 2)`` that lie within the hull of pixel centres of an ``height x width``
    image (so bilinear sampling reads only real pixels), with a small tolerance for rounding."""
    limit_x = 1.0 - 1.0 / width + 1e-6
    limit_y = 1.0 - 1.0 / height + 1e-6
    return (grid[..., 0].abs() <= limit_x) & (grid[..., 1].abs() <= limit_y)


def _warp(values: torch.Tensor, theta: torch.Tensor, mode: str, fill: float = 0.0) -> torch.Tensor:
    """``out(q) = values(theta q)`` (normalised coords) with ``fill`` outside."""
    n, _, h, w = values.shape
    grid = F.affine_grid(theta[:, :2].to(values.device, torch.float32), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(values.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
    if fill != 0.0:
        ones = torch.ones(n, 1, h, w, device=values.device)
        weight = F.grid_sample(ones, grid, mode=mode, padding_mode="zeros", align_corners=False)
        out = out + (1.0 - weight) * fill
    return out


@checked_arguments
class AugUndo:
    """The undo of one :class:`InvertibleAugment` call: ``pred_back, valid_mask = undo(pred)``.

    Attributes:
        forward: ``(N, 3, 3)`` float64 forward maps (original -> augmented) in normalised coordinates.
        inverse: their inverses (augmented -> original).
        identity: ``(N,)`` bool, samples whose parameters were the identity (passed through unchanged).
    """

    def __init__(self, forward: torch.Tensor, identity: torch.Tensor) -> None:
        self.forward = forward
        self.inverse = torch.linalg.inv(forward)
        self.identity = identity

    def __call__(self, pred: torch.Tensor, mode: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
        """Warp ``pred`` ``(N, K, H, W)`` from the augmented frame back to the original frame.

        Returns ``(pred_back, valid_mask)``: ``pred_back`` has ``pred``'s shape and dtype (floating); ``valid_mask``
        ``(N, 1, H, W)`` bool marks pixels with a valid preimage in the augmented frame.
        """
        if not isinstance(pred, torch.Tensor) or pred.dim() != 4:
            raise ValueError(f"pred must be a tensor of shape (N, K, H, W), got {getattr(pred, 'shape', pred)!r}")
        if pred.shape[0] != self.forward.shape[0]:
            raise ValueError(f"pred has {pred.shape[0]} samples, the augmentation had {self.forward.shape[0]}")
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        n, _, h, w = pred.shape
        device = pred.device
        # augmented pixels whose own preimage was inside the original image
        grid_inv = F.affine_grid(self.inverse[:, :2].to(device, torch.float32), [n, 1, h, w], align_corners=False)
        aug_valid = _inside(grid_inv, h, w).unsqueeze(1).float()
        grid_fwd = F.affine_grid(self.forward[:, :2].to(device, torch.float32), [n, 1, h, w], align_corners=False)
        back = F.grid_sample(pred.float(), grid_fwd, mode=mode, padding_mode="zeros", align_corners=False)
        support = F.grid_sample(aug_valid, grid_fwd, mode=mode, padding_mode="zeros", align_corners=False)
        valid = _inside(grid_fwd, h, w).unsqueeze(1) & (support >= 1.0 - 1e-4)
        ident = self.identity.to(device).view(n, 1, 1, 1)
        back = torch.where(ident, pred.float(), back)
        valid = torch.where(ident, torch.ones_like(valid), valid)
        out_dtype = pred.dtype if pred.is_floating_point() else torch.float32
        if not pred.is_floating_point() and mode == "nearest":
            out_dtype = pred.dtype
            back = back.round()
        return back.to(out_dtype), valid


@checked_arguments
def invertible_augment(
    images: torch.Tensor,
    flip: torch.Tensor,
    scale: torch.Tensor,
    angle: torch.Tensor,
    translate: torch.Tensor,
    fill: float = 0.0,
    mode: str = "bilinear",
) -> tuple[torch.Tensor, AugUndo]:
    """Apply per-sample flip/scale/rotate/translate and return ``(images_aug, undo)``.

    Args:
        images: ``(N, C, H, W)`` floating point (any range) or uint8.
        flip: ``(N,)`` bool, horizontal flip.
        scale: ``(N,)`` zoom factors (> 0; > 1 enlarges the content).
        angle: ``(N,)`` degrees, counter-clockwise.
        translate: ``(N, 2)`` shifts as fractions of ``(W, H)`` (positive: right, down).
        fill: value of augmented pixels whose preimage is outside the image.
        mode: ``"bilinear"`` or ``"nearest"``.
    """
    require_data(images=images, flip=flip, scale=scale, angle=angle, translate=translate)
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got {getattr(images, 'shape', images)!r}")
    n, _, h, w = images.shape
    if images.numel() == 0:
        raise ValueError(f"images must hold at least one non-empty image, got shape {tuple(images.shape)}")
    flip = torch.as_tensor(flip, dtype=torch.bool).cpu()
    scale = torch.as_tensor(scale, dtype=torch.float64).cpu()
    angle = torch.as_tensor(angle, dtype=torch.float64).cpu()
    translate = torch.as_tensor(translate, dtype=torch.float64).cpu()
    if flip.shape != (n,) or scale.shape != (n,) or angle.shape != (n,) or translate.shape != (n, 2):
        raise ValueError(f"flip, scale, angle must have shape ({n},) and translate ({n}, 2); got "
                         f"{tuple(flip.shape)}, {tuple(scale.shape)}, {tuple(angle.shape)}, {tuple(translate.shape)}")
    if not (scale > 0).all() or not torch.isfinite(scale).all():
        raise ValueError("scale must be finite and > 0")
    if not (torch.isfinite(angle).all() and torch.isfinite(translate).all()):
        raise ValueError("angle and translate must be finite")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    a_pix = _forward_pixel_matrices(flip, scale, angle, translate[:, 0] * w, translate[:, 1] * h)
    forward = _normalised(a_pix, h, w)
    identity = (~flip) & (scale == 1) & (angle % 360 == 0) & (translate == 0).all(dim=1)
    undo = AugUndo(forward, identity)
    warped = _warp(images, undo.inverse, mode, fill)
    if images.dtype == torch.uint8:
        warped = warped.round().clamp(0, 255).to(torch.uint8)
    else:
        warped = warped.to(images.dtype)
    ident = identity.to(images.device).view(n, 1, 1, 1)
    return torch.where(ident, images, warped), undo


@checked_arguments
class InvertibleAugment(nn.Module):
    """Random invertible geometric augmentation: ``x_aug, undo = aug(x, generator=None)``.

    Args:
        hflip_p: probability of a horizontal flip.
        scale: ``(low, high)`` zoom range, sampled uniformly.
        rotate: ``(low, high)`` degrees, sampled uniformly.
        translate: ``(max_x, max_y)`` as fractions of width and height; shifts uniform in ``[-max, max]``.
        fill: value outside the image in the augmented input.
        mode: interpolation of the input warp.
    """

    def __init__(
        self,
        hflip_p: float = 0.5,
        scale: tuple[float, float] = (0.8, 1.2),
        rotate: tuple[float, float] = (-10.0, 10.0),
        translate: tuple[float, float] = (0.1, 0.1),
        fill: float = 0.0,
        mode: str = "bilinear",
    ) -> None:
        super().__init__()
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be in [0, 1], got {hflip_p}")
        self.scale = _pair(scale, "scale")
        if self.scale[0] <= 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.rotate = _pair(rotate, "rotate")
        tx, ty = _pair((0.0, 0.0), "translate") if translate is None else tuple(float(v) for v in translate)
        if not (0 <= tx and 0 <= ty and math.isfinite(tx) and math.isfinite(ty)):
            raise ValueError(f"translate must be two fractions >= 0, got {translate!r}")
        self.translate = (tx, ty)
        self.hflip_p = hflip_p
        self.fill = fill
        self.mode = mode

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-sample parameters ``{"flip", "scale", "angle", "translate"}``."""
        u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
        return {
            "flip": u[:, 0] < self.hflip_p,
            "scale": self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 1],
            "angle": self.rotate[0] + (self.rotate[1] - self.rotate[0]) * u[:, 2],
            "translate": (2 * u[:, 3:5] - 1) * torch.tensor(self.translate, dtype=torch.float64),
        }

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Callable[..., tuple[torch.Tensor, torch.Tensor]]]:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        params = self.sample(images.shape[0], generator)
        return invertible_augment(images, fill=self.fill, mode=self.mode, **params)
