"""Shared helpers of the augment pillar (package-internal): the Pillow-exact uint8 building blocks that
:mod:`regimen.augment.functional` (one op at a time) and :mod:`regimen.augment.op_groups` (ops grouped over a
batch) both use, fill levels, and the float-batch entry point of the training Methods.

Names here are public within the package; users import from :mod:`regimen.augment` and
:mod:`regimen.augment.functional`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from regimen.errors import ConfigurationError

__all__ = [
    "RAMP",
    "Fill",
    "ThreadFlag",
    "apply_lut",
    "augment_float_batch",
    "check_single_smoothing",
    "autocontrast_table",
    "blend_pixels",
    "blend_table",
    "contrast_table",
    "equalize_table",
    "fill_levels",
    "grey_int32",
    "grey_uint8",
    "histograms",
    "lut",
    "per_sample_view",
    "posterize_table",
    "sharpness_uint8",
    "shift_image_rows",
    "shift_rows",
    "smooth_rounding",
    "solarize_table",
    "to_numpy",
    "warn_method_smoothing",
]

Fill = float | Sequence[float]


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


def per_sample_view(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, 1, 1)`` on the images' device."""
    return values.to(images.device).view(-1, 1, 1, 1)


def grey_int32(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')`` of uint8 RGB ``(N, 3, H, W)``: ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``, int32
    ``(N, 1, H, W)``."""
    total = images[:, 0:1].to(torch.int32).mul_(19595)
    total.add_(images[:, 1:2].to(torch.int32), alpha=38470)
    total.add_(images[:, 2:3].to(torch.int32), alpha=7471)
    return total.add_(0x8000).bitwise_right_shift_(16)


def grey_uint8(images: torch.Tensor) -> torch.Tensor:
    """Pillow's ``convert('L')`` of uint8 RGB ``(N, 3, H, W)`` -> uint8 ``(N, 1, H, W)``."""
    return grey_int32(images).to(torch.uint8)


# Lookup tables are built in numpy: they hold a few hundred numbers per image, where a torch call costs several
# microseconds of dispatch and a numpy call about one. The arithmetic is the same IEEE float32/float64/int64 as in
# torch (tests compare every table op with Pillow).
RAMP = np.arange(256)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A small parameter/statistics tensor as a numpy array (copied to the CPU if needed)."""
    return tensor.detach().cpu().numpy()


def lut(table: np.ndarray, device: torch.device) -> torch.Tensor:
    """A uint8 numpy table as a tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(table, dtype=np.uint8)).to(device)


