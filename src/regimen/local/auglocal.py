"""AugLocal: auxiliary networks built from uniformly sampled, randomly initialised copies of later layers.

Paper: Chenxiang Ma, Jibin Wu, Chenyang Si, Kay Chen Tan, "Scaling Supervised Local Learning with Augmented
Auxiliary Networks", ICLR 2024, arXiv 2402.17318.

For a hidden layer l (0-based) of a backbone with n layers, the auxiliary network is made of d new layers shaped
like layers ``idx_i = round(l + (n - l - 1) / d · i), i = 1..d`` — spread uniformly over the rest of the network
and always ending at the last layer n - 1 — followed by global pooling and a linear classifier. When
``d >= n - l - 1`` every later layer is used (``idx = l+1 .. n-1``). ``round`` is Python's (half to even), as in
the authors' code. The depth shrinks linearly with the module index i of K - 1 auxiliaries (pyramid coefficient
c, default 0.5): ``d_i = max(1, round(d · (1 - i·c/(K-2)) + i·c/(K-2)))``. Because the auxiliary of one of the last
d layers would copy the whole rest of the network, the last d + 1 blocks are trained with the real head (the
split enforces ``min_last_blocks = d + 1``).

Pitfalls handled: the copies are *new* layers (fresh ``reset_parameters``), never shared weights; when skipping
layers changes the channel count or resolution, the sampled layer is rebuilt with the current input width and a
stride-2 first convolution (as the reference code does) instead of copied; the auxiliary's layers are its own
parameters, added to the optimizer by the wrapper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regimen.local.auxiliary import ClassifierAuxiliary, _TokenMean
from regimen.method import checked_arguments
from regimen.models import BasicBlock, copy_module

__all__ = ["auglocal_auxiliary", "auglocal_layer_indices", "pyramid_depths", "reinitialized_copy"]


@checked_arguments
def auglocal_layer_indices(layer: int, num_layers: int, depth: int) -> list[int]:
    """Indices of the backbone layers the auxiliary of ``layer`` imitates: ``round(l + (n - l - 1)/d · i)``.

    Args:
        layer: l, 0-based index of the last layer of the local module, ``0 <= l < n - 1``.
        num_layers: n, backbone layers (the head excluded).
        depth: d >= 1.
    """
    for name, value in (("layer", layer), ("num_layers", num_layers), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not 0 <= layer < num_layers - 1:
        raise ValueError(f"layer must be in [0, {num_layers - 1}) for num_layers={num_layers}, got {layer}")
    remaining = num_layers - layer - 1
    if depth >= remaining:
        return list(range(layer + 1, num_layers))
    return [round(layer + remaining / depth * i) for i in range(1, depth + 1)]


@checked_arguments
def pyramid_depths(num_auxiliaries: int, depth: int, coeff: float = 0.5) -> list[int]:
    """Depth of each of ``num_auxiliaries`` auxiliary networks: d linearly shrinking to d·(1-c) + c, at least 1."""
    if num_auxiliaries < 0:
        raise ValueError(f"num_auxiliaries must be >= 0, got {num_auxiliaries}")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if not 0.0 <= coeff <= 1.0:
        raise ValueError(f"pyramid coeff must be in [0, 1], got {coeff}")
    if num_auxiliaries <= 1:
        return [depth] * num_auxiliaries
    out = []
    for i in range(num_auxiliaries):
        t = i * coeff / (num_auxiliaries - 1)
        out.append(max(1, round(depth * (1 - t) + t)))
    return out


@checked_arguments
def reinitialized_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every submodule's parameters re-drawn by its ``reset_parameters``."""
    clone = copy_module(module)
    for sub in clone.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    for p in clone.parameters():
        p.requires_grad_(True)
    return clone


def _layer_like(stage: nn.Module, in_shape: tuple[int, ...], stage_in: tuple[int, ...], stage_out: tuple[int, ...]
                ) -> nn.Module:
    """A new layer shaped like ``stage`` (input ``stage_in`` → output ``stage_out``) that accepts ``in_shape``."""
    if in_shape == stage_in:
        return reinitialized_copy(stage)
    if len(in_shape) == 3 and len(stage_out) == 3:
        stride = 2 if stage_out[1] < in_shape[1] else 1
        block = BasicBlock(in_shape[0], stage_out[0], stride)
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        return block
    if len(in_shape) == len(stage_out) and len(in_shape) in (1, 2):
        return nn.Sequential(nn.Linear(in_shape[-1], stage_out[-1]), nn.ReLU(inplace=True))
    raise ValueError(f"auglocal: cannot build a layer like {type(stage).__name__} ({stage_in} -> {stage_out}) "
                     f"for input {in_shape}")


def _out_shape(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    training = [m.training for m in layer.modules()]
    layer.eval()
    with torch.no_grad():
        out = layer(torch.zeros(2, *in_shape))
    for m, mode in zip(layer.modules(), training, strict=True):
        m.training = mode
    return tuple(out.shape[1:])


@checked_arguments
def auglocal_auxiliary(
    stages: Sequence[nn.Module],
    shapes: Sequence[tuple[int, ...]],
    layer: int,
    depth: int,
    num_classes: int,
) -> ClassifierAuxiliary:
    """AugLocal auxiliary for backbone layer ``layer``.

    Args:
        stages: all stages (head last); backbone layers are ``stages[:-1]``.
        shapes: per-sample shapes: ``shapes[0]`` the input, ``shapes[j + 1]`` the output of stage j.
        layer: index of the local module's last backbone layer.
        depth: d of this auxiliary (after the pyramid schedule).
        num_classes: classes of the linear classifier.
    """
    num_layers = len(stages) - 1
    if len(shapes) < len(stages):
        raise ValueError(f"shapes must hold the input's shape and each of the {num_layers} backbone layers' output "
                         f"shapes (at least {len(stages)} for {len(stages)} stages), got {len(shapes)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    indices = auglocal_layer_indices(layer, num_layers, depth)
    current = tuple(shapes[layer + 1])
    layers: list[nn.Module] = []
    for index in indices:
        new = _layer_like(stages[index], current, tuple(shapes[index]), tuple(shapes[index + 1]))
        layers.append(new)
        current = _out_shape(new, current)
    if len(current) == 3:
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif len(current) == 2:
        layers.append(_TokenMean())
    features = current[0] if len(current) == 3 else current[-1]
    layers.append(nn.Linear(features, num_classes))
    return ClassifierAuxiliary(nn.Sequential(*layers))
