"""Squeeze-and-Excitation: a channel gate computed from the globally pooled features, inserted after convolutions of
any model by surgery.

Paper: Hu, Shen, Albanie, Sun & Wu, "Squeeze-and-Excitation Networks", CVPR 2018, arXiv 1709.01507.

For a feature map ``u`` of C channels:

    s = σ(W₂ δ(W₁ · mean_{h,w} u))      (W₁: C → d, δ = ReLU, W₂: d → C, σ = sigmoid)
    y = s ⊙ u                            (one gate per channel and sample)

:func:`apply_squeeze_excite` inserts one after every ``nn.Conv2d`` with at least ``min_channels`` output channels
(Composer's placement and defaults: ``latent_channels = 64``, or a fraction of C when < 1; ``min_channels = 128``),
as :class:`SqueezeExciteConv2d` holding the same conv (its Parameters unchanged), and adds the new parameters to the
optimizer's first param group. The paper places the block on a residual branch before the addition; "after the
conv" is Composer's placement, which works on any model.

Function preservation: with the paper's gate (``preserve = false``, default) an inserted block halves every channel
at initialisation on average (σ ≈ ½), which does not matter when training from scratch (the paper, Composer). With
``preserve = true`` the gate is ``2 σ(z)`` and ``W₂``, ``b₂`` start at zero, so ``s = 1`` exactly and the surgery
keeps the model's function (useful on a trained model); the gate's range is then (0, 2) instead of (0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["SqueezeExcite2d", "SqueezeExciteConv2d", "SqueezeExciteMethod", "apply_squeeze_excite"]


@checked_arguments
class SqueezeExcite2d(nn.Module):
    """The SE gate of ``channels`` channels with a ``latent_channels`` bottleneck."""

    def __init__(self, channels: int, latent_channels: int, preserve: bool = False) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("latent_channels", latent_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.preserve = bool(preserve)
        self.reduce = nn.Linear(channels, latent_channels)
        self.expand = nn.Linear(latent_channels, channels)
        if self.preserve:
            nn.init.zeros_(self.expand.weight)
            nn.init.zeros_(self.expand.bias)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 1, 1)`` gates of a ``(N, C, H, W)`` input."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.reduce.in_features:
            raise ValueError(f"x must be (N, {self.reduce.in_features}, H, W), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        z = self.expand(torch.relu(self.reduce(x.mean(dim=(2, 3)))))
        s = 2.0 * torch.sigmoid(z) if self.preserve else torch.sigmoid(z)
        return s[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


@checked_arguments
class SqueezeExciteConv2d(nn.Module):
    """``se(conv(x))``: a conv followed by its SE gate."""

    def __init__(self, conv: nn.Conv2d, latent_channels: int, preserve: bool = False) -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        self.conv = conv
        self.se = SqueezeExcite2d(conv.out_channels, latent_channels, preserve).to(conv.weight.device,
                                                                                   conv.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.conv(x))


def _latent(channels: int, latent_channels: float) -> int:
    return max(1, int(round(latent_channels * channels))) if latent_channels < 1 else int(latent_channels)


@checked_arguments
def apply_squeeze_excite(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                         latent_channels: float = 64, min_channels: int = 128, preserve: bool = False,
                         ignore: Sequence[str] = ()) -> list[str]:
    """Insert an SE gate after every ``nn.Conv2d`` of ``model`` with ``out_channels >= min_channels``, in place.

    Args:
        model: any module.
        optimizer: the new gate weights are added to its first param group, the biases to its first group without
            weight decay (regimen's optimizers: the no-decay group).
        latent_channels: bottleneck width ``d`` (an int), or a fraction of C when < 1 (paper: C/16, i.e. 0.0625).
        min_channels: convs with fewer output channels are left alone.
        preserve: initialise the gate to 1 (see the module docstring).
        ignore: qualified names of convs to leave alone.

    Returns:
        The qualified names of the convs given a gate.

    Raises:
        ValueError: no conv qualifies (the model is unchanged), or a bad argument.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(latent_channels, bool) or not isinstance(latent_channels, int | float) or not latent_channels > 0:
        raise ValueError(f"latent_channels must be > 0 (an int, or a fraction of the channels when < 1), got "
                         f"{latent_channels!r}")
    if latent_channels >= 1 and latent_channels != int(latent_channels):
        raise ValueError(f"latent_channels >= 1 must be a whole number of channels, got {latent_channels!r}")
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
    skip = set(ignore)
    found = [(name, m) for name, m in model.named_modules()
             if name and name not in skip and type(m) is nn.Conv2d and m.out_channels >= min_channels]
    if not found:
        raise ValueError(f"model has no nn.Conv2d with out_channels >= min_channels={min_channels} to gate; lower "
                         "min_channels")
    new_params = []
    for name, conv in found:
        wrapped = SqueezeExciteConv2d(conv, _latent(conv.out_channels, latent_channels), preserve)
        model.set_submodule(name, wrapped)
        new_params += list(wrapped.se.parameters())
    if optimizer is not None:  # weights to the first group, biases to a group without weight decay when there is one
        groups = optimizer.param_groups
        no_decay = next((g for g in groups if g.get("weight_decay", 0.0) == 0.0), groups[0])
        for p in new_params:
            (groups[0] if p.ndim > 1 else no_decay)["params"].append(p)
    return [name for name, _ in found]


@register_method
class SqueezeExciteMethod(Method):
    """Squeeze-and-Excitation gates after the wide convs of any model (Hu 2018; Composer's placement).

    Args: see :func:`apply_squeeze_excite` (Composer: ``latent_channels = 64``, ``min_channels = 128``).
    """

    name = "squeeze_excite"
    before = ("hesso",)
    conflicts = ("nested_width",)
    constraint_reason = ("pruning rewrites the convs, so it must see the wrapped layers; nested widths narrow the "
                         "features an SE gate is built for (the gate then fails on the narrow widths)")
    inputs = ("image",)
    paper_id = "arXiv:1709.01507"
    claim = "channel-wise gates from globally pooled features improve ImageNet accuracy of ResNets at ~1 % more compute"
    claimed_effect = "better"

    def __init__(self, latent_channels: float = 64, min_channels: int = 128, preserve: bool = False) -> None:
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int | float) or latent_channels <= 0:
            raise ValueError(f"latent_channels must be > 0, got {latent_channels!r}")
        if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
        self.latent_channels, self.min_channels, self.preserve = latent_channels, min_channels, bool(preserve)

    def setup(self, ctx: Context) -> None:
        gated = apply_squeeze_excite(ctx.model, ctx.optimizer, latent_channels=self.latent_channels,
                                     min_channels=self.min_channels, preserve=self.preserve)
        self.log(ctx, "gated", len(gated))
