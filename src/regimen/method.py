"""The Method hook protocol, the method registry and the training context.

A *Method* is a small plug-in that the trainer calls at fixed points of the loop. It holds no training logic of its
own beyond calling a method's functional core or Module, so every method also works in a user's own loop.

Hooks (all optional; the defaults do nothing):

============================  ==========================================================================
``setup(ctx)``                once, before devices are set up: surgery on ``ctx.model`` (replace layers) and
                              ``ctx.optimizer`` (rebind to new parameters). May replace either attribute, and
                              may wrap ``ctx.criterion`` (loss methods do: the default step and every
                              ``compute_loss`` method call it, so a loss composes with them).
``on_epoch_start(ctx)``       start of every epoch (choose a subset, grow the batch size, ...).
``select_batches(batches, ctx)``  after ``on_epoch_start``: returns the positions (0-based, strictly increasing)
                              of this epoch's micro-batches to train on, or ``None`` for all. ``batches`` iterates
                              the epoch's micro-batches ``(x, y, indices)`` in training order (iterating does not
                              consume the epoch). At most one method per recipe. See *Batch selection* below.
``transform_batch(x, y, ctx)``  returns ``(x, y)``: augmentation and mixing. ``x`` is float in [0, 1] before
                              normalisation; ``y`` may become soft targets ``(N, C)``.
``compute_loss(model, x, y, ctx)``  replaces the default ``forward + criterion``; returns ``(loss, logits)``
                              (``logits`` may be ``None``). At most one method per recipe.
``training_step(model, x, y, ctx)``  replaces forward *and* backward (it must call ``ctx.backward(loss)``
                              itself); returns ``(loss, logits)`` with ``loss`` detached. At most one per recipe.
``after_backward(ctx)``       after gradients exist, before the optimizer step (gradient edits, regularisers).
``after_step(ctx)``           after the optimizer step (EMA, pruning schedules, masks).
``on_epoch_end(ctx)``         end of every epoch, before evaluation.
``eval_model(model, ctx)``    returns the module to evaluate (e.g. EMA weights) or ``None`` for ``model``.
``on_train_end(ctx)``         once after the last epoch (export, physical pruning).
``state_dict()`` / ``load_state_dict(state)``  method state saved in checkpoints for bitwise resume.
============================  ==========================================================================

Ordering: hooks run in recipe order; ``after_backward``, ``after_step``, ``on_epoch_end`` and ``on_train_end``
run in reverse recipe order (the innermost wrapper unwinds first). A method declares the other methods it must
follow (``after``), precede (``before``) or cannot share a recipe with (``conflicts``), with a
``constraint_reason``; a recipe that breaks a declaration is refused before training with a message naming the fix.

Batch selection (``select_batches``):
  * The epoch trains ``len(positions) // accumulation`` optimizer steps; with gradient accumulation the selection
    must keep whole optimizer steps (its length a multiple of ``accumulation``, the ``accumulation`` micro-batches of
    one step together). ``train.max_steps_per_epoch`` still caps the steps.
  * LR schedule: progress is measured in epochs. Skipped batches do not count as steps; an epoch's progress is spread
    over the steps it actually trains, so the schedule (warm-up in epochs, cosine, milestones) ends exactly at the
    last epoch whatever fraction is kept.
  * Resume: checkpoints are written at epoch boundaries and the hook runs at the start of an epoch, so a selection
    that is a deterministic function of the model, the epoch's batches, the method's ``state_dict`` and
    ``ctx.generator`` is repeated exactly by a resumed run. Do not draw from the global RNG.
  * Several processes: every rank sees its own share of each global batch, and every rank must return the *same*
    positions (otherwise ranks run different numbers of steps and block in the gradient all-reduce): reduce the
    per-batch statistics with ``ctx.all_reduce`` before choosing. The trainer checks that the ranks agree.

This module imports nothing from the rest of regimen, so pillars can depend on it freely.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "Context",
    "Method",
    "MethodConflictError",
    "get_method",
    "list_methods",
    "register_method",
    "EXCLUSIVE_HOOKS",
    "check_method_order",
    "REVERSED_HOOKS",
    "SELECTION_HOOK",
]

#: Hooks that replace part of the step: at most one method in a recipe may implement each.
EXCLUSIVE_HOOKS = ("compute_loss", "training_step")
#: The hook that chooses an epoch's batches: at most one method in a recipe may implement it.
SELECTION_HOOK = "select_batches"
#: Hooks that run in reverse recipe order.
REVERSED_HOOKS = ("after_backward", "after_step", "on_epoch_end", "on_train_end")

# Packages whose import registers methods. A pillar registers its methods when its package is imported.
_METHOD_PACKAGES = (
    "regimen.train.builtin",
    "regimen.augment",
    "regimen.dropout",
    "regimen.batch",
    "regimen.losses",
    "regimen.local",
    "regimen.subnet",
)


class MethodConflictError(ValueError):
    """Two methods in one recipe both replace an exclusive hook (or both select batches), declare each other as
    conflicts, or stand in an order they forbid."""


@dataclass
class Context:
    """What the trainer tells methods about the run. Methods read it and may set the fields marked *writable*.

    Attributes:
        model: the model being trained (*writable* in ``setup``; after setup it is the device-wrapped module).
        optimizer: the optimizer (*writable* in ``setup``).
        criterion: default loss ``criterion(logits, y) -> loss``; handles index and soft targets.
        label_smoothing: the recipe's label smoothing (already applied by ``criterion``).
        num_classes: number of classes of the task.
        per_device_batch: samples per device per micro-batch (*writable* via ``set_batch_size``).
        world_size: number of processes.
        rank: this process's rank.
        accumulation: micro-batches per optimizer step.
        epoch: current epoch (0-based).
        step: optimizer steps done so far.
        epochs: total epochs of the run (*writable* in ``setup``: the schedule and the loop read it afterwards).
        steps_per_epoch: optimizer steps per epoch at the current batch size.
        device: the device tensors live on.
        generator: a seeded ``torch.Generator`` (on CPU) for methods' randomness; saved in checkpoints.
        train_data: the training dataset (``regimen.data.ArrayDataset``-like: ``images``, ``labels``).
        log: dict of scalars a method wants logged this epoch (*writable*).
        backward: ``backward(loss)`` that respects precision and distribution (use it in ``training_step``).
        all_reduce: ``all_reduce(tensor, op="sum"|"mean") -> tensor`` across processes (identity for one process).
        set_batch_size: ``set_batch_size(per_device)`` changes the loader's batch size from the next epoch.
        batch_indices: dataset indices of the current micro-batch (``LongTensor``), set before ``transform_batch``.
        normalize: ``normalize(x)`` maps [0, 1] images to the model's input normalisation.
        data_mean, data_std: the per-channel normalisation constants (tensors of shape ``(C,)``).
        autocast: ``with ctx.autocast(): ...`` applies the run's precision (mixed-precision autocast) to forward
            passes a method runs outside the device-wrapped model's own ``forward`` (e.g. in ``training_step``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    num_classes: int
    per_device_batch: int
    label_smoothing: float = 0.0
    world_size: int = 1
    rank: int = 0
    accumulation: int = 1
    epoch: int = 0
    step: int = 0
    epochs: int = 1
    steps_per_epoch: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    generator: torch.Generator = field(default_factory=torch.Generator)
    train_data: Any = None
    log: dict[str, float] = field(default_factory=dict)
    backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()
    all_reduce: Callable[..., torch.Tensor] = lambda tensor, op="sum": tensor
    set_batch_size: Callable[[int], None] | None = None
    batch_indices: torch.Tensor | None = None
    normalize: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    data_mean: torch.Tensor | None = None
    data_std: torch.Tensor | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    @property
    def global_batch(self) -> int:
        """Effective batch of one optimizer step: per-device batch × world size × accumulation."""
        return self.per_device_batch * self.world_size * self.accumulation


