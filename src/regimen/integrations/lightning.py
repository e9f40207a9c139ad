"""Regimen Methods inside a stock ``lightning.pytorch.Trainer``: one callback, your LightningModule unchanged (but for
one line when a method wraps the loss).

    from regimen.integrations.lightning import RegimenCallback

    regimen = RegimenCallback(["ghost_bn", {"name": "cutmix", "alpha": 1.0}, "ema"], model_attr="net", num_classes=10)
    trainer = lightning.pytorch.Trainer(max_epochs=5, callbacks=[regimen])
    trainer.fit(module, train_loader, val_loader)

Needs the ``lightning`` package (``pip install 'regimen[lightning]'``); importing this module without it raises an
ImportError that says so. Methods are given as instances, recipe names or recipe tables (``{"name": ..., **params}``,
validated like a recipe's ``[[methods]]``).

How the Method hooks map onto Lightning's (hooks in recipe order; the unwinding ones in reverse, as in regimen's
trainer):

=====================================  =================================================================================
Method hook                            Lightning hook
=====================================  =================================================================================
``setup`` (surgery)                    ``Callback.setup`` (stage ``fit``): before ``configure_optimizers``, so the
                                       optimizer your module builds already holds the new layers' parameters;
                                       ``ctx.optimizer`` is ``None`` there.
``on_epoch_start``                     ``on_train_epoch_start``
``transform_batch``, ``before_forward``  ``on_train_batch_start``: the batch (a list ``[x, y, ...]`` — what torch's
                                       default collate returns — or a dict with ``batch_keys``) is changed in place,
                                       then ``normalize`` (if given) is applied to ``x``.
``criterion`` (loss middleware)        :meth:`RegimenCallback.criterion`: call it in ``training_step`` instead of your
                                       loss (``loss = self.regimen.criterion(logits, y)``); a step that does not call
                                       it while a method wraps the loss is an error, never a silent no-op.
``after_backward``                     ``on_before_optimizer_step`` (after all accumulated backward passes, before
                                       Lightning's gradient clipping — where regimen's trainer runs it too).
``optimizer_step`` (SAM, clipping)     your module's ``optimizer_step``, wrapped on the instance: Lightning's closure
                                       runs once (forward, backward), then ``after_backward``, then the methods' chain
                                       around Lightning's own step (its clipping, then ``optimizer.step()``); SAM's
                                       closure re-runs your ``training_step`` on the same batch. Not with
                                       ``accumulate_grad_batches > 1`` (the closure would recompute only the last
                                       micro-batch) or manual optimisation: refused.
``after_step``                         ``on_train_batch_end`` of a batch whose optimizer step ran (``global_step``
                                       advanced).
``on_epoch_end``                       ``on_train_epoch_end`` — **after** Lightning's end-of-epoch validation (regimen
                                       evaluates after it), so the validation of epoch e sees what on_epoch_end
                                       did at epoch e − 1.
``eval_model`` (EMA, SWA's average)    ``on_validation_start``/``on_test_start`` load the evaluation model's weights
                                       into the module, ``..._end`` restore the training weights bit for bit. An
                                       evaluation model of another structure (a TTA wrapper) is refused there.
``on_train_end``                       ``on_train_end``
``state_dict``                         the callback's ``state_dict`` (Lightning saves it in checkpoints).
``ctx.log``                            ``pl_module.log_dict`` at each training epoch end, keys ``regimen/<key>``.
=====================================  =================================================================================

Refused, with the reason (:data:`UNMAPPED_HOOKS`): ``training_step``/``compute_loss`` (local learning: your
``training_step`` owns forward and backward), ``forward_loss`` (multi-sample dropout's K forward passes,
``linear_ce``, ``load_balance``, ``nested_width``, ``aug_subset``, AugMix with ``jsd``: your ``training_step`` calls
the model) and ``select_batches`` (Lightning's loop owns the loader).
``ctx.set_batch_size`` and ``ctx.set_epochs`` are refused too (the loader and ``max_epochs`` belong to Lightning).

Equivalence: with the same data order, optimizer and seed, a LightningModule trained with this callback reaches the
weights regimen's own trainer reaches with the same methods, bit for bit (tests/integrations/test_lightning.py: Ghost
BN + CutMix + EMA; selective backprop + Z-loss; SAM + gradient clipping).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

try:
    import lightning.pytorch as pl
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError("regimen.integrations.lightning needs the 'lightning' package: pip install 'regimen[lightning]'"
                      ) from error

from regimen.errors import ConfigurationError
from regimen.method import (
    REVERSED_HOOKS,
    Context,
    Method,
    RunInfo,
    check_exclusive_hooks,
    check_method_order,
    compose_criterion,
    compose_optimizer_step,
)

__all__ = ["RegimenCallback", "UNMAPPED_HOOKS", "lightning_incompatibility"]

#: Method hooks that have no Lightning callback hook to run in, and why.
UNMAPPED_HOOKS = {
    "training_step": "it replaces forward and backward, which your LightningModule's training_step owns",
    "compute_loss": "it replaces forward and loss, which your LightningModule's training_step owns",
    "forward_loss": "it wraps the forward pass and the loss, which your LightningModule's training_step computes",
    "select_batches": "it chooses the epoch's batches, which Lightning's data loop owns",
}


def lightning_incompatibility(method: Method | type[Method]) -> str | None:
    """``None`` when :class:`RegimenCallback` can run ``method`` in a Lightning Trainer, else why not. For a class,
    the hooks it implements decide; an instance answers for its configuration (AugMix needs ``forward_loss`` only
    with ``jsd``)."""
    cls = method if isinstance(method, type) else type(method)
    for hook, why in UNMAPPED_HOOKS.items():
        if (method.overrides(hook) if isinstance(method, Method) else getattr(cls, hook) is not getattr(Method, hook)):
            return f"method {cls.name!r} implements {hook}: a Lightning callback cannot run it ({why})"
    return None


def _build(methods: Sequence[Method | str | dict], task: str) -> list[Method]:
    from regimen.tasks import get_task, incompatibility
    from regimen.train.recipe import Recipe, RecipeError, build_methods

    if isinstance(methods, Method | str | dict) or not isinstance(methods, Sequence):
        raise TypeError(f"methods must be a list of Method instances, recipe names or {{'name': ...}} tables, got "
                        f"{type(methods).__name__}")
    task_cls = get_task(task)
    built: list[Method] = []
    for index, item in enumerate(methods):
        if isinstance(item, Method):
            problem = incompatibility(type(item), task_cls)
            if problem is not None:
                raise ConfigurationError(f"methods[{index}]: {problem}")
            built.append(item)
        elif isinstance(item, str | dict):
            entry = {"name": item} if isinstance(item, str) else dict(item)
            try:
                recipe = Recipe.model_validate({"task": task, "methods": [entry]})
                built += build_methods(recipe)
            except RecipeError as error:
                raise ConfigurationError(f"methods[{index}]: {error}") from None
            except Exception as error:  # pydantic's ValidationError (a missing name)
                raise ConfigurationError(f"methods[{index}]: {error}") from None
        else:
            raise TypeError(f"methods[{index}] must be a Method, a recipe name or a {{'name': ...}} table, got "
                            f"{type(item).__name__}")
    for method in built:
        problem = lightning_incompatibility(method)
        if problem is not None:
            raise ConfigurationError(problem)
    check_exclusive_hooks(built)
    check_method_order(built)
    return built


class RegimenCallback(pl.Callback):
    """Runs regimen Methods inside a ``lightning.pytorch.Trainer`` (see the module docstring for the hook map).

    Args:
        methods: Method instances, recipe names (``"ema"``) or tables (``{"name": "cutmix", "alpha": 1.0}``), in
            recipe order.
        model_attr: the attribute of your LightningModule that holds the network the methods work on (surgery may
            replace it, EMA copies it); ``None``: the LightningModule itself (then surgery must work in place).
        num_classes: classes of a classification task (mixing methods build soft targets with it).
        task: the regimen task your data is (``"image_classification"``: image inputs, label targets); methods that
            cannot serve it are refused.
        loss: the base of :meth:`criterion` (``loss(output, target, reduction="mean")``); ``None``: cross-entropy on
            index or soft targets with ``label_smoothing``.
        label_smoothing: of the default loss (mixing methods read it to smooth alike).
        normalize: applied to the inputs after the methods' ``transform_batch`` (image methods expect [0, 1] pixels);
            ``None``: inputs are passed on as transformed.
        data_mean, data_std: per-channel statistics for methods that read ``ctx.run.data_mean`` (fill values).
        seed: seeds the methods' generator as regimen's trainer does (``seed * 7919 + rank``), so the same seed
            draws the same augmentations.
        batch_keys: for dict batches, the keys of the inputs and the targets.
        example_batch: ``(x, y)`` for methods that trace the model in ``setup``; ``None``: the first batch of the
            training loader Lightning was given.
    """

    def __init__(self, methods: Sequence[Method | str | dict], *, model_attr: str | None = None,
                 num_classes: int | None = None, task: str = "image_classification",
                 loss: Callable[..., torch.Tensor] | None = None, label_smoothing: float = 0.0,
                 normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 data_mean: Sequence[float] | torch.Tensor | None = None,
                 data_std: Sequence[float] | torch.Tensor | None = None, seed: int = 0,
                 batch_keys: tuple[str, str] | None = None, example_batch: tuple[Any, Any] | None = None) -> None:
        super().__init__()
        if model_attr is not None and (not isinstance(model_attr, str) or not model_attr):
            raise TypeError(f"model_attr must be an attribute name (str) or None, got {model_attr!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2 or None, got {num_classes!r}")
        if not isinstance(label_smoothing, int | float) or not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be callable (output, target, reduction=...), got {type(loss).__name__}")
        if normalize is not None and not callable(normalize):
            raise TypeError(f"normalize must be callable, got {type(normalize).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if batch_keys is not None and (not isinstance(batch_keys, tuple | list) or len(batch_keys) != 2):
            raise TypeError(f"batch_keys must be (input key, target key), got {batch_keys!r}")
        self.methods = _build(methods, task)
        self.model_attr, self.task, self.seed = model_attr, task, seed
        self.num_classes, self.label_smoothing = num_classes, float(label_smoothing)
        self.normalize, self.batch_keys, self._example = normalize, batch_keys, example_batch
        self.data_mean = None if data_mean is None else torch.as_tensor(data_mean, dtype=torch.float32)
        self.data_std = None if data_std is None else torch.as_tensor(data_std, dtype=torch.float32)
        if loss is None:
            from regimen.tasks.classification import classification_criterion

            loss = classification_criterion(self.label_smoothing)
        self._base_loss = loss
        self._wraps_loss = [m.name for m in self.methods if m.overrides("criterion")]
        self._batch_hooks = any(m.overrides("transform_batch") or m.overrides("before_forward") for m in self.methods)
        self.ctx: Context | None = None
        self._trainer: pl.Trainer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._last_step = 0
        self._criterion_calls = 0
        self._backup: dict[str, torch.Tensor] | None = None
        self._steps = [m for m in self.methods if m.overrides("optimizer_step")]
        self._wrapped: pl.LightningModule | None = None

    # ------------------------------------------------------------------------------------------------ helpers
    def _call(self, hook: str) -> None:
        ordered = reversed(self.methods) if hook in REVERSED_HOOKS else self.methods
        for method in ordered:
            if method.overrides(hook):
                getattr(method, hook)(self.ctx)

    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.model_attr is None:
            return pl_module
        network = getattr(pl_module, self.model_attr, None)
        if not isinstance(network, nn.Module):
            raise ConfigurationError(f"RegimenCallback(model_attr={self.model_attr!r}): {type(pl_module).__name__} has "
                                     f"no nn.Module attribute {self.model_attr!r}")
        return network

    def _example_batch(self, n: int) -> tuple[Any, Any]:
        if self._example is None:
            self._example = self._first_batch()
        x, y = self._example
        x, y = x[:n], y[:n]
        return (self.normalize(x) if self.normalize is not None else x), y

    def _first_batch(self) -> tuple[Any, Any]:
        source = getattr(getattr(self._trainer, "fit_loop", None), "_data_source", None)
        try:
            loader = source.dataloader() if source is not None else None
            batch = next(iter(loader)) if loader is not None else None
        except Exception:  # a datamodule that is not set up yet, an exhausted iterator
            batch = None
        if batch is None:
            raise ConfigurationError("a method needs an example batch in setup: pass RegimenCallback(example_batch="
                                     "(x, y))")
        return self._unpack(batch)

    def _unpack(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, dict):
            if self.batch_keys is None:
                raise TypeError("RegimenCallback got a dict batch: pass batch_keys=(input key, target key)")
            return batch[self.batch_keys[0]], batch[self.batch_keys[1]]
        if isinstance(batch, list | tuple) and len(batch) >= 2:
            return batch[0], batch[1]
        raise TypeError(f"RegimenCallback expects batches [x, y, ...] or dicts, got {type(batch).__name__}")

    def _repack(self, batch: Any, x: Any, y: Any) -> None:
        if isinstance(batch, dict):
            batch[self.batch_keys[0]], batch[self.batch_keys[1]] = x, y
        elif isinstance(batch, list):
            batch[0], batch[1] = x, y
        else:
            names = ", ".join(m.name for m in self.methods if m.overrides("transform_batch")) or "normalize"
            raise TypeError(f"RegimenCallback ({names}) must change the batch in place, and a {type(batch).__name__} "
                            "cannot be changed: let your DataLoader yield lists [x, y] (torch's default collate does) "
                            "or dicts (with batch_keys)")

    def _refuse_batch_size(self, per_device: int) -> None:
        raise ConfigurationError("a method asked to change the batch size; under Lightning the DataLoader owns it "
                                 "(this method needs regimen's trainer)")

    def _reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return tensor
        return trainer.strategy.reduce(tensor, reduce_op=op)

    def _autocast(self):
        return self._trainer.precision_plugin.forward_context()

    # ----------------------------------------------------------------------------------------------- the loss
    def criterion(self, output: Any, target: Any, reduction: str = "mean") -> torch.Tensor:
        """The methods' loss chain around the base loss: call it in ``training_step`` when a method wraps the loss
        (z-loss, soft-target losses); with none it is the base loss."""
        self._criterion_calls += 1
        if self.ctx is None:
            return self._base_loss(output, target, reduction=reduction)
        return self.ctx.criterion(output, target, reduction=reduction)

    # ----------------------------------------------------------------------------------------- Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage != "fit":
            return
        if self.ctx is not None:
            raise ConfigurationError("this RegimenCallback already trained a model (its methods hold that run's "
                                     "state); make a new RegimenCallback for another fit")
        network = self._network(pl_module)
        if self._steps:  # refused before any surgery touches the module
            self._check_step_wrapping(trainer, pl_module)
        max_epochs = trainer.max_epochs if trainer.max_epochs not in (None, -1) else 1
        run = RunInfo(task=self.task, world_size=trainer.world_size, rank=trainer.global_rank,
                      accumulation=trainer.accumulate_grad_batches, epochs=max_epochs, seed=self.seed,
                      num_classes=self.num_classes, label_smoothing=self.label_smoothing, data_mean=self.data_mean,
                      data_std=self.data_std, device=pl_module.device,
                      **self._kinds())
        ctx = Context(network, None, run=run, generator=torch.Generator().manual_seed(self.seed * 7919
                                                                                      + trainer.global_rank),
                      normalize=self.normalize, all_reduce=self._reduce, autocast=self._autocast,
                      example_batch=self._example_batch, set_batch_size=self._refuse_batch_size)
        ctx.criterion = compose_criterion(self.methods, self._base_loss, ctx)
        for method in self.methods:
            if not method.overrides("setup"):
                continue
            try:
                method.setup(ctx)
            except ConfigurationError:
                raise
            except (ValueError, TypeError) as error:
                raise ConfigurationError(f"method {method.name!r}: {error}") from error
            except AttributeError as error:
                if ctx.optimizer is None and "NoneType" in str(error):
                    raise ConfigurationError(f"method {method.name!r} needs the optimizer in setup, which Lightning "
                                             "builds only after callbacks' setup (configure_optimizers); it needs "
                                             "regimen's trainer") from error
                raise
        ctx.in_setup = False
        if ctx.run.epochs != max_epochs:
            raise ConfigurationError(f"a method changed the number of epochs to {ctx.run.epochs}; under Lightning "
                                     "set Trainer(max_epochs=...) yourself")
        if ctx.model is not network:
            if self.model_attr is None:
                raise ConfigurationError("a method's surgery returned a new model, which cannot replace the "
                                         "LightningModule itself: keep the network in an attribute and pass "
                                         "RegimenCallback(model_attr='...')")
            setattr(pl_module, self.model_attr, ctx.model)
        self.ctx = ctx
        if self._steps:
            self._wrap_optimizer_step(trainer, pl_module)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def _check_step_wrapping(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names = ", ".join(repr(m.name) for m in self._steps)
        if trainer.accumulate_grad_batches > 1:
            raise ConfigurationError(f"method(s) {names} wrap the optimizer step with a closure that recomputes the "
                                     "step's gradient; with accumulate_grad_batches > 1 Lightning's closure holds only "
                                     "the last micro-batch: use regimen's trainer (train.accumulation) for them")
        if not pl_module.automatic_optimization:
            raise ConfigurationError(f"method(s) {names} wrap the optimizer step; your module uses manual "
                                     "optimisation, which has no step to wrap")

    def _wrap_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        original = pl_module.optimizer_step  # the module's own (a user's override or Lightning's)

        def optimizer_step(epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            loss = optimizer_closure()  # this step's forward and backward, as regimen's trainer runs before its chain
            self._call("after_backward")

            def base(closure: Callable[[], torch.Tensor]) -> None:  # Lightning's clipping, then optimizer.step()
                original(epoch, batch_idx, optimizer, lambda: loss)

            compose_optimizer_step(self.methods, base, self.ctx)(optimizer_closure)

        pl_module.optimizer_step = optimizer_step  # on the instance; removed at teardown
        self._wrapped = pl_module

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._wrapped is not None:
            self._wrapped.__dict__.pop("optimizer_step", None)
            self._wrapped = None

    def _kinds(self) -> dict[str, str]:
        from regimen.tasks import get_task

        task = get_task(self.task)
        return {"input_kind": task.input_kind, "target_kind": task.target_kind}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self._require()
        if len(trainer.optimizers) != 1:
            raise ConfigurationError(f"RegimenCallback needs exactly one optimizer, configure_optimizers gave "
                                     f"{len(trainer.optimizers)}")
        ctx.optimizer = trainer.optimizers[0]
        batches = trainer.num_training_batches
        steps = max(int(batches) // trainer.accumulate_grad_batches, 1) if math.isfinite(batches) else 1
        epochs = ctx.run.epochs
        if trainer.max_epochs in (None, -1) and trainer.max_steps and trainer.max_steps > 0:
            epochs = max(math.ceil(trainer.max_steps / steps), 1)
        changes: dict[str, Any] = {"steps_per_epoch": steps, "epochs": epochs, "device": pl_module.device}
        batch_size = getattr(trainer.train_dataloader, "batch_size", None)
        if isinstance(batch_size, int) and batch_size > 0:
            changes["per_device_batch"] = batch_size
        ctx.update_run(**changes)
        self._last_step = trainer.global_step

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self._require()
        ctx.epoch, ctx.step = trainer.current_epoch, trainer.global_step
        self._call("on_epoch_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        ctx = self._require()
        ctx.step = trainer.global_step
        self._criterion_calls = 0
        if not self._batch_hooks and self.normalize is None:
            return
        x, y = self._unpack(batch)
        ctx.batch_indices = None
        for method in self.methods:
            if method.overrides("transform_batch"):
                x, y = method.transform_batch(x, y, ctx)
        if self.normalize is not None:
            x = self.normalize(x)
        for method in self.methods:
            if method.overrides("before_forward"):
                method.before_forward(x, y, ctx)
        self._repack(batch, x, y)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer) -> None:
        if self._wrapped is None:  # with a wrapped step, after_backward ran before the methods' step chain
            self._call("after_backward")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        ctx = self._require()
        if self._wraps_loss and self._criterion_calls == 0:
            raise ConfigurationError(
                f"method(s) {', '.join(map(repr, self._wraps_loss))} wrap the loss, but this training_step did not "
                "call RegimenCallback.criterion(output, target): compute the loss with it")
        if trainer.global_step > self._last_step:  # the optimizer stepped (not an accumulation micro-batch)
            self._last_step = ctx.step = trainer.global_step
            self._call("after_step")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ctx = self._require()
        self._call("on_epoch_end")
        values = ctx.log.drain()
        if values and trainer.logger is not None:
            pl_module.log_dict({f"regimen/{k}": float(v) for k, v in values.items()}, on_epoch=True)

    def _swap_in(self) -> None:
        ctx = self.ctx
        if ctx is None or not any(m.overrides("eval_model") for m in self.methods):
            return
        chosen, owner = ctx.model, None
        for method in self.methods:
            replacement = method.eval_model(chosen, ctx) if method.overrides("eval_model") else None
            if replacement is not None:
                chosen, owner = replacement, method.name
        if chosen is ctx.model:
            return
        mine, theirs = ctx.model.state_dict(), chosen.state_dict()
        if list(mine) != list(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
            raise ConfigurationError(f"method {owner!r} evaluates a {type(chosen).__name__} that is not a copy of the "
                                     "trained network, which a Lightning validation loop cannot run; it needs "
                                     "regimen's trainer")
        self._backup = {k: v.detach().clone() for k, v in mine.items()}
        with torch.no_grad():
            for key, value in mine.items():
                value.copy_(theirs[key])

    def _swap_out(self) -> None:
        if self._backup is None:
            return
        with torch.no_grad():
            for key, value in self.ctx.model.state_dict().items():
                value.copy_(self._backup[key])
        self._backup = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._call("on_train_end")

    def _require(self) -> Context:
        if self.ctx is None:
            raise RuntimeError("RegimenCallback was not set up: pass it in Trainer(callbacks=[...]) before fit")
        return self.ctx

    # --------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.ctx is None:
            return {}
        return {"methods": [m.state_dict() for m in self.methods], "generator": self.ctx.generator.get_state(),
                "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.ctx is None:  # restored before setup: applied once the methods have set up
            self._pending_state = state_dict
            return
        for method, state in zip(self.methods, state_dict["methods"], strict=True):
            method.load_state_dict(state)
        self.ctx.generator.set_state(state_dict["generator"])
        self._last_step = state_dict["last_step"]
        self._pending_state = None
