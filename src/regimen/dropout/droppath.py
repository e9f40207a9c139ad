"""DropPath (stochastic depth): drop a residual branch for a whole sample, keeping the shortcut.

Paper: Gao Huang, Yu Sun, Zhuang Liu, Daniel Sedra, Kilian Weinberger, "Deep Networks with Stochastic Depth",
2016, arXiv 1603.09382. Semantics follow timm's ``drop_path`` (``scale_by_keep``); the code is our own.

Formula: for a residual block y = f(F(x) + s(x)), training uses y = f(F(x) · m / (1 - p) + s(x)) with one
m ~ Bernoulli(1 - p) per sample (``scale_by_keep``; the paper instead multiplies F by 1 - p at test time, which is
the same in expectation). Rates grow linearly with depth: block l of L gets p_l = (l / L) · max_rate (the paper's
linear decay rule, so the last block has ``max_rate``). ``mode = "block"`` draws one m per batch instead (the paper's
and Composer's ``'block'`` mode: the whole block is skipped for the step); the method can also warm the rates up
linearly from 0 over the first ``warmup`` fraction of training (Composer's ``drop_warmup``).

Where it goes (:func:`apply_drop_path`), on any model:

- *Convention* (timm's): a residual block has a child ``drop_path`` (or ``drop_path1``, ``drop_path2``, ... for
  blocks with several residual branches) that its forward applies to the branch before the addition, an
  ``nn.Identity()`` placeholder until drop-path is applied; the placeholder is replaced by a :class:`DropPath` of
  the block's rate. regimen's ``BasicBlock`` follows it.
- *Named branches* (``branches=["layer1.0.body", ...]``): each branch module is wrapped in a :class:`DropPathBranch`
  whose output goes through the DropPath, for models whose blocks have no slot.

Pitfalls handled:

- Only the residual branch is dropped, never the shortcut; state_dict keys are unchanged (DropPath holds no state,
  a wrapped branch keeps its keys), so checkpoints load into the plain model.
- One mask value per sample, broadcast over all other dimensions; identity in eval and at p = 0.
- p = 1 is rejected (it would remove the branch entirely and divide by zero).
- A slot that already holds a drop path (ours, or another library's with its own rate) is not silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.dropout._common import (
    StochasticLayer,
    TransparentWrapper,
    check_module_names,
    check_probability,
    check_tensor,
    drop_path_slots,
    locate_submodule,
    rand,
    replace_submodule,
    residual_blocks,
    unwrap,
)
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.models import BasicBlock  # noqa: F401 - target of the deprecated DropPathBasicBlock alias

__all__ = ["DropPath", "DropPathBranch", "DropPathMethod", "apply_drop_path", "drop_path", "drop_path_rates"]

#: What a model needs for drop-path, named in every error that finds it missing.
_NEEDS = (
    "drop_path needs residual blocks: give each block a child `drop_path = nn.Identity()` that its forward applies "
    "to the residual branch before the addition (timm's convention), or pass branches=[...] naming the residual "
    "branch modules"
)


@checked_arguments
def drop_path(
    x: torch.Tensor,
    p: float = 0.1,
    *,
    training: bool = True,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
    mode: str = "sample",
) -> torch.Tensor:
    """Zero whole samples of ``x (N, ...)`` with probability ``p`` each (``mode="block"``: the whole batch at once);
    scale the kept ones by 1/(1-p).

    Args:
        x: the residual branch's output. p: drop probability in [0, 1). training: identity when False.
        scale_by_keep: divide kept samples by 1 - p. generator: random source.
        mode: ``"sample"`` (one draw per sample) or ``"block"`` (one draw per batch).
    """
    check_tensor(x, "x", min_dim=1)
    p = check_probability(p)
    if mode not in ("sample", "block"):
        raise ValueError(f"mode must be 'sample' or 'block', got {mode!r}")
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    rows = x.shape[0] if mode == "sample" else 1
    mask = (rand((rows,) + (1,) * (x.dim() - 1), x, generator) < keep).to(x.dtype)
    if scale_by_keep:
        mask = mask / keep
    return x * mask


@checked_arguments
class DropPath(StochasticLayer):
    """Module form of :func:`drop_path` (identity in eval). ``p`` may be changed between steps."""

    def __init__(self, p: float = 0.1, scale_by_keep: bool = True, generator: torch.Generator | None = None,
                 mode: str = "sample") -> None:
        super().__init__(generator)
        self.p = check_probability(p)
        if mode not in ("sample", "block"):
            raise ValueError(f"mode must be 'sample' or 'block', got {mode!r}")
        self.scale_by_keep = scale_by_keep
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, training=self.training, scale_by_keep=self.scale_by_keep, generator=self.generator,
                         mode=self.mode)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


@checked_arguments
class DropPathBranch(TransparentWrapper):
    """A residual branch followed by a :class:`DropPath`: ``drop(branch(x))``. Built by :func:`apply_drop_path`
    for ``branches=``; the state_dict keys are the branch's own."""

    wrapped_name = "branch"

    def __init__(self, branch: nn.Module, drop: DropPath) -> None:
        super().__init__()
        if not isinstance(branch, nn.Module) or not isinstance(drop, DropPath):
            raise TypeError(f"DropPathBranch takes branch (an nn.Module) and drop (a DropPath), got "
                            f"{type(branch).__name__} and {type(drop).__name__}")
        self.branch = branch
        self.drop = drop

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.drop(self.branch(*args, **kwargs))


