"""DropBlock: drop contiguous block_size × block_size regions of convolutional feature maps.

Paper: Golnaz Ghiasi, Tsung-Yi Lin, Quoc V. Le, "DropBlock: A regularization method for convolutional networks",
2018, arXiv 1810.12890. Semantics follow timm's ``drop_block_2d`` (valid-block variant); the code is our own.

Formula: block centres (here: top-left corners) are sampled only where a whole block fits, with rate
γ = gamma_scale · p · (H W) / (b² (H - b + 1)(W - b + 1)), so that about a fraction p of the units is dropped;
each seed is dilated to a b × b block (a max-pool of the seed map), M = 1 - blocks, and
y = x · M · numel(M) / sum(M) (``scale_by_keep``, a normalisation over the whole batch as in the paper and timm).

Pitfalls handled:

- Blocks always lie entirely inside the feature map, for odd *and* even ``block_size`` (seeds on the
  (H - b + 1) × (W - b + 1) grid, dilated with a one-sided pad), so the zero pattern is exactly a union of b × b
  squares.
- ``block_size`` larger than the feature map is an error (timm silently clips it).
- γ is clipped to 1; masks are independent per sample and channel unless ``batchwise`` (one mask for the batch).
- The paper ramps p linearly from 0 over training; the recipe Method offers that as ``ramp = true``.

Where it goes (:func:`apply_dropblock`), on any model: the outputs of the modules named in ``modules=``, or by
convention the residual blocks (modules with a ``drop_path`` child, see :mod:`regimen.dropout.droppath`) of the
last two resolution groups (the paper's groups 3 and 4). A group starts at every block that downsamples (holds a
convolution or pooling with stride > 1). Each target is wrapped in a :class:`DropBlockOutput`; state_dict keys are
unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import renamed_arguments
from regimen.dropout._common import (
    StochasticLayer,
    TransparentWrapper,
    check_generator,
    check_module_names,
    check_probability,
    check_tensor,
    locate_submodule,
    rand,
    replace_submodule,
    residual_blocks,
)
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = [
    "DropBlock2d",
    "DropBlockMethod",
    "DropBlockOutput",
    "apply_dropblock",
    "default_dropblock_targets",
    "drop_block2d",
    "dropblock_mask",
]


def _check_block_size(block_size: object) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int >= 1, got {type(block_size).__name__}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return block_size


@checked_arguments
def dropblock_mask(
    shape: Sequence[int],
    p: float,
    block_size: int,
    like: torch.Tensor,
    *,
    gamma_scale: float = 1.0,
    batchwise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Binary keep mask (1 = keep) of ``shape (N, C, H, W)`` whose zeros are unions of whole b × b blocks."""
    if len(shape) != 4 or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        raise ValueError(f"shape must be 4 sizes (N, C, H, W) >= 0, got {shape!r}")
    p = check_probability(p)
    n, c, h, w = shape
    b = _check_block_size(block_size)
    if b > min(h, w):
        raise ValueError(f"block_size {b} is larger than the feature map {h}x{w}")
    if not gamma_scale > 0:
        raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
    seeds_h, seeds_w = h - b + 1, w - b + 1
    gamma = min(1.0, gamma_scale * p * h * w / (b * b * seeds_h * seeds_w))
    seed_shape = (1 if batchwise else n, c, seeds_h, seeds_w)
    seeds = (rand(seed_shape, like, generator) < gamma).to(like.dtype)
    # seed at (i, j) covers rows i..i+b-1 and columns j..j+b-1: pad b-1 on every side, max-pool b with stride 1
    blocks = F.max_pool2d(F.pad(seeds, (b - 1, b - 1, b - 1, b - 1)), kernel_size=b, stride=1)
    keep = 1.0 - blocks
    return keep.expand(n, c, h, w) if batchwise else keep


