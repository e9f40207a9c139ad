"""No sample is in two of train / validation / test, for every data source the tasks read.

The check is a multiset one: the splits' samples together (image or feature bytes with the label) must be contained
in the source's raw samples, counted with multiplicity. A sample that a source holds twice may land in two splits (a
duplicate in the data set itself); one that the loader puts in two splits from one raw sample cannot.
"""

from collections import Counter

import numpy as np
import pytest
import torch

from regimen.data import load_data
from regimen.data.idx import FASHION_MNIST_DEBIAN_DIR
from regimen.tasks import ClassificationTask, ImageClassificationTask
from regimen.train import parse_recipe
from tests.data.test_data import write_idx


def _rows(inputs: torch.Tensor, labels: torch.Tensor) -> Counter:
    flat = inputs.reshape(len(inputs), -1).contiguous().numpy()
    return Counter((row.tobytes(), int(label)) for row, label in zip(flat, labels.tolist()))


def _split_rows(dataset) -> Counter:
    if dataset is None:
        return Counter()
    if hasattr(dataset, "images"):
        return _rows(dataset.images, dataset.labels)
    return _rows(dataset.inputs, dataset.targets)


def _assert_disjoint(splits, raw: Counter, has_test: bool = True) -> None:
    used = _split_rows(splits.train) + _split_rows(splits.val) + _split_rows(splits.test)
    assert len(splits.val) > 0 and (len(splits.test) > 0 if has_test else splits.test is None)
    over = {key: count for key, count in used.items() if count > raw.get(key, 0)}
    assert not over, f"{len(over)} samples are in more splits than the source holds them"


def _unique_images(n: int, size: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct uint8 images: each encodes its index in its first pixels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images, rng.integers(0, 3, n).astype(np.int64)


def test_npz_without_test_arrays_gets_a_disjoint_test_split_the_same_for_every_seed(tmp_path):
    images, labels = _unique_images(300)
    np.savez(tmp_path / "own.npz", images=images, labels=labels)
    raw = _rows(torch.from_numpy(images), torch.from_numpy(labels))
    tests = []
    for seed in (0, 1):
        splits = load_data("npz", str(tmp_path / "own.npz"), val_fraction=0.1, seed=seed)
        _assert_disjoint(splits, raw)
        assert len(splits.train) + len(splits.val) + len(splits.test) == 300 and len(splits.test) == 60
        assert "held out before training" in splits.sources["test"]
        tests.append(_split_rows(splits.test))
    assert tests[0] == tests[1]  # every run seed is scored on the same test samples


def test_npz_with_test_arrays_uses_them(tmp_path):
    images, labels = _unique_images(200)
    np.savez(tmp_path / "own.npz", x_train=images[:150], y_train=labels[:150], x_test=images[150:],
             y_test=labels[150:])
    splits = load_data("npz", str(tmp_path / "own.npz"), val_fraction=0.2)
    _assert_disjoint(splits, _rows(torch.from_numpy(images), torch.from_numpy(labels)))
    assert len(splits.test) == 50 and splits.sources["test"].endswith("test set")


def test_idx_and_folder_sources_are_disjoint(tmp_path):
    from PIL import Image

    images, labels = _unique_images(120)
    raw = _rows(torch.from_numpy(images), torch.from_numpy(labels))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:100])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:100].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[100:])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[100:].astype(np.uint8))
    _assert_disjoint(load_data("idx", str(tmp_path), val_fraction=0.1), raw)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "folder" / ("train" if index < 100 else "test") / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    splits = load_data("folder", str(tmp_path / "folder"), val_fraction=0.1)
    rgb = torch.from_numpy(np.repeat(images[:, None], 3, axis=1))  # the folder reader converts to RGB
    _assert_disjoint(splits, _rows(rgb, torch.from_numpy(labels)))  # class folders sort as the labels


def test_digits_split_is_disjoint():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8))
    _assert_disjoint(load_data("digits", val_fraction=0.1), _rows(images, torch.from_numpy(bunch.target)))


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_split_is_disjoint():
    from regimen.data import load_fashion_mnist

    parts = [load_fashion_mnist(None, split) for split in ("train", "test")]
    raw = _rows(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    _assert_disjoint(load_data("fashion_mnist", val_fraction=0.1), raw)


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_tabular_sources_are_disjoint(name):
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()
    raw = _rows(torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)), torch.from_numpy(bunch.target))
    task = ClassificationTask(parse_recipe({"task": "classification", "data": {"name": name}}))
    _assert_disjoint(task.load_data(), raw)


def test_tabular_npz_without_test_arrays_gets_a_disjoint_test_split(tmp_path):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 5)).astype(np.float32), rng.integers(0, 2, 200)
    np.savez(tmp_path / "table.npz", x_train=x, y_train=y)
    recipe = parse_recipe({"task": "classification", "data": {"name": "npz", "root": str(tmp_path / "table.npz")}})
    splits = ClassificationTask(recipe).load_data()
    _assert_disjoint(splits, _rows(torch.from_numpy(x), torch.from_numpy(y)))
    assert len(splits.test) == 40 and "held out" in splits.sources["test"]


def test_own_image_data_is_split_without_overlap():
    """``fit(data=(images, labels))``: validation is held out; there is no test split, and the run scores on
    validation (``summary["primary_metric"] == "val_acc"``)."""
    images, labels = _unique_images(200)
    task = ImageClassificationTask(parse_recipe({}))
    splits = task.adopt_data((torch.from_numpy(images), torch.from_numpy(labels)))
    _assert_disjoint(splits, _rows(torch.from_numpy(images), torch.from_numpy(labels)), has_test=False)


def test_float_npz_images_in_unit_range_load_and_out_of_range_ones_are_refused(tmp_path):
    from regimen.data import DataError

    images, labels = _unique_images(50)
    np.savez(tmp_path / "float.npz", images=images.astype(np.float64) / 255.0, labels=labels)
    splits = load_data("npz", str(tmp_path / "float.npz"), val_fraction=0.1)
    assert splits.train.images.dtype == torch.float32 and len(splits.test) == 10
    x, _ = splits.train.gather(torch.arange(2))
    assert torch.equal(x, splits.train.images[:2])  # already in [0, 1]: not divided again
    np.savez(tmp_path / "bad.npz", images=images.astype(np.float32), labels=labels)
    with pytest.raises(DataError, match=r"floating-point images must lie in \[0, 1\], got \[0, 255\]"):
        load_data("npz", str(tmp_path / "bad.npz"))


def test_image_folders_with_other_classes_in_test_are_refused(tmp_path):
    from PIL import Image

    from regimen.data import DataError

    for part, names in (("train", ["cat", "dog"]), ("test", ["cat", "emu"])):
        for name in names:
            (tmp_path / part / name).mkdir(parents=True)
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / part / name / "a.png")
    with pytest.raises(DataError, match=r"must hold the same class folders; train has \['cat', 'dog'\], test has "
                                        r"\['cat', 'emu'\]"):
        load_data("folder", str(tmp_path))
