"""``task = "classification"``: class labels from feature vectors (tabular data, embeddings, any tensor rows).

Batches are ``(inputs (N, ...) float, labels (N,) int64)``; the default model is an MLP on the flattened inputs;
the loss is cross-entropy (index or soft targets, with ``train.label_smoothing``); the metrics are the mean
cross-entropy and top-1 accuracy (primary, higher is better). Inputs are standardised per feature with the training
set's mean and standard deviation when ``data.normalize`` is true.

Data (offline): scikit-learn's bundled ``digits`` (64 pixel features; also ``auto``), ``iris``, ``wine`` and
``breast_cancer``, or an ``.npz`` with ``x_train``/``y_train`` (and ``x_test``/``y_test``) arrays. A user's own
data: see :meth:`ClassificationTask.adopt_data`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset, DataError, DataSplits, TensorDataset, split_dataset
from regimen.data.idx import read_npz
from regimen.data.noise import LABEL_NOISE_KINDS, noisy_labels
from regimen.data.select import make_splits
from regimen.errors import ConfigurationError
from regimen.losses import classification_loss
from regimen.tasks.base import Task

__all__ = ["ClassificationTask", "classification_criterion"]

#: ``data.options`` of the classification tasks and their types.
_LABEL_NOISE_OPTIONS: dict[str, tuple[type, ...]] = {"label_noise": (float, int), "label_noise_kind": (str,),
                                                     "label_noise_seed": (int,)}


def classification_criterion(label_smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """Cross-entropy on logits ``(N, C)`` against index targets ``(N,)`` or soft targets ``(N, C)``, with label
    smoothing ``eps`` (``q = (1 - eps) t + eps / C`` for soft targets, as ``F.cross_entropy`` does for indices):
    :func:`regimen.losses.classification_loss`. Multi-sample dropout's ``(K, N, C)`` training logits are refused
    with a ValueError naming :func:`regimen.losses.multi_sample_cross_entropy`."""

    def loss(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return classification_loss(output, target, label_smoothing, reduction=reduction)

    return loss


def _labels(target: torch.Tensor) -> torch.Tensor:
    return target.argmax(dim=1) if target.dim() == 2 else target


class ClassificationTask(Task):
    """Classify feature vectors (tabular data, embeddings): cross-entropy, accuracy."""

    name = "classification"
    input_kind = "vector"
    target_kind = "labels"
    metrics = ("loss", "acc")
    primary_metric = "acc"
    higher_is_better_metrics = ("acc",)
    higher_is_better = True
    train_metrics = ("acc",)
    data_names = ("auto", "digits", "iris", "wine", "breast_cancer", "npz")  # auto: digits
    model_names = ("mlp",)
    default_model = "mlp"
    #: ``data.options`` read by the classification tasks: synthetic label noise on the training split
    #: (:mod:`regimen.data.noise`).
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_LABEL_NOISE_OPTIONS)

    # ------------------------------------------------------------------------------------------------------ data
    def label_noise_options(self) -> dict[str, Any]:
        """``data.options`` checked: ``label_noise`` (rate in [0, 1), default 0), ``label_noise_kind``
        (``"symmetric"`` | ``"pair"``), ``label_noise_seed`` (default: the recipe seed)."""
        options = dict(getattr(self.recipe.data, "options", {}) or {})
        for key, value in options.items():
            if key not in self.data_option_names:  # a subclass (e.g. metric_learning) declares its own options
                raise ConfigurationError(f"data.options.{key}: unknown option of task {self.name!r}; its options are "
                                         f"{', '.join(self.data_option_names) or 'none'}")
            if key not in _LABEL_NOISE_OPTIONS:
                continue
            kinds = _LABEL_NOISE_OPTIONS[key]
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigurationError(f"data.options.{key}: expected {' or '.join(k.__name__ for k in kinds)}, "
                                         f"got {value!r}")
        rate = float(options.get("label_noise", 0.0))
        if not 0.0 <= rate < 1.0:
            raise ConfigurationError(f"data.options.label_noise must be in [0, 1), got {rate!r}")
        kind = options.get("label_noise_kind", "symmetric")
        if kind not in LABEL_NOISE_KINDS:
            raise ConfigurationError(f"data.options.label_noise_kind must be one of {', '.join(LABEL_NOISE_KINDS)}, "
                                     f"got {kind!r}")
        return {"rate": rate, "kind": kind, "seed": int(options.get("label_noise_seed", self.recipe.seed))}

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        self.label_noise_options()

    def with_label_noise(self, data: DataSplits) -> DataSplits:
        """``data`` with the recipe's label noise applied to the training split only (validation and test stay
        clean); unchanged when ``data.options.label_noise`` is 0 or absent."""
        noise = self.label_noise_options()
        if noise["rate"] == 0.0:
            return data
        train = data.train
        labels = train.labels if isinstance(train, ArrayDataset) else getattr(train, "targets", None)
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
            raise ConfigurationError("data.options.label_noise needs a training set of class labels (N,)")
        flipped = noisy_labels(labels, noise["rate"], noise["kind"], self.num_classes(data),
                               torch.Generator().manual_seed(noise["seed"]))
        if isinstance(train, ArrayDataset):
            data.train = ArrayDataset(train.images, flipped, train.num_classes, train.name)
        else:
            data.train = TensorDataset(train.inputs, flipped, train.name, train.num_classes)
        actual = float((flipped != labels).double().mean())
        data.sources = dict(data.sources, train=f"{data.sources.get('train', train.name)}, {noise['kind']} label "
                                                f"noise {noise['rate']:g} ({actual:.3f} of labels wrong, seed "
                                                f"{noise['seed']})")
        return data

    def load_data(self) -> DataSplits:
        cfg, seed = self.recipe.data, self.recipe.seed
        if cfg.name == "npz":
            if cfg.root is None:
                raise DataError("data.name = 'npz' needs data.root (the .npz file)")
            train, test = _npz_pair(Path(cfg.root))
            source = str(cfg.root)
        else:
            source = "digits" if cfg.name == "auto" else cfg.name
            train, test = _sklearn_set(source), None
        test_source = (f"{source} x_test/y_test" if test is not None else
                       f"seeded {cfg.test_fraction:g} of {source}, held out (the source has no test split)")
        train, val, test = make_splits(train, test, cfg.val_fraction, seed, cfg.train_subset, cfg.test_subset,
                                       cfg.test_fraction)
        sources = {"train": f"{train.name}", "val": f"seeded {cfg.val_fraction:g} of the training set",
                   "test": test_source}
        return self.with_label_noise(self._with_stats(DataSplits(train, val, test, sources=sources)))

    def adopt_data(self, data: Any) -> DataSplits:
        """``DataSplits``; a dict ``{"train": ..., "val": ..., "test": ...}`` of datasets or ``(inputs, labels)``
        pairs (``val``/``test`` optional); or one dataset / ``(inputs, labels)`` pair, from which the recipe's
        ``data.val_fraction`` is held out (seeded). Without a test split the run evaluates on validation only."""
        if isinstance(data, DataSplits):
            return data
        cfg, seed = self.recipe.data, self.recipe.seed
        if isinstance(data, dict):
            unknown = sorted(set(data) - {"train", "val", "test"})
            if unknown or "train" not in data:
                raise DataError(f"data: expected a dict with keys 'train' (required), 'val', 'test'; got "
                                f"{sorted(data)}")
            splits = {key: self.as_dataset(value, f"data[{key!r}]") for key, value in data.items()
                      if value is not None}
            sources = {key: "user data" for key in splits}
            return self._with_stats(DataSplits(splits["train"], splits.get("val"), splits.get("test"),
                                               sources=sources))
        train, val = split_dataset(self.as_dataset(data, "data"), cfg.val_fraction, seed)
        sources = {"train": "user data", "val": f"seeded {cfg.val_fraction:g} of the user data"}
        return self._with_stats(DataSplits(train, val, None, sources=sources))

    def as_dataset(self, value: Any, where: str) -> Any:
        """A dataset (anything with ``gather`` and ``__len__``) as it is, or an ``(inputs, labels)`` pair made into
        one by :meth:`pair_dataset`."""
        if hasattr(value, "gather") and hasattr(value, "__len__"):
            return value
        if not (isinstance(value, tuple | list) and len(value) == 2):
            raise DataError(f"{where}: expected a dataset or an (inputs, labels) pair of tensors, got "
                            f"{type(value).__name__}")
        inputs, labels = (torch.as_tensor(v) if isinstance(v, np.ndarray) else v for v in value)
        if not isinstance(inputs, torch.Tensor):
            raise DataError(f"{where}: inputs must be a tensor, got {type(inputs).__name__}")
        return self.pair_dataset(inputs, _check_labels(labels, where), where)

    def pair_dataset(self, inputs: torch.Tensor, labels: torch.Tensor, where: str) -> Any:
        """Feature rows ``(N, ...)``, floating point, and their labels."""
        if not inputs.is_floating_point():
            raise DataError(f"{where}: inputs must be a floating-point tensor, got {inputs.dtype}")
        return TensorDataset(inputs, labels, "user data", _num_classes(labels))

    def _with_stats(self, data: DataSplits) -> DataSplits:
        if data.mean is None and self.recipe.data.normalize and isinstance(data.train, TensorDataset):
            rows = data.train.inputs.reshape(len(data.train), -1).double()
            data.mean, data.std = rows.mean(0).float(), rows.std(0).clamp_min(1e-6).float()
        return data

    # ----------------------------------------------------------------------------------------------------- model
    def num_classes(self, data: DataSplits) -> int:
        counts = [getattr(split, "num_classes", None) for split in (data.train, data.val, data.test) if split]
        known = [c for c in counts if c]
        if not known:
            raise DataError("data: cannot tell the number of classes; give the dataset a num_classes attribute")
        return max(known)

    def model_class(self, name: str) -> type | None:
        from regimen.models import MLP

        return MLP

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import MLP

        features = int(np.prod(data.train.input_shape))
        return MLP(in_features=features, num_classes=self.num_classes(data), **self.recipe.model.options)

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        return dict(super().model_spec(data), num_classes=self.num_classes(data))

    def run_facts(self, data: DataSplits) -> dict[str, Any]:
        return {"num_classes": self.num_classes(data), "label_smoothing": self.recipe.train.label_smoothing,
                "data_mean": data.mean, "data_std": data.std}

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        return classification_criterion(self.recipe.train.label_smoothing)

    def normalizer(self, data: DataSplits, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        if data.mean is None or not self.recipe.data.normalize:
            return super().normalizer(data, device)
        shape = (1, *data.train.input_shape)
        mean, std = data.mean.to(device).view(shape), data.std.to(device).view(shape)
        return lambda x: (x - mean) / std

    def train_sums(self, output: Any, target: Any) -> list[float]:
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            return [float("nan")]
        return [float((output.argmax(dim=1) == _labels(target)).sum())]

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        output = output.float()
        loss = F.cross_entropy(output, target, reduction="sum")
        correct = (output.argmax(dim=1) == target).sum()
        return torch.stack([loss.double(), correct.double()])


def _check_labels(labels: Any, where: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
        raise DataError(f"{where}: labels must be an int64 tensor (N,) of class indices, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, got {int(labels.min())}")
    return labels


def _num_classes(labels: torch.Tensor) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _sklearn_set(name: str) -> TensorDataset:
    """One of scikit-learn's bundled tabular sets, whole (it has no test split of its own)."""
    import sklearn.datasets

    loader = {"digits": sklearn.datasets.load_digits, "iris": sklearn.datasets.load_iris,
              "wine": sklearn.datasets.load_wine, "breast_cancer": sklearn.datasets.load_breast_cancer}[name]
    bunch = loader()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return TensorDataset(torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)), labels, name,
                         _num_classes(labels))


def _npz_pair(path: Path) -> tuple[TensorDataset, TensorDataset | None]:
    arrays = read_npz(path)
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path}: expected arrays x_train/y_train (and x_test/y_test), found {sorted(arrays)}")
    pairs = [(arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")
             if f"x_{s}" in arrays and f"y_{s}" in arrays]
    datasets = []
    for x, y in pairs:
        labels = _check_labels(torch.from_numpy(y.astype(np.int64)), str(path))
        datasets.append(TensorDataset(torch.from_numpy(x.astype(np.float32)), labels, path.stem))
    classes = max(_num_classes(d.targets) for d in datasets)
    for dataset in datasets:
        dataset.num_classes = classes
    return datasets[0], (datasets[1] if len(datasets) > 1 else None)