@checked_arguments
def drop_path_rates(num_blocks: int, max_rate: float) -> list[float]:
    """Linear rule of the paper: block l (1-based) of L gets (l / L) · max_rate."""
    max_rate = check_probability(max_rate, "max_rate")
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    return [max_rate * (index + 1) / num_blocks for index in range(num_blocks)]


def _blocks(model: nn.Module, names: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    """The blocks to fill: the named ones (each must have a slot) or every block that follows the convention."""
    if names is None:
        found = residual_blocks(model)
        if not found:
            raise ConfigurationError(f"{_NEEDS}; {type(model).__name__} has no child named drop_path in any module")
        return found
    found = []
    for name in check_module_names(names, "blocks"):
        block = unwrap(locate_submodule(model, name, "blocks")[2])  # the block, not DropBlock's wrapper around it
        if not drop_path_slots(block):
            raise ConfigurationError(f"blocks: {name!r} ({type(block).__name__}) has no drop_path child. {_NEEDS}")
        found.append((name, block))
    return found


def _fill_slots(blocks: list[tuple[str, nn.Module]], rates: list[float],
                make: Callable[[float], DropPath]) -> list[DropPath]:
    for name, block in blocks:  # check every slot before changing any
        for slot in drop_path_slots(block):
            current = block._modules[slot]
            if isinstance(current, DropPath):
                raise ValueError(f"drop-path is already applied to this model ({name}.{slot})")
            if not isinstance(current, nn.Identity):
                raise ConfigurationError(
                    f"{name}.{slot} is a {type(current).__name__}, not an nn.Identity placeholder: the block has its "
                    "own drop path (build it with drop_path_rate=0 to let regimen set the rates)"
                )
    layers = []
    for (_, block), rate in zip(blocks, rates, strict=True):
        for slot in drop_path_slots(block):
            layer = make(rate)
            setattr(block, slot, layer)
            layers.append(layer)
    return layers


def _wrap_branches(model: nn.Module, names: Sequence[str], max_rate: float,
                   make: Callable[[float], DropPath]) -> list[DropPath]:
    names = check_module_names(names, "branches")
    for name in names:
        if isinstance(locate_submodule(model, name, "branches")[2], DropPathBranch):
            raise ValueError(f"drop-path is already applied to this model (branch {name!r})")
    layers = [make(rate) for rate in drop_path_rates(len(names), max_rate)]
    for name, layer in zip(names, layers, strict=True):
        replace_submodule(model, name, lambda branch, layer=layer: DropPathBranch(branch, layer), "branches")
    return layers


@checked_arguments
def apply_drop_path(
    model: nn.Module,
    max_rate: float = 0.1,
    *,
    blocks: Sequence[str] | None = None,
    branches: Sequence[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    scale_by_keep: bool = True,
    mode: str = "sample",
) -> list[DropPath]:
    """Add stochastic depth to the residual blocks of ``model`` (in place) with linearly increasing rates.

    Args:
        model: any model whose residual blocks follow the convention (a ``drop_path`` child, see the module
            docstring), or whose residual branches are named in ``branches``.
        max_rate: drop rate of the last block, in [0, 1); block l of L gets (l / L) · max_rate.
        blocks: dotted names of the blocks to use, in depth order (default: every block with a ``drop_path``
            child, in registration order).
        branches: dotted names of residual branch modules, in depth order, for models without the slot: each is
            wrapped so its output goes through a DropPath before the block adds the shortcut.
        optimizer: accepted for the surgery contract; no parameters are added, so it is unchanged.
        generator: random source (the layers keep this object). scale_by_keep, mode: see :func:`drop_path`.

    Returns:
        The DropPath layers in depth order (one per slot, or one per branch); their ``p`` are the rates.

    Raises:
        ConfigurationError: the model has no block that follows the convention and no ``branches`` were given.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    max_rate = check_probability(max_rate, "max_rate")

    def make(rate: float) -> DropPath:
        return DropPath(rate, scale_by_keep=scale_by_keep, generator=generator, mode=mode)

    if branches is not None:
        if blocks is not None:
            raise ValueError("pass blocks= (blocks with a drop_path child) or branches= (branch modules), not both")
        return _wrap_branches(model, branches, max_rate, make)
    found = _blocks(model, blocks)
    return _fill_slots(found, drop_path_rates(len(found), max_rate), make)


@register_method
class DropPathMethod(Method):
    """Stochastic depth (Huang et al. 2016) on the residual blocks, rates growing linearly to ``max_rate``.

    Args:
        max_rate: drop rate of the last residual block (block l of L gets l/L · max_rate).
        blocks: dotted names of the blocks (default: every block with a ``drop_path`` child).
        branches: dotted names of residual branch modules, for models whose blocks have no ``drop_path`` child.
        mode: ``"sample"`` (per sample, timm) or ``"block"`` (one draw per batch: the paper's and Composer's).
        warmup: fraction of training over which the rates grow linearly from 0 (Composer's ``drop_warmup``).
    """

    name = "drop_path"
    paper_id = "arXiv:1603.09382"
    claim = (
        "dropping residual blocks at random (linear decay of survival) lowers test error (110-layer ResNet "
        "CIFAR-10: 6.41 % to 5.25 %)"
    )
    claimed_effect = "better"

    def __init__(
        self, max_rate: float = 0.1, blocks: list[str] | None = None, branches: list[str] | None = None,
        mode: str = "sample", warmup: float = 0.0,
    ) -> None:
        self.max_rate = check_probability(max_rate, "max_rate")
        if mode not in ("sample", "block"):
            raise ValueError(f"mode must be 'sample' or 'block', got {mode!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int | float) or not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup must be a fraction of training in [0, 1), got {warmup!r}")
        self.mode, self.warmup = mode, float(warmup)
        self._rates: list[float] = []
        if blocks is not None and branches is not None:
            raise ValueError("pass blocks= or branches=, not both")
        self.blocks = None if blocks is None else check_module_names(blocks, "blocks")
        self.branches = None if branches is None else check_module_names(branches, "branches")
        self._layers: list[DropPath] = []

    def setup(self, ctx: Context) -> None:
        self._layers = apply_drop_path(
            ctx.model, self.max_rate, blocks=self.blocks, branches=self.branches, optimizer=ctx.optimizer,
            generator=ctx.generator, mode=self.mode,
        )
        self._rates = [layer.p for layer in self._layers]
        self.log(ctx, "layers", len(self._layers))

    def before_forward(self, x, y, ctx: Context) -> None:
        if self.warmup > 0.0:  # rates from 0 to their value over the first ``warmup`` of training
            progress = ctx.step / max(ctx.run.epochs * ctx.run.steps_per_epoch, 1)
            factor = min(1.0, progress / self.warmup)
            for layer, rate in zip(self._layers, self._rates, strict=True):
                layer.p = rate * factor


# ``DropPathBasicBlock`` was the patched class of the old surgery; BasicBlock now carries the drop_path slot itself.
__getattr__ = deprecated_aliases(__name__, {"DropPathBasicBlock": "BasicBlock"}, globals())
