"""Choose and split the data a recipe names: train / validation / test plus normalisation constants."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from regimen.data.datasets import (
    ArrayDataset,
    load_digits,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    load_npz,
    split_dataset,
)
from regimen.data.idx import DataError, read_npz

__all__ = ["DataSplits", "load_data", "make_splits"]

log = logging.getLogger(__name__)


@dataclass
class DataSplits:
    """A task's train / validation / test datasets (``val`` and ``test`` may be ``None``), the per-channel
    normalisation of image inputs (``None`` elsewhere) and where each split came from (printed in the run header)."""

    train: Any
    val: Any | None
    test: Any | None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.train.name


#: Seed of the test split carved from a source without one: a constant, so every run seed sees the same test set.
TEST_SPLIT_SEED = 20_240_531


def _load_pair(name: str, root: str | None) -> tuple[ArrayDataset, ArrayDataset | None]:
    """The source's training and test sets; ``None`` for the test set of a source that has none."""
    if name == "fashion_mnist":
        return load_fashion_mnist(root, "train"), load_fashion_mnist(root, "test")
    if name == "digits":
        return load_digits("train"), load_digits("test")
    if root is None:
        raise DataError(f"data.name = {name!r} needs data.root")
    if name == "npz":
        return load_npz(root, "train"), (load_npz(root, "test") if npz_has_test(root) else None)
    if name == "idx":
        folder = Path(root)
        return (load_idx_pair(folder / "train-images-idx3-ubyte.gz", folder / "train-labels-idx1-ubyte.gz"),
                load_idx_pair(folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"))
    if name == "folder":
        train, test = load_image_folder(Path(root) / "train"), load_image_folder(Path(root) / "test")
        classes = [sorted(p.name for p in (Path(root) / part).iterdir() if p.is_dir()) for part in ("train", "test")]
        if classes[0] != classes[1]:  # a label is a class folder's position: both must list the same folders
            raise DataError(f"{root}: train/ and test/ must hold the same class folders; train has {classes[0]}, "
                            f"test has {classes[1]}")
        return train, test
    raise DataError(f"unknown data.name {name!r}")


def npz_has_test(path: str | Path) -> bool:
    """Whether an ``.npz`` holds its own ``x_test``/``y_test`` arrays."""
    arrays = read_npz(path)
    return "x_test" in arrays and "y_test" in arrays


def _sources(name: str, root: str | None, train, val_fraction: float, carved: float | None) -> dict[str, str]:
    source = f"{root}" if name in ("npz", "idx", "folder") else train.name
    test = (f"seeded {carved:g} of {source}, held out before training (the source has no test split)"
            if carved is not None else f"{source} test set")
    return {"train": f"{source} training set", "val": f"seeded {val_fraction:g} of the training set", "test": test}


def make_splits(train, test, val_fraction: float, seed: int, train_subset: int | None = None,
                test_subset: int | None = None, test_fraction: float = 0.2):
    """``(train, val, test)`` from a source's training set and its test set (``None``: the source has none).

    Without a test set, ``test_fraction`` of the samples is held out first, with a constant seed, so every run seed
    tests on the same samples. Then ``val_fraction`` of the rest is held out with the run's ``seed``;
    ``train_subset`` keeps a seeded random subset of the training set, ``test_subset`` the first test samples (the
    test order is the data set's own, so every seed sees the same test samples)."""
    if test is None:
        train, test = split_dataset(train, test_fraction, TEST_SPLIT_SEED)
    train, val = split_dataset(train, val_fraction, seed)
    if train_subset is not None and train_subset < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
                             [:train_subset])
    if test_subset is not None and test_subset < len(test):
        test = test.subset(torch.arange(test_subset))
    return train, val, test


def load_data(
    name: str = "auto", root: str | None = None, val_fraction: float = 0.1, train_subset: int | None = None,
    seed: int = 0, test_subset: int | None = None, test_fraction: float = 0.2,
) -> DataSplits:
    """Load ``name`` ("auto" = Fashion-MNIST, else scikit-learn digits), split off validation, compute stats.

    A source without its own test split (an ``.npz`` with only ``images``/``labels`` or ``x_train``/``y_train``) gets
    a disjoint test split of ``test_fraction``, drawn with a constant seed so every run seed tests on the same
    samples; the training and validation sets come from the rest. ``train_subset`` keeps a seeded random subset of
    that many training images, ``test_subset`` the first that many test images (for quick runs; the test order is
    the data set's own, so every seed sees the same test images).
    """
    if name == "auto":
        try:
            train, test = _load_pair("fashion_mnist", root)
        except DataError as error:
            log.warning("Fashion-MNIST unavailable (%s); falling back to scikit-learn digits", error)
            name = "digits"
            train, test = _load_pair("digits", None)
    else:
        train, test = _load_pair(name, root)
    carved = test_fraction if test is None else None
    if test is not None and train.input_shape != test.input_shape:
        raise DataError(f"train images {train.input_shape} and test images {test.input_shape} differ in shape")
    train, val, test = make_splits(train, test, val_fraction, seed, train_subset, test_subset, test_fraction)
    mean, std = train.channel_stats()
    return DataSplits(train, val, test, mean, std, _sources(name, root, train, val_fraction, carved))
