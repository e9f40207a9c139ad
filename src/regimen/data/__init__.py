"""Datasets that work offline: Fashion-MNIST (IDX), scikit-learn digits, user arrays and folders, text corpora
(KJV, the standard library, text files, token arrays) and tokenizers; splits; loader."""

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
from regimen.data.loader import BatchSamplerLoader, InMemoryLoader
from regimen.data.noise import LABEL_NOISE_KINDS, noisy_labels
from regimen.data.select import DataSplits, load_data
from regimen.data.text import IGNORE_INDEX, DocumentPieces, TextCorpus, TokenWindows, load_corpus, load_token_array
from regimen.data.tokenizers import BPETokenizer, ByteTokenizer, train_bpe
from regimen.data.wave import laplacian_5point, wave_pairs, wave_step, wave_trajectories

__all__ = [
    "IGNORE_INDEX",
    "LABEL_NOISE_KINDS",
    "noisy_labels",
    "ArrayDataset",
    "BPETokenizer",
    "BatchSamplerLoader",
    "ByteTokenizer",
    "TensorDataset",
    "TextCorpus",
    "TokenWindows",
    "DataError",
    "DataSplits",
    "DocumentPieces",
    "InMemoryLoader",
    "load_corpus",
    "load_data",
    "load_digits",
    "load_fashion_mnist",
    "load_idx_pair",
    "load_image_folder",
    "load_npz",
    "load_token_array",
    "read_idx",
    "split_dataset",
    "train_bpe",
    "laplacian_5point",
    "wave_pairs",
    "wave_step",
    "wave_trajectories",
]
