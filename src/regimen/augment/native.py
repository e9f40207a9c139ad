"""The compiled kernels (``uint8_kernel.c``): built on first use with the system C compiler, loaded with ctypes.

The uint8 kernel applies every image's RandAugment ops in one foreign call, touching each byte once per op, where the
torch path (:mod:`regimen.augment.op_groups`) needs an int32 index per byte and hundreds of tensor ops per call. Both
give the same results bit for bit (tests compare them with each other and with Pillow).

The float32 kernel (same file, ``regimen_apply_ops_float32``) does the same for float32 images in [0, 1] with NEAREST
geometry: the continuous ops of :mod:`regimen.augment.functional`, the same float32 operations in the same order as
the torch implementation (tests compare both within a stated tolerance), so a float batch no longer goes through
hundreds of tensor ops and index copies either.

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

__all__ = ["available", "disabled", "apply_ops_uint8_native", "apply_ops_float32_native", "build_error", "set_simd",
           "run_kernel", "run_float_kernel", "load_variant", "FLOAT_KINDS"]

#: op name -> the float32 kernel's op kind (``FKIND_*`` in uint8_kernel.c)
FLOAT_KINDS = {"Identity": 0, "AutoContrast": 1, "Equalize": 2, "Contrast": 3, "Color": 4, "Sharpness": 5,
               "Rotate": 6, "ShearX": 6, "ShearY": 6, "TranslateX": 6, "TranslateY": 6, "Solarize": 7, "Posterize": 8,
               "Brightness": 9}

_SOURCE = Path(__file__).with_name("uint8_kernel.c")
_FLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")
_lock = threading.Lock()
_state: dict = {"library": None, "function": None, "float_function": None, "tried": False, "error": None}
_disabled = ThreadFlag()
_MIN_VALUES_PER_THREAD = 1 << 18  # below this a worker thread costs more than it saves (uint8 or float32 values)


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
    library.regimen_apply_ops_float32.restype = ctypes.c_int
    library.regimen_apply_ops_float32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int64] * 5,
                                                  *[ctypes.c_void_p] * 4]
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
        _state["float_function"] = library.regimen_apply_ops_float32
        return _state["function"]


def available() -> bool:
    """Whether the compiled kernel is built and enabled (builds it on the first call)."""
    return not _disabled and _load() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (``None`` if it loaded or was not tried yet)."""
    return _state["error"]


def set_simd(enabled: bool, gathers: bool | None = None) -> bool:
    """Switch the kernels' hand-written SIMD routes (AVX-512 VBMI table lookups and AVX-512 gathers) on or off for
    the whole process; returns whether they are now in use (``False`` on CPUs without them). ``gathers``: ``None``
    uses the gathers where they pay off (not on AMD CPUs, whose AVX-512 gathers are slower than scalar loads),
    ``True`` everywhere the CPU has them (tests). The compiler's own vectorisation is unaffected. For tests and
    benchmarks: every route gives the same results."""
    if _load() is None:
        return False
    mode = 0 if not enabled else (2 if gathers else 1)
    return bool(_state["library"].regimen_set_simd(mode))


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
    arrays = [np.ascontiguousarray(a, dtype=t) for a, t in
              ((kinds, np.int32), (factors, np.float32), (tables, np.uint8), (maps, np.int64))]
    return _run_split(function, images, arrays, np.ascontiguousarray(fill, dtype=np.uint8), "uint8")


def apply_ops_float32_native(images: torch.Tensor, kinds: np.ndarray, factors: np.ndarray, maps: np.ndarray,
                             fill: np.ndarray) -> torch.Tensor:
    """Run the float32 kernel on a CPU float32 batch ``(N, C, H, W)`` in [0, 1] (not checked here: the caller,
    :func:`regimen.augment.apply_ops`, checked it; AutoContrast relies on it): ``kinds`` ``(N, K)`` int32 (see
    :data:`FLOAT_KINDS`), ``factors`` ``(N, K)`` float32 (enhancement factor, Solarize threshold in [0, 1], Posterize
    bits), ``maps`` ``(N, K, 6)`` int64 fixed-point maps, ``fill`` ``(C,)`` float32 in [0, 1]."""
    _load()
    return run_float_kernel(_state["float_function"], images, kinds, factors, maps, fill)


