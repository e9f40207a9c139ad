"""In-memory image-classification datasets: Fashion-MNIST, scikit-learn digits, user arrays and folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from regimen.data.idx import DataError, load_fashion_mnist_arrays, read_idx, read_npz

__all__ = [
    "ArrayDataset",
    "TensorDataset",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_pair",
    "load_image_folder",
    "load_npz",
    "split_dataset",
]


@dataclass
class ArrayDataset:
    """A whole image-classification dataset as tensors: ``images`` ``(N, C, H, W)``, uint8 (0-255) or floating point
    in [0, 1], and ``labels`` int64 ``(N,)``. ``gather(indices)`` gives float images in [0, 1] and labels."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str = "data"

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or not (self.images.dtype == torch.uint8 or self.images.is_floating_point()):
            raise DataError(f"images must be uint8 or floating point (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.images.is_floating_point() and self.images.numel():
            low, high = float(self.images.min()), float(self.images.max())
            if not (0.0 <= low and high <= 1.0):
                raise DataError(f"floating-point images must lie in [0, 1], got [{low:.4g}, {high:.4g}]; divide "
                                "0-255 images by 255 or pass them as uint8")
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise DataError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        if self.labels.dtype != torch.int64:
            raise DataError(f"labels must be int64, got {self.labels.dtype}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise DataError(f"labels must lie in [0, {self.num_classes}), got "
                            f"[{self.labels.min()}, {self.labels.max()}]")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images at ``indices`` as float in [0, 1] on ``device``, and their labels."""
        images = self.images[indices].to(device, non_blocking=True)
        images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
        return images, self.labels[indices].to(device, non_blocking=True)

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        return ArrayDataset(self.images[indices], self.labels[indices], self.num_classes, self.name)

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std of the images scaled to [0, 1]."""
        pixels = self.images.transpose(0, 1).reshape(self.images.shape[1], -1).double()
        pixels = pixels / 255.0 if self.images.dtype == torch.uint8 else pixels
        return pixels.mean(dim=1).float(), pixels.std(dim=1).clamp_min(1e-6).float()


@dataclass
class TensorDataset:
    """Any task's samples as two tensors with one row per sample: ``inputs`` ``(N, ...)`` and ``targets``
    ``(N, ...)``. ``gather(indices)`` gives the rows as they are (no scaling)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    name: str = "data"
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.inputs, torch.Tensor) or not isinstance(self.targets, torch.Tensor):
            raise DataError(f"inputs and targets must be tensors, got {type(self.inputs).__name__} and "
                            f"{type(self.targets).__name__}")
        if self.inputs.dim() < 1 or self.targets.dim() < 1 or self.inputs.shape[0] != self.targets.shape[0]:
            raise DataError(f"inputs and targets must have one row per sample, got {tuple(self.inputs.shape)} and "
                            f"{tuple(self.targets.shape)}")

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[indices].to(device, non_blocking=True), self.targets[indices].to(device, non_blocking=True)

    def subset(self, indices: torch.Tensor) -> TensorDataset:
        return TensorDataset(self.inputs[indices], self.targets[indices], self.name, self.num_classes)


def load_fashion_mnist(root: str | os.PathLike | None = None, split: str = "train") -> ArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017) from IDX files in ``root``, ``$REGIMEN_DATA`` or Debian's folder."""
    images, labels = load_fashion_mnist_arrays(root, split)
    return ArrayDataset(images, labels, 10, "fashion_mnist")


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ArrayDataset:
    """scikit-learn's bundled 8×8 digits (1797 images), scaled to uint8, with a seeded train/test split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_test = int(round(len(labels) * test_fraction))
    chosen = order[:num_test] if split == "test" else order[num_test:]
    return ArrayDataset(images[chosen], labels[chosen], 10, "digits")


def _as_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    """Images as an (N, C, H, W) tensor: uint8 0-255, or floating point in [0, 1] (``ArrayDataset`` checks the
    range; float64 becomes float32)."""
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if images.ndim != 4:
        raise DataError(f"{source}: images must be (N, H, W), (N, C, H, W) or (N, H, W, C), got {images.shape}")
    if images.dtype == np.float64:
        images = images.astype(np.float32)
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{source}: images must be uint8 (0-255) or floating point in [0, 1], got {images.dtype}")
    images = np.ascontiguousarray(images)
    if not images.flags.writeable:  # read from a buffer (IDX): torch must not share memory it may not write
        images = images.copy()
    return torch.from_numpy(images)


def _num_classes(labels: torch.Tensor) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def load_npz(path: str | os.PathLike, split: str = "train") -> ArrayDataset:
    """A ``.npz`` with ``x_train``/``y_train`` (and ``x_test``/``y_test``) or ``images``/``labels`` arrays."""
    path = Path(path)
    arrays = read_npz(path)
    keys = (f"x_{split}", f"y_{split}") if f"x_{split}" in arrays else ("images", "labels")
    if keys[0] not in arrays or keys[1] not in arrays:
        raise DataError(f"{path}: expected arrays x_{split}/y_{split} or images/labels, found {sorted(arrays)}")
    images = _as_nchw(arrays[keys[0]], str(path))
    labels = torch.from_numpy(arrays[keys[1]].astype(np.int64))
    return ArrayDataset(images, labels, _num_classes(labels), path.stem)


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike) -> ArrayDataset:
    """Any pair of IDX image/label files."""
    images = _as_nchw(read_idx(images_path), str(images_path))
    labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
    return ArrayDataset(images, labels, _num_classes(labels), Path(images_path).stem)


def load_image_folder(root: str | os.PathLike, grayscale: bool = False) -> ArrayDataset:
    """``root/<class name>/<image files>``: classes sorted by name; all images must share one size. Needs Pillow."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    try:
        from PIL import Image
    except ImportError:
        raise DataError("reading image folders needs Pillow: pip install Pillow") from None
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class, found none")
    arrays, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.is_file():
                with Image.open(file) as image:
                    arrays.append(np.asarray(image.convert("L" if grayscale else "RGB")))
                labels.append(index)
    if not arrays:
        raise DataError(f"{root}: no images found")
    if len({a.shape for a in arrays}) != 1:
        raise DataError(f"{root}: images have different sizes; resize them to one size first")
    return ArrayDataset(_as_nchw(np.stack(arrays), str(root)), torch.tensor(labels), len(classes), root.name)


def split_dataset(dataset, fraction: float, seed: int):
    """Seeded split into (train, held-out validation of ``fraction``); ``fraction == 0`` gives no validation set."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return dataset, None
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    num_val = max(1, int(round(len(dataset) * fraction)))
    return dataset.subset(order[num_val:]), dataset.subset(order[:num_val])
