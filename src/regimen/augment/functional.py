"""Batched image operations with per-sample parameters, defined by Pillow's semantics.

Every op takes a batch ``images`` of shape ``(N, C, H, W)`` with ``C`` in {1, 3}, either ``uint8`` (levels 0-255) or
floating point in [0, 1], and per-sample parameters as tensors of shape ``(N,)`` (a Python number is broadcast). It
returns a new tensor of the same shape and dtype; inputs are never modified.

The RandAugment ops were defined in Pillow terms (Cubuk et al., "RandAugment: Practical automated data augmentation
with a reduced search space", 2019, arXiv 1909.13719), so Pillow is the reference:

* **uint8 images reproduce Pillow** (``ImageOps``, ``ImageEnhance``, ``Image.transform``/``Image.rotate``) level for
  level: blends truncate like ``Image.blend`` (``trunc(d + f (x - d))``, clipped to [0, 255]); greyscale is
  ``L = (19595 R + 38470 G + 7471 B + 2^15) >> 16``; Contrast blends with the rounded mean grey level; Sharpness
  blends with Pillow's SMOOTH filter (kernel ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, rounded, border pixels copied);
  AutoContrast and Equalize build Pillow's lookup tables (double-precision scale, truncation; ``step // 2``
  rounding, histogram without its last bin).
* **float images** use the same definitions without the integer rounding (the continuous version of each op), so
  they agree with Pillow to within one level; Equalize and Posterize quantise to 8-bit levels by their nature.
* **geometric ops** use Pillow's inverse-affine convention: output pixel ``(x, y)`` samples the input at
  ``(a x' + b y' + c, d x' + e y' + f)`` with ``(x', y') = (x + 0.5, y + 0.5)``, the pixel centre. Nearest
  interpolation takes ``floor`` of that point in Pillow's 16.16 fixed point (Pillow's ``affine_fixed``; pure
  scale/translate matrices take Pillow's double-precision ``ImagingScaleAffine`` path); bilinear follows Pillow's
  bilinear filter (edge-clamped neighbours, truncation for uint8). Points outside the input get ``fill``.
  ``rotate`` is ``Image.rotate(angle, center=(W/2, H/2), expand=False)``: counter-clockwise, matrix entries rounded
  to 15 decimals as Pillow does.

``fill`` is given in 8-bit levels (0-255; divided by 255 for float images), as one number or one per channel.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "affine",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
    "rotation_matrix",
    "check_images",
    "trusted_images",
]

Fill = float | Sequence[float]

#: The 14 RandAugment ops, in this order (``AugmentParams.ops`` holds indices into this tuple).
OPS = (
    "Identity",
    "AutoContrast",
    "Equalize",
    "Rotate",
    "Solarize",
    "Color",
    "Posterize",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)
_INTERPOLATIONS = ("nearest", "bilinear")


# ----------------------------------------------------------------------------------------------------------------
# validation and helpers


def check_images(images: torch.Tensor, name: str = "images", check_range: bool = True) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``images`` is ``(N, C, H, W)``, C in {1, 3}, uint8 or float in
    [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {images.dim()} dimensions {tuple(images.shape)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point in [0, 1], got {images.dtype}")
    if check_range and images.is_floating_point() and images.numel():
        low, high = torch.aminmax(images)
        if not (low >= 0 and high <= 1):  # also rejects NaN
            raise ValueError(f"{name} must lie in [0, 1] when floating point, got values in [{low}, {high}]")


class ThreadFlag:
    """A per-thread switch that is on inside ``with flag.on():`` blocks (nesting restores the outer state)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __bool__(self) -> bool:
        return getattr(self._local, "on", False)

    @contextlib.contextmanager
    def on(self):
        previous = bool(self)
        self._local.on = True
        try:
            yield
        finally:
            self._local.on = previous


_trusted = ThreadFlag()


def trusted_images():
    """Skip the (full-pass) range check of ``images`` inside this block: for callers that validated them already."""
    return _trusted.on()


def _check(images: torch.Tensor) -> None:
    check_images(images, check_range=not _trusted)


