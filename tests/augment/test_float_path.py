"""The float32 path of apply_ops / RandAugment / TrivialAugment: the compiled float32 kernel against the torch
implementation (the reference the kernel reproduces operation for operation) and against Pillow.

Tolerances:
* kernel vs torch implementation: bit for bit (``torch.equal``) for every op and chain, except Contrast, whose
  mean grey level is a double-precision sum in a different order (sequential in C, pairwise in torch): its results
  agree within 1e-6 (a few float32 ulps near 1);
* float path vs Pillow (8-bit input divided by 255): intensity ops within one level after ``round(255 x)``,
  geometric ops (NEAREST) exactly, as the torch float path (tests/augment/test_functional_pillow.py).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from regimen.augment import OPS, AugmentParams, RandAugment, TrivialAugment, apply_ops, native
from regimen.augment.pillow_reference import pillow_apply

_COMPILER = (shutil.which(os.environ["CC"]) if os.environ.get("CC")
             else shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
needs_kernel = pytest.mark.skipif(_COMPILER is None, reason="no C compiler: the torch path is used")
_CONTRAST, _BRIGHTNESS = OPS.index("Contrast"), OPS.index("Brightness")


def _params(n: int, k: int, g: torch.Generator) -> AugmentParams:
    """Every op with wide parameter ranges (negative and huge angles, strong shears, off-image translations,
    thresholds 0 and 256, every bit count)."""
    ops = torch.randint(0, len(OPS), (n, k), generator=g)
    values = torch.empty(n, k, dtype=torch.float64)
    ranges = {"Rotate": (-720.0, 720.0), "ShearX": (-1.5, 1.5), "ShearY": (-1.5, 1.5), "TranslateX": (-40.0, 40.0),
              "TranslateY": (-40.0, 40.0), "Solarize": (0.0, 256.0)}
    for index, name in enumerate(OPS):
        rows = ops == index
        count = int(rows.sum())
        if name == "Posterize":
            values[rows] = torch.randint(1, 9, (count,), generator=g).double()
        else:
            low, high = ranges.get(name, (0.0, 2.5))
            values[rows] = low + (high - low) * torch.rand(count, generator=g, dtype=torch.float64)
    return AugmentParams(ops, values)


def _without_contrast(params: AugmentParams) -> AugmentParams:
    """Contrast -> Brightness with the same factor: chains whose results the kernel must reproduce bit for bit."""
    return AugmentParams(torch.where(params.ops == _CONTRAST, _BRIGHTNESS, params.ops), params.values)


def _both(x: torch.Tensor, params: AugmentParams, fill) -> tuple[torch.Tensor, torch.Tensor]:
    compiled = apply_ops(x, params, fill=fill)
    with native.disabled():
        reference = apply_ops(x, params, fill=fill)
    return compiled, reference


@pytest.fixture(params=["native", "torch"])
def float_backend(request):
    """Run a test once with the compiled float32 kernel and once with the torch implementation."""
    if request.param == "torch":
        with native.disabled():
            yield request.param
        return
    if not native.available():
        pytest.skip(f"compiled kernel unavailable: {native.build_error()}")
    yield request.param


@needs_kernel
def test_float32_batches_take_the_kernel():
    from regimen.augment.randaugment import _float_kernel_applies

    x = torch.rand(2, 3, 8, 8)
    assert _float_kernel_applies(x, "nearest")
    assert not _float_kernel_applies(x, "bilinear")  # bilinear geometry stays in torch
    assert not _float_kernel_applies(x.double(), "nearest")  # other float dtypes too
    assert not _float_kernel_applies(x.requires_grad_(), "nearest")  # autograd can follow the torch ops only
    with native.disabled():
        assert not _float_kernel_applies(x, "nearest")


@needs_kernel
@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (24, 3, 33, 47), (5, 3, 120, 97), (9, 1, 3, 3), (5, 3, 2, 2),
                                   (4, 1, 1, 9), (3, 3, 200, 13), (0, 3, 8, 8)])
@pytest.mark.parametrize("k", [1, 3])
def test_float_kernel_equals_torch_implementation(shape, k):
    g = torch.Generator().manual_seed(hash((shape, k)) % 2**31)
    x = torch.rand(shape, generator=g)
    x[:, :, :1] = 0.5  # a constant row: equal neighbours, levels exactly at a threshold
    fill = 9 if shape[1] == 1 else (1, 128, 250)
    params = _params(shape[0], k, g)
    compiled, reference = _both(x, _without_contrast(params), fill)
    assert compiled.dtype == torch.float32 and torch.equal(compiled, reference)
    if k == 1:  # Contrast alone: within 1e-6
        compiled, reference = _both(x, params, fill)
        torch.testing.assert_close(compiled, reference, atol=1e-6, rtol=0)


@needs_kernel
def test_float_kernel_on_8_bit_levels_and_constant_images():
    """Images of exact 8-bit levels (what the image tasks load), constant images (AutoContrast/Equalize keep them)
    and the extreme values 0 and 1."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (30, 3, 19, 23), generator=g).float() / 255
    x[:5] = 0.25
    x[5:8] = 1.0
    x[8:10] = 0.0
    params = _params(30, 2, g)
    compiled, reference = _both(x, _without_contrast(params), 0)
    assert torch.equal(compiled, reference)


