import gzip
import struct

import numpy as np
import pytest
import torch

from regimen.data import ArrayDataset, DataError, InMemoryLoader, load_data, load_digits, load_fashion_mnist, read_idx
from regimen.data.idx import FASHION_MNIST_DEBIAN_DIR


def write_idx(path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def test_read_idx_roundtrips_gzip_and_raw(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b", array, compress=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "b"), array)


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "bad")
    array = np.zeros((4, 5), dtype=np.uint8)
    write_idx(tmp_path / "t", array, compress=False)
    data = (tmp_path / "t").read_bytes()
    (tmp_path / "t").write_bytes(data[:-3])
    with pytest.raises(DataError, match="truncated|corrupt"):
        read_idx(tmp_path / "t")


def test_missing_fashion_mnist_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="missing file"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_sizes_are_checked(tmp_path):
    for stem, array in [("train-images-idx3-ubyte", np.zeros((5, 28, 28))), ("train-labels-idx1-ubyte", np.zeros(5))]:
        write_idx(tmp_path / f"{stem}.gz", array)
    with pytest.raises(DataError, match="expected uint8 images of shape \\(60000"):
        load_fashion_mnist(tmp_path, "train")


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    test = load_fashion_mnist(split="test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_digits_split_is_seeded_and_disjoint():
    train, test = load_digits("train"), load_digits("test")
    assert len(train) + len(test) == 1797 and train.input_shape == (1, 8, 8)
    assert torch.equal(load_digits("test").labels, test.labels)
    assert train.images.max() == 255


def test_validation_split_and_subset_are_seeded():
    a = load_data("digits", val_fraction=0.2, train_subset=500, seed=3)
    b = load_data("digits", val_fraction=0.2, train_subset=500, seed=3)
    assert len(a.train) == 500 and len(a.val) == round(1438 * 0.2)
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a.val.images, b.val.images)
    flat = a.train.images.float().div(255).flatten()
    assert torch.allclose(a.mean, flat.mean().reshape(1), atol=1e-4)


def _dataset(n: int = 50) -> ArrayDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ArrayDataset(images, torch.arange(n) % 3, 3)


def test_loader_ranks_partition_the_single_process_batches():
    dataset = _dataset()
    single = [idx for _, _, idx in InMemoryLoader(dataset, 8, seed=1)]
    ranks = [[idx for _, _, idx in InMemoryLoader(dataset, 4, seed=1, rank=r, world_size=2)] for r in range(2)]
    assert len(single) == len(ranks[0]) == 50 // 8
    for batch, part0, part1 in zip(single, *ranks):
        assert torch.equal(batch, torch.cat([part0, part1]))


def test_loader_epochs_reshuffle_reproducibly_and_scale_to_unit_range():
    loader = InMemoryLoader(_dataset(), 10, seed=0)
    first = torch.cat([i for _, _, i in loader])
    loader.set_epoch(1)
    second = torch.cat([i for _, _, i in loader])
    loader.set_epoch(0)
    assert torch.equal(first, torch.cat([i for _, _, i in loader]))
    assert not torch.equal(first, second) and sorted(first.tolist()) == list(range(50))
    x, y, idx = next(iter(loader))
    assert x.dtype == torch.float32 and torch.allclose(x[:, 0, 0, 0], idx.float() / 255)
    assert torch.equal(y, idx % 3)


def test_loader_without_drop_last_covers_everything():
    batches = list(InMemoryLoader(_dataset(), 8, shuffle=False, drop_last=False))
    assert torch.equal(torch.cat([i for _, _, i in batches]), torch.arange(50))


def test_bad_loader_and_dataset_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        InMemoryLoader(_dataset(), 0)
    with pytest.raises(DataError, match="labels must lie"):
        ArrayDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 5]), 3)


def test_loader_batches_at_positions_are_those_of_the_full_epoch():
    loader = InMemoryLoader(_dataset(), 8, seed=3)
    loader.set_epoch(2)
    full = list(loader)
    chosen = list(loader.batches([4, 0, 2]))
    assert len(chosen) == 3
    for (x, y, idx), position in zip(chosen, [4, 0, 2], strict=True):
        assert torch.equal(idx, full[position][2]) and torch.equal(x, full[position][0])
        assert torch.equal(y, full[position][1])
