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
  they agree with Pillow to within one level; Equalize and Posterize quantise to 8-bit levels by their nature
  (``round(255 x)``, half to even). Every op computes in float32 "levels" ``L = 255 x``: blends are
  ``clip(d + f (L - d), 0, 255) / 255``; greyscale is ``0.299 R + 0.587 G + 0.114 B`` (clipped); Contrast blends with
  the mean grey level (summed in double); Sharpness with the unrounded SMOOTH filter. The compiled float32 kernel
  behind :func:`regimen.augment.apply_ops` repeats these operations in the same order (tests compare the two).
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

import math

import numpy as np
import torch

from regimen.augment._common import (
    Fill,
    ThreadFlag,
    apply_lut,
    autocontrast_table,
    blend_pixels,
    blend_table,
    contrast_table,
    equalize_table,
    fill_levels,
    grey_int32,
    grey_uint8,
    histograms,
    lut,
    per_sample_view,
    sharpness_uint8,
    shift_image_rows,
    shift_rows,
    solarize_table,
    to_numpy,
)

__all__ = [
    "OPS",
    "Fill",
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
    if images.device.type == "meta":
        raise ValueError(f"{name} must hold data; got a tensor on the meta device")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]} (shape {tuple(images.shape)})")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"{name} must be uint8 or floating point in [0, 1], got {images.dtype}")
    if check_range and images.is_floating_point() and images.numel():
        low, high = torch.aminmax(images)
        if not (low >= 0 and high <= 1):  # also rejects NaN
            raise ValueError(f"{name} must lie in [0, 1] when floating point, got values in [{low}, {high}]")


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
        return grey_int32(images).float()
    levels = _levels(images)
    return (0.299 * levels[:, 0:1] + 0.587 * levels[:, 1:2] + 0.114 * levels[:, 2:3]).clamp(0.0, 255.0)


def _blend(degenerate: torch.Tensor, levels: torch.Tensor, factors: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, image, factor)`` in level units: ``d + f (x - d)``, clipped, truncated."""
    factors = per_sample_view(factors.float(), like)
    return _finish(degenerate + factors * (levels - degenerate), like)


def _check_factors(factors, n: int, name: str = "factors") -> torch.Tensor:
    tensor = _per_sample(factors, n, name)
    if (tensor < 0).any():
        raise ValueError(f"{name} must be >= 0 (1 keeps the image), got min {tensor.min().item()}")
    return tensor


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
    return apply_lut(images, lut(autocontrast_table(to_numpy(lo), to_numpy(hi)), images.device))


def equalize(images: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize`` per channel of each image (float images are quantised to 8-bit levels first).

    Pillow's table: ``step = (total - count of the last occupied level) // 255``;
    ``lut[i] = (step // 2 + #pixels below i) // step``; a channel with one level or ``step == 0`` is unchanged.
    """
    _check(images)
    if images.numel() == 0:
        return images.clone()
    levels = _quantize(images)
    return _from_uint8(apply_lut(levels, lut(equalize_table(to_numpy(histograms(levels))), images.device)), images)


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
        return torch.where(images < per_sample_view(t, images).to(images.dtype), images, 1.0 - images)
    return apply_lut(images, lut(solarize_table(to_numpy(t)), images.device))


def posterize(images: torch.Tensor, bits) -> torch.Tensor:
    """``ImageOps.posterize``: keep the ``bits`` (1-8, per sample) most significant bits of each 8-bit level."""
    _check(images)
    n = images.shape[0]
    bits_t = _per_sample(bits, n, "bits", torch.float64)
    if ((bits_t < 1) | (bits_t > 8) | (bits_t != bits_t.round())).any():
        raise ValueError(f"bits must be integers in [1, 8], got {bits_t.tolist()}")
    masks = (256 - (2 ** (8 - bits_t.long()))).to(torch.uint8)  # ~(2^(8-b) - 1) & 0xFF
    levels = _quantize(images)
    return _from_uint8(levels & per_sample_view(masks, levels), images)


def brightness(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black, ``f * x`` (``f`` >= 0 per sample; 1 keeps the image)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.dtype == torch.uint8:
        return apply_lut(images, lut(blend_table(np.zeros(images.shape[0]), to_numpy(f)), images.device))
    return _blend(torch.zeros((), device=images.device), _levels(images), f, images)


def color(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the image's greyscale version (identity for 1-channel images)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.shape[1] == 1:
        return images.clone()  # Pillow: an L image's greyscale is itself, blend(x, x, f) == x
    if images.dtype == torch.uint8:
        return blend_pixels(grey_uint8(images), images, f)
    return _blend(_grey_levels(images), _levels(images), f, images)


def contrast(images: torch.Tensor, factors) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with a constant image of the mean grey level (rounded for uint8)."""
    _check(images)
    f = _check_factors(factors, images.shape[0])
    if images.dtype == torch.uint8:
        return apply_lut(images, lut(contrast_table(images, to_numpy(f)), images.device))
    mean = _grey_levels(images).double().mean(dim=(1, 2, 3), keepdim=True)
    return _blend(mean.float(), _levels(images), f, images)


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
        return sharpness_uint8(images, f)
    levels = _levels(images)
    return _blend(_smooth_levels(levels, False), levels, f, images)


# ----------------------------------------------------------------------------------------------------------------
# geometric ops


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
    fill_values = fill_levels(fill, c)
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
        return shift_rows(images, shifts.to(device), fill_t)
    if keep_cols and bool(((a3 == 0) & (a4 == 1)).all()):
        return shift_image_rows(images, torch.floor(a5 + 0.5).long().to(device), fill_t)
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