@needs_kernel
@pytest.mark.parametrize("shape", [(40, 3, 67, 130), (50, 1, 28, 28)])
def test_float_kernel_simd_routes_equal_the_scalar_loops(shape):
    g = torch.Generator().manual_seed(7)
    x = torch.rand(shape, generator=g)
    params = _params(shape[0], 2, g)
    native.set_simd(True, gathers=True)  # every hand-written route, the AVX-512 gathers included
    try:
        with_simd = apply_ops(x, params, fill=3)
        native.set_simd(True)
        default = apply_ops(x, params, fill=3)
        native.set_simd(False)
        without = apply_ops(x, params, fill=3)
    finally:
        native.set_simd(True)
    assert torch.equal(with_simd, without) and torch.equal(default, without)


@needs_kernel
def test_float_kernel_threads_and_non_contiguous_input():
    g = torch.Generator().manual_seed(8)
    base = torch.rand(16, 128, 112, 3, generator=g)  # 688k values: two threads with two torch threads
    x = base.permute(0, 3, 1, 2)  # channels-last memory: not contiguous as NCHW
    before = x.clone()
    params = _params(16, 2, g)
    one = apply_ops(x, params)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = apply_ops(x, params)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two) and torch.equal(x, before)
    with native.disabled():
        torch.testing.assert_close(one, apply_ops(x, params), atol=1e-6, rtol=0)


@pytest.mark.parametrize("aug", [RandAugment(num_ops=2, magnitude=9), TrivialAugment()], ids=["ra", "ta"])
def test_float_batch_is_within_a_level_of_pillow(aug, test_images, float_backend):
    """Whole RandAugment/TrivialAugment chains on 8-bit photos divided by 255: within one level of Pillow per op,
    so a chain of K ops within K levels (each op's error can carry into the next)."""
    for image in test_images:
        n = 28
        c, h, w = image.shape
        params = aug.sample(n, h, w, torch.Generator().manual_seed(h * w))
        # a Solarize threshold within float32 rounding of a level (e.g. 255 (1 - 2/30) = 238.00000000000003) is the
        # level itself in [0, 1] units, so the pixel at it flips where Pillow's keeps it: move thresholds off levels
        solarize = params.ops == OPS.index("Solarize")
        params.values[solarize] = params.values[solarize].floor() + 0.5
        x = image.expand(n, -1, -1, -1)
        out = (apply_ops(x.float() / 255, params) * 255).round().int()
        for i, chain in enumerate(params.as_lists()):
            names = [name for name, _ in chain]
            if "Solarize" in names[1:] or "Posterize" in names[1:] or "Equalize" in names[1:]:
                continue  # a level of difference before a threshold/quantising op can move a pixel further
            reference = pillow_apply(image, chain).int()
            assert (out[i] - reference).abs().max() <= len(chain), chain


