"""Momentum Auxiliary Network (MAN): an EMA copy of the next block feeds the local auxiliary head.

Paper: Junhao Su, Changpeng Cai, Feiyu Zhu, Chenghao He, Xiaojie Xu, Dongzhi Guan, Chenyang Si, "Momentum
Auxiliary Network for Supervised Local Learning", ECCV 2024, arXiv 2407.05623 (MAN++: arXiv 2507.16279).

The auxiliary of module i sees ``z = EMA(h) + LB``: EMA is a copy of the first block of module i + 1 whose
*parameters* follow the live block by an exponential moving average after every optimizer step,

    θ_ema ← m · θ_ema + (1 - m) · θ_next,   m = 0.995,

and receives no gradient (``requires_grad=False``; gradients still flow *through* it into module i's block).
``LB`` is the paper's learnable bias that compensates the feature mismatch between the EMA copy and module i's
output: a per-channel bias (``learnable="bias"``, default) or, as ``learnable="copy"``, a trainable copy of the
same block added to the EMA output (``z = EMA(h) + LB(h)``). z then goes through a DGL-style classifier head.

Pitfalls handled: EMA on parameters only (buffers such as BN running statistics are the copy's own); the EMA copy
is excluded from the optimizer and gets no ``.grad``; the update runs under ``no_grad`` in place with
``torch._foreach`` ops and is part of the model's ``state_dict`` (bitwise resume).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from regimen.local.auxiliary import AuxiliaryNetwork, _apply, _check_features, dgl_head
from regimen.method import checked_arguments
from regimen.models import copy_module

__all__ = ["MomentumAuxiliary", "ema_update_"]


@checked_arguments
@torch.no_grad()
def ema_update_(ema: Sequence[torch.Tensor], source: Sequence[torch.Tensor], momentum: float) -> None:
    """In place: ``ema ← momentum · ema + (1 - momentum) · source`` for matching tensor lists."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    ema, source = list(ema), list(source)
    if len(ema) != len(source):
        raise ValueError(f"ema and source must hold the same number of tensors, got {len(ema)} and {len(source)}")
    for a, b in zip(ema, source, strict=True):
        if a.shape != b.shape:
            raise ValueError(f"ema and source tensors differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not ema:
        return
    torch._foreach_mul_(ema, momentum)
    torch._foreach_add_(ema, [b.detach().to(a.dtype) for a, b in zip(ema, source, strict=True)], alpha=1.0 - momentum)


@checked_arguments
class MomentumAuxiliary(AuxiliaryNetwork):
    """MAN auxiliary: ``head(EMA(h) + LB)`` with EMA a momentum copy of ``next_block``.

    Args:
        next_block: the first block of the next module (the live one; it is copied, not modified).
        out_shape: per-sample shape of ``next_block``'s output (for the bias and the head).
        num_classes: classes of the head.
        momentum: EMA momentum m (0.995 in the paper).
        learnable: ``"bias"`` (per-channel learnable bias, zeros) or ``"copy"`` (a trainable copy of the block).
        head_depth: 1×1 conv layers of the DGL-style head.
    """

    def __init__(
        self,
        next_block: nn.Module,
        out_shape: Sequence[int],
        num_classes: int,
        momentum: float = 0.995,
        learnable: Literal["bias", "copy"] = "bias",
        head_depth: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if learnable not in ("bias", "copy"):
            raise ValueError(f"learnable must be 'bias' or 'copy', got {learnable!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if head_depth < 0:
            raise ValueError(f"head_depth must be >= 0, got {head_depth}")
        self.source = [next_block]  # a plain list: the live block is not registered twice
        self.ema = copy_module(next_block)
        self.ema.requires_grad_(False)
        self.momentum = float(momentum)
        self.learnable = learnable
        out_shape = tuple(int(s) for s in out_shape)
        if learnable == "bias":
            bias_shape = (out_shape[0], *([1] * (len(out_shape) - 1))) if len(out_shape) == 3 else (out_shape[-1],)
            self.bias = nn.Parameter(torch.zeros(bias_shape))
            self.learnable_copy = None
        else:
            self.bias = None
            self.learnable_copy = copy_module(next_block)
            self.learnable_copy.requires_grad_(True)
        self.head = dgl_head(out_shape, num_classes, depth=head_depth)

    def transfer(self, features: torch.Tensor) -> torch.Tensor:
        """z = EMA(h) + LB (or + LB(h) for ``learnable="copy"``)."""
        _check_features(features)
        z = _apply(self.ema, features)
        if self.learnable_copy is not None:
            return z + self.learnable_copy(features)
        return z + self.bias

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.transfer(features))

    def loss(self, features, target, *, criterion, image=None, module_input=None):  # noqa: D102
        return criterion(self.forward(features), target)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the live next block (call after every optimizer step)."""
        ema_update_(list(self.ema.parameters()), list(self.source[0].parameters()), self.momentum)
