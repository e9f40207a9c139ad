"""A small Vision Transformer (Dosovitskiy et al. 2021, arXiv 2010.11929) on regimen's shared transformer blocks,
built as explicit stages: [patch embedding, block, ..., head].

The patch embedding is a ``patch × patch`` convolution with stride ``patch`` (one token per patch) plus learned
positions; the blocks are :class:`regimen.models.transformer.TransformerBlock` with bidirectional attention; the head
normalises, averages the tokens and classifies (``features(x)`` gives the pooled features, ``fc`` the Linear, as in
:class:`regimen.models.ClassifierHead`, so multi-sample dropout can reuse them). For Fashion-MNIST (28×28) patch 4
gives 49 tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.models.staged import StagedModel
from regimen.models.transformer import TransformerBlock, make_norm

__all__ = ["PatchEmbedding", "ViT", "ViTHead"]


class PatchEmbedding(nn.Module):
    """``(B, C, H, W)`` -> ``(B, (H/p)(W/p), dim)`` tokens with learned positions."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], patch: int, dim: int) -> None:
        super().__init__()
        height, width = image_size
        if height % patch or width % patch:
            raise ValueError(f"patch: the image size {height}x{width} must be divisible by patch={patch}")
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (height // patch) * (width // patch), dim))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class ViTHead(nn.Module):
    """Norm, mean over tokens, optional dropout, Linear ``fc``."""

    def __init__(self, dim: int, num_classes: int, norm: str = "layernorm", dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class ViT(StagedModel):
    """Patch embedding, ``depth`` bidirectional transformer blocks (one stage each), mean-pooled classifier head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28),
                 patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4, mlp_ratio: float = 2.0,
                 norm: str = "layernorm", activation: str = "gelu", qk_norm: bool = False,
                 head_dropout: float = 0.0) -> None:
        for key, value in (("in_channels", in_channels), ("num_classes", num_classes), ("patch", patch),
                           ("dim", dim), ("depth", depth), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if dim % heads:
            raise ValueError(f"heads: the width dim={dim} must be divisible by heads={heads}")
        image_size = tuple(image_size)
        stages: list[nn.Module] = [PatchEmbedding(in_channels, image_size, patch, dim)]
        stages += [TransformerBlock(dim, heads, mlp_ratio, norm, activation, qk_norm, causal=False)
                   for _ in range(depth)]
        stages.append(ViTHead(dim, num_classes, norm, head_dropout))
        super().__init__(stages)
        self.config = dict(in_channels=in_channels, num_classes=num_classes, image_size=list(image_size),
                           patch=patch, dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio, norm=norm,
                           activation=activation, qk_norm=qk_norm, head_dropout=head_dropout)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
