"""The compiled uint8 kernel (``uint8_kernel.c``): built on first use with the system C compiler, loaded with ctypes.

The kernel applies every image's RandAugment ops in one foreign call, touching each byte once per op, where the torch
path (:mod:`regimen.augment.op_groups`) needs an int32 index per byte and hundreds of tensor ops per call. Both give
the same results bit for bit (tests compare them with each other and with Pillow).

Building: ``$CC`` (if set, else ``cc``, ``gcc`` or ``clang``) compiles the source once into a cache folder
(``$REGIMEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/regimen``, else ``~/.cache/regimen``; if that cannot be written,
``<temp dir>/regimen-<uid>``), under a name that hashes the source, the flags, the compiler and the platform, so an
edited source or another machine type gets its own build. The build writes a temporary file and renames it, so
processes that build at the same time do not see half a library. Without a compiler (or with ``REGIMEN_NATIVE=0``)
the torch path is used, with one warning saying so.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from regimen.augment._common import ThreadFlag

__all__ = ["available", "disabled", "apply_ops_uint8_native", "build_error", "set_simd", "run_kernel", "load_variant"]

_SOURCE = Path(__file__).with_name("uint8_kernel.c")
_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")
_lock = threading.Lock()
_state: dict = {"library": None, "function": None, "tried": False, "error": None}
_disabled = ThreadFlag()
_MIN_BYTES_PER_THREAD = 1 << 18  # below this a worker thread costs more than it saves


def _compiler() -> str | None:
    """``$CC`` if set (an error if it is not a program), else the first of cc, gcc, clang found."""
    chosen = os.environ.get("CC")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise RuntimeError(f"CC={chosen!r} is not an executable program")
        return found
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    if os.environ.get("REGIMEN_CACHE_DIR"):
        return Path(os.environ["REGIMEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "regimen"


def _build(compiler: str, extra_flags: tuple[str, ...] = ()) -> Path:
    """The path of the compiled library, building it if this source/compiler/flags/platform has no build yet
    (``extra_flags``: for tests that build variants, e.g. ``-DREGIMEN_PORTABLE``)."""
    source = _SOURCE.read_bytes()
    flags = (*_FLAGS, *extra_flags)
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), compiler.encode(),
                                     platform.machine().encode(), sys.platform.encode()])).hexdigest()[:16]
    errors = []
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"regimen-{getattr(os, 'getuid', lambda: 'user')()}"):
        library = folder / f"uint8_kernel-{key}.so"
        if library.exists():
            return library
        try:  # e.g. a read-only home: try the next folder
            folder.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(suffix=".so", dir=folder)
        except OSError as error:
            errors.append(f"{folder}: {error}")
            continue
        os.close(handle)
        try:
            result = subprocess.run([compiler, *flags, "-o", temporary, str(_SOURCE)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[:2000]}")
            os.replace(temporary, library)  # atomic: a concurrent build of the same source renames the same bytes
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
        return library
    raise RuntimeError(f"no writable folder for the compiled kernel ({'; '.join(errors)})")


def _open(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Build (if needed) and load the library, with the argument types of its two functions declared."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install cc/gcc/clang)")
    library = ctypes.CDLL(str(_build(compiler, extra_flags)))
    library.regimen_apply_ops_uint8.restype = ctypes.c_int
    library.regimen_apply_ops_uint8.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 5,
                                                *[ctypes.c_void_p] * 5]
    library.regimen_set_simd.restype = ctypes.c_int
    library.regimen_set_simd.argtypes = [ctypes.c_int]
    library.regimen_set_simd(1)
    return library


def _load():
    """The kernel's ctypes function, or ``None`` (and a warning, once) if it cannot be built."""
    with _lock:
        if _state["tried"]:
            return _state["function"]
        _state["tried"] = True
        if os.environ.get("REGIMEN_NATIVE", "1") == "0":
            _state["error"] = "disabled by REGIMEN_NATIVE=0"
            return None
        try:
            library = _open()
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            _state["error"] = str(error)
            warnings.warn(f"regimen: the compiled uint8 augmentation kernel is unavailable ({error}); using the "
                          "slower torch implementation", RuntimeWarning, stacklevel=3)
            return None
        _state["library"], _state["function"] = library, library.regimen_apply_ops_uint8
        return _state["function"]


