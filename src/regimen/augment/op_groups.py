"""The uint8 fast path of :func:`regimen.augment.randaugment.apply_ops`: per-sample ops, processed in op groups.

On the CPU, the pixel work goes to the compiled kernel (:mod:`regimen.augment.native`, ``uint8_kernel.c``) when it
could be built; it takes the same parameter-only preparation (maps, static tables) from here. The torch
implementation below serves the other devices, machines without a C compiler, and tests (both agree bit for bit).

For each of the ``K`` op positions the batch is sorted once by op (a stable ``argsort`` of a rank that puts the
Identity images first, then the table ops, then Color/Sharpness, then the geometric ops), so every op's images form
one contiguous slice of the sorted batch. Each slice is processed in place of its rows of one output buffer, and one
``index_select`` puts the batch back in its order. The loops are over op types and over blocks of whole images (to
keep int32 temporaries cache-sized), never over samples.

* **Table ops** (AutoContrast, Equalize, Solarize, Posterize, Contrast, Brightness; Color of a 1-channel image is the
  identity): every image gets a ``(C, 256)`` uint8 table, from its parameter or from its own statistics, and the
  whole table slice is looked up at once, with int32 indices.
* **Color, Sharpness**: Pillow's blend with the greyscale / SMOOTH image, as in :mod:`regimen.augment.functional`.
* **Geometric ops** all reduce to Pillow's NEAREST source indices in 16.16 fixed point, computed once per call for
  every image and position (:func:`_fixed_point_maps`). Small images (call overhead dominates) do every geometric op
  of a position in one int32 gather from the images with a one-pixel fill border; large ones take each op's cheapest
  exact route: TranslateY copies whole rows, TranslateX and ShearX copy row segments, ShearY gathers with a
  per-column offset, Rotate gathers through the full maps.

The results are the functional ops' results exactly (tests compare them with Pillow and with the per-op functions).
"""

from __future__ import annotations

import numpy as np
import torch

from regimen.augment import _common as C
from regimen.augment import functional as AF
from regimen.augment import native
from regimen.augment.functional import OPS

__all__ = ["apply_ops_uint8", "kernel_arguments"]

_IDENTITY, _COLOR, _ROTATE = OPS.index("Identity"), OPS.index("Color"), OPS.index("Rotate")
_SHEAR_X, _SHEAR_Y = OPS.index("ShearX"), OPS.index("ShearY")
_TRANSLATE_X, _TRANSLATE_Y = OPS.index("TranslateX"), OPS.index("TranslateY")
_SOLARIZE, _POSTERIZE, _BRIGHTNESS = OPS.index("Solarize"), OPS.index("Posterize"), OPS.index("Brightness")
_TABLE_OPS = ("AutoContrast", "Equalize", "Solarize", "Posterize", "Contrast", "Brightness")
_GEOMETRIC = ("TranslateY", "TranslateX", "ShearX", "ShearY", "Rotate")
_GROUP_ORDER = ("Identity", *_TABLE_OPS, "Color", "Sharpness", *_GEOMETRIC)
_ORDER = [OPS.index(name) for name in _GROUP_ORDER]  # op indices in group order
_RANK = np.array([_GROUP_ORDER.index(name) for name in OPS])  # op index -> position in group order
_BLOCK_ELEMENTS = 1 << 20
# op index -> the compiled kernel's op kind (uint8_kernel.c): 1 = static table, 7 = geometric map
_KERNEL_KIND = np.array([{"Identity": 0, "AutoContrast": 2, "Equalize": 3, "Contrast": 4, "Color": 5, "Sharpness": 6,
                          "Solarize": 1, "Posterize": 1, "Brightness": 1}.get(name, 7) for name in OPS], dtype=np.int32)
_NATIVE_MAX_PLANE = 2**31 - 4  # the compiled kernel indexes a plane (and a fill level) with int32
_SMALL_IMAGE = 64 * 64  # pixels; up to this size one gather does every geometric op of a pass


