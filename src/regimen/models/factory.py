"""Build a reference model from a recipe's ``[model]`` table."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regimen.models.mlp import MLP
from regimen.models.resnet import ResNet
from regimen.models.speednet import SpeedNet

__all__ = ["EXAMPLE_INPUT_MODELS", "build_model"]

#: Models whose initialisation reads training images (``build_model(..., example_inputs=...)``).
EXAMPLE_INPUT_MODELS = frozenset({"speednet"})


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                example_inputs: torch.Tensor | None = None, **options: Any) -> nn.Module:
    """``name`` is ``"resnet"``, ``"mlp"``, ``"vit"`` or ``"speednet"``; ``input_shape`` is (C, H, W); ``options``
    go to the constructor. ``example_inputs`` (normalised training images) fit a SpeedNet's whitening stem; other models
    ignore them."""
    channels, height, width = input_shape
    if name == "speednet":
        model = SpeedNet(in_channels=channels, num_classes=num_classes, **options)
        if example_inputs is not None and model.whitening is not None:
            model.fit_whitening(example_inputs)
        return model
    if name == "resnet":
        return ResNet(in_channels=channels, num_classes=num_classes, **options)
    if name == "mlp":
        return MLP(in_features=channels * height * width, num_classes=num_classes, **options)
    if name == "vit":
        from regimen.models.vit import ViT

        return ViT(in_channels=channels, num_classes=num_classes, image_size=(height, width), **options)
    raise ValueError(f"model.name must be 'resnet', 'mlp', 'vit' or 'speednet', got {name!r}")
