"""Batched RandAugment and TrivialAugment where every image draws its own ops and magnitudes, in one call.

Papers: Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a reduced search space"
(2019, arXiv 1909.13719); Müller & Hutter, "TrivialAugment: Tuning-free Yet State-of-the-Art Data Augmentation"
(2021, arXiv 2103.10158).

RandAugment applies ``num_ops`` ops, each drawn uniformly from the 14 ops (Identity, AutoContrast, Equalize, Rotate,
Solarize, Color, Posterize, Contrast, Brightness, Sharpness, ShearX, ShearY, TranslateX, TranslateY), all at one
magnitude ``M`` out of ``num_magnitude_bins`` (optionally jittered per op, ``M + magnitude_std * N(0, 1)``, timm's
``mstd``; ``inf`` draws ``U(0, M)``). TrivialAugment applies one op with a magnitude bin drawn uniformly. With
``r = m / (bins - 1)`` and a random sign ``s`` for the signed ops, the op parameters are (torchvision's tables):

=====================  ================================  ====================================
op                     RandAugment                       TrivialAugment (wide)
=====================  ================================  ====================================
Rotate                 ``30 r s`` degrees                ``135 r s`` degrees
ShearX / ShearY        ``0.3 r s``                       ``0.99 r s``
TranslateX / Y         ``(150/331) W r s`` pixels        ``32 r s`` pixels
Brightness, Color,     factor ``1 + 0.9 r s``            factor ``1 + 0.99 r s``
Contrast, Sharpness
Posterize              ``8 - round(4 r)`` bits           ``8 - round(6 r)`` bits
Solarize               threshold ``255 (1 - r)``         same
=====================  ================================  ====================================

Pitfalls handled: torchvision v2 and Kornia draw the ops once per call, so a whole batch shares them; timm/Composer
go image by image through PIL. Here every image has its own ops, magnitudes and signs, and the batch is processed by
grouping the images that drew the same op at each of the ``num_ops`` positions (a loop over the 14 op types, never
over samples), so the batch result equals applying each image's ops one at a time. The op semantics are Pillow's
(see :mod:`regimen.augment.functional`); sampled parameters can be inspected and replayed (``sample`` /
``apply``), e.g. through Pillow with :mod:`regimen.augment.pillow_reference`.

Accepted images (``RandAugment``/``TrivialAugment`` modules, :func:`apply_ops`; checked, with a ``TypeError`` or
``ValueError`` naming the problem):

* shape ``(N, C, H, W)`` with ``C`` = 1 (greyscale) or 3 (RGB); a single image ``(C, H, W)`` needs
  ``images.unsqueeze(0)``; other channel counts (RGBA, 2, 4+) are refused;
* ``uint8`` levels 0-255: the Pillow-exact ops;
* floating point (float16, bfloat16, float32, float64) in [0, 1]: the continuous ops; values outside [0, 1] or NaN
  are refused (normalise *after* augmenting); other dtypes (int32, bool ...) are refused.

The output has the input's dtype, shape and device; the input is not modified. ``fill`` is in 8-bit levels for
either dtype (divided by 255 for float images).

The training Methods (``randaugment``, ``trivialaugment``) receive the trainer's float batches in [0, 1], before
normalisation. With ``quantize = true`` (the default) they round ``x * 255`` to uint8, run the Pillow-exact ops and
divide by 255 again: exact for 8-bit data (what the image tasks load), but a float image with finer levels is rounded
to steps of 1/255. Either way values outside [0, 1] (an already-normalised batch) are refused with a ValueError.

Speed: on the CPU with nearest interpolation, uint8 and float32 batches run in a small compiled C kernel
(:mod:`regimen.augment.native`, one file ``uint8_kernel.c`` with a uint8 and a float32 entry point), one call per
batch that touches each value once per op. The float32 kernel computes the continuous ops of
:mod:`regimen.augment.functional` with the same float32 operations in the same order as the torch implementation, so
its results equal the torch path's bit for bit, except Contrast, whose double-precision mean is summed in another
order (within 1e-6); they are within one level of Pillow per op (geometry exactly). Everything else (bilinear
geometry, float16/bfloat16/float64, other devices, ``REGIMEN_NATIVE=0`` or no C compiler) runs in torch, grouped by
op (:mod:`regimen.augment.op_groups` for uint8). ``benchmarks/augment_randaugment.py`` times the uint8 path against
a per-image Pillow loop and Kornia, ``benchmarks/augment_float.py`` the float32 path against Kornia.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from regimen.augment import functional as AF
from regimen.augment import native
from regimen.augment._common import augment_float_batch, fill_levels
from regimen.augment.functional import OPS
from regimen.augment.op_groups import _fixed_point_maps, _warp, apply_ops_uint8
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = [
    "OPS",
    "AugmentParams",
    "RandAugment",
    "TrivialAugment",
    "apply_ops",
    "RandAugmentMethod",
    "TrivialAugmentMethod",
]

_SIGNED = {"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"}
_ENHANCE = {"Color", "Contrast", "Brightness", "Sharpness"}
_BLOCK_ELEMENTS = 1 << 20


@dataclass
class AugmentParams:
    """Per-sample parameters of one call: ``ops`` ``(N, K)`` int64 indices into ``OPS``; ``values`` ``(N, K)`` float64
    op parameters in the units of :mod:`regimen.augment.functional` (degrees, shear factor, pixels, enhancement
    factor, bits, solarize threshold in 8-bit levels)."""

    ops: torch.Tensor
    values: torch.Tensor

    def as_lists(self) -> list[list[tuple[str, float]]]:
        """Per image, the ``[(op name, value), ...]`` sequence (for replay through Pillow)."""
        return [
            [(OPS[int(o)], float(v)) for o, v in zip(ops_row, values_row, strict=True)]
            for ops_row, values_row in zip(self.ops.tolist(), self.values.tolist(), strict=True)
        ]


def _apply_one(name: str, images: torch.Tensor, values: torch.Tensor, interpolation: str, fill) -> torch.Tensor:
    if name == "Identity":
        return images
    if name == "AutoContrast":
        return AF.autocontrast(images)
    if name == "Equalize":
        return AF.equalize(images)
    if name == "Solarize":
        return AF.solarize(images, values if images.dtype == torch.uint8 else values / 255.0)
    if name == "Posterize":
        return AF.posterize(images, values)
    if name == "Brightness":
        return AF.brightness(images, values)
    if name == "Color":
        return AF.color(images, values)
    if name == "Contrast":
        return AF.contrast(images, values)
    if name == "Sharpness":
        return AF.sharpness(images, values)
    if name == "Rotate":
        return AF.rotate(images, values, interpolation, fill)
    if name == "ShearX":
        return AF.shear_x(images, values, interpolation, fill)
    if name == "ShearY":
        return AF.shear_y(images, values, interpolation, fill)
    if name == "TranslateX":
        return AF.translate_x(images, values, interpolation, fill)
    if name == "TranslateY":
        return AF.translate_y(images, values, interpolation, fill)
    raise ValueError(f"unknown op {name!r}")


@checked_arguments
def apply_ops(
    images: torch.Tensor, params: AugmentParams, interpolation: str = "nearest", fill: AF.Fill = 0
) -> torch.Tensor:
    """Apply per-sample op sequences to a batch: image ``i`` gets ``OPS[params.ops[i, k]]`` with ``params.values[i, k]``
    for ``k = 0 .. K-1`` in order. Vectorised per op type (images that drew the same op are processed together)."""
    AF.check_images(images)
    if interpolation not in ("nearest", "bilinear"):
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    n = images.shape[0]
    if params.ops.dim() != 2 or params.ops.shape[0] != n or params.values.shape != params.ops.shape:
        raise ValueError(
            f"params.ops and params.values must both have shape ({n}, K), got {tuple(params.ops.shape)} and "
            f"{tuple(params.values.shape)}"
        )
    if params.ops.dtype.is_floating_point or params.ops.dtype.is_complex or params.ops.dtype == torch.bool:
        raise TypeError(f"params.ops must be an integer tensor of op indices, got {params.ops.dtype}")
    # parameter checks in numpy: a few hundred numbers, where each torch call costs several microseconds
    ops = params.ops.detach().cpu().to(torch.int64).numpy()
    values = params.values.detach().cpu().to(torch.float64).numpy()  # read only: it may share the caller's memory
    if ops.size and (ops.min() < 0 or ops.max() >= len(OPS)):
        raise ValueError(f"params.ops must be indices in [0, {len(OPS)})")
    _check_values(ops, values)
    values = _clamp_geometry(ops, values, *images.shape[-2:])
    if images.dtype == torch.uint8 and interpolation == "nearest":
        fill_uint8 = fill_levels(fill, images.shape[1]).to(device=images.device, dtype=torch.uint8)
        return apply_ops_uint8(images, ops, values, fill_uint8)
    if _float_kernel_applies(images, interpolation):
        return native.apply_ops_float32_native(images, *_float_kernel_arguments(ops, values, *images.shape[1:], fill))
    values_t = torch.from_numpy(values)
    # One output buffer, updated in place block by block: each block of whole images (~1M values, so float32/int32
    # temporaries stay cache-sized and below glibc's mmap threshold) is gathered, transformed and written back to
    # the same rows. A fresh batch-sized buffer per position would page-fault on every call (~25 ms per 38 MB).
    per_image = max(1, images[0].numel() if n else 1)  # an empty batch has no images[0]
    block = max(1, _BLOCK_ELEMENTS // per_image)
    out = images.clone()
    h, w = images.shape[-2:]
    # small images with NEAREST geometry: every geometric op of a position in one gather through the uint8 path's
    # fixed-point maps (the same source pixels as the per-op functions), as op groups cost more in calls than pixels
    one_warp = interpolation == "nearest" and h * w <= _SMALL_IMAGE and not images.requires_grad  # out= gathers
    if one_warp:
        maps = _fixed_point_maps(ops.reshape(-1), values.reshape(-1), h, w).reshape(*ops.shape, 6)
        fill_t = (fill_levels(fill, images.shape[1]) / 255.0).to(device=images.device, dtype=images.dtype)
    with AF.trusted_images():
        for k in range(ops.shape[1]):
            if one_warp and _IS_GEOMETRIC[ops[:, k]].any():
                for rows in np.split(np.flatnonzero(_IS_GEOMETRIC[ops[:, k]]), range(block, n, block)):
                    index = torch.from_numpy(rows).to(images.device)
                    chunk = out.index_select(0, index)
                    _warp(chunk, maps[rows, k], fill_t, chunk)
                    out.index_copy_(0, index, chunk)
            for op in np.unique(ops[:, k]).tolist():
                if op == 0 or (one_warp and _IS_GEOMETRIC[op]):
                    continue  # Identity, or done above
                for rows in np.split(np.flatnonzero(ops[:, k] == op), range(block, n, block)):
                    if rows.size == 0:
                        continue
                    index = torch.from_numpy(rows).to(images.device)
                    chunk = _apply_one(OPS[op], out.index_select(0, index), values_t[rows, k], interpolation, fill)
                    out.index_copy_(0, index, chunk)
    return out


_POSTERIZE = OPS.index("Posterize")
_IS_GEOMETRIC = np.array([name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY") for name in OPS])
_SMALL_IMAGE = 64 * 64  # pixels; up to this size the torch path does every geometric op of a position in one gather
_FLOAT_KIND = np.array([native.FLOAT_KINDS[name] for name in OPS], dtype=np.int32)
_SOLARIZE = OPS.index("Solarize")


def _float_kernel_applies(images: torch.Tensor, interpolation: str) -> bool:
    """float32 CPU batches with NEAREST geometry go to the compiled float32 kernel when it is available (a batch that
    requires grad stays in torch, which autograd can follow)."""
    h, w = images.shape[-2:]
    return (images.dtype == torch.float32 and interpolation == "nearest" and images.device.type == "cpu"
            and not images.requires_grad and h * w < 2**31 - 4 and native.available())


def _float_kernel_arguments(ops: np.ndarray, values: np.ndarray, channels: int, height: int, width: int,
                            fill: AF.Fill) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The float32 kernel's kinds ``(N, K)``, float32 factors ``(N, K)`` (Solarize thresholds in [0, 1] units, as
    ``_apply_one`` passes them), fixed-point maps ``(N, K, 6)`` (the uint8 path's, so both read the same source
    pixels) and fill ``(C,)`` in [0, 1] (``fill / 255`` in double, then float32, as the torch ops)."""
    n, k = ops.shape
    factors = np.where(ops == _SOLARIZE, values / 255.0, values).astype(np.float32)
    maps = _fixed_point_maps(ops.reshape(-1), values.reshape(-1), height, width).reshape(n, k, 6)
    fill_values = (fill_levels(fill, channels).numpy() / 255.0).astype(np.float32)
    return _FLOAT_KIND[ops], factors, maps, fill_values