def available() -> bool:
    """Whether the compiled kernel is built and enabled (builds it on the first call)."""
    return not _disabled and _load() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (``None`` if it loaded or was not tried yet)."""
    return _state["error"]


def set_simd(enabled: bool) -> bool:
    """Switch the kernel's hand-written SIMD routes (AVX-512 VBMI table lookups and AVX-512 gathers) on or off for
    the whole process; returns whether they are now in use (``False`` on CPUs without them). The compiler's own
    vectorisation is unaffected. For tests and benchmarks: both routes give the same results."""
    if _load() is None:
        return False
    return bool(_state["library"].regimen_set_simd(int(bool(enabled))))


def disabled():
    """Use the torch implementation inside this block (this thread only): for tests and comparisons."""
    return _disabled.on()


_pool: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _executor(threads: int) -> ThreadPoolExecutor:
    """A pool per process and size: a forked child (e.g. a DataLoader worker) must not reuse its parent's pool,
    whose threads do not exist in the child."""
    key = (os.getpid(), threads)
    with _lock:
        if key not in _pool:
            _pool[key] = ThreadPoolExecutor(threads, thread_name_prefix="regimen-augment")
        return _pool[key]


def apply_ops_uint8_native(images: torch.Tensor, kinds: np.ndarray, factors: np.ndarray, tables: np.ndarray,
                           maps: np.ndarray, fill: np.ndarray) -> torch.Tensor:
    """Run the kernel on a CPU uint8 batch ``(N, C, H, W)``: ``kinds`` ``(N, K)`` int32, ``factors`` ``(N, K)``
    float32, ``tables`` ``(N, K, 256)`` uint8, ``maps`` ``(N, K, 6)`` int64, ``fill`` ``(C,)`` uint8 (see
    ``uint8_kernel.c`` and :func:`regimen.augment.op_groups.kernel_arguments`). Splits the batch over
    ``torch.get_num_threads()`` threads (ctypes releases the GIL)."""
    return run_kernel(_load(), images, kinds, factors, tables, maps, fill)


def run_kernel(function, images: torch.Tensor, kinds: np.ndarray, factors: np.ndarray, tables: np.ndarray,
               maps: np.ndarray, fill: np.ndarray) -> torch.Tensor:
    """:func:`apply_ops_uint8_native` with a given kernel function (tests pass variant builds)."""
    _check_kernel_inputs(images, kinds, factors, tables, maps, fill)
    images = images.contiguous()
    out = torch.empty_like(images)
    n, c, h, w = images.shape
    k = kinds.shape[1]
    arrays = [np.ascontiguousarray(a, dtype=t) for a, t in
              ((kinds, np.int32), (factors, np.float32), (tables, np.uint8), (maps, np.int64), (fill, np.uint8))]
    kinds, factors, tables, maps, fill = arrays
    size = c * h * w
    threads = max(1, min(torch.get_num_threads(), n, n * size // _MIN_BYTES_PER_THREAD))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)

    def run(a: int, b: int) -> int:
        return function(images.data_ptr() + a * size, out.data_ptr() + a * size, b - a, c, h, w, k,
                        kinds[a:].ctypes.data, factors[a:].ctypes.data, tables[a:].ctypes.data,
                        maps[a:].ctypes.data, fill.ctypes.data)

    if threads == 1:
        codes = [run(0, n)]
    else:
        codes = list(_executor(threads).map(run, bounds[:-1].tolist(), bounds[1:].tolist()))
    if any(code != 0 for code in codes):
        raise MemoryError(f"the uint8 augmentation kernel could not allocate scratch memory for a {c}x{h}x{w} image")
    return out


def _check_kernel_inputs(images, kinds, factors, tables, maps, fill) -> None:
    """The C code trusts its arrays' sizes: a mismatch would read or write out of bounds, so it is an error here."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {getattr(images, 'dtype', type(images))} "
                         f"of shape {tuple(getattr(images, 'shape', ()))}")
    if images.device.type != "cpu":
        raise ValueError(f"images must be on the CPU for the compiled kernel, got {images.device}")
    n, c, h, w = images.shape
    if h * w >= 2**31 - 4:
        raise ValueError(f"images of {h}x{w} pixels are too large for the kernel's 32-bit plane indices")
    k = np.shape(kinds)[1] if np.ndim(kinds) == 2 else -1
    expected = {"kinds": (n, k), "factors": (n, k), "tables": (n, k, 256), "maps": (n, k, 6), "fill": (c,)}
    for name, array in zip(expected, (kinds, factors, tables, maps, fill)):
        if k < 0 or np.shape(array) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for images {tuple(images.shape)}, got "
                             f"{np.shape(array)}")
    if np.size(kinds) and (np.min(kinds) < 0 or np.max(kinds) > 7):
        raise ValueError("kinds must be op kinds in [0, 7] (see uint8_kernel.c)")


def load_variant(*extra_flags: str):
    """The kernel function of a build with ``extra_flags`` (for tests, e.g. ``-DREGIMEN_PORTABLE``: the plain C
    loops that CPUs without AVX-512, other architectures and other compilers run)."""
    return _open(tuple(extra_flags)).regimen_apply_ops_uint8