def apply_ops_uint8(images: torch.Tensor, ops: np.ndarray, values: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
    """Apply per-sample op sequences to a uint8 batch with NEAREST geometry (validated by the caller).

    Args:
        images: ``(N, C, H, W)`` uint8.
        ops: ``(N, K)`` int64 indices into ``OPS``.
        values: ``(N, K)`` float64 op parameters, as in ``AugmentParams``.
        fill: ``(C,)`` uint8 fill levels on the images' device.

    Returns a new tensor (never ``images`` itself).

    Parameter-only work (grouping, index maps, lookup tables) runs in numpy on a few numbers per image, where a torch
    call would cost more in dispatch than in arithmetic; pixels are touched by the compiled kernel or by torch.
    """
    n, c, h, w = images.shape
    if images.device.type == "cpu" and h * w < _NATIVE_MAX_PLANE and native.available():
        return native.apply_ops_uint8_native(images, *kernel_arguments(ops, values, c, h, w), fill.numpy())
    ops, maps, tables = _prepare(ops, values, c, h, w)
    out = images
    for position in range(ops.shape[1]):
        out = _apply_position(out, ops[:, position], values[:, position], maps[:, position], tables[:, position],
                              fill)
    return out.clone() if out is images else out


def _prepare(ops: np.ndarray, values: np.ndarray, channels: int, height: int,
             width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The parameter-only work of every position at once: the ops (Color of a 1-channel image is the Identity, as in
    Pillow), source-index maps ``(N, K, 6)`` and image-independent tables ``(N, K, 256)``."""
    n, k = ops.shape
    if channels == 1:
        ops = np.where(ops == _COLOR, _IDENTITY, ops)
    maps = _fixed_point_maps(ops.reshape(-1), values.reshape(-1), height, width).reshape(n, k, 6)
    tables = _static_tables(ops.reshape(-1), values.reshape(-1)).reshape(n, k, 256)
    return ops, maps, tables


def kernel_arguments(ops: np.ndarray, values: np.ndarray, channels: int, height: int,
                     width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The compiled kernel's parameter arrays for ``(N, K)`` ops and values: op kinds ``(N, K)`` int32, float32
    factors ``(N, K)``, static tables ``(N, K, 256)`` and fixed-point maps ``(N, K, 6)``."""
    ops, maps, tables = _prepare(ops, values, channels, height, width)
    return _KERNEL_KIND[ops], values.astype(np.float32), tables, maps


def _apply_position(images: torch.Tensor, ops: np.ndarray, values: np.ndarray, maps: np.ndarray,
                    static_tables: np.ndarray, fill: torch.Tensor) -> torch.Tensor:
    """Image ``i`` gets op ``ops[i]`` with parameter ``values[i]`` (``maps[i]``, ``static_tables[i]`` precomputed)."""
    n, c, h, w = images.shape
    counts = np.bincount(ops, minlength=len(OPS)).tolist()
    if counts[_IDENTITY] == n:
        return images
    order = np.argsort(_RANK[ops], kind="stable")
    values, maps = values[order], maps[order]
    device = images.device
    source = images.index_select(0, torch.from_numpy(order).to(device))
    result = torch.empty_like(source)
    bounds, start = {}, 0
    for op in _ORDER:
        bounds[OPS[op]] = (start, start + counts[op])
        start += counts[op]

    tables_start = bounds["Identity"][1]  # the Identity images come first: copy them
    result[:tables_start] = source[:tables_start]
    tables_stop = bounds[_TABLE_OPS[-1]][1]
    if tables_stop > tables_start:
        tables = np.repeat(static_tables[order[tables_start:tables_stop], None, :], c, axis=1)  # (M, C, 256)
        for name in ("AutoContrast", "Equalize", "Contrast"):
            a, b = bounds[name]
            if b > a:
                tables[a - tables_start : b - tables_start] = _image_tables(name, source[a:b], values[a:b])
        tables = C.lut(tables, device)
        for a, b in _blocks(tables_start, tables_stop, source[0].numel()):
            C.apply_lut(source[a:b], tables[a - tables_start : b - tables_start], out=result[a:b])
    for name in ("Color", "Sharpness"):
        for a, b in _blocks(*bounds[name], source[0].numel()):
            _blend_op(name, source[a:b], torch.from_numpy(values[a:b]).float(), result[a:b])
    geometric_start = bounds[_GEOMETRIC[0]][0]
    if h * w <= _SMALL_IMAGE:  # call overhead dominates: one gather for all geometric ops
        for a, b in _blocks(geometric_start, n, source[0].numel()):
            _warp(source[a:b], maps[a:b], fill, result[a:b])
    else:
        for name in _GEOMETRIC:
            for a, b in _blocks(*bounds[name], source[0].numel()):
                _geometric_op(name, source[a:b], maps[a:b], fill, result[a:b])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(n)
    return result.index_select(0, torch.from_numpy(inverse).to(device))


def _blocks(start: int, stop: int, per_image: int) -> list[tuple[int, int]]:
    """``(a, b)`` ranges of whole images in ``[start, stop)`` with about ``_BLOCK_ELEMENTS`` values each."""
    step = max(1, _BLOCK_ELEMENTS // max(1, per_image))
    return [(a, min(a + step, stop)) for a in range(start, stop, step)]


def _image_tables(name: str, images: torch.Tensor, factors: np.ndarray) -> np.ndarray:
    """Lookup tables ``(M, C, 256)`` or ``(M, 1, 256)`` uint8 of the table ops that depend on the image itself."""
    if name == "AutoContrast":
        flat = images.flatten(2)  # amin/amax: aminmax is far slower on uint8
        return C.autocontrast_table(C.to_numpy(flat.amin(dim=2)), C.to_numpy(flat.amax(dim=2)))
    if name == "Equalize":
        return C.equalize_table(C.to_numpy(C.histograms(images)))
    return C.contrast_table(images, factors)[:, None, :]


def _static_tables(ops: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Lookup tables ``(N, 256)`` uint8 of the table ops that depend on their parameter only (Solarize, Posterize,
    Brightness); the rows of other ops are zero."""
    tables = np.zeros((ops.shape[0], 256), dtype=np.uint8)
    builders = {
        _SOLARIZE: C.solarize_table,
        _POSTERIZE: C.posterize_table,
        _BRIGHTNESS: lambda factors: C.blend_table(np.zeros(factors.shape[0]), factors),  # blend with black
    }
    for op, build in builders.items():
        rows = ops == op
        if rows.any():
            tables[rows] = build(values[rows])
    return tables


def _blend_op(name: str, images: torch.Tensor, factors: torch.Tensor, out: torch.Tensor) -> None:
    """Color (blend with the greyscale image; 3 channels) or Sharpness (blend with the SMOOTH image)."""
    if name == "Color":
        C.blend_pixels(C.grey_uint8(images), images, factors, out=out)
    else:
        C.sharpness_uint8(images, factors, out=out)


def _geometric_op(name: str, images: torch.Tensor, maps: np.ndarray, fill: torch.Tensor, out: torch.Tensor) -> None:
    """One geometric op for all ``images`` by its cheapest exact route (large images), from its integer ``maps``."""
    h, w = images.shape[-2:]
    device = images.device
    if name == "TranslateY":  # whole rows move: source row y + (Y0 >> 16)
        out.copy_(C.shift_image_rows(images, torch.from_numpy(maps[:, 3] >> 16).to(device), fill))
    elif name in ("TranslateX", "ShearX"):  # the column step is exactly one pixel: a source-column offset per row
        shifts = (maps[:, 0:1] + np.arange(h)[None, :] * maps[:, 2:3]) >> 16
        out.copy_(C.shift_rows(images, torch.from_numpy(shifts).to(device), fill))
    elif name == "ShearY":  # the row step is exactly one pixel: a source-row offset per column
        shifts = (maps[:, 3:4] + np.arange(w)[None, :] * maps[:, 4:5]) >> 16
        _shift_columns(images, torch.from_numpy(shifts).to(device), fill, out)
    else:
        _warp(images, maps, fill, out)


def _fixed_point_maps(ops: np.ndarray, values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's NEAREST source indices of the geometric ops as integer maps ``(M, 6)`` = ``(X0, A, B, Y0, C, D)``:
    output pixel ``(x, y)`` reads column ``(X0 + A x + B y) >> 16`` and row ``(Y0 + C x + D y) >> 16`` (identity
    maps for the other ops).

    ``affine_fixed`` rounds the pixel-centre start and the steps to 16.16 fixed point. Pure scale/translate matrices
    (translations, zero shears, 0 and 180 degree rotations) take ``ImagingScaleAffine`` in double precision instead,
    ``floor(a2 + a0 (x + 0.5))``: with ``a0 = 1`` that is the integer shift ``floor(a2 + 0.5)``, stored exactly; at
    180 degrees every entry is a multiple of 1/2, so the fixed-point values are exact too."""
    m = np.zeros((ops.shape[0], 6))
    m[:, 0] = 1.0
    m[:, 4] = 1.0
    rotate = ops == _ROTATE
    if rotate.any():
        m[rotate] = AF.rotation_matrix(torch.from_numpy(values[rotate]), height, width).numpy()
    for op, column, sign in ((_SHEAR_X, 1, 1.0), (_SHEAR_Y, 3, 1.0), (_TRANSLATE_X, 2, -1.0), (_TRANSLATE_Y, 5, -1.0)):
        rows = ops == op
        m[rows, column] = sign * values[rows]
    a0, a1, a2, a3, a4, a5 = m.T
    steps = np.floor(m * 65536.0 + 0.5).astype(np.int64)
    x0 = np.floor((a2 + (a0 + a1) * 0.5) * 65536.0 + 0.5).astype(np.int64)
    y0 = np.floor((a5 + (a3 + a4) * 0.5) * 65536.0 + 0.5).astype(np.int64)
    scale_only = (a1 == 0) & (a3 == 0)
    x0 = np.where(scale_only & (a0 == 1), np.floor(a2 + 0.5).astype(np.int64) * 65536, x0)
    y0 = np.where(scale_only & (a4 == 1), np.floor(a5 + 0.5).astype(np.int64) * 65536, y0)
    return np.stack([x0, steps[:, 0], steps[:, 1], y0, steps[:, 3], steps[:, 4]], axis=1)


def _padded(images: torch.Tensor, fill: torch.Tensor, top: int, side: int) -> torch.Tensor:
    """``images`` with ``top`` fill rows above and below and ``side`` fill columns left and right."""
    n, c, h, w = images.shape
    padded = torch.empty(n, c, h + 2 * top, w + 2 * side, dtype=images.dtype, device=images.device)
    padded.copy_(fill.view(1, c, 1, 1).expand_as(padded))
    padded[:, :, top : top + h, side : side + w] = images
    return padded


def _planes(images: torch.Tensor, plane_size: int) -> torch.Tensor:
    """int32 start offsets ``(N, C, 1)`` of every (sample, channel) plane of ``plane_size`` values."""
    n, c = images.shape[:2]
    return torch.arange(0, n * c * plane_size, plane_size, dtype=torch.int32, device=images.device).view(n, c, 1)


def _shift_columns(images: torch.Tensor, shifts: torch.Tensor, fill: torch.Tensor, out: torch.Tensor) -> None:
    """``out[n, c, y, x] = images[n, c, y + shifts[n, x], x]`` (``fill`` outside), from the images padded by ``H`` fill
    rows above and below: one int32 index (a constant grid plus a per-column offset) and one ``index_select``."""
    n, c, h, w = images.shape
    padded = _padded(images, fill, h, 0)
    grid = torch.arange(h * w, 2 * h * w, dtype=torch.int32, device=images.device).view(1, 1, h, w)
    columns = shifts.clamp(-h, h).to(torch.int32).mul_(w).view(n, 1, 1, w)
    offsets = _planes(images, 3 * h * w).view(n, c, 1, 1) + columns  # (N, C, 1, W)
    torch.index_select(padded.view(-1), 0, torch.add(grid, offsets).view(-1), out=out.view(-1))


def _warp(images: torch.Tensor, maps: np.ndarray, fill: torch.Tensor, out: torch.Tensor) -> None:
    """NEAREST warp by integer maps ``(M, 6)`` (:func:`_fixed_point_maps`), source points clamped into a one-pixel
    fill border: int32 indices and one ``index_select``."""
    n, c, h, w = images.shape
    device = images.device
    # |X0 + A x + B y| <= max|entry| (1 + W + H): int32 unless the image or the map is huge
    index_type = np.int32 if int(np.abs(maps).max()) * (1 + w + h) < 2**31 else np.int64
    ys = np.arange(h)[None, :, None]
    xs = np.arange(w)[None, None, :]

    def source(start: np.ndarray, step_x: np.ndarray, step_y: np.ndarray, size: int) -> torch.Tensor:
        per_row = torch.from_numpy((start[:, None, None] + ys * step_y[:, None, None]).astype(index_type))  # (M, H, 1)
        per_column = torch.from_numpy((xs * step_x[:, None, None]).astype(index_type))  # (M, 1, W)
        return torch.add(per_row.to(device), per_column.to(device)).bitwise_right_shift_(16).clamp_(-1, size)

    ix = source(maps[:, 0], maps[:, 1], maps[:, 2], w)
    iy = source(maps[:, 3], maps[:, 4], maps[:, 5], h)
    flat = iy.mul_(w + 2).add_(ix).view(n, 1, h * w)
    offsets = _planes(images, (h + 2) * (w + 2)).add_(w + 3)  # + one border row and one border column
    padded = _padded(images, fill, 1, 1)
    torch.index_select(padded.view(-1), 0, torch.add(flat, offsets.to(flat.dtype)).view(-1), out=out.view(-1))