def run_float_kernel(function, images: torch.Tensor, kinds: np.ndarray, factors: np.ndarray, maps: np.ndarray,
                     fill: np.ndarray) -> torch.Tensor:
    """:func:`apply_ops_float32_native` with a given kernel function (tests pass variant builds)."""
    _check_kernel_inputs(images, kinds, factors, None, maps, fill, dtype=torch.float32)
    arrays = [np.ascontiguousarray(a, dtype=t) for a, t in ((kinds, np.int32), (factors, np.float32), (maps, np.int64))]
    return _run_split(function, images, arrays, np.ascontiguousarray(fill, dtype=np.float32), "float32")


def _run_split(function, images: torch.Tensor, per_image: list[np.ndarray], fill: np.ndarray,
               kind: str) -> torch.Tensor:
    """Call ``function`` on contiguous slices of the batch, split over ``torch.get_num_threads()`` threads (ctypes
    releases the GIL); ``per_image`` arrays are sliced with the images, ``fill`` is shared."""
    images = images.contiguous()
    out = torch.empty_like(images)
    n, c, h, w = images.shape
    k = per_image[0].shape[1]
    size = c * h * w
    item = images.element_size()
    threads = max(1, min(torch.get_num_threads(), n, n * size // _MIN_VALUES_PER_THREAD))
    bounds = np.linspace(0, n, threads + 1).astype(np.int64)

    def run(a: int, b: int) -> int:
        return function(images.data_ptr() + a * size * item, out.data_ptr() + a * size * item, b - a, c, h, w, k,
                        *[array[a:].ctypes.data for array in per_image], fill.ctypes.data)

    if threads == 1:
        codes = [run(0, n)]
    else:
        codes = list(_executor(threads).map(run, bounds[:-1].tolist(), bounds[1:].tolist()))
    if any(code != 0 for code in codes):
        raise MemoryError(f"the {kind} augmentation kernel could not allocate scratch memory for a {c}x{h}x{w} image")
    return out


def _check_kernel_inputs(images, kinds, factors, tables, maps, fill, dtype: torch.dtype = torch.uint8) -> None:
    """The C code trusts its arrays' sizes: a mismatch would read or write out of bounds, so it is an error here
    (``tables`` is ``None`` for the float32 kernel, which has none)."""
    if not isinstance(images, torch.Tensor) or images.dtype != dtype or images.dim() != 4:
        raise ValueError(f"images must be a {str(dtype).removeprefix('torch.')} tensor (N, C, H, W), got "
                         f"{getattr(images, 'dtype', type(images))} of shape {tuple(getattr(images, 'shape', ()))}")
    if images.device.type != "cpu":
        raise ValueError(f"images must be on the CPU for the compiled kernel, got {images.device}")
    n, c, h, w = images.shape
    if h * w >= 2**31 - 4:
        raise ValueError(f"images of {h}x{w} pixels are too large for the kernel's 32-bit plane indices")
    k = np.shape(kinds)[1] if np.ndim(kinds) == 2 else -1
    expected = {"kinds": (n, k), "factors": (n, k), "tables": (n, k, 256), "maps": (n, k, 6), "fill": (c,)}
    for name, array in zip(expected, (kinds, factors, tables, maps, fill)):
        if array is None and name == "tables" and dtype != torch.uint8:
            continue
        if k < 0 or np.shape(array) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]} for images {tuple(images.shape)}, got "
                             f"{np.shape(array)}")
    top = 7 if dtype == torch.uint8 else max(FLOAT_KINDS.values())
    if np.size(kinds) and (np.min(kinds) < 0 or np.max(kinds) > top):
        raise ValueError(f"kinds must be op kinds in [0, {top}] (see uint8_kernel.c)")


def load_variant(*extra_flags: str, dtype: str = "uint8"):
    """The ``dtype`` (``"uint8"`` or ``"float32"``) kernel function of a build with ``extra_flags`` (for tests, e.g.
    ``-DREGIMEN_PORTABLE``: the plain C loops that CPUs without AVX-512, other architectures and other compilers
    run)."""
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    return getattr(_open(tuple(extra_flags)), f"regimen_apply_ops_{dtype}")
