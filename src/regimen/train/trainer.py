"""The training loop: data -> batch hooks -> forward/loss chain -> backward -> step chain -> metrics.

Lightning Fabric handles devices, DDP (gloo on CPU, nccl on GPU), precision and process launch; the recipe's task
(``regimen.tasks``) owns the data, the default model, the loss and the metrics; this module owns the loop,
evaluation, the LR schedule, the JSONL metrics log, checkpoints (at epoch ends and every N steps) and resume.
Anything method-specific lives in a ``regimen.method.Method``.

With ``train.devices = W`` the loader gives each process a consecutive slice of every global batch, so W processes
at per-device batch b train the weights one process trains at W·b (gradients averaged by DDP), up to float
rounding, with two exceptions: randomness drawn per process (dropout, ``ctx.generator`` is seeded per rank) and
``nn.BatchNorm``, which normalises each per-device batch with its own statistics (``SyncBatchNorm`` is not applied;
DDP broadcasts rank 0's running statistics). ``tests/distributed`` checks every global-batch method against this.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_module_registration_hook

from regimen.data import DataSplits
from regimen.errors import ConfigurationError, DivergenceError
from regimen.method import (
    REVERSED_HOOKS,
    SELECTION_HOOK,
    Context,
    Method,
    RunInfo,
    compose_criterion,
    compose_forward_loss,
    compose_optimizer_step,
)
from regimen.tasks import Task
from regimen.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    load_weights,
    restore_rng,
    save_checkpoint,
    write_text_atomic,
)
from regimen.train.launch import launch_fabric, launcher_rank, make_fabric
from regimen.train.lock import check_run_folder_free, hold_run_folder
from regimen.train.loggers import RunLoggers, check_loggers
from regimen.train.optim import build_optimizer
from regimen.train.recipe import Recipe, build_methods, parse_recipe, recipe_task
from regimen.train.schedule import ProgressSchedule

__all__ = ["FitResult", "evaluate", "fit"]


@dataclass
class FitResult:
    """What ``fit`` returns: the final summary, per-epoch history and the trained model (unwrapped)."""

    summary: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    model: nn.Module | None = None
    rank: int = 0


class _Hooks:
    """Calls one hook on every method that implements it, in recipe order (reverse for the unwinding hooks)."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self.step_owner = next((m for m in methods if m.overrides("training_step")), None)
        self.batch_selector = next((m for m in methods if m.overrides(SELECTION_HOOK)), None)
        self.sample_selector = next((m for m in methods if m.overrides("select_samples")), None)

    def call(self, hook: str, ctx: Context) -> None:
        ordered = reversed(self.methods) if hook in REVERSED_HOOKS else self.methods
        for method in ordered:
            if method.overrides(hook):
                getattr(method, hook)(ctx)

    def setup(self, ctx: Context) -> None:
        """Every method's ``setup``; a ValueError there (bad input, a model without the structure the method needs)
        becomes a user error that names the method."""
        for method in self.methods:
            if not method.overrides("setup"):
                continue
            try:
                method.setup(ctx)
            except ConfigurationError as error:
                if str(error).startswith(f"method {method.name!r}"):
                    raise
                raise ConfigurationError(f"method {method.name!r}: {error}") from error
            except ValueError as error:
                raise ConfigurationError(f"method {method.name!r}: {error}") from error

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        for method in self.methods:
            if method.overrides("transform_batch"):
                x, y = method.transform_batch(x, y, ctx)
        return x, y

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        for method in self.methods:
            if method.overrides("before_forward"):
                method.before_forward(x, y, ctx)

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Chained in recipe order: each method gets the module the earlier ones chose (EMA's copy, then flip TTA
        wraps it); ``None`` keeps it."""
        for method in self.methods:
            replacement = method.eval_model(model, ctx) if method.overrides("eval_model") else None
            if replacement is not None:
                model = replacement
        return model


def _compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``train.compile``: ``torch.compile(model)`` (Fabric unwraps it, wraps the plain module and compiles the wrapper,
    so ``raw_model`` and the checkpoint's state_dict keep the plain module's keys, without ``_orig_mod.``)."""
    return torch.compile(model) if enabled else model


