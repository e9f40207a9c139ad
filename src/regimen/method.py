"""The Method contract: hooks, the registry, and the training context.

A *Method* is a small plug-in that the trainer calls at fixed points of the loop. It holds no training logic of its
own beyond calling a method's functional core or Module, so every method also works in a user's own loop.

Hooks (all optional; the defaults do nothing):

=====================================================  ==========================================================
``setup(ctx)``                                         once, before device wrapping: surgery on ``ctx.model`` and
                                                       ``ctx.optimizer`` (may replace either).
``on_epoch_start(ctx)``                                start of every epoch.
``select_samples(ctx)``                                 the dataset indices this epoch trains on (the loader
                                                       shuffles and batches only them), or ``None`` for all. One
                                                       method per recipe.
``select_batches(batches, ctx)``                       the positions of this epoch's micro-batches to train on, or
                                                       ``None`` for all. One method per recipe.
``transform_batch(x, y, ctx) -> (x, y)``               augmentation and mixing, per micro-batch, recipe order.
``before_forward(x, y, ctx)``                          per micro-batch, after every ``transform_batch``: per-step
                                                       choices (a sampled rank, width or path).
``forward_loss(model, x, y, next, ctx)``               middleware around forward + loss; ``next(model, x, y)``
                                                       returns ``(loss, output)``; the base runs ``model(x)`` and
                                                       ``ctx.criterion``.
``criterion(output, target, next, ctx, reduction)``    middleware around the loss function; ``next(output, target,
                                                       reduction=...)``; the base is the task's loss.
``optimizer_step(closure, next, ctx)``                 middleware around the optimizer step; ``next(closure)`` runs
                                                       the inner chain (base: clip, ``optimizer.step()``);
                                                       ``closure()`` recomputes this step's forward and backward.
``training_step(model, x, y, ctx)``                    replaces forward *and* backward (call ``ctx.backward``);
                                                       exclusive (local learning).
``after_backward(ctx)`` / ``after_step(ctx)``          gradient edits / after the optimizer step (EMA, masks).
``on_epoch_end(ctx)``                                  end of every epoch, before evaluation.
``eval_model(model, ctx)``                             the module to evaluate (EMA weights) or ``None``; chained in
                                                       recipe order, each sees the one chosen before (TTA wraps EMA).
``on_train_end(ctx)``                                  once after the last epoch (export, physical pruning).
``state_dict()`` / ``load_state_dict(state)``          method state saved in checkpoints, for bitwise resume.
=====================================================  ==========================================================

Order: hooks run in recipe order; ``after_backward``, ``after_step``, ``on_epoch_end`` and ``on_train_end`` run in
reverse. In the three middleware chains the method listed first is the outermost wrapper: it runs first and calls
``next`` into the ones listed after it. A method that *replaces* a link instead of wrapping it (it never calls
``next``) must be listed after the methods that wrap that link, and declares so with ``after``.

Declarations (class attributes): ``after`` / ``before`` / ``conflicts`` with a ``constraint_reason``; ``inputs`` and
``targets``, the input and target kinds a method serves (empty: any), checked against the recipe's task before
training; ``exclusive``, hooks a method must own alone.

Batch selection (``select_batches``): keep whole optimizer steps (a multiple of ``accumulation``); skipped batches do
not count as steps and the LR schedule is spread over the steps the epoch trains; with several processes every rank
must return the same positions (reduce per-batch statistics with ``ctx.all_reduce`` first). The positions are saved
in mid-epoch checkpoints. Draw randomness only from ``ctx.generator``.

Sample selection (``select_samples``, called after ``on_epoch_start``): return training-set indices (distinct, in
``[0, len(ctx.train_data))``, at least one optimizer step's worth); the loader then draws its seeded permutation over
them only, so the epoch has fewer full batches and the LR schedule is spread over them. Every rank must return the
same indices (draw from a generator seeded by the run seed and epoch, not the per-rank ``ctx.generator``). The
indices are saved in mid-epoch checkpoints.

Resuming from a mid-epoch checkpoint does not call ``on_epoch_start`` again: what a method computes there must be
in its ``state_dict`` (or be recomputed lazily from it).

This module imports nothing from the rest of regimen but ``regimen.errors``, so pillars can depend on it freely.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import difflib
import functools
import importlib
import inspect
import math
import numbers
import typing
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regimen.errors import ArgumentError, ConfigurationError

__all__ = [
    "CHAIN_HOOKS",
    "Context",
    "Method",
    "MethodConflictError",
    "MetricLog",
    "REVERSED_HOOKS",
    "RunInfo",
    "SELECTION_HOOK",
    "checked_arguments",
    "require_data",
    "require_same_device",
    "check_exclusive_hooks",
    "check_method_order",
    "compose_criterion",
    "compose_forward_loss",
    "compose_optimizer_step",
    "get_method",
    "list_methods",
    "register_method",
]

#: The middleware hooks: each method's implementation wraps the next one's.
CHAIN_HOOKS = ("forward_loss", "criterion", "optimizer_step")
#: The hook that chooses an epoch's batches: at most one method in a recipe may implement it.
SELECTION_HOOK = "select_batches"
#: Hooks that run in reverse recipe order.
REVERSED_HOOKS = ("after_backward", "after_step", "on_epoch_end", "on_train_end")
#: Hooks that replace part of the step outright: at most one method may implement them.
_ALWAYS_EXCLUSIVE = ("training_step", "compute_loss", SELECTION_HOOK, "select_samples")

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


class MethodConflictError(ConfigurationError):
    """Two methods in one recipe both claim an exclusive hook, declare each other as conflicts, or stand in an
    order they forbid."""


@dataclass(frozen=True)
class RunInfo:
    """Read-only facts about the run. The trainer replaces the whole object when the batch size or the number of
    epochs changes; methods ask for such changes through ``ctx.set_batch_size`` / ``ctx.set_epochs``.

    Attributes:
        task: the recipe's task name; ``input_kind`` / ``target_kind`` what its batches hold.
        world_size, rank: processes (all nodes) and this one's rank.
        per_device_batch: samples per process per micro-batch; ``accumulation`` micro-batches per optimizer step.
        epochs: epochs of the run; ``steps_per_epoch`` optimizer steps this epoch.
        num_classes: classes of a classification task, else ``None``.
        label_smoothing: what the task's base criterion applies (classification).
        data_mean, data_std: per-channel normalisation of image inputs ``(C,)``, else ``None``.
    """

    task: str = "image_classification"
    input_kind: str = "image"
    target_kind: str = "labels"
    world_size: int = 1
    rank: int = 0
    per_device_batch: int = 1
    accumulation: int = 1
    epochs: int = 1
    steps_per_epoch: int = 1
    device: torch.device = torch.device("cpu")
    seed: int = 0
    num_classes: int | None = None
    label_smoothing: float = 0.0
    data_mean: torch.Tensor | None = None
    data_std: torch.Tensor | None = None

    @property
    def global_batch(self) -> int:
        """Samples of one optimizer step: per-device batch × world size × accumulation."""
        return self.per_device_batch * self.world_size * self.accumulation


_RUN_FIELDS = {f.name for f in dataclasses.fields(RunInfo)}


class MetricLog:
    """``ctx.log(key, value)``: scalars for the metrics, kept until the trainer writes them (so what is logged in
    ``setup`` reaches the first epoch's row, and what is logged in ``on_train_end`` the summary)."""

    def __init__(self) -> None:
        self.pending: dict[str, float] = {}

    def __call__(self, key: str, value: float | torch.Tensor) -> None:
        if not isinstance(key, str) or not key:
            raise TypeError(f"log key must be a non-empty str, got {key!r}")
        self.pending[key] = float(value.detach()) if isinstance(value, torch.Tensor) else float(value)

    def __setitem__(self, key: str, value: float) -> None:  # the v1 form ``ctx.log[key] = value``
        warnings.warn("ctx.log[key] = value is deprecated; call ctx.log(key, value)", DeprecationWarning,
                      stacklevel=2)
        self(key, value)

    def __getitem__(self, key: str) -> float:  # what is pending (tests, a user's own loop)
        return self.pending[key]

    def __contains__(self, key: object) -> bool:
        return key in self.pending

    def drain(self) -> dict[str, float]:
        """The pending values, emptied."""
        values, self.pending = self.pending, {}
        return values


def _no_batch_size_change(per_device: int) -> None:
    raise RuntimeError("this context cannot change the batch size (no trainer attached)")


class Context:
    """What a method sees of the run: ``run`` (read-only facts), services, and the mutable training state.

    The trainer builds one per run. In a user's own loop build one directly: keyword arguments that name
    :class:`RunInfo` fields (``num_classes=10, per_device_batch=64``) make ``ctx.run``.

    Services: ``log(key, value)``, ``backward(loss)``, ``all_reduce(tensor, op)``, ``autocast()``,
    ``example_batch(n)``, ``normalize(x)``, ``set_batch_size(n)``, ``set_epochs(n)`` (setup only).
    State: ``model``, ``optimizer``, ``criterion`` (the composed loss chain), ``generator`` (never replaced, so
    layers may keep it), ``epoch``, ``step``, ``batch_indices``, ``train_data``, ``val_data`` (the validation split
    or ``None``: for a method's own model selection, e.g. nested dropout's best k).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        criterion: Callable[..., torch.Tensor] | None = None,
        run: RunInfo | None = None,
        *,
        generator: torch.Generator | None = None,
        train_data: Any = None,
        val_data: Any = None,
        normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        backward: Callable[[torch.Tensor], None] | None = None,
        all_reduce: Callable[..., torch.Tensor] | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
        example_batch: Callable[[int], tuple[Any, Any]] | None = None,
        set_batch_size: Callable[[int], None] | None = None,
        **run_facts: Any,
    ) -> None:
        unknown = sorted(set(run_facts) - _RUN_FIELDS)
        if unknown:
            raise TypeError(f"Context got unknown keyword(s) {unknown}; run facts are {sorted(_RUN_FIELDS)}")
        if run is not None and run_facts:
            raise TypeError("pass either run=RunInfo(...) or run-fact keywords, not both")
        self.run = run if run is not None else RunInfo(**run_facts)
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion if criterion is not None else torch.nn.functional.cross_entropy
        self.generator = generator if generator is not None else torch.Generator().manual_seed(self.run.seed)
        self.train_data = train_data
        self.val_data = val_data  # the validation split (model selection inside a method), or None
        self.epoch = 0
        self.step = 0
        self.batch_indices: torch.Tensor | None = None
        self.log = MetricLog()
        self.normalize = normalize if normalize is not None else (lambda x: x)
        self.backward = backward if backward is not None else (lambda loss: loss.backward())
        self.all_reduce = all_reduce if all_reduce is not None else (lambda tensor, op="sum": tensor)
        self.autocast = autocast if autocast is not None else contextlib.nullcontext
        self._example_batch = example_batch
        self._set_batch_size = set_batch_size if set_batch_size is not None else _no_batch_size_change
        self.in_setup = True

    # ---------------------------------------------------------------------------------------------------- services
    def example_batch(self, n: int = 2) -> tuple[Any, Any]:
        """The first ``n`` training samples as the model consumes them (normalised, on the device): the
        ``example_inputs`` to trace a model or infer shapes with."""
        if n < 1:
            raise ValueError(f"example_batch: n must be >= 1, got {n}")
        if self._example_batch is not None:
            return self._example_batch(n)
        data = self.train_data
        if data is None:
            raise ConfigurationError("example_batch needs training data: pass train_data= (or example_batch=) to "
                                     "the Context")
        x, y = data.gather(torch.arange(min(n, len(data))), self.run.device)
        return self.normalize(x), y

    def set_batch_size(self, per_device: int) -> None:
        """Change the per-device batch from the next epoch on (``ctx.run`` follows)."""
        if isinstance(per_device, bool) or not isinstance(per_device, int) or per_device <= 0:
            raise ValueError(f"set_batch_size: per_device must be an int > 0, got {per_device!r}")
        self._set_batch_size(per_device)
        self.run = dataclasses.replace(self.run, per_device_batch=per_device)

    def set_epochs(self, epochs: int) -> None:
        """Change the number of epochs of the run; only in ``setup`` (the schedule is built after it)."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ValueError(f"set_epochs: epochs must be an int > 0, got {epochs!r}")
        if not self.in_setup:
            raise RuntimeError("set_epochs may only be called in setup (the LR schedule is built from it)")
        self.run = dataclasses.replace(self.run, epochs=epochs)

    def update_run(self, **changes: Any) -> None:
        """Trainer-side: replace run facts (methods use ``set_batch_size`` / ``set_epochs``)."""
        self.run = dataclasses.replace(self.run, **changes)

    # --------------------------------------------------------------------------------------- v1 attribute names
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _RUN_FIELDS:  # v1 wrote run facts on the context (``ctx.epochs = ...`` in setup)
            warnings.warn(f"setting ctx.{name} is deprecated; ctx.run is read-only (use ctx.set_epochs / "
                          "ctx.set_batch_size)", DeprecationWarning, stacklevel=2)
            if name == "epochs":
                self.set_epochs(value)
            else:
                self.update_run(**{name: value})
            return
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not attributes: the v1 flat fields, now in ``ctx.run``
        if name in _RUN_FIELDS or name == "global_batch":
            warnings.warn(f"ctx.{name} is deprecated; read ctx.run.{name}", DeprecationWarning, stacklevel=2)
            return getattr(self.run, name)
        raise AttributeError(f"Context has no attribute {name!r}")


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
    #: Input kinds this method serves (``"image"``, ``"tokens"``, ``"vector"`` ...); empty: any.
    inputs: tuple[str, ...] = ()
    #: Target kinds this method serves (``"labels"`` = class indices ...); empty: any.
    targets: tuple[str, ...] = ()
    #: Hooks this method must own alone in a recipe (besides the always-exclusive ones).
    exclusive: tuple[str, ...] = ()
    #: The paper's identifier (``"arXiv:1905.04899"``, or a citation when it has none) and its claim in one line,
    #: as the paper states it. ``regimen study`` prints both beside what it measured.
    paper_id: str = ""
    claim: str = ""
    #: What the claim predicts for the task's primary metric against the same recipe without the method:
    #: ``"better"`` (a gain), ``"no_worse"`` (parity while buying something else: memory, speed, size), or ``""``.
    #: ``regimen study`` turns it into a verdict.
    claimed_effect: str = ""

    def setup(self, ctx: Context) -> None:
        pass

    def on_epoch_start(self, ctx: Context) -> None:
        pass

    def select_samples(self, ctx: Context) -> torch.Tensor | Sequence[int] | None:
        return None

    def select_batches(self, batches: Iterable[Any], ctx: Context) -> Sequence[int] | None:
        return None

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        return x, y

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        pass

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        return next(model, x, y)

    def criterion(self, output: Any, target: Any, next: Callable, ctx: Context, reduction: str = "mean"):
        return next(output, target, reduction=reduction)

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        next(closure)

    def training_step(self, model: nn.Module, x: Any, y: Any, ctx: Context):
        raise NotImplementedError

    def compute_loss(self, model: nn.Module, x: Any, y: Any, ctx: Context):
        """Deprecated (v1): replaced forward + loss exclusively. Implement ``forward_loss`` and call ``next``."""
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

    def log(self, ctx: Context, what: str, value: float | torch.Tensor) -> None:
        """``ctx.log(f"{self.name}/{what}", value)``: the one key convention for method metrics."""
        ctx.log(f"{self.name}/{what}", value)

    def overrides(self, hook: str) -> bool:
        """True when this method implements ``hook`` itself rather than inheriting the default."""
        return getattr(type(self), hook) is not getattr(Method, hook)

    @classmethod
    def summary(cls) -> str:
        """First line of the class's own docstring (not the base class's): shown by ``regimen methods``."""
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
        return doc.splitlines()[0] if doc else ""

    @classmethod
    def parameters(cls) -> list[tuple[str, Any, Any]]:
        """The recipe parameters: ``(name, annotation, default)`` for each ``__init__`` parameter, with string
        annotations (``from __future__ import annotations``) resolved; ``Any`` when unannotated;
        ``inspect.Parameter.empty`` as the default of a required one."""
        try:
            hints = typing.get_type_hints(cls.__init__)
        except (NameError, TypeError):
            hints = {}
        found = []
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            annotation = hints.get(name, parameter.annotation)
            if annotation is inspect.Parameter.empty or isinstance(annotation, str):
                annotation = Any
            found.append((name, annotation, parameter.default))
        return found


# ------------------------------------------------------------------------------------------------------ chains
def compose_criterion(methods: Sequence[Method], base: Callable[..., torch.Tensor], ctx: Context):
    """The criterion chain: the first method's ``criterion`` wraps the second's ... wraps ``base``.

    Returns ``criterion(output, target, reduction="mean")``."""
    chain = base
    for method in reversed([m for m in methods if m.overrides("criterion")]):
        chain = _bind_criterion(method, chain, ctx)
    return chain


def _bind_criterion(method: Method, inner: Callable, ctx: Context):
    def criterion(output, target, reduction: str = "mean"):
        return method.criterion(output, target, inner, ctx, reduction=reduction)

    criterion.__qualname__ = f"{method.name}.criterion"
    return criterion


def _base_forward_loss(ctx: Context):
    def forward_loss(model, x, y):
        output = model(x)
        return ctx.criterion(output, y), output

    return forward_loss


def compose_forward_loss(methods: Sequence[Method], ctx: Context):
    """The forward+loss chain: ``step(model, x, y) -> (loss, output)``; the base calls ``model(x)`` and
    ``ctx.criterion`` (read when called, so criterion methods set up later still apply). A v1 ``compute_loss``
    method is the innermost link."""
    legacy = next((m for m in methods if m.overrides("compute_loss")), None)
    if legacy is not None:
        warnings.warn(f"method {legacy.name!r} implements compute_loss, which is deprecated; implement forward_loss "
                      "and call next", DeprecationWarning, stacklevel=2)

        def chain(model, x, y):
            return legacy.compute_loss(model, x, y, ctx)
    else:
        chain = _base_forward_loss(ctx)
    for method in reversed([m for m in methods if m.overrides("forward_loss")]):
        chain = _bind_forward_loss(method, chain, ctx)
    return chain


def _bind_forward_loss(method: Method, inner: Callable, ctx: Context):
    def forward_loss(model, x, y):
        return method.forward_loss(model, x, y, inner, ctx)

    return forward_loss


def compose_optimizer_step(methods: Sequence[Method], base: Callable[[Callable], None], ctx: Context):
    """The optimizer-step chain: ``step(closure)``; the first method is outermost, ``base`` innermost."""
    chain = base
    for method in reversed([m for m in methods if m.overrides("optimizer_step")]):
        chain = _bind_optimizer_step(method, chain, ctx)
    return chain


def _bind_optimizer_step(method: Method, inner: Callable, ctx: Context):
    def step(closure):
        return method.optimizer_step(closure, inner, ctx)

    return step


# ---------------------------------------------------------------------------------------------------- registry
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
    _guard_parameters(cls)
    _REGISTRY[cls.name] = cls
    return cls


# -------------------------------------------------------------------------------------------- parameter types
def _describe(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        return " or ".join(_describe(a) for a in args)
    if annotation is type(None):
        return "None"
    if origin in (list, tuple, Sequence, collections.abc.Sequence):
        inner = ", ".join(_describe(a) for a in args if a is not Ellipsis)
        return f"a list of {inner}" if inner else "a list"
    if annotation is float:
        return "a finite number"
    if annotation is int:
        return "an integer"
    if annotation is nn.Module:
        return "an nn.Module"
    if isinstance(annotation, type):
        return f"a {annotation.__module__}.{annotation.__qualname__}"
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any, finite: bool = True, elements: bool = True) -> bool | None:
    """Whether ``value`` fits ``annotation`` (``None``: an annotation this check does not understand; let it pass).
    Nothing is coerced: a bool is not an int, a float is not an int, a string is not a list; a float must be
    finite (NaN or infinity as a hyperparameter is always a mistake)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return None
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        verdicts = [_matches(value, a, finite, elements) for a in args]
        return True if any(verdicts) else (None if None in verdicts else False)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and (not finite or math.isfinite(value)))
    if annotation is str:
        return isinstance(value, str)
    if origin is None and isinstance(annotation, type) and annotation.__module__.split(".")[0] in ("torch", "regimen"):
        return isinstance(value, annotation)  # torch.Tensor, nn.Module, torch.Generator, regimen's Group ...
    if origin in (dict, collections.abc.Mapping) or annotation is dict:
        return isinstance(value, collections.abc.Mapping)
    if origin is collections.abc.Iterable:
        return False if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else None
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__getitem__"):
            return False
        if not isinstance(value, (list, tuple)):  # an nn.ModuleList, a torch.Size, an array: the callee decides
            return None if origin is collections.abc.Sequence else False
        if not elements:  # a function checks its own elements, with messages that name the bad one
            return True
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                return False
            verdicts = [_matches(v, a, finite=False) for v, a in zip(value, args)]
        else:  # elements: the types only (NaN inside a list of losses is the callee's value check)
            verdicts = [_matches(v, args[0], finite=False) for v in value] if args else []
        return False if False in verdicts else True
    return None


def _fast_accept(annotation: Any) -> Callable[[Any], bool] | None:
    """A quick test that accepts (True) only values :func:`_matches` accepts, for the common annotations (a tensor, a
    module, a generator, a finite float, an int, a bool, a str, these or None); False means "ask ``_matches``". None:
    no quick test for this annotation. The guard's per-call cost on hot paths is mostly this."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or type(annotation).__name__ == "UnionType":
        members = [_fast_accept(a) for a in args if a is not type(None)]
        if None in members:
            return None
        optional = type(None) in args
        return lambda value: (optional and value is None) or any(m(value) for m in members)
    if annotation is float:
        return lambda value: (type(value) is float and value - value == 0.0) or type(value) is int
    if annotation is int:
        return lambda value: type(value) is int
    if annotation is bool:
        return lambda value: type(value) is bool
    if annotation is str:
        return lambda value: type(value) is str
    if origin is None and isinstance(annotation, type) and annotation.__module__.split(".")[0] in ("torch", "regimen"):
        return lambda value: isinstance(value, annotation)
    return None


def _guard_parameters(cls: type) -> None:
    """Wrap ``cls.__init__`` with :func:`checked_arguments`, naming the method in the error."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "_regimen_guarded", False):
        return
    cls.__init__ = _guarded(init, cls.__name__, getattr(cls, "infinite_parameters", ()),  # type: ignore[method-assign]
                            elements=True)


def checked_arguments(fn=None, *, infinite: tuple[str, ...] = ()):
    """Decorator (a function, or a class: its ``__init__``): an argument of the wrong type for its annotation (a
    string for a float, ``True`` or ``2.5`` for an int, ``"yes"`` for a bool, NaN or infinity for a float, a value
    outside a ``Literal``) is a ``TypeError`` naming the parameter, before the body runs. Nothing is coerced.
    ``torch`` classes (``torch.Tensor``, ``nn.Module``, ``torch.Generator``) are checked with ``isinstance``; other
    annotations the check does not understand (protocols, callables) pass; so do the defaults. ``infinite`` names
    float parameters where infinity means something (``magnitude_std=inf``: uniform magnitudes)."""
    if fn is None:
        return functools.partial(checked_arguments, infinite=infinite)
    if isinstance(fn, type):
        init = fn.__dict__.get("__init__")
        if init is not None and not getattr(init, "_regimen_guarded", False):
            fn.__init__ = _guarded(init, fn.__name__, infinite)  # type: ignore[misc]
        return fn
    return _guarded(fn, fn.__name__, infinite)


def require_data(**tensors: Any) -> None:
    """Refuse tensors on the meta device where a function needs their values (a ``.item()``, a data-dependent
    shape, an index): ``require_data(images=images, labels=labels)`` raises a ``ValueError`` naming the first one
    that holds no data. Non-tensors and ``None`` pass (the caller's own checks name those)."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            raise ValueError(f"{name} must hold data; got a tensor on the meta device")


def require_same_device(**tensors: Any) -> None:
    """Refuse tensors on different devices (torch's own error names neither): ``require_same_device(x0=x0,
    x1=x1)`` raises a ``ValueError`` naming the first tensor whose device differs from the first one's. ``None`` and
    non-tensors pass."""
    first = None
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            continue
        if first is None:
            first = (name, value.device)
        elif value.device != first[1]:
            raise ValueError(f"{name} is on {value.device} but {first[0]} on {first[1]}: they must share one device")


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, torch.Tensor) else f"a tensor of shape {tuple(value.shape)}"
    return text if len(text) <= 80 else text[:77] + "..."


def _guarded(init, owner: str, infinite: tuple[str, ...] = (), elements: bool = False):
    signature = inspect.signature(init)
    try:
        hints = typing.get_type_hints(init)
    except (NameError, TypeError):  # e.g. a name imported for type checking only: resolve what resolves
        hints = {}
        namespace = getattr(inspect.unwrap(init), "__globals__", {})
        for name, parameter in signature.parameters.items():
            annotation = parameter.annotation
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)  # noqa: S307 - the module's own annotation text
                except Exception:  # noqa: BLE001 - unresolvable: not checked
                    continue
            if annotation is not inspect.Parameter.empty:
                hints[name] = annotation
    checks = [(name, hints[name], signature.parameters[name].default, _fast_accept(hints[name]))
              for name in signature.parameters if name in hints and signature.parameters[name].kind not in
              (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    kinds = [p.kind for p in signature.parameters.values()]
    positional = tuple(name for name, p in signature.parameters.items()
                       if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    by_keyword = frozenset(name for name, p in signature.parameters.items()
                           if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY))
    any_keyword = inspect.Parameter.VAR_KEYWORD in kinds

    @functools.wraps(init)
    def guarded(*args, **kwargs):
        # the fast path (every hot call): positional arguments that fit, known keywords given once; anything else
        # goes through Signature.bind, whose TypeError the call itself then raises
        if len(args) <= len(positional) and (any_keyword or by_keyword.issuperset(kwargs)) and (
                not kwargs or not any(name in kwargs for name in positional[:len(args)])):
            arguments = dict(zip(positional, args))
            arguments.update(kwargs)
        else:
            try:
                arguments = signature.bind(*args, **kwargs).arguments
            except TypeError:  # e.g. a deprecated keyword that a decorator inside renames: let the call say so
                return init(*args, **kwargs)
        for name, annotation, default, fast in checks:
            if name not in arguments:
                continue
            value = arguments[name]
            if fast is not None and fast(value):
                continue
            if value is default and not (isinstance(value, float) and not math.isfinite(value)):
                continue
            if name in infinite and isinstance(value, float) and math.isinf(value):
                continue
            if _matches(value, annotation, elements=elements) is False:
                raise ArgumentError(f"{owner}: {name} must be {_describe(annotation)}, got {_short(value)}")
        return init(*args, **kwargs)

    guarded._regimen_guarded = True  # type: ignore[attr-defined]
    return guarded


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in _METHOD_PACKAGES:
        importlib.import_module(package)


def list_methods() -> dict[str, type[Method]]:
    """All registered methods by recipe name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    """The Method class registered under ``name``; a clear error listing the known names otherwise."""
    methods = list_methods()
    if name not in methods:
        close = difflib.get_close_matches(name, list(methods), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        known = ", ".join(m for m in methods if not m.startswith("_")) or "(none)"
        raise KeyError(f"unknown method {name!r}; {hint}known methods: {known}")
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
    """Raise MethodConflictError when two methods claim one exclusive hook: ``training_step`` (and the deprecated
    ``compute_loss``) replace the step, ``select_batches`` chooses the epoch's batches, and a method may declare
    more in ``exclusive``. A step-replacing method cannot share a recipe with ``forward_loss`` middleware either."""
    claims: dict[str, list[str]] = {}
    for method in methods:
        for hook in sorted({h for h in _ALWAYS_EXCLUSIVE if method.overrides(h)} | set(method.exclusive)):
            group = "step" if hook in ("training_step", "compute_loss") else hook
            claims.setdefault(group, []).append(f"{method.name!r} ({hook})")
    for group, owners in claims.items():
        if len(owners) > 1:
            what = "replace the training step" if group == "step" else f"claim {group}"
            raise MethodConflictError(f"methods {' and '.join(owners)} both {what}; a recipe may use at most one")
    steppers = [m.name for m in methods if m.overrides("training_step")]
    wrappers = [m.name for m in methods if m.overrides("forward_loss")]
    if steppers and wrappers:
        raise MethodConflictError(
            f"method {steppers[0]!r} replaces the whole training step, so {wrappers[0]!r}'s forward_loss would never "
            "run; they cannot share a recipe")
