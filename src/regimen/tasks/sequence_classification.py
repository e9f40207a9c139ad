"""``task = "sequence_classification"``: class labels from sequences; Fashion-MNIST images read row by row.

Batches are ``(sequences (N, T, F) float, labels (N,) int64)``. The offline data is Fashion-MNIST (or scikit-learn's
8 × 8 digits) with each image's rows as the time steps: T = 28 steps of F = 28 pixels, scaled to [0, 1] and
standardised with the training set's pixel mean and standard deviation. The default model is
:class:`regimen.models.SequenceRNN` (per-step embedding with a time-dropout slot, GRU, classifier head); the loss is
cross-entropy (``train.label_smoothing``). Metrics:

* ``loss``: mean cross-entropy (the negative log-likelihood of the evaluated model's predictive distribution);
* ``acc`` (primary, higher is better): top-1 accuracy;
* ``ece``: expected calibration error of the top-1 confidence with ``ece_bins`` equal-width bins (Guo et al. 2017):
  ``Σ_b |B_b| / N · |acc(B_b) − conf(B_b)|``, bin ``b`` holding confidences in ``(b/B, (b+1)/B]`` (the first bin
  also holds 0), accumulated over the whole split before the division;
* ``mc_variance``: the MC-dropout predictive variance, ``mean_n Σ_c Var_k[softmax(f(x_n; m_k))_c]`` over
  ``mc_samples`` passes with the model's dropout layers on (:func:`regimen.dropout.mc_predict`, seeded, so every
  evaluation draws the same masks); 0 for a model without dropout layers. When ``mc_inference`` evaluates the model,
  the variance of its own passes is used (re-seeded at the start of every split).

Data (``data.name``): ``auto`` (Fashion-MNIST from Debian's ``dataset-fashion-mnist``, else digits),
``fashion_mnist``, ``digits``. ``data.options``: ``mc_samples`` (default 10), ``ece_bins`` (default 15). A user's own
sequences: ``fit(data=(sequences, labels))`` with float ``(N, T, F)`` and int64 ``(N,)`` (see
:meth:`ClassificationTask.adopt_data`; features standardised per (step, feature)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset, DataError, DataSplits, InMemoryLoader, TensorDataset
from regimen.errors import ConfigurationError
from regimen.tasks.classification import ClassificationTask, _num_classes

__all__ = ["RowSequences", "SequenceClassificationTask", "calibration_bins", "expected_calibration_error"]

_DATA_OPTIONS = {"mc_samples": int, "ece_bins": int}
DEFAULTS = {"mc_samples": 10, "ece_bins": 15}
#: Seed of the masks the ``mc_variance`` metric draws: a constant, so every evaluation draws the same ones.
MC_METRIC_SEED = 1_506_021_42


def calibration_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> torch.Tensor:
    """Per confidence bin: ``(count, Σ confidence, Σ correct)`` of the top-1 predictions, a ``(bins, 3)`` float64
    tensor; bin ``b`` holds confidences in ``(b/bins, (b+1)/bins]`` (and 0 in the first)."""
    if probs.dim() != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    confidence, prediction = probs.double().max(dim=1)
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    values = torch.stack([torch.ones_like(confidence), confidence, (prediction == labels).double()], dim=1)
    return torch.zeros(bins, 3, dtype=torch.float64, device=probs.device).index_add_(0, index, values)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-1 confidence: ``Σ_b |B_b| / N · |acc(B_b) − conf(B_b)|`` (Guo et al. 2017, equal-width bins)."""
    sums = calibration_bins(probs, labels, bins)
    return float((sums[:, 1] - sums[:, 2]).abs().sum() / max(len(labels), 1))