def _channels_last_inputs(normalize: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``train.channels_last``: the normalised 4-d batch in ``torch.channels_last`` memory format (same values)."""

    def to_channels_last(x: torch.Tensor) -> torch.Tensor:
        x = normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.dim() == 4 else x

    return to_channels_last


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def evaluate(model: nn.Module, dataset, normalize: Callable, batch_size: int = 1000,
             device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1, all_reduce=None,
             task: Task | None = None) -> dict[str, float]:
    """The task's metrics of ``model`` on ``dataset`` (default task: image classification: loss and accuracy);
    shards across ranks and sums."""
    if task is None:
        from regimen.tasks import ImageClassificationTask
        from regimen.train.recipe import Recipe

        task = ImageClassificationTask(Recipe())
    return task.evaluate(model, dataset, normalize, batch_size, device, rank, world_size, all_reduce)


class _Console:
    """Rank-0 output: a rich progress bar per epoch and one line per epoch, or nothing when quiet."""

    def __init__(self, enabled: bool, progress: bool) -> None:
        self.enabled = enabled
        self.progress_enabled = enabled and progress
        self.console = None
        if enabled:
            from rich.console import Console

            self.console = Console(stderr=True)

    def print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False, soft_wrap=True)

    def progress(self, total: int, done: int, description: str):
        if not self.progress_enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), console=self.console, transient=True)
        bar.start()
        bar.add_task(description, total=total, completed=done, info="")
        return bar

    @staticmethod
    def advance(bar, info: str) -> None:
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, info=info)


def _check_out_dir(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigurationError(f"--out {out_dir} exists and is not a folder")
    if resuming or overwrite:
        return
    if (out_dir / "metrics.jsonl").exists() or (out_dir / "checkpoint.pt").exists():
        raise ConfigurationError(f"--out {out_dir} already holds a run; pass --resume {out_dir / 'checkpoint.pt'}, "
                                 "--overwrite, or another --out")


def _as_recipe(recipe: Recipe | dict | str | os.PathLike) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return parse_recipe(recipe)
    if isinstance(recipe, str | os.PathLike):
        from regimen.train.recipe import load_recipe

        return load_recipe(recipe)
    raise TypeError(f"recipe must be a Recipe, a dict or a recipe file/name, got {type(recipe).__name__}")


def machine_memory() -> int:
    """Bytes this process may use: the physical memory (``os.sysconf`` page counts), or the address-space limit
    (``ulimit -v``) when that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            total = min(total, soft)
    except (ImportError, OSError, ValueError):
        pass
    return total


def fit(
    recipe: Recipe | dict | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    progress: bool = False,
    data: Any = None,
    stop_epoch: int | None = None,
    model: nn.Module | None = None,
) -> FitResult:
    """Train a model with the recipe's methods on the recipe's task; evaluate every epoch; write metrics and
    checkpoints to ``out_dir``.

    With ``train.devices > 1`` outside torchrun, Fabric re-launches the current command once per extra process, so
    call ``fit`` from a script or the CLI, not an interactive session.

    Args:
        recipe: a validated ``Recipe``, a dict to validate, or a recipe file.
        out_dir: folder for ``metrics.jsonl``, ``summary.json`` and ``checkpoint.pt``; ``None`` writes nothing.
        resume: a checkpoint to continue from (model, optimizer, schedule, RNG, method states, step, epoch and, for a
            mid-epoch checkpoint, the position in the epoch).
        overwrite: allow ``out_dir`` to already hold a run.
        quiet: print nothing (the CLI turns printing on).
        progress: show a rich progress bar (needs ``quiet=False``).
        data: your own data instead of the recipe's ``[data]``: the task's ``adopt_data`` says what it takes
            (``DataSplits``; a dict of ``train``/``val``/``test`` datasets or ``(inputs, targets)`` pairs; one
            dataset or pair, from which ``data.val_fraction`` is held out).
        stop_epoch: end this call after that many epochs (counted from the start of training) with a checkpoint
            written; the schedule still spans ``train.epochs`` and ``on_train_end`` is not called, so a later
            ``fit(..., resume=...)`` continues exactly (population based training trains in such rounds).
        model: your own ``nn.Module`` instead of the recipe's ``[model]`` (which is then ignored). ``fit`` trains a
            copy (methods' surgery replaces layers) and leaves the module you pass unchanged; the trained model is
            ``FitResult.model``. Pass the same kind of model again to resume.

    Returns:
        FitResult with the summary (the task's final and best metrics, training wall time, samples/s, time to
        ``train.target``, peak memory), the per-epoch history and the trained model (unwrapped from Fabric).
    """
    recipe = _as_recipe(recipe)
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if stop_epoch is not None and stop_epoch < 1:
        raise ValueError(f"stop_epoch must be >= 1, got {stop_epoch}")
    state = load_checkpoint(resume) if resume is not None else None
    out_path = Path(out_dir) if out_dir is not None else None
    check_loggers(recipe.train.loggers, out_path)  # a missing package is refused before anything starts
    if out_path is not None:
        if launcher_rank(recipe.train.devices) == 0:  # before launching: another run writing there is refused now
            check_run_folder_free(out_path)
        _check_out_dir(out_path, resuming=state is not None, overwrite=overwrite)
    run = _Run(recipe, data, model, quiet, progress)
    lock = (hold_run_folder(out_path, run.rank, run.world_size, run.fabric.broadcast) if out_path is not None
            else None)  # one writer per run folder: rank 0 holds the lock, every rank learns a refusal
    try:
        return _train(run, state, resume, out_path, stop_epoch)
    finally:
        if lock is not None:
            lock.release()


def _train(run: _Run, state: dict | None, resume: str | os.PathLike | None, out_path: Path | None,
           stop_epoch: int | None) -> FitResult:
    """``fit``'s loop, once the processes are launched and the run folder is locked."""
    run.setup(state, str(resume))
    run.start_output(out_path, resumed=state is not None)
    try:
        epochs = run.ctx.run.epochs
        end = epochs if stop_epoch is None else min(stop_epoch, epochs)
        for epoch in range(run.start_epoch, end):
            record = run.train_epoch(epoch, out_path)
            run.finish_epoch(record, out_path, force_checkpoint=epoch + 1 == end)
        if end == epochs:
            run.end_training()
        return run.finish(out_path)
    finally:
        if run.loggers is not None:  # a run that raised: the dashboards say so
            run.loggers.finish(None, "failed")


MAX_MODEL_MODULES = 100_000  # submodule registrations while probing a recipe's model (a 1,000-block GPT: ~14k)


class _TooManyModules(Exception):
    """Raised inside the model probe's registration hook; turned into a ConfigurationError."""


class _Run:
    """The state of one training run and the steps of its loop."""

    def __init__(self, recipe: Recipe, data: Any, model: nn.Module | None, quiet: bool, progress: bool) -> None:
        self.recipe, self.cfg = recipe, recipe.train
        self.task: Task = recipe_task(recipe)(recipe)
        self.task.check_recipe(user_model=model is not None, user_data=data is not None)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.fabric = make_fabric(self.cfg)  # refuses a launcher that disagrees with devices x num_nodes
        if self.fabric.world_size > 1:
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
            launch_fabric(self.fabric, self.cfg.dist_timeout_s)  # spawns the node's processes or joins torchrun's
        self.rank, self.world_size = self.fabric.global_rank, self.fabric.world_size
        self.console = _Console(enabled=not quiet and self.rank == 0, progress=progress)
        self.data: DataSplits = self.task.adopt_data(data) if data is not None else self.task.load_data()
        self.user_model = model
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.elapsed, self.samples_seen = 0, 0.0, 0
        self.train_cpu_time = 0.0  # process CPU seconds inside training epochs (evaluation and start-up excluded)
        self.position: dict[str, Any] | None = None  # where a mid-epoch checkpoint stopped
        self.time_to_target: float | None = None
        self.final_metrics: dict[str, float] = {}  # metrics of the exported model, after on_train_end
        self.end_logs: dict[str, float] = {}
        self.loggers: RunLoggers | None = None  # train.loggers, rank 0 with an output folder

    # ------------------------------------------------------------------------------------------------------ setup
    def _build_model(self) -> tuple[nn.Module, dict[str, Any]]:
        torch.manual_seed(self.recipe.seed)  # identical initial weights on every rank
        if self.user_model is None:
            self._check_model_size()
            return self.task.build_model(self.data), self.task.model_spec(self.data)
        from regimen.models import copy_module

        cls = type(self.user_model)
        spec = {"name": "user", "class": f"{cls.__module__}.{cls.__qualname__}",
                "params": sum(p.numel() for p in self.user_model.parameters())}
        return copy_module(self.user_model), spec

    @staticmethod
    def _load_initial_weights(model: nn.Module, path: str) -> None:
        try:
            load_model_state(model, load_weights(path), f"model.weights = {path!r}")
        except CheckpointError as error:
            raise ConfigurationError(f"model.weights: {error}") from None

    def _check_model_size(self) -> None:
        """Build the recipe's model on the meta device first (no memory, no time) and refuse one whose weights,
        gradients and two optimizer moments cannot fit in this machine's memory: ``model.options`` with a width of
        10**9 is a one-line error, not an allocation of hundreds of GiB (or the machine's OOM killer)."""
        rng = torch.get_rng_state()
        described = f"model.name = {self.recipe.model.name!r} with {dict(self.recipe.model.options)}"
        registered = [0]

        def count_modules(module: nn.Module, name: str, submodule: nn.Module | None) -> None:
            registered[0] += 1
            if registered[0] > MAX_MODEL_MODULES:  # depth = 10**9 would spend hours building modules on meta
                raise _TooManyModules

        handle = register_module_module_registration_hook(count_modules)
        try:
            with torch.device("meta"):
                probe = self.task.build_model(self.data)
        except _TooManyModules:
            raise ConfigurationError(f"model.options: {described} registers more than {MAX_MODEL_MODULES:,} "
                                     f"layers; refused before building it") from None
        except RuntimeError as error:
            if "overflow" in str(error):  # a weight with more than 2**63 elements
                raise ConfigurationError(f"model.options: {described} has a weight too large to allocate "
                                         f"({str(error).splitlines()[0]})") from None
            return
        except Exception:  # noqa: BLE001 - a builder that needs real tensors (a data-fitted layer): not probed
            return
        finally:
            handle.remove()
            torch.set_rng_state(rng)
        numel = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
        need = numel * 4 * 4  # float32 weights, gradients and two optimizer moments: a floor, not an estimate
        available = machine_memory()
        if need > available:
            raise ConfigurationError(
                f"model.options: {described} has {numel:,} parameters, at least {need / 2**30:.1f} GiB with "
                f"gradients and optimizer state; this machine has {available / 2**30:.1f} GiB of memory")

    def setup(self, state: dict | None, source: str) -> None:
        """Model, optimizer, methods, loader and context; surgery by the methods; Fabric wrapping; resume."""
        recipe, cfg, data, task = self.recipe, self.cfg, self.data, self.task
        if state is not None and state.get("task", "image_classification") != recipe.task:
            raise CheckpointError(f"{source} is a checkpoint of task {state.get('task')!r}, not of the recipe's task "
                                  f"{recipe.task!r}")
        model, self.model_spec = self._build_model()
        if state is None and recipe.model.weights is not None:  # a resume carries its own (later) weights
            self._load_initial_weights(model, recipe.model.weights)
        if state is not None and state["model_spec"] != self.model_spec:
            raise CheckpointError(f"{source} was saved from a different model: {state['model_spec']} vs "
                                  f"{self.model_spec}")
        optimizer = build_optimizer(model, recipe.optim)
        self.methods = build_methods(recipe)
        self.hooks = _Hooks(self.methods)
        device = self.fabric.device
        self.normalize = task.normalizer(data, device)
        if cfg.channels_last:  # every batch the model sees (training, evaluation, methods' scoring) in NHWC
            if task.input_kind != "image":
                raise ConfigurationError(f"train.channels_last is a memory format of image batches (N, C, H, W); "
                                         f"task {recipe.task!r} has {task.input_kind} inputs")
            self.normalize = _channels_last_inputs(self.normalize)
        self.loader = task.train_loader(data.train, cfg.batch_size, seed=recipe.seed, rank=self.rank,
                                        world_size=self.world_size, device=device)
        if len(self.loader) < cfg.accumulation:
            raise ConfigurationError(
                f"train.batch_size={cfg.batch_size} x devices={self.world_size} x accumulation={cfg.accumulation} "
                f"leaves no full optimizer step in {len(data.train)} training samples")
        run = RunInfo(task=recipe.task, input_kind=task.input_kind, target_kind=task.target_kind,
                      world_size=self.world_size, rank=self.rank, per_device_batch=cfg.batch_size,
                      accumulation=cfg.accumulation, epochs=cfg.epochs, device=device, seed=recipe.seed,
                      **task.run_facts(data))
        self.ctx = ctx = Context(
            model, optimizer, run=run, generator=torch.Generator().manual_seed(recipe.seed * 7919 + self.rank),
            train_data=data.train, val_data=data.val, normalize=self.normalize, backward=self.fabric.backward,
            all_reduce=lambda t, op="sum": self.fabric.all_reduce(t, reduce_op=op), autocast=self.fabric.autocast,
            set_batch_size=self._set_batch_size)
        ctx.criterion = compose_criterion(self.methods, task.loss(), ctx)
        ctx.update_run(steps_per_epoch=self._steps_per_epoch())  # known before setup, so methods can plan
        self.hooks.setup(ctx)
        ctx.in_setup = False
        if state is not None:  # after setup: surgery has given the model its final structure
            load_model_state(ctx.model, state["model"], source)
        if cfg.channels_last:  # 4-d weights (convolutions) in NHWC; the Parameter objects stay the optimizer's
            ctx.model = ctx.model.to(memory_format=torch.channels_last)
        ctx.model, ctx.optimizer = self.fabric.setup(_compiled(ctx.model, cfg.compile), ctx.optimizer)
        self.raw_model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        self.forward_loss = compose_forward_loss(self.methods, ctx)
        self.optimizer_step = compose_optimizer_step(self.methods, self._base_optimizer_step, ctx)
        self.schedule = ProgressSchedule(ctx.optimizer, recipe.schedule, ctx.run.epochs)
        if state is not None:
            self._restore(state)
        else:
            torch.manual_seed(recipe.seed + 1 + self.rank)  # per-rank stream for dropout and other global draws

    def _steps_per_epoch(self, selected: list[int] | None = None) -> int:
        batches = len(self.loader) if selected is None else len(selected)
        steps = batches // self.cfg.accumulation
        return min(steps, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else steps

    def _select_samples(self) -> torch.Tensor | None:
        """The sample-selecting method's training-set indices for this epoch (checked), or ``None`` for all."""
        method = self.hooks.sample_selector
        if method is None:
            return None
        chosen = method.select_samples(self.ctx)
        if chosen is None:
            return None
        indices = torch.as_tensor(chosen).reshape(-1)
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"method {method.name!r}: select_samples must return integer indices, got {indices.dtype}")
        indices = indices.to(torch.int64).cpu()
        size, needed = len(self.data.train), self.loader.global_batch * self.cfg.accumulation
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= size):
            raise ValueError(f"method {method.name!r}: select_samples returned indices outside [0, {size})")
        if torch.unique(indices).numel() != indices.numel():
            raise ValueError(f"method {method.name!r}: select_samples returned an index twice")
        if indices.numel() < needed:
            raise ValueError(f"method {method.name!r} selected {indices.numel()} samples, fewer than one optimizer "
                             f"step ({needed})")
        self._check_ranks_agree(indices.tolist(), method.name)
        return indices

    def _select_batches(self) -> list[int] | None:
        """The selecting method's micro-batch positions for this epoch (checked), or ``None`` for all batches."""
        method = self.hooks.batch_selector
        if method is None:
            return None
        chosen = method.select_batches(self.loader, self.ctx)
        if chosen is None:
            return None
        positions = [int(p) for p in chosen]
        _check_selection(positions, len(self.loader), self.cfg.accumulation, method.name)
        self._check_ranks_agree(positions, method.name)
        return positions

    def _check_ranks_agree(self, positions: list[int], name: str) -> None:
        """Every rank must train the same steps, or the gradient all-reduce would block: compare (count, Σp, Σp²)."""
        if self.world_size == 1:
            return
        mine = torch.tensor([len(positions), sum(positions), sum(p * p for p in positions)], dtype=torch.float64,
                            device=self.ctx.run.device)
        mean = self.ctx.all_reduce(mine.clone(), "sum") / self.world_size
        differs = self.ctx.all_reduce((mine != mean).any().double().reshape(1), "sum")
        if differs.item() > 0:
            raise RuntimeError(f"method {name!r} selected different batches on different ranks; select_batches must "
                               "return the same positions on every rank (reduce per-batch statistics first)")

    def _set_batch_size(self, per_device: int) -> None:
        self.loader.batch_size = per_device

    def _restore(self, state: dict) -> None:
        ctx = self.ctx
        ctx.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if self.schedule.total != ctx.run.epochs:
            self._extend_schedule(state["epoch"], state.get("position"))
        for method, method_state in zip(self.methods, state["methods"]):
            method.load_state_dict(method_state)
        rng = state["rng"]
        mine = min(self.rank, len(rng["process"]) - 1)
        restore_rng(rng["process"][mine])
        ctx.generator.set_state(rng["generator"][mine].clone())
        self.start_epoch, ctx.step = state["epoch"], state["step"]
        ctx.set_batch_size(state["per_device_batch"])
        self.history = list(state["history"])
        self.elapsed, self.samples_seen = state["elapsed"], state["samples_seen"]
        self.train_cpu_time = state.get("train_cpu_time", 0.0)  # absent from checkpoints written before it existed
        self.position = state.get("position")
        ctx.log.pending = dict(state.get("pending_log", {}))
        self.time_to_target = next((h["wall_time"] for h in self.history if self._reached(h)), None)

    def _extend_schedule(self, epochs_done: int, position: dict | None) -> None:
        """A resume with another ``train.epochs``: extend the schedule as ``schedule.extend`` says, and say what the
        LR does (a silent jump back up from a decayed cosine was a trap)."""
        schedule, total, mode = self.schedule, self.ctx.run.epochs, self.recipe.schedule.extend
        done = epochs_done + (position["step_in_epoch"] / self._steps_per_epoch(position["selected"])
                              if position else 0.0)
        before = schedule.factor(done / schedule.total)
        old_total = schedule.total
        schedule.extend(total, mode)
        after = schedule.factor(done / total)
        alternatives = {"stretch": "schedule.extend = 'continue' keeps the final LR, 'restart' runs the schedule "
                                   "again over the added epochs",
                        "continue": "the LR stays at the schedule's final value for the added epochs",
                        "restart": "the schedule runs again, warm-up included, over the added epochs"}
        message = (f"train.epochs changed from {old_total:g} to {total:g} on resume: the LR schedule is extended by "
                   f"'{schedule.mode}' (LR factor at epoch {done:g}: {before:.4g} -> {after:.4g}); "
                   f"{alternatives[schedule.mode]}")
        warnings.warn(message, UserWarning, stacklevel=2)
        self.console.print(f"[yellow]{message}[/yellow]")

    # ------------------------------------------------------------------------------------------------------- loop
    def start_output(self, out_path: Path | None, resumed: bool) -> None:
        if out_path is not None and self.rank == 0:
            out_path.mkdir(parents=True, exist_ok=True)
            if resumed:  # the log holds exactly the checkpoint's epochs: no row twice, none missing
                write_text_atomic(out_path / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
            else:
                (out_path / "metrics.jsonl").write_text("")
                (out_path / "recipe.json").write_text(json.dumps(self.recipe.model_dump(), indent=2))
            if self.cfg.loggers:
                self.loggers = RunLoggers(self.cfg.loggers, out_path, self.recipe, self.history, resumed)
        self.params = sum(p.numel() for p in self.raw_model.parameters())
        model_name = (f"your {type(self.user_model).__name__}" if self.user_model is not None
                      else self.recipe.model.name or self.task.default_model)
        sizes = ", ".join(f"{len(split)} {name}" + (f" ({self.data.sources[name]})" if name in self.data.sources
                                                       else "")
                          for name, split in (("train", self.data.train), ("val", self.data.val),
                                              ("test", self.data.test)) if split is not None)
        nodes = f" on {self.cfg.num_nodes} nodes" if self.cfg.num_nodes > 1 else ""
        self.console.print(
            f"[bold]{self.recipe.name}[/bold]: task {self.recipe.task}; data: {sizes}; model {model_name} "
            f"({self.params:,} params); {self.world_size} process(es){nodes} on {self.fabric.device}, global batch "
            f"{self.ctx.run.global_batch}")

    def _micro_step(self, x: Any, y: Any, sync: bool) -> tuple[torch.Tensor, Any]:
        """Forward and backward of one micro-batch, through the step owner or the forward/loss chain."""
        ctx, model = self.ctx, self.ctx.model
        with self.fabric.no_backward_sync(model, enabled=not sync):
            if self.hooks.step_owner is not None:
                return self.hooks.step_owner.training_step(model, x, y, ctx)
            loss, output = self.forward_loss(model, x, y)
            self.fabric.backward(loss / self.cfg.accumulation)
        return loss.detach(), output

    def _sync_first_gradient(self) -> bool:
        """False when a method asks (``local_first_gradient(ctx)``, e.g. SAM's ascent) that this step's first
        gradient stay on each process: its ``optimizer_step`` then recomputes a synchronised one with the closure."""
        if self.world_size == 1:
            return True
        return not any(getattr(m, "local_first_gradient", _never)(self.ctx) for m in self.methods)

    def _base_optimizer_step(self, closure: Callable[[], torch.Tensor]) -> None:
        if self.cfg.grad_clip:
            self.fabric.clip_gradients(self.ctx.model, self.ctx.optimizer, max_norm=self.cfg.grad_clip)
        self.ctx.optimizer.step()

    def _closure(self, micro_batches: list[tuple[Any, Any]]) -> Callable[[], torch.Tensor]:
        """Recomputes this step's gradients (zeroed first) on the same micro-batches; returns the mean loss."""

        def closure() -> torch.Tensor:
            self.ctx.optimizer.zero_grad(set_to_none=True)
            losses = [self._micro_step(x, y, sync=i == len(micro_batches) - 1)[0]
                      for i, (x, y) in enumerate(micro_batches)]
            return torch.stack(losses).mean()

        return closure

    def train_epoch(self, epoch: int, out_path: Path | None) -> dict[str, Any]:
        ctx, hooks, cfg, task = self.ctx, self.hooks, self.cfg, self.task
        ctx.epoch = epoch
        self.loader.set_epoch(epoch)
        started = time.perf_counter()  # epoch time includes the methods' per-epoch work (e.g. subset selection)
        cpu_started = time.process_time()
        position, self.position = self.position, None
        if position is None:
            hooks.call("on_epoch_start", ctx)
            self.loader.subset = self._select_samples()
            selected = self._select_batches()
            first_step, earlier_time = 0, 0.0
            totals = torch.zeros(2 + len(task.train_metrics), dtype=torch.float64)  # loss sum, count, metric sums
        else:  # a mid-epoch checkpoint: the epoch's samples, batches, sums and time so far
            self.loader.subset = position.get("subset")
            selected, first_step = position["selected"], position["step_in_epoch"]
            totals, earlier_time = position["totals"].clone(), position["epoch_time"]
        steps = self._steps_per_epoch(selected)
        ctx.update_run(steps_per_epoch=steps)
        global_batch = ctx.run.global_batch  # the batch this epoch trains at (on_epoch_end may set the next one)
        bar = self.console.progress(steps, first_step, f"epoch {epoch + 1}/{ctx.run.epochs}")
        ctx.model.train()
        batches = self.loader.batches(selected, start=first_step * cfg.accumulation)
        lr_factor = self.schedule.last_factor
        for step_in_epoch in range(first_step, steps):
            lr_factor = self.schedule.update((epoch + (step_in_epoch + 1) / steps) / ctx.run.epochs)
            micro_batches = []
            sync_first = self._sync_first_gradient()
            for micro in range(cfg.accumulation):
                x, y, ctx.batch_indices = next(batches)
                x, y = hooks.transform_batch(x, y, ctx)
                x = self.normalize(x)
                hooks.before_forward(x, y, ctx)
                micro_batches.append((x, y))
                loss, output = self._micro_step(x, y, sync=sync_first and micro == cfg.accumulation - 1)
                if not torch.isfinite(loss):
                    raise DivergenceError(f"loss is {loss.item()} at epoch {epoch + 1}, step {ctx.step + 1}; "
                                             "lower optim.lr or set train.grad_clip")
                count = len(y)
                totals[0] += loss.item() * count
                totals[1] += count
                if output is not None and task.train_metrics:
                    totals[2:] += torch.tensor(task.train_sums(_detach(output), y), dtype=torch.float64)
            hooks.call("after_backward", ctx)
            self.optimizer_step(self._closure(micro_batches))
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.step += 1
            hooks.call("after_step", ctx)
            self.console.advance(bar, f"loss {totals[0] / max(totals[1], 1):.4f}")
            every = cfg.checkpoint_every_steps
            if out_path is not None and every and ctx.step % every == 0 and step_in_epoch + 1 < steps:
                self.elapsed += time.perf_counter() - started
                earlier_time += time.perf_counter() - started
                self.train_cpu_time += time.process_time() - cpu_started
                started, cpu_started = time.perf_counter(), time.process_time()
                self._save(out_path / "checkpoint.pt", epoch, position={
                    "subset": self.loader.subset, "selected": selected, "step_in_epoch": step_in_epoch + 1,
                    "totals": totals.clone(), "epoch_time": earlier_time})
        if bar is not None:
            bar.stop()
        hooks.call("on_epoch_end", ctx)
        now = time.perf_counter()
        self.elapsed += now - started
        self.train_cpu_time += time.process_time() - cpu_started
        train_time = earlier_time + now - started
        totals = ctx.all_reduce(totals.to(ctx.run.device), "sum").cpu()
        count = max(totals[1].item(), 1.0)
        self.samples_seen += int(totals[1].item())  # a resumed epoch's sums include the part before the checkpoint
        record = {
            "epoch": epoch + 1, "step": ctx.step, "lr": ctx.optimizer.param_groups[0]["lr"], "lr_factor": lr_factor,
            "global_batch": global_batch, "train_loss": totals[0].item() / count,
        }
        record.update({f"train_{name}": totals[2 + i].item() / count for i, name in enumerate(task.train_metrics)})
        record.update({"epoch_time": train_time,
                       "samples_per_s": totals[1].item() / train_time if train_time > 0 else 0.0})
        return record

    def _evaluate_splits(self, eval_net: nn.Module) -> dict[str, float]:
        results = {}
        for name, dataset in (("val", self.data.val), ("test", self.data.test)):
            if dataset is not None:
                metrics = self.task.evaluate(eval_net, dataset, self.normalize, self.cfg.eval_batch_size,
                                             self.ctx.run.device, self.rank, self.world_size, self.ctx.all_reduce)
                results.update({f"{name}_{metric}": value for metric, value in metrics.items()})
        return results

    def _primary_key(self) -> str:
        split = "test" if self.data.test is not None else "val"
        return f"{split}_{self.task.primary_metric}"

    def _reached(self, record: dict[str, Any]) -> bool:
        target, key = self.cfg.target, self._primary_key()
        return target is not None and key in record and self.task.reached(record[key], target)

    def finish_epoch(self, record: dict[str, Any], out_path: Path | None, force_checkpoint: bool = False) -> None:
        """Evaluate, log, checkpoint."""
        ctx, cfg = self.ctx, self.cfg
        if record["epoch"] % cfg.eval_every == 0 or record["epoch"] == ctx.run.epochs:
            record.update(self._evaluate_splits(self.hooks.eval_model(ctx.model, ctx)))
        record["wall_time"] = self.elapsed
        record.update(ctx.log.drain())
        self.history.append(record)
        if self.time_to_target is None and self._reached(record):
            self.time_to_target = self.elapsed
        self.console.print(_epoch_line(record, ctx.run.epochs, self.task))
        if out_path is None:
            return
        if self.rank == 0:
            with open(out_path / "metrics.jsonl", "a") as log_file:
                log_file.write(json.dumps(record) + "\n")
            if self.loggers is not None:
                self.loggers.log_epoch(record)
        epoch = record["epoch"]
        if force_checkpoint or (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0):
            self._save(out_path / "checkpoint.pt", epoch)

    def end_training(self) -> None:
        """``on_train_end`` hooks (export, physical pruning, factorisation), then, when a method has one, a fresh
        evaluation of the exported model: the summary's final metrics are those of the model ``fit`` returns. The
        checkpoint keeps the model before export (it is what a resume needs)."""
        ctx = self.ctx
        if not any(m.overrides("on_train_end") for m in self.methods):
            return
        self.hooks.call("on_train_end", ctx)
        self.raw_model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        self.final_metrics = self._evaluate_splits(self.hooks.eval_model(ctx.model, ctx))
        self.end_logs = ctx.log.drain()

    def _save(self, path: Path, epochs_done: int, position: dict[str, Any] | None = None) -> None:
        fabric, ctx = self.fabric, self.ctx
        process_rng = capture_rng()
        generator_state = ctx.generator.get_state()
        if fabric.world_size > 1:  # every rank's RNG, so a resumed DDP run draws what the original would have
            # rows cloned: a row of the gathered tensor is a view at a storage offset, which torch.set_rng_state
            # (and torch.save) would take from the start of the storage: every rank would restore rank 0's state
            torch_states = fabric.all_gather(process_rng["torch"].to(fabric.device)).cpu()
            generators = fabric.all_gather(generator_state.to(fabric.device)).cpu()
            process_states = [dict(process_rng, torch=torch_states[r].clone()) for r in range(fabric.world_size)]
            generator_states = [generators[r].clone() for r in range(fabric.world_size)]
            if position is not None:  # the epoch's sums over every rank
                position = dict(position, totals=self.ctx.all_reduce(position["totals"].to(fabric.device),
                                                                     "sum").cpu() / fabric.world_size)
        else:
            process_states, generator_states = [process_rng], [generator_state]
        if self.rank != 0:
            return
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "task": self.recipe.task, "recipe": self.recipe.model_dump(),
            "model_spec": self.model_spec, "model": self.raw_model.state_dict(),
            "optimizer": ctx.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "methods": [m.state_dict() for m in self.methods],
            "rng": {"process": process_states, "generator": generator_states}, "epoch": epochs_done,
            "step": ctx.step, "per_device_batch": self.loader.batch_size, "history": self.history,
            "elapsed": self.elapsed, "train_cpu_time": self.train_cpu_time, "samples_seen": self.samples_seen,
            "position": position,
            "pending_log": dict(ctx.log.pending),
        }, path)

    def finish(self, out_path: Path | None) -> FitResult:
        summary = self._summary()
        if self.rank == 0 and out_path is not None:
            write_text_atomic(out_path / "summary.json", json.dumps(summary, indent=2))
        if self.loggers is not None:
            self.loggers.finish(summary)
        key = self._primary_key()
        final, best = summary.get(f"final_{key}", math.nan), summary.get(f"best_{key}", math.nan)
        self.console.print(
            f"[bold]done[/bold]: final {key.replace('_', ' ')} {final:.4f} (best {best:.4f}), "
            f"{summary['train_time']:.1f} s training, {summary['samples_per_s']:.0f} samples/s, peak memory "
            f"{summary['peak_memory_mb']:.0f} MB")
        return FitResult(summary=summary, history=self.history, model=self.raw_model, rank=self.rank)

    def _summary(self) -> dict[str, Any]:
        history, task = self.history, self.task
        last = dict(history[-1] if history else {}, **self.final_metrics)
        summary: dict[str, Any] = {
            "recipe": self.recipe.name, "task": self.recipe.task, "primary_metric": self._primary_key(),
            "higher_is_better": task.higher_is_better, "epochs": len(history), "steps": self.ctx.step,
            "params": sum(p.numel() for p in self.raw_model.parameters()),
        }
        for split in ("val", "test"):
            for metric in task.metrics:
                key = f"{split}_{metric}"
                values = [h[key] for h in history if key in h]
                higher = task.metric_higher_is_better(metric)
                summary[f"final_{key}"] = last.get(key, math.nan)
                summary[f"best_{key}"] = (max(values) if higher else min(values)) if values else math.nan
        summary.update({
            "exported_after_training": bool(self.final_metrics), "final_train_loss": last.get("train_loss", math.nan),
            "train_time": self.elapsed, "samples_per_s": self.samples_seen / self.elapsed if self.elapsed else 0.0,
            "time_to_target": self.time_to_target, "target": self.cfg.target,
            "target_accuracy": self.cfg.target,  # v1 name, kept for one release
            "peak_memory_mb": _peak_memory_mb(self.ctx.run.device),
            # CPU seconds of this process (all threads, start-up and evaluation included): unlike wall time, barely
            # moved by other jobs on a shared machine, so studies compare costs with it
            "process_cpu_time": time.process_time(), "world_size": self.world_size,
            "train_cpu_time": self.train_cpu_time,  # the same, inside training epochs only: cost ratios of methods
            "num_nodes": self.cfg.num_nodes,
            "global_batch": self.ctx.run.global_batch, "device": str(self.ctx.run.device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "methods": self.end_logs,
        })
        return summary


def _never(ctx: Context) -> bool:
    return False


def _detach(output: Any) -> Any:
    return output.detach() if isinstance(output, torch.Tensor) else output


def _check_selection(positions: list[int], available: int, accumulation: int, name: str) -> None:
    if not positions:
        raise ValueError(f"method {name!r} selected no batches; select_batches must keep at least one optimizer step")
    if any(b <= a for a, b in zip(positions, positions[1:])) or positions[0] < 0 or positions[-1] >= available:
        raise ValueError(f"method {name!r}: select_batches must return strictly increasing positions in "
                         f"[0, {available}), got {positions[:8]}{' ...' if len(positions) > 8 else ''}")
    if len(positions) % accumulation:
        raise ValueError(f"method {name!r} selected {len(positions)} micro-batches, not a multiple of "
                         f"train.accumulation={accumulation}; keep whole optimizer steps")


def _epoch_line(record: dict[str, Any], epochs: int, task: Task) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    parts += [f"train {name} {record[f'train_{name}']:.4f}" for name in task.train_metrics
              if f"train_{name}" in record]
    parts += [f"{split} {task.primary_metric} {record[f'{split}_{task.primary_metric}']:.4f}"
              for split in ("val", "test") if f"{split}_{task.primary_metric}" in record]
    parts += [f"lr {record['lr']:.4g}", f"{record['epoch_time']:.1f} s",
              f"{record['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)