def blend_table(degenerate: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Per-sample uint8 lookup tables ``(N, 256)`` of Pillow's blend with a constant ``degenerate`` level ``(N,)``:
    the same float32 arithmetic as the per-pixel blend of :mod:`regimen.augment.functional`, done once per level
    instead of once per pixel."""
    d = np.asarray(degenerate).astype(np.float32).reshape(-1, 1)
    f = np.asarray(factors).astype(np.float32).reshape(-1, 1)
    return np.clip(d + f * (RAMP.astype(np.float32) - d), 0.0, 255.0).astype(np.uint8)


def blend_pixels(degenerate: torch.Tensor, images: torch.Tensor, factors: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Pillow's blend of uint8 ``images`` with a per-pixel uint8 ``degenerate`` (broadcastable), exactly; ``out``
    (contiguous, ``images``' shape) receives the result.

    Large images use 2-D tables ``T_f[d, x] = trunc(clip(d + f (x - d)))`` (one 256 x 256 table per distinct factor,
    float32 arithmetic as Pillow), looked up with int32 indices; small ones compute the float32 blend directly."""
    n = images.shape[0]
    uniq, which = torch.unique(factors.float(), return_inverse=True)
    if uniq.numel() * 65536 > images.numel():
        f = per_sample_view(factors.float(), images)
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


def apply_lut(images: torch.Tensor, tables: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Lookup in uint8 tables: ``images`` uint8 ``(N, C, H, W)``; ``tables`` ``(N, C, 256)`` (per sample and channel) or
    ``(N, 256)`` (per sample). Uses int32 indices (``index_select``), half the traffic of int64 ``take``; ``out``
    (contiguous, ``images``' shape) receives the result."""
    n, c = images.shape[:2]
    index = images.to(torch.int32)
    if tables.dim() == 2:
        tables = tables.unsqueeze(1)
    rows = tables.shape[1]
    if n * rows > 1:
        offsets = torch.arange(0, n * rows * 256, 256, device=images.device, dtype=torch.int32).view(n, rows, 1, 1)
        index.add_(offsets)
    if out is None:
        return tables.reshape(-1).index_select(0, index.view(-1)).view(images.shape)
    torch.index_select(tables.reshape(-1), 0, index.view(-1), out=out.view(-1))
    return out


def histograms(images: torch.Tensor) -> torch.Tensor:
    """Per-(sample, channel) histograms ``(N, C, 256)`` (int64) of uint8 images."""
    n, c = images.shape[:2]
    keys = images.to(torch.int32)
    if n * c > 1:
        keys.add_(torch.arange(n * c, device=images.device, dtype=torch.int32).mul_(256).view(n, c, 1, 1))
    return torch.bincount(keys.view(-1), minlength=n * c * 256).view(n, c, 256)


def autocontrast_table(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Pillow's autocontrast tables ``(N, C, 256)`` uint8 from each channel's darkest/brightest levels ``(N, C)``:
    ``trunc(v * scale + offset)`` with ``scale = 255 / (hi - lo)``, ``offset = -lo * scale`` in double precision."""
    lo64 = lo.astype(np.float64)[..., None]  # (N, C, 1)
    hi64 = hi.astype(np.float64)[..., None]
    flat = hi64 <= lo64
    scale = 255.0 / np.where(flat, 1.0, hi64 - lo64)  # a true division, as Pillow's (torch's 255 / t is 255 * (1/t))
    offset = -lo64 * scale
    ramp = RAMP.astype(np.float64)
    table = np.clip(np.trunc(ramp * scale + offset), 0, 255)
    return np.where(flat, ramp, table).astype(np.uint8)


def equalize_table(hist: np.ndarray) -> np.ndarray:
    """Pillow's equalize tables ``(N, C, 256)`` uint8 from per-channel histograms ``(N, C, 256)`` (every channel has
    at least one pixel)."""
    occupied_levels = hist > 0
    top = np.where(occupied_levels, RAMP, -1).max(axis=2, keepdims=True)  # last occupied level
    last_count = np.take_along_axis(hist, top, axis=2)
    total = hist.sum(axis=2, keepdims=True)
    occupied = occupied_levels.sum(axis=2, keepdims=True)
    step = (total - last_count) // 255
    keep = (occupied <= 1) | (step == 0)
    safe_step = np.where(keep, 1, step)
    below = np.cumsum(hist, axis=2) - hist  # pixels strictly below level i
    table = np.clip((safe_step // 2 + below) // safe_step, 0, 255)
    return np.where(keep, RAMP, table).astype(np.uint8)


def solarize_table(thresholds: np.ndarray) -> np.ndarray:
    """Solarize tables ``(N, 256)`` uint8 for thresholds ``(N,)`` in levels."""
    return np.where(RAMP < thresholds.reshape(-1, 1), RAMP, 255 - RAMP).astype(np.uint8)


def posterize_table(bits: np.ndarray) -> np.ndarray:
    """Posterize tables ``(N, 256)`` uint8 for integer ``bits`` ``(N,)`` in [1, 8]."""
    masks = 256 - (1 << (8 - bits.astype(np.int64)))  # ~(2^(8-b) - 1) & 0xFF
    return (RAMP & masks.reshape(-1, 1)).astype(np.uint8)


def contrast_table(images: torch.Tensor, factors: np.ndarray) -> np.ndarray:
    """Pillow's Contrast as tables ``(N, 256)`` for uint8 images: blend with the rounded mean grey level."""
    if images.shape[1] == 1:
        mean = images.flatten(1).sum(dim=1, dtype=torch.float64) / images[0].numel()
    else:
        mean = grey_int32(images).flatten(1).sum(dim=1, dtype=torch.float64) / images[0, 0].numel()
    return blend_table(np.floor(to_numpy(mean) + 0.5), factors)  # Pillow: int(mean + 0.5)


def sharpness_uint8(images: torch.Tensor, factors: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
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
    smooth[..., 1:-1, 1:-1] = smooth_rounding(images.device).index_select(0, sums.to(torch.int32).view(-1)).view(
        sums.shape)
    return blend_pixels(smooth, images, factors, out=out)


_ROUNDING: dict[torch.device, torch.Tensor] = {}


def smooth_rounding(device: torch.device) -> torch.Tensor:
    """Table of round-half-up ``s / 13`` for box sums ``s`` <= 13 * 255, exact (see ``_smooth_levels`` in
    :mod:`regimen.augment.functional`)."""
    if device not in _ROUNDING:
        sums = torch.arange(13 * 255 + 1, device=device, dtype=torch.float32)
        _ROUNDING[device] = sums.add_(6.5).mul_(1.0 / 13.0).floor_().to(torch.uint8)
    return _ROUNDING[device]


def fill_levels(fill: Fill, channels: int) -> torch.Tensor:
    values = [fill] if isinstance(fill, int | float) else list(fill)
    if len(values) not in (1, channels) or not all(isinstance(v, int | float) for v in values):
        raise ValueError(f"fill must be a number or {channels} numbers (one per channel), got {fill!r}")
    if not all(0 <= v <= 255 for v in values):
        raise ValueError(f"fill must be in 8-bit levels [0, 255], got {fill!r}")
    return torch.tensor(values * (channels if len(values) == 1 else 1), dtype=torch.float64)


def shift_rows(images: torch.Tensor, shifts: torch.Tensor, fill_t: torch.Tensor) -> torch.Tensor:
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


def shift_image_rows(images: torch.Tensor, shifts: torch.Tensor, fill_t: torch.Tensor) -> torch.Tensor:
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


def augment_float_batch(
    augment: nn.Module, x: torch.Tensor, generator: torch.Generator | None, quantize: bool
) -> torch.Tensor:
    """Augment a float [0, 1] training batch. With ``quantize`` (the trainer's batches are 8-bit images divided by
    255, so this is lossless) it runs the Pillow-exact uint8 ops and divides by 255 again; otherwise the float ops."""
    if not quantize:
        return augment(x, generator=generator)
    low, high = torch.aminmax(x.detach())
    if low < 0 or high > 1:  # already normalised: quantising would clamp it silently
        raise ValueError(f"augmentation expects images in [0, 1] (before normalisation), got values in "
                         f"[{float(low):.4g}, {float(high):.4g}]")
    levels = (x * 255.0).round_().to(torch.uint8)
    return augment(levels, generator=generator).to(x.dtype).div_(255.0)


# ----------------------------------------------------------------------------------------------------------------
# deprecations and the label-smoothing rule of the mixing Methods


def check_single_smoothing(method: str, own: float, ctx: Any) -> None:
    """Refuse a mixing Method's own (deprecated) ``label_smoothing`` when the trainer smooths as well: the
    criterion would smooth the already smoothed soft targets a second time."""
    trainer = ctx.run.label_smoothing  # what the task's base criterion applies
    if own > 0 and trainer > 0:
        raise ConfigurationError(
            f"label smoothing is set twice: train.label_smoothing = {trainer} and {method}.label_smoothing = {own} "
            f"(the criterion would smooth the targets again); remove {method}.label_smoothing (deprecated)"
        )


def warn_method_smoothing(method: str, own: float) -> None:
    """DeprecationWarning for a mixing Method's own ``label_smoothing``."""
    if own > 0:
        warnings.warn(f"{method}.label_smoothing is deprecated: set train.label_smoothing instead (the trainer's "
                      "criterion smooths the mixed targets)", DeprecationWarning, stacklevel=3)