_IS_ENHANCE = np.array([name in _ENHANCE for name in OPS])


def _check_values(ops: np.ndarray, values: np.ndarray) -> None:
    """The checks of the functional ops, for a whole parameter table at once."""
    if not np.isfinite(values).all():
        raise ValueError("params.values must be finite")
    bits = values[ops == _POSTERIZE]
    if ((bits < 1) | (bits > 8) | (bits != np.round(bits))).any():
        raise ValueError(f"params.values of Posterize must be integer bit counts in [1, 8], got "
                         f"{np.unique(bits).tolist()}")
    factors = values[_IS_ENHANCE[ops]]
    if (factors < 0).any():
        raise ValueError("params.values of Color, Contrast, Brightness and Sharpness (enhancement factors) must be "
                         f">= 0, got min {factors.min()}")


def _clamp_geometry(ops: np.ndarray, values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip translations to one image size plus a pixel and shears to ``2 (H + W) + 2``: beyond that every pixel
    already comes from outside the image (only fill), so the result is unchanged, and fixed-point indices cannot
    overflow."""
    limit = np.zeros(len(OPS))
    limit[OPS.index("TranslateX")] = width + 1
    limit[OPS.index("TranslateY")] = height + 1
    limit[[OPS.index("ShearX"), OPS.index("ShearY")]] = 2 * (height + width) + 2
    bound = limit[ops]
    clipped = bound > 0
    return np.where(clipped, np.clip(values, -bound, bound), values) if clipped.any() else values


class _BatchedAugment(nn.Module):
    """Shared machinery: op tables, parameter sampling, application."""

    def __init__(
        self,
        num_ops: int,
        num_magnitude_bins: int,
        fill: AF.Fill,
        interpolation: str,
        wide: bool,
    ) -> None:
        super().__init__()
        if isinstance(num_ops, bool) or not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be an integer >= 0, got {num_ops!r}")
        if isinstance(num_magnitude_bins, bool) or not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 2:
            raise ValueError(f"num_magnitude_bins must be an integer >= 2, got {num_magnitude_bins!r}")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
        fill_levels(fill, 3 if not isinstance(fill, int | float) and len(fill) == 3 else 1)
        self.num_ops = num_ops
        self.num_magnitude_bins = num_magnitude_bins
        self.fill = fill
        self.interpolation = interpolation
        self.wide = wide

    def _magnitudes(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> AugmentParams:
        """Draw per-sample ops and parameters for ``n`` images of size ``height x width`` (on the CPU)."""
        k = self.num_ops
        ops = torch.randint(len(OPS), (n, k), generator=generator)
        levels = self._magnitudes(n, generator).to(torch.float64)  # (n, k) in [0, bins - 1]
        signs = torch.where(torch.rand((n, k), generator=generator) < 0.5, -1.0, 1.0).to(torch.float64)
        r = levels / (self.num_magnitude_bins - 1)
        return AugmentParams(ops=ops, values=self._values(ops, r, signs, height, width))

    def _values(self, ops: torch.Tensor, r: torch.Tensor, signs: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Op parameters from the relative magnitudes ``r`` and signs, by table lookups over the op indices (the
        arithmetic of the table in the module docstring, term for term)."""
        wide = (135.0, 0.99, 0.99, 6)
        max_rotate, max_shear, max_enhance, posterize_span = wide if self.wide else (30.0, 0.3, 0.9, 4)
        translate_x = 32.0 if self.wide else 150.0 / 331.0 * width
        translate_y = 32.0 if self.wide else 150.0 / 331.0 * height
        scale = {"Rotate": max_rotate, "ShearX": max_shear, "ShearY": max_shear, "TranslateX": translate_x,
                 "TranslateY": translate_y, "Posterize": posterize_span, **dict.fromkeys(_ENHANCE, max_enhance)}
        scales = torch.tensor([scale.get(name, 0.0) for name in OPS], dtype=torch.float64)[ops]
        values = scales * r
        values = torch.where(ops == OPS.index("Posterize"), 8.0 - torch.round(values), values)
        values = torch.where(ops == OPS.index("Solarize"), 255.0 * (1.0 - r), values)
        signed = torch.tensor([name in _SIGNED for name in OPS])[ops]
        values = torch.where(signed, values * signs, values)
        enhance = torch.tensor([name in _ENHANCE for name in OPS])[ops]
        return torch.where(enhance, 1.0 + values, values)

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply previously sampled parameters (replay)."""
        return apply_ops(images, params, self.interpolation, self.fill)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        AF.check_images(images, check_range=False)  # the shape, to sample; apply_ops checks the values (one pass)
        n, _, h, w = images.shape
        return self.apply(images, self.sample(n, h, w, generator))


@checked_arguments(infinite=("magnitude_std",))
class RandAugment(_BatchedAugment):
    """RandAugment with per-sample ops and magnitudes: ``aug(images, generator=None)``.

    ``images``: ``(N, C, H, W)``, ``C`` in {1, 3}, uint8 (0-255) or floating point in [0, 1]; the output has the same
    dtype and shape (see the module docstring).

    Args:
        num_ops: ops applied to each image (>= 0).
        magnitude: magnitude bin ``M`` in ``[0, num_magnitude_bins - 1]``.
        num_magnitude_bins: number of magnitude bins (torchvision: 31).
        magnitude_std: per-op Gaussian jitter of ``M`` (timm's ``mstd``), clipped to the bins; ``inf`` draws
            ``U(0, M)``.
        fill: value outside the image for geometric ops, in 8-bit levels (number or one per channel).
        interpolation: ``"nearest"`` (default, like torchvision) or ``"bilinear"``.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9,
        num_magnitude_bins: int = 31,
        magnitude_std: float = 0.0,
        fill: AF.Fill = 0,
        interpolation: str = "nearest",
    ) -> None:
        super().__init__(num_ops, num_magnitude_bins, fill, interpolation, wide=False)
        if not 0 <= magnitude <= num_magnitude_bins - 1:
            raise ValueError(
                f"magnitude must be in [0, num_magnitude_bins - 1 = {num_magnitude_bins - 1}], got {magnitude}"
            )
        if not magnitude_std >= 0:
            raise ValueError(f"magnitude_std must be >= 0 (inf for uniform), got {magnitude_std}")
        self.magnitude = float(magnitude)
        self.magnitude_std = float(magnitude_std)

    def _magnitudes(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        shape = (n, self.num_ops)
        if self.magnitude_std == float("inf"):
            return torch.rand(shape, generator=generator, dtype=torch.float64) * self.magnitude
        if self.magnitude_std > 0:
            noise = torch.randn(shape, generator=generator, dtype=torch.float64) * self.magnitude_std
            return (self.magnitude + noise).clamp(0, self.num_magnitude_bins - 1)
        return torch.full(shape, self.magnitude, dtype=torch.float64)

    def extra_repr(self) -> str:
        return (
            f"num_ops={self.num_ops}, magnitude={self.magnitude}, num_magnitude_bins={self.num_magnitude_bins}, "
            f"magnitude_std={self.magnitude_std}, fill={self.fill}, interpolation={self.interpolation!r}"
        )


@checked_arguments
class TrivialAugment(_BatchedAugment):
    """TrivialAugment (wide) with a per-sample op and magnitude bin: ``aug(images, generator=None)``.

    ``images``: as :class:`RandAugment` (``(N, C, H, W)``, ``C`` in {1, 3}, uint8 0-255 or float in [0, 1]).

    Args:
        num_magnitude_bins: number of magnitude bins (31); each image draws one uniformly.
        fill: value outside the image for geometric ops, in 8-bit levels.
        interpolation: ``"nearest"`` or ``"bilinear"``.
    """

    def __init__(self, num_magnitude_bins: int = 31, fill: AF.Fill = 0, interpolation: str = "nearest") -> None:
        super().__init__(1, num_magnitude_bins, fill, interpolation, wide=True)

    def _magnitudes(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randint(self.num_magnitude_bins, (n, 1), generator=generator)

    def extra_repr(self) -> str:
        return f"num_magnitude_bins={self.num_magnitude_bins}, fill={self.fill}, interpolation={self.interpolation!r}"


@register_method
class RandAugmentMethod(Method):
    """RandAugment with per-image ops and magnitudes on each training batch (Cubuk et al. 2019).

    Batches: float ``(N, C, H, W)`` in [0, 1] before normalisation, ``C`` in {1, 3}. ``quantize`` (default) runs the
    Pillow-exact uint8 ops on ``round(255 x)`` (exact for 8-bit data; values outside [0, 1] are clamped); without
    it the float ops run and values outside [0, 1] are refused. Other parameters: :class:`RandAugment`.
    """

    name = "randaugment"
    infinite_parameters = ("magnitude_std",)  # inf: uniform magnitudes (timm)
    paper_id = "arXiv:1909.13719"
    claim = (
        "N random ops at one global magnitude match learned augmentation policies and improve accuracy (+0.9 "
        "pp over AutoAugment, ResNet-50 ImageNet)"
    )
    claimed_effect = "better"
    inputs = ("image",)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 9.0,
        num_magnitude_bins: int = 31,
        magnitude_std: float = 0.0,
        fill: float = 0.0,
        interpolation: str = "nearest",
        quantize: bool = True,
    ) -> None:
        self.augment = RandAugment(num_ops, magnitude, num_magnitude_bins, magnitude_std, fill, interpolation)
        self.quantize = quantize

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_float_batch(self.augment, x, ctx.generator, self.quantize), y


@register_method
class TrivialAugmentMethod(Method):
    """TrivialAugment (wide) with a per-image op and magnitude on each training batch (Müller & Hutter 2021).

    Batches and ``quantize``: as :class:`RandAugmentMethod`.
    """

    name = "trivialaugment"
    paper_id = "arXiv:2103.10158"
    claim = "one random op at a random magnitude per image matches or beats tuned augmentation policies"
    claimed_effect = "better"
    inputs = ("image",)

    def __init__(
        self, num_magnitude_bins: int = 31, fill: float = 0.0, interpolation: str = "nearest", quantize: bool = True
    ) -> None:
        self.augment = TrivialAugment(num_magnitude_bins, fill, interpolation)
        self.quantize = quantize

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_float_batch(self.augment, x, ctx.generator, self.quantize), y
