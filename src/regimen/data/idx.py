"""Reading IDX files (the MNIST / Fashion-MNIST format), gzipped or not, with magic-number and size checks."""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from regimen.errors import RegimenError

__all__ = ["DataError", "FASHION_MNIST_DEBIAN_DIR", "find_fashion_mnist", "load_fashion_mnist_arrays", "read_idx",
           "read_npz", "check_npy_size"]

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_HOW_TO_GET = (
    "Fashion-MNIST is read from IDX files: pass root=, set REGIMEN_DATA to a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz, "
    "or install Debian's package with `apt-get install dataset-fashion-mnist`"
)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


class DataError(RegimenError, ValueError):
    """A data set that is missing, corrupt or not what was asked for; the message says how to fix it."""


#: deflate cannot expand data by more than about 1032:1; a .gz header promising more is lying
_MAX_DEFLATE_RATIO = 1100
_CHUNK = 1 << 20


def _read_at_most(handle, count: int) -> bytes:
    """Up to ``count`` bytes in chunks: memory grows with what the file really holds, never with what a header
    claims (``read(n)`` would allocate ``n`` bytes at once)."""
    chunks, total = [], 0
    while total < count:
        chunk = handle.read(min(_CHUNK, count - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw). Checks the magic number, dimensions and that the payload size matches; the
    size a header declares is checked against the file's size before anything that large is read (a lying header
    cannot make it allocate more than the file holds)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        size = path.stat().st_size
        with opener(path, "rb") as handle:
            head = _read_at_most(handle, 4)
            ndim = head[3] if len(head) == 4 else 0
            head += _read_at_most(handle, 4 * ndim)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise DataError(f"{path} is not an IDX file (bad magic number {head[:4].hex() or 'empty'})")
            dtype = np.dtype(_DTYPES[head[2]])
            header = 4 + 4 * ndim
            if ndim == 0 or len(head) < header:
                raise DataError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", head[4:header])
            expected = int(np.prod([int(s) for s in shape])) * dtype.itemsize
            limit = size * _MAX_DEFLATE_RATIO if opener is gzip.open else size - header
            if expected > limit:
                raise DataError(f"{path}: IDX header promises {expected} bytes of data for shape {shape}, more than a "
                                f"{size}-byte file can hold; the file is corrupt")
            payload = _read_at_most(handle, expected + 1)
    except FileNotFoundError:
        raise DataError(f"missing file {path}. {_HOW_TO_GET}") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path} ({error}); the file is corrupt. {_HOW_TO_GET}") from None
    data = head + payload
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data for shape {shape}, "
                        f"file has {len(data) - header}; the file is corrupt or truncated")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def check_npy_size(path: str | os.PathLike, handle=None, available: int | None = None, what: str = "") -> None:
    """Refuse a ``.npy`` (or an ``.npz`` member: ``handle`` open at its start, ``available`` its byte count) whose
    header declares more data than the file holds, or object (pickled) data, before NumPy allocates the array."""
    own = handle is None
    where = f"{path}{f' ({what})' if what else ''}"
    try:
        if own:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
            available = os.fstat(handle.fileno()).st_size
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        offset = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as error:
        first = str(error).splitlines()[0] if str(error) else repr(error)
        raise DataError(f"{where} is not a readable .npy array ({first})") from None
    finally:
        if own and handle is not None:
            handle.close()
    if dtype.hasobject:
        raise DataError(f"{where} holds Python objects (a pickled array); only numeric arrays are read, never "
                        "pickles")
    declared = int(np.prod([int(s) for s in shape])) * dtype.itemsize
    if declared > (available or 0) - offset:
        raise DataError(f"{where}: the header declares {declared} bytes of data (shape {tuple(shape)}, {dtype}), the "
                        f"file holds {(available or 0) - offset}; it is corrupt or truncated")


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read safely: no pickles (``allow_pickle=False``), no member whose header declares
    more data than it holds, a one-line :class:`DataError` naming the file for anything that is not a sound ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise DataError(f"{path} is corrupt (checksum mismatch in {bad})")
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    with archive.open(info) as member:
                        check_npy_size(path, member, info.file_size, what=info.filename)
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a readable .npz archive ({first})") from None


def _candidate(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.exists() or not (folder / stem).exists() else folder / stem


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder to read Fashion-MNIST from: ``root``, else ``$REGIMEN_DATA``, else Debian's install folder."""
    if root is not None:
        return Path(root)
    env = os.environ.get("REGIMEN_DATA")
    if env:
        return Path(env)
    return FASHION_MNIST_DEBIAN_DIR


def load_fashion_mnist_arrays(root: str | os.PathLike | None = None, split: str = "train"):
    """``(images uint8 (N, 1, 28, 28), labels int64 (N,))`` as tensors for ``split`` "train" or "test"."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST folder {folder} does not exist. {_HOW_TO_GET}")
    image_stem, label_stem, count = _FILES[split]
    images = read_idx(_candidate(folder, image_stem))
    labels = read_idx(_candidate(folder, label_stem))
    if images.shape != (count, 28, 28) or images.dtype != np.uint8:
        raise DataError(f"{folder}/{image_stem}: expected uint8 images of shape ({count}, 28, 28), got "
                        f"{images.dtype} {images.shape}")
    if labels.shape != (count,) or labels.max() > 9:
        raise DataError(f"{folder}/{label_stem}: expected {count} labels in 0..9, got shape {labels.shape}")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