def test_every_float_op_on_real_photos_matches_pillow(test_images, float_backend):
    """Each op at one mid-range value, float path vs Pillow: geometric ops exactly, the others within one level."""
    values = [0, 0, 0, -21.0, 140.0, 1.6, 5, 0.4, 1.3, 0.3, 0.27, -0.2, 4.0, -6.5]
    geometric = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Equalize", "Posterize", "Solarize",
                 "Identity"}
    for image in test_images:
        n = len(OPS)
        params = AugmentParams(torch.arange(n).view(n, 1), torch.tensor(values, dtype=torch.float64).view(n, 1))
        out = apply_ops(image.expand(n, -1, -1, -1).float() / 255, params, fill=40)
        levels = (out * 255).round().int()
        for i, chain in enumerate(params.as_lists()):
            reference = pillow_apply(image, chain, fill=40).int()
            tolerance = 0 if chain[0][0] in geometric else 1
            assert (levels[i] - reference).abs().max() <= tolerance, chain


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_regimen_native_0_runs_the_torch_float_path(tmp_path):
    """Without the kernel the float path is the torch implementation; its result is the kernel's (within 1e-6)."""
    saved = tmp_path / "out.pt"
    code = ("import torch; from regimen.augment import RandAugment, native;"
            "x = torch.rand(12, 3, 20, 24, generator=torch.Generator().manual_seed(0));"
            "out = RandAugment(num_ops=3, magnitude=12)(x, generator=torch.Generator().manual_seed(1));"
            f"torch.save(out, {str(saved)!r}); print(native.available())")
    result = _run(code, REGIMEN_NATIVE="0", REGIMEN_CACHE_DIR=str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
    x = torch.rand(12, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    ours = RandAugment(num_ops=3, magnitude=12)(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(torch.load(saved), ours, atol=1e-6, rtol=0)


@needs_kernel
def test_run_float_kernel_rejects_arrays_that_do_not_fit_the_images():
    from regimen.augment.randaugment import _float_kernel_arguments

    x = torch.zeros(4, 3, 8, 8)
    params = _params(4, 2, torch.Generator().manual_seed(0))
    kinds, factors, maps, fill = _float_kernel_arguments(params.ops.numpy(), params.values.numpy(), 3, 8, 8, 0)
    function = native.load_variant(dtype="float32")
    assert torch.equal(native.run_float_kernel(function, x, kinds, factors, maps, fill), apply_ops(x, params))
    with pytest.raises(ValueError, match=r"maps must have shape \(4, 2, 6\)"):
        native.run_float_kernel(function, x, kinds, factors, maps[:3], fill)
    with pytest.raises(ValueError, match=r"fill must have shape \(3,\)"):
        native.run_float_kernel(function, x, kinds, factors, maps, fill[:1])
    with pytest.raises(ValueError, match="kinds must be op kinds"):
        native.run_float_kernel(function, x, kinds + 10, factors, maps, fill)
    with pytest.raises(ValueError, match="float32"):
        native.run_float_kernel(function, x.to(torch.uint8), kinds, factors, maps, fill)
    with pytest.raises(ValueError, match="dtype"):
        native.load_variant(dtype="float16")
    assert np.all(kinds >= 0)


@pytest.mark.parametrize("size", [(20, 24), (70, 66)], ids=["one-warp", "per-op"])
def test_torch_path_geometry_of_other_float_dtypes(size, float_backend):
    """float64/float16 batches take the torch path (one gather for every geometric op of small images, per-op routes
    for large ones): geometric ops only move values, so they equal the float32 result (fill rounded alike)."""
    h, w = size
    g = torch.Generator().manual_seed(11)
    x = torch.rand(12, 3, h, w, generator=g).half().float()  # exactly representable in float16
    params = _params(12, 3, g)
    geometric = torch.tensor([OPS.index(name) for name in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")])
    params = AugmentParams(geometric[params.ops % 5], params.values.clamp(-40, 40))
    reference = apply_ops(x, params, fill=(0, 255, 0))  # 0 and 1: exact in every dtype
    for dtype in (torch.float64, torch.float16):
        assert torch.equal(apply_ops(x.to(dtype), params, fill=(0, 255, 0)).float(), reference), dtype


def test_a_batch_that_requires_grad_stays_in_torch():
    """The kernel's output would be cut off from autograd: such a batch takes the torch ops (same values)."""
    g = torch.Generator().manual_seed(12)
    x = torch.rand(10, 3, 16, 18, generator=g)
    params = _without_contrast(_params(10, 2, g))
    out = apply_ops(x.clone().requires_grad_(), params)
    assert out.requires_grad and torch.equal(out.detach(), apply_ops(x, params))