@checked_arguments
def drop_block2d(
    x: torch.Tensor,
    p: float = 0.1,
    block_size: int = 3,
    *,
    training: bool = True,
    gamma_scale: float = 1.0,
    scale_by_keep: bool = True,
    batchwise: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DropBlock on ``x (N, C, H, W)``: zero random b × b blocks, about a fraction ``p`` of the units.

    Args:
        x: feature maps. p: target drop fraction in [0, 1). block_size: b, 1 <= b <= min(H, W).
        training: identity when False. gamma_scale: multiplies the seed rate γ.
        scale_by_keep: multiply by numel / kept (over the whole batch) so the total activation is preserved.
        batchwise: one mask shared by all samples. generator: random source.
    """
    check_tensor(x, "x", exact_dim=4)
    p = check_probability(p)
    _check_block_size(block_size)
    check_generator(generator)
    if block_size > min(x.shape[-2:]):
        raise ValueError(f"block_size {block_size} is larger than the feature map {x.shape[-2]}x{x.shape[-1]}")
    if not training or p == 0.0:
        return x
    keep = dropblock_mask(
        x.shape, p, block_size, x, gamma_scale=gamma_scale, batchwise=batchwise, generator=generator
    )
    if scale_by_keep:
        keep = keep * (keep.numel() / keep.sum().clamp_min(1.0))
    return x * keep


@checked_arguments
class DropBlock2d(StochasticLayer):
    """Module form of :func:`drop_block2d` (identity in eval). ``p`` may be changed between steps (ramps)."""

    def __init__(
        self,
        p: float = 0.1,
        block_size: int = 3,
        gamma_scale: float = 1.0,
        scale_by_keep: bool = True,
        batchwise: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.p = check_probability(p)
        self.block_size = _check_block_size(block_size)
        if not gamma_scale > 0:
            raise ValueError(f"gamma_scale must be > 0, got {gamma_scale}")
        self.gamma_scale = float(gamma_scale)
        self.scale_by_keep = scale_by_keep
        self.batchwise = batchwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_block2d(
            x, self.p, self.block_size, training=self.training, gamma_scale=self.gamma_scale,
            scale_by_keep=self.scale_by_keep, batchwise=self.batchwise, generator=self.generator,
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, block_size={self.block_size}"


@checked_arguments
class DropBlockOutput(TransparentWrapper):
    """A module followed by a :class:`DropBlock2d` on its output: ``dropblock(module(x))``. Built by
    :func:`apply_dropblock`; the state_dict keys are the module's own."""

    wrapped_name = "module"

    def __init__(self, module: nn.Module, dropblock: DropBlock2d) -> None:
        super().__init__()
        if not isinstance(module, nn.Module) or not isinstance(dropblock, DropBlock2d):
            raise TypeError(f"DropBlockOutput takes module (an nn.Module) and dropblock (a DropBlock2d), got "
                            f"{type(module).__name__} and {type(dropblock).__name__}")
        self.module = module
        self.dropblock = dropblock

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.dropblock(self.module(*args, **kwargs))


def _downsamples(block: nn.Module) -> bool:
    """True when ``block`` holds a convolution or pooling layer with a stride > 1 (it starts a resolution group)."""
    strided = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
    for module in block.modules():
        if isinstance(module, strided):
            stride = module.stride if isinstance(module.stride, tuple | list) else (module.stride,)
            if any(s is not None and s > 1 for s in stride):
                return True
    return False


@checked_arguments
def default_dropblock_targets(model: nn.Module) -> list[str]:
    """Names of the residual blocks of the last two resolution groups (the paper: groups 3 and 4).

    Blocks are the modules with a ``drop_path`` child; a new group starts at each block that downsamples.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    blocks = residual_blocks(model)
    if not blocks:
        raise ConfigurationError(
            "dropblock needs target modules: pass modules=[...] naming the modules whose 4-D outputs are dropped, or "
            "give the residual blocks a child `drop_path = nn.Identity()` (timm's convention) so that the blocks of "
            f"the last two resolution groups are chosen; {type(model).__name__} has neither"
        )
    group_starts = [0] + [i for i, (_, block) in enumerate(blocks) if i > 0 and _downsamples(block)]
    first = group_starts[-2] if len(group_starts) >= 2 else 0
    return [name for name, _ in blocks[first:]]


@renamed_arguments(module_names="modules")
@checked_arguments
def apply_dropblock(
    model: nn.Module,
    p: float = 0.1,
    block_size: int = 3,
    *,
    modules: Sequence[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    gamma_scale: float = 1.0,
    scale_by_keep: bool = True,
    batchwise: bool = False,
) -> list[DropBlock2d]:
    """Apply DropBlock to the outputs of the named modules (default: :func:`default_dropblock_targets`).

    Each target is replaced in place by ``DropBlockOutput(target, DropBlock2d(...))``: the same module (its
    Parameters untouched) followed by the parameter-free layer, so ``state_dict`` keys are unchanged and the layers
    follow ``model.train()`` / ``model.eval()``.

    Args:
        model: the model, modified in place.
        p, block_size, gamma_scale, scale_by_keep, batchwise: see :class:`DropBlock2d`.
        modules: dotted names of the modules whose 4-D output is dropped (``module_names=`` is the deprecated
            spelling).
        optimizer: accepted for the surgery contract; DropBlock adds no parameters, so it is unchanged.
        generator: random source (the layers keep this object).

    Returns:
        The new DropBlock2d layers, in order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = default_dropblock_targets(model) if modules is None else check_module_names(modules, "modules")
    for name in names:  # check every target before changing any
        if isinstance(locate_submodule(model, name, "modules")[2], DropBlockOutput):
            raise ValueError(f"{name!r} already has DropBlock applied")
    layers = [
        DropBlock2d(p, block_size, gamma_scale=gamma_scale, scale_by_keep=scale_by_keep, batchwise=batchwise,
                    generator=generator)
        for _ in names
    ]
    for name, layer in zip(names, layers, strict=True):
        replace_submodule(model, name, lambda module, layer=layer: DropBlockOutput(module, layer), "modules")
    return layers


@register_method
class DropBlockMethod(Method):
    """DropBlock (Ghiasi et al. 2018) on the residual blocks' outputs, optionally with a linear ramp of p.

    Args:
        p: target drop fraction. block_size: b (must fit the smallest targeted feature map).
        modules: dotted names of the modules whose outputs are dropped (default: the residual blocks of the last
            two resolution groups, see :func:`default_dropblock_targets`).
        ramp: grow p linearly from p/epochs (first epoch) to p (last epoch), as the paper recommends.
        module_names: deprecated spelling of ``modules``.
    """

    name = "dropblock"
    paper_id = "arXiv:1810.12890"
    claim = (
        "dropping contiguous feature blocks regularises convnets better than dropout (+1.6 pp top-1, "
        "ResNet-50 ImageNet)"
    )
    claimed_effect = "better"
    inputs = ("image",)

    def __init__(
        self,
        p: float = 0.1,
        block_size: int = 3,
        modules: list[str] | None = None,
        ramp: bool = False,
        module_names: list[str] | None = None,
    ) -> None:
        if module_names is not None:
            if modules is not None:
                raise ValueError("dropblock: pass modules (module_names is its deprecated spelling), not both")
            warnings.warn("dropblock: module_names is deprecated; use modules", DeprecationWarning, stacklevel=2)
            modules = module_names
        self.p = check_probability(p)
        self.block_size = _check_block_size(block_size)
        self.modules = None if modules is None else check_module_names(modules, "modules")
        self.ramp = ramp
        self._layers: list[DropBlock2d] = []

    def setup(self, ctx: Context) -> None:
        self._layers = apply_dropblock(
            ctx.model, self.p, self.block_size, modules=self.modules, optimizer=ctx.optimizer, generator=ctx.generator
        )
        self.log(ctx, "layers", len(self._layers))

    def p_at(self, epoch: int, epochs: int) -> float:
        """The drop fraction in ``epoch`` (0-based) of ``epochs``: ``p``; with ``ramp``, ``p (epoch + 1) / epochs``."""
        return min(self.p * (epoch + 1) / max(1, epochs), self.p) if self.ramp else self.p

    def before_forward(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> None:
        # set per step (not in on_epoch_start) so a run resumed mid-epoch has the same p
        p = self.p_at(ctx.epoch, ctx.run.epochs)
        for layer in self._layers:
            layer.p = p
        self.log(ctx, "p", p)
