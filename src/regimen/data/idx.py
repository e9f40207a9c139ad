"""Reading IDX files (the MNIST / Fashion-MNIST format), gzipped or not, with magic-number and size checks."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from regimen.errors import RegimenError

__all__ = ["DataError", "FASHION_MNIST_DEBIAN_DIR", "find_fashion_mnist", "load_fashion_mnist_arrays", "read_idx"]

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


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw). Checks the magic number, dimensions and that the payload size matches."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DataError(f"missing file {path}. {_HOW_TO_GET}") from None
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read {path} ({error}); the file is corrupt. {_HOW_TO_GET}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{path}: IDX header promises {expected} bytes of data for shape {shape}, "
                        f"file has {len(data) - header}; the file is corrupt or truncated")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


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
