"""Build a reference model from a recipe's ``[model]`` table."""

from __future__ import annotations

from typing import Any

from torch import nn

from regimen.models.mlp import MLP
from regimen.models.resnet import ResNet

__all__ = ["build_model"]


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int, **options: Any) -> nn.Module:
    """``name`` is ``"resnet"``, ``"mlp"`` or ``"vit"``; ``input_shape`` is (C, H, W); ``options`` go to the
    constructor."""
    channels, height, width = input_shape
    if name == "resnet":
        return ResNet(in_channels=channels, num_classes=num_classes, **options)
    if name == "mlp":
        return MLP(in_features=channels * height * width, num_classes=num_classes, **options)
    if name == "vit":
        from regimen.models.vit import ViT

        return ViT(in_channels=channels, num_classes=num_classes, image_size=(height, width), **options)
    raise ValueError(f"model.name must be 'resnet', 'mlp' or 'vit', got {name!r}")
