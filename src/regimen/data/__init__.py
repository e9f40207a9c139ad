"""Datasets that work offline: Fashion-MNIST (IDX), scikit-learn digits, user arrays and folders; splits; loader."""

from regimen.data.datasets import (
    ArrayDataset,
    TensorDataset,
    load_digits,
    load_fashion_mnist,
    load_idx_pair,
    load_image_folder,
    load_npz,
    split_dataset,
)
from regimen.data.idx import DataError, read_idx
from regimen.data.loader import InMemoryLoader
from regimen.data.select import DataSplits, load_data

__all__ = [
    "ArrayDataset",
    "TensorDataset",
    "DataError",
    "DataSplits",
    "InMemoryLoader",
    "load_data",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_pair",
    "load_image_folder",
    "load_npz",
    "read_idx",
    "split_dataset",
]