class Method:
    """Base class of trainer plug-ins. Subclasses set ``name`` and override only the hooks they need.

    Constructor parameters are the method's recipe parameters: give them type hints and defaults, since recipes are
    validated against the ``__init__`` signature (unknown keys and wrong types are errors).
    """

    name: str = ""
    #: Recipe names of methods that, when the recipe also has them, must be listed *before* this one (e.g. their
    #: surgery must happen first), and ones that must be listed *after* it.
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    #: Recipe names of methods this one cannot share a recipe with.
    conflicts: tuple[str, ...] = ()
    #: Why ``after``/``before``/``conflicts`` hold (one sentence, shown in the error).
    constraint_reason: str = ""

    def setup(self, ctx: Context) -> None:
        pass

    def on_epoch_start(self, ctx: Context) -> None:
        pass

    def select_batches(self, batches: Iterable[Any], ctx: Context) -> Sequence[int] | None:
        return None

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def compute_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Context):
        raise NotImplementedError

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Context):
        raise NotImplementedError

    def after_backward(self, ctx: Context) -> None:
        pass

    def after_step(self, ctx: Context) -> None:
        pass

    def on_epoch_end(self, ctx: Context) -> None:
        pass

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        return None

    def on_train_end(self, ctx: Context) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def overrides(self, hook: str) -> bool:
        """True when this method implements ``hook`` itself rather than inheriting the no-op."""
        return getattr(type(self), hook) is not getattr(Method, hook)

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring: shown by ``regimen methods``."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, type[Method]] = {}
_discovered = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a Method subclass under its ``name`` (the recipe name)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method expects a Method subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} must set a non-empty class attribute 'name'")
    existing = _REGISTRY.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"method name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in _METHOD_PACKAGES:
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as error:
            if error.name != package:  # a real missing dependency inside the package: surface it
                raise


