"""A small ResNet-style CNN for 28x28 / 32x32 inputs (He et al. 2016, arXiv 1512.03385), built as stages.

``stages`` = [stem, block, block, ..., head]: each residual block is its own stage so local learning can split
between any two blocks. Widths and depths are configurable; the first block of every group after the first
downsamples with stride 2 and a 1x1 projection shortcut.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regimen.models.staged import ClassifierHead, StagedModel

__all__ = ["BasicBlock", "ResNet", "resnet"]


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut: relu(drop_path(F(x)) + s(x)).

    ``drop_path`` is an ``nn.Identity`` placeholder on the residual branch, before the addition (the residual-block
    convention of timm that :func:`regimen.dropout.apply_drop_path` fills in); it holds no state, so the state_dict
    keys are those of the plain block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.drop_path: nn.Module = nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.drop_path(out) + self.shortcut(x))


class ResNet(StagedModel):
    """Stem conv, groups of BasicBlocks (one stage per block), classifier head.

    ``kernel_size`` (odd, default 3) is the square kernel of the stem and of every block's two convolutions (with
    "same" padding ``kernel_size // 2``); Once-for-All's elastic kernel starts from a larger one (e.g. 5).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        depths: Sequence[int] = (1, 1, 1),
        head_dropout: float = 0.0,
        kernel_size: int = 3,
    ) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
        if len(widths) == 0 or len(widths) != len(depths):
            raise ValueError(f"widths and depths must be non-empty and equally long, got {widths} and {depths}")
        if any(w < 1 for w in widths) or any(d < 1 for d in depths):
            raise ValueError(f"widths and depths must be >= 1, got {widths} and {depths}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        stages: list[nn.Module] = [conv_bn_relu(in_channels, widths[0], kernel_size=kernel_size)]
        channels = widths[0]
        for group, (width, depth) in enumerate(zip(widths, depths)):
            for index in range(depth):
                stride = 2 if group > 0 and index == 0 else 1
                stages.append(BasicBlock(channels, width, stride, kernel_size))
                channels = width
        stages.append(ClassifierHead(channels, num_classes, pool=True, dropout=head_dropout))
        super().__init__(stages)
        self.config = dict(
            in_channels=in_channels, num_classes=num_classes, widths=list(widths), depths=list(depths),
            head_dropout=head_dropout,
        )
        if kernel_size != 3:  # the key only when set, so configs of 3x3 ResNets stay as they were
            self.config["kernel_size"] = kernel_size
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


def resnet(in_channels: int = 1, num_classes: int = 10, **kwargs) -> ResNet:
    """The reference ResNet (widths 16/32/64, one block each) unless overridden."""
    return ResNet(in_channels=in_channels, num_classes=num_classes, **kwargs)