@dataclass
class RowSequences:
    """Grey images ``(N, 1, H, W)`` read as sequences of their rows: ``gather`` gives ``(N, H, W)`` floats in [0, 1]
    and the labels."""

    images: ArrayDataset

    def __post_init__(self) -> None:
        if self.images.input_shape[0] != 1:
            raise DataError(f"sequence_classification reads grey images row by row; got {self.images.input_shape[0]} "
                            "channels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def name(self) -> str:
        return self.images.name

    @property
    def num_classes(self) -> int:
        return self.images.num_classes

    @property
    def targets(self) -> torch.Tensor:
        return self.images.labels

    @property
    def input_shape(self) -> tuple[int, int]:
        return tuple(self.images.input_shape[1:])  # type: ignore[return-value]

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.images.gather(indices, device)
        return x[:, 0], y

    def subset(self, indices: torch.Tensor) -> RowSequences:
        return RowSequences(self.images.subset(indices))


class SequenceClassificationTask(ClassificationTask):
    """Classify sequences (Fashion-MNIST rows as 28 time steps): cross-entropy, accuracy, ECE, MC-dropout variance."""

    name = "sequence_classification"
    input_kind = "sequence"
    target_kind = "labels"
    metrics = ("loss", "acc", "ece", "mc_variance")
    primary_metric = "acc"
    higher_is_better_metrics = ("acc",)  # ECE and the MC variance: lower is better
    higher_is_better = True
    train_metrics = ("acc",)
    data_names = ("auto", "fashion_mnist", "digits")
    model_names = ("rnn",)
    default_model = "rnn"
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        for key, value in options.items():
            if value < 1:
                raise ConfigurationError(f"data.options.{key}: expected an int >= 1, got {value!r}")
        return {**DEFAULTS, **options}

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        self.data_options()

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        from regimen.data import load_data

        cfg = self.recipe.data
        images = load_data(cfg.name, cfg.root, cfg.val_fraction, cfg.train_subset, self.recipe.seed, cfg.test_subset,
                           cfg.test_fraction)
        splits = [RowSequences(s) if s is not None else None for s in (images.train, images.val, images.test)]
        sources = {k: f"{v}, rows as time steps" for k, v in images.sources.items()}
        return DataSplits(*splits, mean=images.mean, std=images.std, sources=sources)

    def pair_dataset(self, inputs: torch.Tensor, labels: torch.Tensor, where: str) -> Any:
        """Sequences ``(N, T, F)``, floating point, and their labels."""
        if not inputs.is_floating_point() or inputs.dim() != 3:
            raise DataError(f"{where}: sequences must be a floating-point tensor (N, T, F), got {inputs.dtype} "
                            f"{tuple(inputs.shape)}")
        return TensorDataset(inputs, labels, "user data", _num_classes(labels))

    def normalizer(self, data: DataSplits, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        if data.mean is not None and data.mean.numel() == 1 and self.recipe.data.normalize:
            mean, std = data.mean.to(device).view(1, 1, 1), data.std.to(device).view(1, 1, 1)
            return lambda x: (x - mean) / std
        return super().normalizer(data, device)

    # ----------------------------------------------------------------------------------------------------- model
    def model_class(self, name: str) -> type | None:
        from regimen.models import SequenceRNN

        return SequenceRNN

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import SequenceRNN

        shape = data.train.input_shape
        if len(shape) != 2:
            raise DataError(f"data: sequences must be (N, T, F), got samples of shape {shape}")
        return SequenceRNN(in_features=int(shape[1]), num_classes=self.num_classes(data), **self.recipe.model.options)

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Loss, accuracy, ECE and MC-dropout variance over ``dataset`` (sharded over ranks, summed)."""
        from regimen.dropout import MCDropoutClassifier, is_mc_dropout_layer, mc_predict

        options = self.data_options()
        was_training = model.training
        model.eval()
        device = torch.device(device)
        wrapped = isinstance(model, MCDropoutClassifier)
        if wrapped:
            model.reset()  # every split sees the same passes
        stochastic = wrapped or any(is_mc_dropout_layer(m) for m in model.modules())
        generator = torch.Generator().manual_seed(MC_METRIC_SEED + rank)
        loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                                world_size=world_size, device=device)
        totals = torch.zeros(4, dtype=torch.float64, device=device)  # nll, correct, variance, count
        bins = torch.zeros(options["ece_bins"], 3, dtype=torch.float64, device=device)
        for x, y, _ in loader:
            if len(y) == 0:
                continue
            x = normalize(x)
            log_probs = F.log_softmax(model(x).float(), dim=1)
            probs = log_probs.exp()
            totals[0] += F.nll_loss(log_probs, y, reduction="sum").double()
            totals[1] += (log_probs.argmax(dim=1) == y).sum().double()
            totals[3] += len(y)
            bins += calibration_bins(probs, y, options["ece_bins"])
            if wrapped:
                totals[2] += model.last_variance.double().sum()
            elif stochastic:
                _, variance = mc_predict(model, x, options["mc_samples"], generator=generator,
                                         transform=lambda z: z.float().softmax(dim=-1))
                totals[2] += variance.double().sum()
        if all_reduce is not None:
            totals = all_reduce(totals, "sum")
            bins = all_reduce(bins, "sum")
        model.train(was_training)
        count = max(totals[3].item(), 1.0)
        ece = (bins[:, 1] - bins[:, 2]).abs().sum().item() / count
        return {"loss": totals[0].item() / count, "acc": totals[1].item() / count, "ece": ece,
                "mc_variance": totals[2].item() / count}