def _per_sample(value, n: int, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A parameter as a CPU tensor of shape ``(n,)``; numbers are broadcast."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.dim() == 0:
            tensor = tensor.expand(n)
        if tensor.shape != (n,):
            raise ValueError(f"{name} must be a number or a tensor of shape ({n},), got shape {tuple(tensor.shape)}")
        if not torch.isfinite(tensor.double()).all():
            raise ValueError(f"{name} must be finite")
        return tensor.to(dtype)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return torch.full((n,), value, dtype=dtype)


def _bcast(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, 1, 1)`` on the images' device."""
    return values.to(images.device).view(-1, 1, 1, 1)


def _levels(images: torch.Tensor) -> torch.Tensor:
    """Images as float32 in level units (0-255)."""
    if images.dtype == torch.uint8:
        return images.float()
    return images.float() * 255.0


def _finish(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Level-valued float32 back to ``like``'s dtype: uint8 truncates (Pillow's ``(UINT8)`` cast), float scales."""
    levels = levels.clamp(0.0, 255.0)
    if like.dtype == torch.uint8:
        return levels.to(torch.uint8)  # truncation toward zero; values are >= 0
    return (levels / 255.0).to(like.dtype)


def _quantize(images: torch.Tensor) -> torch.Tensor:
    """Images as uint8 levels (float images rounded to the nearest level)."""
    if images.dtype == torch.uint8:
        return images
    return (images.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)


def _from_uint8(levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if like.dtype == torch.uint8:
        return levels
    return (levels.float() / 255.0).to(like.dtype)


def _grey_levels(images: torch.Tensor) -> torch.Tensor:
    """Greyscale ``(N, 1, H, W)`` float32 levels: Pillow's integer ``convert('L')`` for uint8, ITU-R 601 for float."""
    if images.shape[1] == 1:
        return _levels(images)
    if images.dtype == torch.uint8:
        return _grey_int32(images).float()
    levels = _levels(images)
    return (0.299 * levels[:, 0:1] + 0.587 * levels[:, 1:2] + 0.114 * levels[:, 2:3]).clamp(0.0, 255.0)


def _grey_int32(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')`` of uint8 RGB ``(N, 3, H, W)``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, int32
    ``(N, 1, H, W)``."""
    total = images[:, 0:1].to(torch.int32).mul_(19595)
    total.add_(images[:, 1:2].to(torch.int32), alpha=38470)
    total.add_(images[:, 2:3].to(torch.int32), alpha=7471)
    return total.add_(0x8000).bitwise_right_shift_(16)


def _grey_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')`` of uint8 RGB ``(N, 3, H, W)`` -> uint8 ``(N, 1, H, W)``."""
    return _grey_int32(images).to(torch.uint8)


def _blend(degenerate: torch.Tensor, levels: torch.Tensor, factors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)`` in level units: ``d + f (x - d)``, clipped, truncated."""
    factors = _bcast(factors.float(), like)
    return _finish(degenerate + factors * (levels - degenerate), like)


# Lookup tables are built in numpy: they hold a few hundred numbers per image, where a torch call costs several
# microseconds of dispatch and a numpy call about one. The arithmetic is the same IEEE float32/float64/int64 as in
# torch (tests compare every table op with Pillow).
_RAMP = np.arange(256)


def _np(tensor: torch.Tensor) -> np.ndarray:
    """A small parameter/statistics tensor as a numpy array (copied to the CPU if needed)."""
    return tensor.detach().cpu().numpy()


def _lut(table: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 numpy table as a tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.uint8)).to(device)


def _blend_table(degenerate: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Per-sample uint8 lookup tables ``(N, 256)`` of Pillow's blend with a constant ``degenerate`` level ``(N,)``:
    the same float32 arithmetic as :func:`_blend`, done once per level instead of once per pixel."""
    d = np.asarray(degenerate).astype(np.float32).reshape(-1, 1)
    f = np.asarray(factors).astype(np.float32).reshape(-1, 1)
    return np.clip(d + f * (_RAMP.astype(np.float32) - d), 0.0, 255.0).astype(np.uint8)


def _blend_pixels(degenerate: torch.Tensor, images: torch.Tensor, factors: torch.Tensor,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Pillow's blend of uint8 ``images`` with a per-pixel uint8 ``degenerate`` (broadcastable), exactly; ``out``
    (contiguous, ``images``' shape) receives the result.

    Large images use 2-D tables ``T_f[d, x] = trunc(clip(d + f (x - d)))`` (one 256 x 256 table per distinct factor,
    float32 arithmetic as Pillow), looked up with int32 indices; small ones compute the float32 blend directly."""
    n = images.shape[0]
    uniq, which = torch.unique(factors.float(), return_inverse=True)
    if uniq.numel() * 65536 > images.numel():
        f = _bcast(factors.float(), images)
        d = degenerate.float()
        blended = (d + f * (images.float() - d)).clamp_(0.0, 255.0)
        return blended.to(torch.uint8) if out is None else out.copy_(blended)
    device = images.device
    ramp = torch.arange(256, dtype=torch.float32, device=device)
    d = ramp.view(1, 256, 1)
    x = ramp.view(1, 1, 256)
    tables = (d + uniq.to(device).view(-1, 1, 1) * (x - d)).clamp_(0.0, 255.0).to(torch.uint8)  # (U, 256, 256)
    index = images.to(torch.int32).add_(degenerate.to(torch.int32).mul_(256))
    if uniq.numel() > 1:
        index.add_(which.to(device=device, dtype=torch.int32).mul_(65536).view(n, 1, 1, 1))
    if out is None:
        return tables.view(-1).index_select(0, index.reshape(-1)).view(index.shape)
    torch.index_select(tables.view(-1), 0, index.view(-1), out=out.view(-1))
    return out


def _check_factors(factors, n: int, name: str = "factors") -> torch.Tensor:
    tensor = _per_sample(factors, n, name)
    if (tensor < 0).any():
        raise ValueError(f"{name} must be >= 0 (1 keeps the image), got min {tensor.min().item()}")
    return tensor


def _apply_lut(images: torch.Tensor, lut: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Lookup in uint8 tables: ``images`` uint8 ``(N, C, H, W)``; ``lut`` ``(N, C, 256)`` (per sample and channel) or
    ``(N, 256)`` (per sample). Uses int32 indices (``index_select``), half the traffic of int64 ``take``; ``out``
    (contiguous, ``images``' shape) receives the result."""
    n, c = images.shape[:2]
    index = images.to(torch.int32)
    if lut.dim() == 2:
        lut = lut.unsqueeze(1)
    rows = lut.shape[1]
    if n * rows > 1:
        offsets = torch.arange(0, n * rows * 256, 256, device=images.device, dtype=torch.int32).view(n, rows, 1, 1)
        index.add_(offsets)
    if out is None:
        return lut.reshape(-1).index_select(0, index.view(-1)).view(images.shape)
    torch.index_select(lut.reshape(-1), 0, index.view(-1), out=out.view(-1))
    return out


def _histograms(images: torch.Tensor) -> torch.Tensor:
    """Per-(sample, channel) histograms ``(N, C, 256)`` (int64) of uint8 images."""
    n, c = images.shape[:2]
    keys = images.to(torch.int32)
    if n * c > 1:
        keys.add_(torch.arange(n * c, device=images.device, dtype=torch.int32).mul_(256).view(n, c, 1, 1))
    return torch.bincount(keys.view(-1), minlength=n * c * 256).view(n, c, 256)


# ----------------------------------------------------------------------------------------------------------------
# intensity ops


def identity(images: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` (the Identity op)."""
    _check(images)
    return images.clone()


def autocontrast(images: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast``: stretch each channel of each image so its darkest level is 0 and brightest 255.

    uint8: Pillow's table ``int(v * 255 / (hi - lo) - lo * 255 / (hi - lo))`` in double precision (a constant channel
    is left unchanged). Float: ``(x - lo) / (hi - lo)``.
    """
    _check(images)
    if images.numel() == 0:
        return images.clone()
    lo, hi = images.flatten(2).amin(dim=2), images.flatten(2).amax(dim=2)  # (N, C); aminmax is slow on uint8
    if images.is_floating_point():
        lo, hi = lo[..., None, None], hi[..., None, None]
        span = hi - lo
        flat = span <= 0
        scaled = (images - lo) / torch.where(flat, torch.ones_like(span), span)
        return torch.where(flat, images, scaled).clamp(0, 1)
    return _apply_lut(images, _lut(_autocontrast_table(_np(lo), _np(hi)), images.device))


def _autocontrast_table(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pillow's autocontrast tables ``(N, C, 256)`` uint8 from each channel's darkest/brightest levels ``(N, C)``:
    ``trunc(v * scale + offset)`` with ``scale = 255 / (hi - lo)``, ``offset = -lo * scale`` in double precision."""
    lo64 = lo.astype(np.float64)[..., None]  # (N, C, 1)
    hi64 = hi.astype(np.float64)[..., None]
    flat = hi64 <= lo64
    scale = 255.0 / np.where(flat, 1.0, hi64 - lo64)  # a true division, as Pillow's (torch's 255 / t is 255 * (1/t))
    offset = -lo64 * scale
    ramp = _RAMP.astype(np.float64)
    table = np.clip(np.trunc(ramp * scale + offset), 0, 255)
    return np.where(flat, ramp, table).astype(np.uint8)


def equalize(images: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` per channel of each image (float images are quantised to 8-bit levels first).

    Pillow's table: ``step = (total - count of the last occupied level) // 255``;
    ``lut[i] = (step // 2 + #pixels below i) // step``; a channel with one level or ``step == 0`` is unchanged.
    """
    _check(images)
    if images.numel() == 0:
        return images.clone()
    levels = _quantize(images)
    return _from_uint8(_apply_lut(levels, _lut(_equalize_table(_np(_histograms(levels))), images.device)), images)


def _equalize_table(hist: np.ndarray) -> np.ndarray:
    """Pillow's equalize tables ``(N, C, 256)`` uint8 from per-channel histograms ``(N, C, 256)`` (every channel has
    at least one pixel)."""
    occupied_levels = hist > 0
    top = np.where(occupied_levels, _RAMP, -1).max(axis=2, keepdims=True)  # last occupied level
    last_count = np.take_along_axis(hist, top, axis=2)
    total = hist.sum(axis=2, keepdims=True)
    occupied = occupied_levels.sum(axis=2, keepdims=True)
    step = (total - last_count) // 255
    keep = (occupied <= 1) | (step == 0)
    safe_step = np.where(keep, 1, step)
    below = np.cumsum(hist, axis=2) - hist  # pixels strictly below level i
    table = np.clip((safe_step // 2 + below) // safe_step, 0, 255)
    return np.where(keep, _RAMP, table).astype(np.uint8)


def solarize(images: torch.Tensor, thresholds) -> torch.Tensor:
    """``ImageOps.solarize``: invert every value ``>= threshold`` (``x < t ? x : max - x``).

    Args:
        images: ``(N, C, H, W)`` uint8 or float in [0, 1].
        thresholds: per-sample thresholds ``(N,)`` in the images' units (levels for uint8, [0, 1] for float).
    """
    _check(images)
    t = _per_sample(thresholds, images.shape[0], "thresholds", torch.float64)
    if images.is_floating_point():
        # compare in the images' own precision so that a pixel equal to the threshold counts as ">="
        return torch.where(images < _bcast(t, images).to(images.dtype), images, 1.0 - images)
    return _apply_lut(images, _lut(_solarize_table(_np(t)), images.device))


def _solarize_table(thresholds: np.ndarray) -> np.ndarray:
    """Solarize tables ``(N, 256)`` uint8 for thresholds ``(N,)`` in levels."""
    return np.where(_RAMP < thresholds.reshape(-1, 1), _RAMP, 255 - _RAMP).astype(np.uint8)


def _posterize_table(bits: np.ndarray) -> np.ndarray:
    """Posterize tables ``(N, 256)`` uint8 for integer ``bits`` ``(N,)`` in [1, 8]."""
    masks = 256 - (1 << (8 - bits.astype(np.int64)))  # ~(2^(8-b) - 1) & 0xFF
    return (_RAMP & masks.reshape(-1, 1)).astype(np.uint8)


def posterize(images: torch.Tensor, bits) -> torch.Tensor:
    """``ImageOps.posterize``: keep the ``bits`` (1-8, per sample) most significant bits of each 8-bit level."""
    _check(images)
    n = images.shape[0]
    bits_t = _per_sample(bits, n, "bits", torch.float64)
    if ((bits_t < 1) | (bits_t > 8) | (bits_t != bits_t.round())).any():
        raise ValueError(f"bits must be integers in [1, 8], got {bits_t.tolist()}")
    masks = (256 - (2 ** (8 - bits_t.long()))).to(torch.uint8)  # ~(2^(8-b) - 1) & 0xFF
    levels = _quantize(images)
    return _from_uint8(levels & _bcast(masks, levels), images)


def brightness(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black, ``f * x`` (``f`` >= 0 per sample; 1 keeps the image)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.dtype == torch.uint8:
        return _apply_lut(images, _lut(_blend_table(np.zeros(images.shape[0]), _np(f)), images.device))
    return _blend(torch.zeros((), device=images.device), _levels(images), f, images)


def color(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the image's greyscale version (identity for 1-channel images)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.shape[1] == 1:
        return images.clone()  # Pillow: an L image's greyscale is itself, blend(x, x, f) == x
    if images.dtype == torch.uint8:
        return _blend_pixels(_grey_uint8(images), images, f)
    return _blend(_grey_levels(images), _levels(images), f, images)


def contrast(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with a constant image of the mean grey level (rounded for uint8)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.dtype == torch.uint8:
        return _apply_lut(images, _lut(_contrast_table(images, _np(f)), images.device))
    mean = _grey_levels(images).double().mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.float(), _levels(images), f, images)


def _contrast_table(images: torch.Tensor, factors: np.ndarray) -> np.ndarray:
    """Pillow's Contrast as tables ``(N, 256)`` for uint8 images: blend with the rounded mean grey level."""
    if images.shape[1] == 1:
        mean = images.flatten(1).sum(dim=1, dtype=torch.float64) / images[0].numel()
    else:
        mean = _grey_int32(images).flatten(1).sum(dim=1, dtype=torch.float64) / images[0, 0].numel()
    return _blend_table(np.floor(_np(mean) + 0.5), factors)  # Pillow: int(mean + 0.5)


def _smooth_levels(levels: torch.Tensor, round_levels: bool) -> torch.Tensor:
    """Pillow's ``ImageFilter.SMOOTH`` on float32 levels: 3x3 ``[[1,1,1],[1,5,1],[1,1,1]] / 13``, border pixels
    copied; ``round_levels`` rounds like Pillow's 8-bit filter."""
    out = levels.clone()
    h, w = levels.shape[-2:]
    if h < 3 or w < 3:
        return out
    # separable 3x3 box sum + 4 x centre: exact integers in float32 for 8-bit levels
    rows = levels[..., :, :-2] + levels[..., :, 1:-1] + levels[..., :, 2:]
    sums = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    sums.add_(levels[..., 1:-1, 1:-1], alpha=4.0)
    if round_levels:
        # Pillow rounds sum/13 half up in float32; sum/13 is never within 1/26 of a half-way point, so this is exact.
        sums.add_(6.5).mul_(1.0 / 13.0).floor_()
    else:
        sums.mul_(1.0 / 13.0)
    out[..., 1:-1, 1:-1] = sums
    return out


def sharpness(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with Pillow's SMOOTH-filtered image (``f`` > 1 sharpens, < 1 blurs)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.dtype == torch.uint8:
        return _sharpness_uint8(images, f)
    levels = _levels(images)
    return _blend(_smooth_levels(levels, False), levels, f, images)


def _sharpness_uint8(images: torch.Tensor, factors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Pillow-exact Sharpness of uint8 images (factors ``(N,)``); ``out`` (contiguous) receives the result."""
    h, w = images.shape[-2:]
    if h < 3 or w < 3:  # Pillow copies every pixel: degenerate == image
        return images.clone() if out is None else out.copy_(images)
    wide = images.to(torch.int16)
    rows = wide[..., :, :-2] + wide[..., :, 1:-1] + wide[..., :, 2:]
    sums = rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :]
    sums.add_(wide[..., 1:-1, 1:-1], alpha=4)  # <= 13 * 255, fits int16
    # the degenerate image keeps the border pixels, where blend(x, x, f) == x: blend whole contiguous images
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = _smooth_rounding(images.device).index_select(0, sums.to(torch.int32).view(-1)).view(
        sums.shape)
    return _blend_pixels(smooth, images, factors, out=out)


_ROUNDING: dict[torch.device, torch.Tensor] = {}


def _smooth_rounding(device: torch.device) -> torch.Tensor:
    """Table of round-half-up ``s / 13`` for box sums ``s`` <= 13 * 255, exact (see :func:`_smooth_levels`)."""
    if device not in _ROUNDING:
        sums = torch.arange(13 * 255 + 1, device=device, dtype=torch.float32)
        _ROUNDING[device] = sums.add_(6.5).mul_(1.0 / 13.0).floor_().to(torch.uint8)
    return _ROUNDING[device]


# ----------------------------------------------------------------------------------------------------------------
# geometric ops


def _fill_levels(fill: Fill, channels: int) -> torch.Tensor:
    values = [fill] if isinstance(fill, int | float) else list(fill)
    if len(values) not in (1, channels) or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"fill must be a number or {channels} numbers (one per channel), got {fill!r}")
    if not all(0 <= v <= 255 for v in values):
        raise ValueError(f"fill must be in 8-bit levels [0, 255], got {fill!r}")
    return torch.tensor(values * (channels if len(values) == 1 else 1), dtype=torch.float64)


def _check_matrices(matrices: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(matrices, torch.Tensor):
        raise TypeError(f"matrices must be a tensor of shape ({n}, 6) or ({n}, 2, 3), got {type(matrices).__name__}")
    if matrices.shape not in ((n, 6), (n, 2, 3)):
        raise ValueError(f"matrices must have shape ({n}, 6) or ({n}, 2, 3), got {tuple(matrices.shape)}")
    m = matrices.detach().to(torch.float64).reshape(n, 6).cpu()
    if not torch.isfinite(m).all():
        raise ValueError("matrices must be finite")
    return m


def affine(
    images: torch.Tensor, matrices: torch.Tensor, interpolation: str = "nearest", fill: Fill = 0
) -> torch.Tensor:
    """Pillow's ``Image.transform(size, Image.AFFINE, data)`` per sample.

    Args:
        images: ``(N, C, H, W)`` uint8 or float in [0, 1].
        matrices: ``(N, 6)`` or ``(N, 2, 3)`` inverse maps ``(a, b, c, d, e, f)``: the output pixel ``(x, y)`` samples
            the input at ``(a x' + b y' + c, d x' + e y' + f)``, ``(x', y')`` the output pixel centre.
        interpolation: ``"nearest"`` (Pillow ``NEAREST``, exact) or ``"bilinear"`` (Pillow ``BILINEAR``).
        fill: value of pixels whose source point is outside the input, in 8-bit levels (number or one per channel).
    """
    _check(images)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    n, c, h, w = images.shape
    m = _check_matrices(matrices, n)
    fill_values = _fill_levels(fill, c)
    if images.numel() == 0:
        return images.clone()
    device = images.device
    a0, a1, a2, a3, a4, a5 = (m[:, i].view(n, 1, 1).to(device) for i in range(6))
    ys = torch.arange(h, dtype=torch.float64, device=device).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float64, device=device).view(1, 1, w)
    fill_t = fill_values.to(device) if images.dtype == torch.uint8 else fill_values.to(device) / 255.0
    fill_t = fill_t.to(images.dtype)

    if interpolation == "nearest":
        return _affine_nearest(images, m, fill_t)

    # bilinear: Pillow's bilinear_filter (source point outside [0, W) x [0, H) -> fill; neighbours edge-clamped)
    px = a0 * (xs + 0.5) + a1 * (ys + 0.5) + a2
    py = a3 * (xs + 0.5) + a4 * (ys + 0.5) + a5
    valid = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    px = px - 0.5
    py = py - 0.5
    x0 = torch.floor(px)
    y0 = torch.floor(py)
    dx = (px - x0).view(n, 1, h * w)
    dy = (py - y0).view(n, 1, h * w)
    x0 = x0.long()
    y0 = y0.long()
    cx0, cx1 = x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1)
    cy0, cy1 = y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1)
    values = images.reshape(n, c, h * w).double()

    def take(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return values.gather(2, (yy * w + xx).view(n, 1, h * w).expand(n, c, h * w))

    top = take(cy0, cx0) + (take(cy0, cx1) - take(cy0, cx0)) * dx
    bottom = take(cy1, cx0) + (take(cy1, cx1) - take(cy1, cx0)) * dx
    result = top + (bottom - top) * dy
    result = result.trunc().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else result.to(images.dtype)
    out = torch.where(valid.view(n, 1, h * w), result, fill_t.view(1, c, 1))
    return out.view(n, c, h, w)

def _nearest_indices(m: torch.Tensor, h: int, w: int, device: torch.device, need_x: bool, need_y: bool):
    """Source column/row indices (int32, broadcastable to ``(N, H, W)``) of Pillow's NEAREST affine sampling.

    Pure scale/translate matrices follow ``ImagingScaleAffine`` (double precision, ``floor``); the others
    ``affine_fixed`` (16.16 fixed point of the pixel-centre start, integer steps, arithmetic shift)."""
    n = m.shape[0]
    a0, a1, a2, a3, a4, a5 = (m[:, i].view(n, 1, 1) for i in range(6))
    xs = torch.arange(w).view(1, 1, w)
    ys = torch.arange(h).view(1, h, 1)
    scale_only = (a1 == 0) & (a3 == 0)

    def fixed(start: torch.Tensor, step_x: torch.Tensor, step_y: torch.Tensor) -> torch.Tensor:
        def fix(v: torch.Tensor) -> torch.Tensor:
            return torch.floor(v * 65536.0 + 0.5).long()

        per_row = fix(start) + ys * fix(step_y)  # (N, H, 1), small: int64
        per_column = xs * fix(step_x)  # (N, 1, W)
        if per_row.abs().amax() + per_column.abs().amax() < 2**31:  # the (N, H, W) sum fits int32
            per_row, per_column = per_row.to(torch.int32), per_column.to(torch.int32)
        return torch.add(per_row.to(device), per_column.to(device)).bitwise_right_shift_(16)

    def scaled(start: torch.Tensor, step: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
        return torch.floor(start + step * 0.5 + ramp.double() * step).to(torch.int32).to(device)

    ix = iy = None
    if bool(scale_only.all()):
        return (scaled(a2, a0, xs) if need_x else None), (scaled(a5, a4, ys) if need_y else None)
    if need_x:
        ix = fixed(a2 + a0 * 0.5 + a1 * 0.5, a0, a1)
    if need_y:
        iy = fixed(a5 + a3 * 0.5 + a4 * 0.5, a3, a4)
    if bool(scale_only.any()):
        where = scale_only.to(device)
        if need_x:
            ix = torch.where(where, scaled(a2, a0, xs).to(ix.dtype), ix)
        if need_y:
            iy = torch.where(where, scaled(a5, a4, ys).to(iy.dtype), iy)
    return ix, iy


def _gather_nearest(images: torch.Tensor, ix: torch.Tensor, iy: torch.Tensor, fill_t: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[n, c, y, x] = images[n, c, iy[n, y, x], ix[n, y, x]]``, ``fill`` where the source is outside: one
    ``index_select`` with int32 indices into the images with one fill pixel appended to every plane."""
    n, c, h, w = images.shape
    device = images.device
    outside = (ix < 0) | (ix >= w) | (iy < 0) | (iy >= h)
    flat = torch.mul(iy, w).add_(ix) if iy.shape == outside.shape else torch.add(iy * w, ix)
    flat = flat.expand(outside.shape).masked_fill(outside, h * w)
    index_type = flat.dtype if n * c * (h * w + 1) >= 2**31 else torch.int32
    planes = torch.arange(0, n * c * (h * w + 1), h * w + 1, device=device, dtype=index_type).view(n, c, 1)
    index = torch.add(flat.view(n, 1, h * w).to(index_type), planes)  # (N, C, H*W)
    padded = torch.empty(n, c, h * w + 1, dtype=images.dtype, device=device)
    padded[..., : h * w] = images.reshape(n, c, h * w)
    padded[..., h * w] = fill_t.view(1, c)
    if out is None:
        return padded.view(-1).index_select(0, index.view(-1)).view(n, c, h, w)
    torch.index_select(padded.view(-1), 0, index.view(-1), out=out.view(-1))
    return out


def _shift_rows(images: torch.Tensor, shifts: torch.Tensor, fill_t: torch.Tensor) -> torch.Tensor:
    """``out[n, c, y, x] = images[n, c, y, x + shifts[n, y]]`` (``fill`` outside): every output row is one contiguous
    window of the row padded by ``W`` fill values on each side, copied with a single row ``index_select``."""
    n, c, h, w = images.shape
    padded = torch.empty(n, c, h, 3 * w, dtype=images.dtype, device=images.device)
    padded[..., :w] = fill_t.view(1, c, 1, 1)
    padded[..., 2 * w :] = fill_t.view(1, c, 1, 1)
    padded[..., w : 2 * w] = images
    flat = padded.view(-1)
    windows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
    starts = torch.arange(n * c * h, device=images.device).mul_(3 * w).view(n, c, h)
    starts += w + shifts.clamp(-w, w).view(n, 1, h)
    return windows.index_select(0, starts.view(-1)).view(n, c, h, w)


def _shift_image_rows(images: torch.Tensor, shifts: torch.Tensor, fill_t: torch.Tensor) -> torch.Tensor:
    """``out[n, c, y] = images[n, c, y + shifts[n]]`` (a fill row outside): one row ``index_select``."""
    n, c, h, w = images.shape
    device = images.device
    source = torch.arange(h, device=device).view(1, h) + shifts.view(n, 1)  # (N, H)
    planes = torch.arange(n * c, device=device).view(n, c, 1)
    rows = planes * h + source.view(n, 1, h)
    outside = ((source < 0) | (source >= h)).view(n, 1, h)
    rows = torch.where(outside, n * c * h + torch.arange(c, device=device).view(1, c, 1), rows)
    table = torch.cat([images.reshape(n * c * h, w), fill_t.view(c, 1).expand(c, w)], dim=0)
    return table.index_select(0, rows.view(-1)).view(n, c, h, w)


def _affine_nearest(images: torch.Tensor, m: torch.Tensor, fill_t: torch.Tensor) -> torch.Tensor:
    """NEAREST warp of ``images`` by Pillow matrices ``m`` ``(N, 6)``.

    Horizontal shears and translations move whole row segments (exactly: with ``a = 1`` the fixed-point column is
    ``x + ((c' + y b') >> 16)``), so they are done as row-window copies; vertical translations as row copies; the
    rest (rotations, vertical shears) gather flat source indices from the image with one fill pixel appended."""
    n, c, h, w = images.shape
    device = images.device
    a0, a1, a2, a3, a4, a5 = (m[:, i] for i in range(6))
    keep_rows = bool(((a3 == 0) & (a4 == 1) & (a5 == 0)).all())  # source row == output row
    keep_cols = bool(((a0 == 1) & (a1 == 0) & (a2 == 0)).all())  # source column == output column
    if keep_rows and keep_cols:
        return images.clone()
    if keep_rows and bool((a0 == 1).all()):
        ys = torch.arange(h, dtype=torch.float64).view(1, h)
        fixed = (torch.floor((a2 + 0.5 + a1 * 0.5) * 65536.0 + 0.5).long().view(n, 1)
                 + ys.long() * torch.floor(a1 * 65536.0 + 0.5).long().view(n, 1)) >> 16
        scaled = torch.floor(a2 + 0.5).long().view(n, 1).expand(n, h)
        shifts = torch.where(((a1 == 0) & (a3 == 0)).view(n, 1), scaled, fixed)
        return _shift_rows(images, shifts.to(device), fill_t)
    if keep_cols and bool(((a3 == 0) & (a4 == 1)).all()):
        return _shift_image_rows(images, torch.floor(a5 + 0.5).long().to(device), fill_t)
    ix, iy = _nearest_indices(m, h, w, device, need_x=not keep_cols, need_y=not keep_rows)
    if ix is None:
        ix = torch.arange(w, device=device, dtype=torch.int32).view(1, 1, w)
    if iy is None:
        iy = torch.arange(h, device=device, dtype=torch.int32).view(1, h, 1)
    return _gather_nearest(images, ix, iy, fill_t)


def rotation_matrix(angles: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pillow's inverse matrices ``(N, 6)`` for ``Image.rotate(angle)`` (degrees, counter-clockwise, about the
    centre)."""
    theta = -torch.deg2rad(angles.double() % 360.0)
    cos = torch.round(torch.cos(theta), decimals=15)
    sin = torch.round(torch.sin(theta), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    a, b, d, e = cos, sin, -sin, cos
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return torch.stack([a, b, c, d, e, f], dim=1)


def rotate(images: torch.Tensor, angles, interpolation: str = "nearest", fill: Fill = 0) -> torch.Tensor:
    """``Image.rotate(angle, resample, fillcolor=fill)``: per-sample ``angles`` in degrees, counter-clockwise."""
    _check(images)
    n, _, h, w = images.shape
    angles_t = _per_sample(angles, n, "angles", torch.float64)
    return affine(images, rotation_matrix(angles_t, h, w), interpolation, fill)


def _simple_matrices(n: int, values, name: str, position: int) -> torch.Tensor:
    m = torch.zeros(n, 6, dtype=torch.float64)
    m[:, 0] = 1.0
    m[:, 4] = 1.0
    m[:, position] = _per_sample(values, n, name, torch.float64)
    return m


def shear_x(images: torch.Tensor, factors, interpolation: str = "nearest", fill: Fill = 0) -> torch.Tensor:
    """Horizontal shear: output ``(x, y)`` samples input ``(x + s y, y)`` (Pillow ``AFFINE (1, s, 0, 0, 1, 0)``)."""
    _check(images)
    return affine(images, _simple_matrices(images.shape[0], factors, "factors", 1), interpolation, fill)


def shear_y(images: torch.Tensor, factors, interpolation: str = "nearest", fill: Fill = 0) -> torch.Tensor:
    """Vertical shear: output ``(x, y)`` samples input ``(x, y + s x)`` (Pillow ``AFFINE (1, 0, 0, s, 1, 0)``)."""
    _check(images)
    return affine(images, _simple_matrices(images.shape[0], factors, "factors", 3), interpolation, fill)


def translate_x(images: torch.Tensor, pixels, interpolation: str = "nearest", fill: Fill = 0) -> torch.Tensor:
    """Shift content right by ``pixels`` (per sample; may be fractional): Pillow ``AFFINE (1, 0, -t, 0, 1, 0)``."""
    _check(images)
    n = images.shape[0]
    return affine(images, _simple_matrices(n, -_per_sample(pixels, n, "pixels", torch.float64), "pixels", 2),
                  interpolation, fill)


def translate_y(images: torch.Tensor, pixels, interpolation: str = "nearest", fill: Fill = 0) -> torch.Tensor:
    """Shift content down by ``pixels`` (per sample; may be fractional): Pillow ``AFFINE (1, 0, 0, 0, 1, -t)``."""
    _check(images)
    n = images.shape[0]
    return affine(images, _simple_matrices(n, -_per_sample(pixels, n, "pixels", torch.float64), "pixels", 5),
                  interpolation, fill)
