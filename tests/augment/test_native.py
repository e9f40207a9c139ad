"""The compiled uint8 kernel: the same results as the torch implementation, SIMD on and off, threads, fallback
(the float32 kernel of the same file: tests/augment/test_float_path.py; its portable builds here)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from regimen.augment import OPS, AugmentParams, apply_ops, native


def _params(n: int, k: int, g: torch.Generator) -> AugmentParams:
    """Every op with wide parameter ranges (negative and huge angles, strong shears, off-image translations)."""
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


def _both(x: torch.Tensor, params: AugmentParams, fill) -> tuple[torch.Tensor, torch.Tensor]:
    compiled = apply_ops(x, params, fill=fill)
    with native.disabled():
        reference = apply_ops(x, params, fill=fill)
    return compiled, reference


_COMPILER = (shutil.which(os.environ["CC"]) if os.environ.get("CC")
             else shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
needs_kernel = pytest.mark.skipif(_COMPILER is None, reason="no C compiler: the torch path is used")


@needs_kernel
def test_kernel_is_built_wherever_a_compiler_exists():
    """CI machines have gcc: the fast path must really be exercised there, not silently replaced."""
    assert native.available(), native.build_error()


@needs_kernel
@pytest.mark.parametrize("shape", [(64, 1, 28, 28), (24, 3, 33, 47), (6, 3, 120, 97), (9, 1, 3, 3), (5, 3, 2, 2),
                                   (4, 1, 1, 9), (3, 3, 200, 13), (0, 3, 8, 8)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_kernel_equals_torch_implementation(shape, k):
    g = torch.Generator().manual_seed(hash((shape, k)) % 2**31)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    fill = 9 if shape[1] == 1 else (1, 128, 250)
    compiled, reference = _both(x, _params(shape[0], k, g), fill)
    assert torch.equal(compiled, reference)


@needs_kernel
@pytest.mark.parametrize("shape", [(40, 3, 67, 130), (50, 1, 28, 28)])
def test_simd_routes_equal_the_scalar_loops(shape):
    """The hand-written AVX-512 lookups and gathers against the plain C loops (odd sizes leave scalar tails)."""
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    params = _params(shape[0], 2, g)
    in_use = native.set_simd(True, gathers=True)  # every hand-written route, the AVX-512 gathers included
    try:
        with_simd = apply_ops(x, params, fill=3)
        assert not native.set_simd(False)
        without = apply_ops(x, params, fill=3)
    finally:
        native.set_simd(True)
    assert torch.equal(with_simd, without)
    if not in_use:
        pytest.skip("this CPU has no AVX-512 VBMI: only the scalar loops ran")


@needs_kernel
@pytest.mark.parametrize("op, value", [("Rotate", 33.3), ("ShearY", -0.7), ("Rotate", 1e-3)])
def test_simd_warp_reads_only_inside_the_input(op, value):
    """Every image warps straight from the caller's tensor, the last plane included (whose last pixels sit at the
    end of the allocation): SIMD and scalar agree, and both equal the torch implementation."""
    g = torch.Generator().manual_seed(10)
    x = torch.randint(0, 256, (5, 3, 37, 21), dtype=torch.uint8, generator=g)
    params = AugmentParams(torch.full((5, 1), OPS.index(op)), torch.full((5, 1), value, dtype=torch.float64))
    native.set_simd(True, gathers=True)  # the gathers, even on CPUs where they are not used by default
    try:
        compiled, reference = _both(x, params, (4, 5, 6))
    finally:
        native.set_simd(True)
    native.set_simd(False)
    try:
        scalar = apply_ops(x, params, fill=(4, 5, 6))
    finally:
        native.set_simd(True)
    assert torch.equal(compiled, reference) and torch.equal(scalar, reference)


@needs_kernel
def test_threads_split_the_batch_without_changing_the_result():
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (16, 3, 128, 128), dtype=torch.uint8, generator=g)
    params = _params(16, 2, g)
    one = apply_ops(x, params)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = apply_ops(x, params)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one, two)


@needs_kernel
def test_input_untouched_and_non_contiguous_input():
    g = torch.Generator().manual_seed(9)
    base = torch.randint(0, 256, (8, 30, 20, 3), dtype=torch.uint8, generator=g)
    x = base.permute(0, 3, 1, 2)  # channels-last memory: not contiguous as NCHW
    before = x.clone()
    params = _params(8, 2, g)
    compiled, reference = _both(x, params, 0)
    assert torch.equal(x, before) and torch.equal(compiled, reference)


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


_USE = ("import torch, warnings; warnings.simplefilter('always');"
        "from regimen.augment import RandAugment, native;"
        "x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8);"
        "out = RandAugment()(x, generator=torch.Generator().manual_seed(0));"
        "print(native.available(), native.build_error())")


def test_without_a_working_compiler_the_torch_path_is_used_with_a_warning(tmp_path):
    result = _run(_USE, CC=shutil.which("false") or "/bin/false", REGIMEN_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False"), result.stdout
    assert "torch implementation" in result.stderr and "unavailable" in result.stderr


def test_a_cc_that_is_not_a_program_is_reported_not_replaced(tmp_path):
    result = _run(_USE, CC="/nonexistent/cc", REGIMEN_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "CC='/nonexistent/cc' is not an executable program" in result.stdout + result.stderr


def test_regimen_native_0_disables_the_kernel(tmp_path):
    result = _run(_USE, REGIMEN_NATIVE="0", REGIMEN_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "False disabled by REGIMEN_NATIVE=0" in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing was built


@needs_kernel
def test_an_unusable_cache_folder_falls_back_to_the_temporary_folder(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = _run(_USE, REGIMEN_CACHE_DIR=str(blocked / "cache"), TMPDIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True"), result.stdout + result.stderr
    assert len(list(tmp_path.glob("regimen-*/uint8_kernel-*.so"))) == 1


@needs_kernel
def test_concurrent_first_builds_share_one_library(tmp_path):
    code = _USE + "; assert native.available()"
    processes = [subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "REGIMEN_CACHE_DIR": str(tmp_path)},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert out.startswith("True"), out
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]  # one library, no temporary files left


@needs_kernel
@pytest.mark.parametrize("flags", [("-DREGIMEN_PORTABLE",), ("-DREGIMEN_PORTABLE", "-O0"),
                                   ("-DREGIMEN_PORTABLE", "-march=native")],
                         ids=["portable-O3", "portable-O0", "portable-native"])
def test_portable_builds_give_the_same_results(flags, tmp_path, monkeypatch):
    """The plain C loops (what CPUs without AVX-512, other architectures and clang run; unoptimised, and
    auto-vectorised for this CPU) against the default build, on every op, odd sizes and both channel counts."""
    from regimen.augment.op_groups import kernel_arguments

    monkeypatch.setenv("REGIMEN_CACHE_DIR", str(tmp_path))
    try:
        variant = native.load_variant(*flags)
    except RuntimeError as error:  # e.g. -march=native unknown to this compiler
        pytest.skip(str(error))
    for shape in [(40, 3, 37, 53), (30, 1, 28, 28), (6, 3, 2, 9)]:
        g = torch.Generator().manual_seed(shape[2])
        x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        params = _params(shape[0], 3, g)
        arguments = kernel_arguments(params.ops.numpy(), params.values.numpy(), *shape[1:])
        fill = torch.full((shape[1],), 11, dtype=torch.uint8).numpy()
        assert torch.equal(native.run_kernel(variant, x, *arguments, fill), apply_ops(x, params, fill=11)), shape
    # the float32 kernel of the same build against the default build's
    from regimen.augment.randaugment import _float_kernel_arguments

    float_variant = native.load_variant(*flags, dtype="float32")
    for shape in [(20, 3, 37, 53), (30, 1, 28, 28), (6, 3, 2, 9)]:
        g = torch.Generator().manual_seed(shape[2])
        x = torch.rand(shape, generator=g)
        params = _params(shape[0], 3, g)
        arguments = _float_kernel_arguments(params.ops.numpy(), params.values.numpy(), *shape[1:], 11)
        assert torch.equal(native.run_float_kernel(float_variant, x, *arguments), apply_ops(x, params, fill=11)), shape


@needs_kernel
def test_run_kernel_rejects_arrays_that_do_not_fit_the_images():
    """The C code trusts the arrays' sizes, so a mismatch is a clear error instead of an out-of-bounds access."""
    from regimen.augment.op_groups import kernel_arguments

    x = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    params = _params(4, 2, torch.Generator().manual_seed(0))
    kinds, factors, tables, maps = kernel_arguments(params.ops.numpy(), params.values.numpy(), 3, 8, 8)
    fill = np.zeros(3, dtype=np.uint8)
    function = native.load_variant()
    with pytest.raises(ValueError, match=r"maps must have shape \(4, 2, 6\)"):
        native.run_kernel(function, x, kinds, factors, tables, maps[:3], fill)
    with pytest.raises(ValueError, match=r"fill must have shape \(3,\)"):
        native.run_kernel(function, x, kinds, factors, tables, maps, fill[:1])
    with pytest.raises(ValueError, match="kinds must be op kinds"):
        native.run_kernel(function, x, kinds + 9, factors, tables, maps, fill)
    with pytest.raises(ValueError, match="uint8"):
        native.run_kernel(function, x.float(), kinds, factors, tables, maps, fill)