def list_methods() -> dict[str, type[Method]]:
    """All registered methods by recipe name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name``; a clear error listing the known names otherwise."""
    methods = list_methods()
    if name not in methods:
        known = ", ".join(methods) or "(none)"
        raise KeyError(f"unknown method {name!r}; known methods: {known}")
    return methods[name]


def check_method_order(methods: list[Method]) -> None:
    """Raise MethodConflictError when a recipe lists methods that declare each other as conflicts, or in an order
    their ``after``/``before`` declarations forbid; the message says what to change."""
    position = {m.name: i for i, m in enumerate(methods)}
    for i, method in enumerate(methods):
        why = f" ({method.constraint_reason})" if method.constraint_reason else ""
        for other in method.conflicts:
            if other in position:
                raise MethodConflictError(f"methods {method.name!r} and {other!r} cannot share a recipe{why}")
        for other in method.after:
            if position.get(other, -1) > i:
                raise MethodConflictError(f"method {other!r} must be listed before {method.name!r}{why}")
        for other in method.before:
            if 0 <= position.get(other, len(methods)) < i:
                raise MethodConflictError(f"method {method.name!r} must be listed before {other!r}{why}")


def check_exclusive_hooks(methods: list[Method]) -> None:
    """Raise MethodConflictError when two methods both implement one of EXCLUSIVE_HOOKS (or one each), or when two
    methods both implement ``select_batches``."""
    owners = [(m.name, hook) for m in methods for hook in EXCLUSIVE_HOOKS if m.overrides(hook)]
    if len(owners) > 1:
        described = " and ".join(f"{name!r} ({hook})" for name, hook in owners)
        raise MethodConflictError(
            f"methods {described} both replace the training step; a recipe may use at most one of "
            "compute_loss/training_step"
        )
    selectors = [m.name for m in methods if m.overrides(SELECTION_HOOK)]
    if len(selectors) > 1:
        raise MethodConflictError(
            f"methods {' and '.join(repr(name) for name in selectors)} both choose the epoch's batches "
            f"({SELECTION_HOOK}); a recipe may use at most one of them"
        )
