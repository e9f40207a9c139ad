"""``task = "image_classification"`` (the default): class labels from images.

Batches are ``(images (N, C, H, W) float in [0, 1], labels (N,) int64)``; ``transform_batch`` sees the images before
the per-channel normalisation (the training set's mean and std). The default model is regimen's ResNet (or ``mlp``);
the loss is cross-entropy with ``train.label_smoothing`` on index or soft (mixed) targets; the metrics are the mean
cross-entropy and top-1 accuracy (primary, higher is better).

Data (offline): ``auto`` (Fashion-MNIST from Debian's ``dataset-fashion-mnist``, else scikit-learn's 8×8 digits),
``fashion_mnist``, ``digits``, ``npz``, ``idx``, ``folder``. A user's own data: a dataset, or ``(images, labels)``
with images uint8 (0-255) or float in [0, 1]; see :meth:`ImageClassificationTask.adopt_data`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from regimen.data import ArrayDataset, DataSplits, load_data
from regimen.tasks.classification import ClassificationTask, _num_classes

__all__ = ["ImageClassificationTask"]


class ImageClassificationTask(ClassificationTask):
    """Classify images (Fashion-MNIST, digits, your own): cross-entropy, accuracy."""

    name = "image_classification"
    input_kind = "image"
    data_names = ("auto", "fashion_mnist", "digits", "npz", "idx", "folder")
    model_names = ("resnet", "mlp", "vit", "speednet")
    default_model = "resnet"
    data_arguments = ("in_channels", "in_features", "num_classes", "image_size")

    def load_data(self) -> DataSplits:
        cfg = self.recipe.data
        return self.with_label_noise(load_data(cfg.name, cfg.root, cfg.val_fraction, cfg.train_subset,
                                               self.recipe.seed, cfg.test_subset, cfg.test_fraction))

    def pair_dataset(self, inputs: torch.Tensor, labels: torch.Tensor, where: str) -> Any:
        """Images ``(N, C, H, W)`` (or ``(N, H, W)``), uint8 0-255 or float in [0, 1], and their labels."""
        images = inputs.unsqueeze(1) if inputs.dim() == 3 else inputs
        return ArrayDataset(images, labels, _num_classes(labels), "user data")

    def _with_stats(self, data: DataSplits) -> DataSplits:
        if data.mean is None and hasattr(data.train, "channel_stats"):
            data.mean, data.std = data.train.channel_stats()
        return data

    def model_class(self, name: str) -> type | None:
        from regimen.models import MLP, ResNet, SpeedNet, ViT

        return {"resnet": ResNet, "mlp": MLP, "vit": ViT, "speednet": SpeedNet}.get(name)

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import build_model
        from regimen.models.factory import EXAMPLE_INPUT_MODELS

        model = self.recipe.model
        name = model.name or self.default_model
        example = self._example_inputs(data) if name in EXAMPLE_INPUT_MODELS else None
        return build_model(name, data.train.input_shape, self.num_classes(data), example_inputs=example,
                           **model.options)

    def _example_inputs(self, data: DataSplits, n: int = 5000) -> torch.Tensor:
        """The first ``n`` training images, normalised as the model sees them (a data-dependent initialisation
        such as SpeedNet's patch whitening reads them; the same on every rank)."""
        x, _ = data.train.gather(torch.arange(min(n, len(data.train))), torch.device("cpu"))
        return self.normalizer(data, torch.device("cpu"))(x.float())

    def normalizer(self, data: DataSplits, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        if not self.recipe.data.normalize or data.mean is None:
            return lambda x: x
        mean = data.mean.to(device).view(1, -1, 1, 1)
        std = data.std.to(device).view(1, -1, 1, 1)
        return lambda x: (x - mean) / std
