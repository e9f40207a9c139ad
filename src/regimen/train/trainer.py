"""The training loop: data -> batch hooks -> forward -> loss hooks -> backward -> step hooks -> metrics.

Lightning Fabric handles devices, DDP (gloo on CPU, nccl on GPU), precision and process launch; this module owns the
loop, evaluation, the LR schedule, the JSONL metrics log, checkpoints and resume. Anything method-specific lives in a
``regimen.method.Method``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regimen.data import DataSplits, InMemoryLoader, load_data
from regimen.losses import classification_loss
from regimen.method import REVERSED_HOOKS, SELECTION_HOOK, Context, Method
from regimen.models import build_model
from regimen.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng,
    load_checkpoint,
    load_model_state,
    restore_rng,
    save_checkpoint,
)
from regimen.train.optim import build_optimizer
from regimen.train.recipe import Recipe, build_methods, parse_recipe
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
    """Calls one hook on every method in recipe order (or reverse order for the unwinding hooks)."""

    def __init__(self, methods: list[Method]) -> None:
        self.methods = methods
        self.loss_owner = next((m for m in methods if m.overrides("compute_loss")), None)
        self.step_owner = next((m for m in methods if m.overrides("training_step")), None)
        self.batch_selector = next((m for m in methods if m.overrides(SELECTION_HOOK)), None)

    def call(self, hook: str, ctx: Context) -> None:
        ordered = reversed(self.methods) if hook in REVERSED_HOOKS else self.methods
        for method in ordered:
            if method.overrides(hook):
                getattr(method, hook)(ctx)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        for method in self.methods:
            if method.overrides("transform_batch"):
                x, y = method.transform_batch(x, y, ctx)
        return x, y

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        for method in self.methods:
            replacement = method.eval_model(model, ctx) if method.overrides("eval_model") else None
            if replacement is not None:
                return replacement
        return model


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _accuracy_counts(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    labels = y.argmax(dim=1) if y.dim() == 2 else y
    return (logits.argmax(dim=1) == labels).sum().item(), labels.shape[0]


@torch.no_grad()
def evaluate(model: nn.Module, dataset, normalize, batch_size: int = 1000, device: torch.device | str = "cpu",
             rank: int = 0, world_size: int = 1, all_reduce=None) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``dataset``; shards across ranks and sums."""
    was_training = model.training
    model.eval()
    loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank, world_size=world_size,
                            device=device)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    for x, y, _ in loader:
        if y.numel() == 0:
            continue
        logits = model(normalize(x)).float()
        totals[0] += torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        totals[1] += (logits.argmax(dim=1) == y).sum().item()
        totals[2] += y.shape[0]
    if all_reduce is not None:
        totals = all_reduce(totals, "sum")
    model.train(was_training)
    count = max(totals[2].item(), 1.0)
    return {"loss": totals[0].item() / count, "acc": totals[1].item() / count}


def _make_normalize(mean: torch.Tensor, std: torch.Tensor, device: torch.device, enabled: bool):
    if not enabled:
        return lambda x: x
    mean = mean.to(device).view(1, -1, 1, 1)
    std = std.to(device).view(1, -1, 1, 1)
    return lambda x: (x - mean) / std


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

    def progress(self, total: int, description: str):
        if not self.progress_enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       TextColumn("{task.fields[info]}"), console=self.console, transient=True)
        bar.start()
        bar.add_task(description, total=total, info="")
        return bar

    @staticmethod
    def advance(bar, info: str) -> None:
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, info=info)


def _check_out_dir(out_dir: Path, resuming: bool, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    if resuming or overwrite:
        return
    if (out_dir / "metrics.jsonl").exists() or (out_dir / "checkpoint.pt").exists():
        raise ValueError(f"--out {out_dir} already holds a run; pass --resume {out_dir / 'checkpoint.pt'}, "
                         "--overwrite, or another --out")


def fit(
    recipe: Recipe | dict,
    out_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
    quiet: bool = True,
    progress: bool = False,
    data: DataSplits | None = None,
    stop_epoch: int | None = None,
) -> FitResult:
    """Train the recipe's model with its methods; evaluate every epoch; write metrics and checkpoints to ``out_dir``.

    With ``train.devices > 1`` outside torchrun, Fabric re-launches the current command once per extra process, so
    call ``fit`` from a script or the CLI, not an interactive session.

    Args:
        recipe: a validated ``Recipe`` or a dict to validate.
        out_dir: folder for ``metrics.jsonl``, ``summary.json`` and ``checkpoint.pt``; ``None`` writes nothing.
        resume: a checkpoint to continue from (model, optimizer, schedule, RNG, method states, step, epoch).
        overwrite: allow ``out_dir`` to already hold a run.
        quiet: print nothing (the CLI turns printing on).
        progress: show a rich progress bar (needs ``quiet=False``).
        data: pre-loaded data splits (tests, benchmarks); default loads what the recipe names.
        stop_epoch: end this call after that many epochs (counted from the start of training) with a checkpoint
            written; the schedule still spans ``train.epochs`` and ``on_train_end`` is not called, so a later
            ``fit(..., resume=...)`` continues exactly (population based training trains in such rounds).

    Returns:
        FitResult with the summary (best/final accuracy, training wall time, samples/s, peak memory), the per-epoch
        history and the trained model (unwrapped from Fabric).
    """
    if not isinstance(recipe, Recipe):
        recipe = parse_recipe(recipe)
    state = load_checkpoint(resume) if resume is not None else None
    out_path = Path(out_dir) if out_dir is not None else None
    if out_path is not None:
        _check_out_dir(out_path, resuming=state is not None, overwrite=overwrite)
    run = _Run(recipe, data, quiet, progress)
    run.setup(state, str(resume))
    run.start_output(out_path, resumed=state is not None)
    if stop_epoch is not None and stop_epoch < 1:
        raise ValueError(f"stop_epoch must be >= 1, got {stop_epoch}")
    end = run.ctx.epochs if stop_epoch is None else min(stop_epoch, run.ctx.epochs)
    for epoch in range(run.start_epoch, end):
        record = run.train_epoch(epoch)
        run.finish_epoch(record, out_path, force_checkpoint=epoch + 1 == end)
    if end == run.ctx.epochs:
        run.end_training()
    return run.finish(out_path)


class _Run:
    """The state of one training run and the steps of its loop."""

    def __init__(self, recipe: Recipe, data: DataSplits | None, quiet: bool, progress: bool) -> None:
        from lightning_fabric import Fabric

        self.recipe, self.cfg = recipe, recipe.train
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.fabric = Fabric(accelerator=self.cfg.accelerator, devices=self.cfg.devices, strategy=self.cfg.strategy,
                             precision=self.cfg.precision)
        if self.fabric.world_size > 1:
            warnings.filterwarnings("ignore", message=".*all_gather is deprecated.*")
            self.fabric.launch()  # spawns the other processes, or joins them under torchrun
        self.rank, self.world_size = self.fabric.global_rank, self.fabric.world_size
        self.console = _Console(enabled=not quiet and self.rank == 0, progress=progress)
        self.data = data if data is not None else load_data(
            recipe.data.name, recipe.data.root, recipe.data.val_fraction, recipe.data.train_subset, recipe.seed,
            recipe.data.test_subset)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.elapsed, self.samples_seen = 0, 0.0, 0
        self.time_to_target: float | None = None
        self.final_metrics: dict[str, float] = {}  # accuracy of the exported model, after on_train_end

    def setup(self, state: dict | None, source: str) -> None:
        """Model, optimizer, methods, loader and context; surgery by the methods; Fabric wrapping; resume."""
        recipe, cfg, data = self.recipe, self.cfg, self.data
        torch.manual_seed(recipe.seed)  # identical initial weights on every rank
        model = build_model(recipe.model.name, data.train.input_shape, data.train.num_classes, **recipe.model.options)
        self.model_spec = {"name": recipe.model.name, "input_shape": list(data.train.input_shape),
                           "num_classes": data.train.num_classes, "options": dict(recipe.model.options)}
        if state is not None and state["model_spec"] != self.model_spec:
            raise CheckpointError(f"{source} was saved from a different model: {state['model_spec']} vs "
                                  f"{self.model_spec}")
        optimizer = build_optimizer(model, recipe.optim)
        self.methods = build_methods(recipe)
        self.hooks = _Hooks(self.methods)
        device = self.fabric.device
        self.normalize = _make_normalize(data.mean, data.std, device, recipe.data.normalize)
        self.loader = InMemoryLoader(data.train, cfg.batch_size, shuffle=True, drop_last=True, seed=recipe.seed,
                                     rank=self.rank, world_size=self.world_size, device=device)
        if len(self.loader) < cfg.accumulation:
            raise ValueError(f"train.batch_size={cfg.batch_size} x devices={self.world_size} x accumulation="
                             f"{cfg.accumulation} leaves no full optimizer step in {len(data.train)} training images")
        self.ctx = ctx = Context(
            model=model, optimizer=optimizer,
            criterion=lambda logits, y: classification_loss(logits, y, cfg.label_smoothing),
            label_smoothing=cfg.label_smoothing,
            num_classes=data.train.num_classes, per_device_batch=cfg.batch_size, world_size=self.world_size,
            rank=self.rank, accumulation=cfg.accumulation, epochs=cfg.epochs, device=device,
            generator=torch.Generator().manual_seed(recipe.seed * 7919 + self.rank), train_data=data.train,
            backward=self.fabric.backward, all_reduce=lambda t, op="sum": self.fabric.all_reduce(t, reduce_op=op),
            set_batch_size=self._set_batch_size, normalize=self.normalize, data_mean=data.mean, data_std=data.std,
            autocast=self.fabric.autocast,
        )
        ctx.steps_per_epoch = self._steps_per_epoch()  # known before setup, so methods can plan schedules
        self.hooks.call("setup", ctx)
        if state is not None:  # after setup: surgery has given the model its final structure
            load_model_state(ctx.model, state["model"], source)
        ctx.model, ctx.optimizer = self.fabric.setup(ctx.model, ctx.optimizer)
        self.raw_model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        self.schedule = ProgressSchedule(ctx.optimizer, recipe.schedule, ctx.epochs)
        if state is not None:
            self._restore(state)
        else:
            torch.manual_seed(recipe.seed + 1 + self.rank)  # per-rank stream for dropout and other global draws

    def _steps_per_epoch(self, selected: list[int] | None = None) -> int:
        batches = len(self.loader) if selected is None else len(selected)
        steps = batches // self.ctx.accumulation
        return min(steps, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else steps

    def _select_batches(self) -> list[int] | None:
        """The selecting method's micro-batch positions for this epoch (checked), or ``None`` for all batches."""
        method = self.hooks.batch_selector
        if method is None:
            return None
        chosen = method.select_batches(self.loader, self.ctx)
        if chosen is None:
            return None
        positions = [int(p) for p in chosen]
        _check_selection(positions, len(self.loader), self.ctx.accumulation, method.name)
        self._check_ranks_agree(positions, method.name)
        return positions

    def _check_ranks_agree(self, positions: list[int], name: str) -> None:
        """Every rank must train the same steps, or the gradient all-reduce would block: compare (count, Σp, Σp²)."""
        if self.world_size == 1:
            return
        mine = torch.tensor([len(positions), sum(positions), sum(p * p for p in positions)], dtype=torch.float64,
                            device=self.ctx.device)
        mean = self.ctx.all_reduce(mine.clone(), "sum") / self.world_size
        differs = self.ctx.all_reduce((mine != mean).any().double().reshape(1), "sum")
        if differs.item() > 0:
            raise RuntimeError(f"method {name!r} selected different batches on different ranks; select_batches must "
                               "return the same positions on every rank (reduce per-batch statistics first)")

    def _set_batch_size(self, per_device: int) -> None:
        if per_device <= 0:
            raise ValueError(f"batch size must be > 0, got {per_device}")
        self.loader.batch_size = self.ctx.per_device_batch = per_device

    def _restore(self, state: dict) -> None:
        ctx = self.ctx
        ctx.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        for method, method_state in zip(self.methods, state["methods"]):
            method.load_state_dict(method_state)
        rng = state["rng"]
        mine = min(self.rank, len(rng["process"]) - 1)
        restore_rng(rng["process"][mine])
        ctx.generator.set_state(rng["generator"][mine])
        self.start_epoch, ctx.step = state["epoch"], state["step"]
        self._set_batch_size(state["per_device_batch"])
        self.history = list(state["history"])
        self.elapsed, self.samples_seen = state["elapsed"], state["samples_seen"]
        target = self.cfg.target_accuracy
        self.time_to_target = next(
            (h["wall_time"] for h in self.history if target and h.get("test_acc", 0.0) >= target), None)

    def start_output(self, out_path: Path | None, resumed: bool) -> None:
        if out_path is not None and self.rank == 0:
            out_path.mkdir(parents=True, exist_ok=True)
            if not resumed:
                (out_path / "metrics.jsonl").write_text("")
                (out_path / "recipe.json").write_text(json.dumps(self.recipe.model_dump(), indent=2))
        self.params = sum(p.numel() for p in self.raw_model.parameters())
        self.console.print(
            f"[bold]{self.recipe.name}[/bold]: {self.data.name} ({len(self.data.train)} train), "
            f"{self.recipe.model.name} ({self.params:,} params), {self.world_size} process(es) on "
            f"{self.fabric.device}, global batch {self.ctx.global_batch}")

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, sync: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Forward and backward of one micro-batch; the step owner or loss owner replaces the default."""
        ctx, hooks, model = self.ctx, self.hooks, self.ctx.model
        with self.fabric.no_backward_sync(model, enabled=not sync):
            if hooks.step_owner is not None:
                return hooks.step_owner.training_step(model, x, y, ctx)
            if hooks.loss_owner is not None:
                loss, logits = hooks.loss_owner.compute_loss(model, x, y, ctx)
            else:
                logits = model(x)
                loss = ctx.criterion(logits, y)
            self.fabric.backward(loss / ctx.accumulation)
        return loss.detach(), logits

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        ctx, hooks, cfg = self.ctx, self.hooks, self.cfg
        ctx.epoch, ctx.log = epoch, {}
        self.loader.set_epoch(epoch)
        started = time.perf_counter()  # epoch time includes the methods' per-epoch work (e.g. subset selection)
        hooks.call("on_epoch_start", ctx)
        selected = self._select_batches()
        ctx.steps_per_epoch = steps = self._steps_per_epoch(selected)
        global_batch = ctx.global_batch  # the batch this epoch trains at (on_epoch_end may set the next one)
        bar = self.console.progress(steps, f"epoch {epoch + 1}/{ctx.epochs}")
        ctx.model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
        batches = self.loader.batches(selected)
        lr_factor = self.schedule.last_factor
        for step_in_epoch in range(steps):
            lr_factor = self.schedule.update((epoch + (step_in_epoch + 1) / steps) / ctx.epochs)
            for micro in range(ctx.accumulation):
                x, y, ctx.batch_indices = next(batches)
                x, y = hooks.transform_batch(x, y, ctx)
                loss, logits = self._micro_step(self.normalize(x), y, sync=micro == ctx.accumulation - 1)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {ctx.step + 1}; "
                                             "lower optim.lr or set train.grad_clip")
                totals[0] += loss.item() * y.shape[0]
                if logits is not None:
                    totals[1] += _accuracy_counts(logits.detach(), y)[0]
                totals[2] += y.shape[0]
            hooks.call("after_backward", ctx)
            if cfg.grad_clip:
                self.fabric.clip_gradients(ctx.model, ctx.optimizer, max_norm=cfg.grad_clip)
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.step += 1
            hooks.call("after_step", ctx)
            self.console.advance(bar, f"loss {totals[0] / max(totals[2], 1):.4f}")
        if bar is not None:
            bar.stop()
        hooks.call("on_epoch_end", ctx)
        train_time = time.perf_counter() - started
        self.elapsed += train_time
        totals = ctx.all_reduce(totals.to(ctx.device), "sum").cpu()
        count = max(totals[2].item(), 1.0)
        self.samples_seen += int(totals[2].item())
        return {
            "epoch": epoch + 1, "step": ctx.step, "lr": ctx.optimizer.param_groups[0]["lr"], "lr_factor": lr_factor,
            "global_batch": global_batch, "train_loss": totals[0].item() / count,
            "train_acc": totals[1].item() / count, "epoch_time": train_time,
            "samples_per_s": totals[2].item() / train_time if train_time > 0 else 0.0,
        }

    def finish_epoch(self, record: dict[str, Any], out_path: Path | None, force_checkpoint: bool = False) -> None:
        """Evaluate, log, checkpoint."""
        ctx, cfg = self.ctx, self.cfg
        eval_net = self.hooks.eval_model(ctx.model, ctx)
        evaluating = record["epoch"] % cfg.eval_every == 0 or record["epoch"] == ctx.epochs
        for name, dataset in (("val", self.data.val), ("test", self.data.test)):
            if dataset is not None and evaluating:
                result = evaluate(eval_net, dataset, self.normalize, cfg.eval_batch_size, ctx.device, self.rank,
                                  self.world_size, ctx.all_reduce)
                record[f"{name}_loss"], record[f"{name}_acc"] = result["loss"], result["acc"]
        record["wall_time"] = self.elapsed
        record.update({key: float(value) for key, value in ctx.log.items()})
        self.history.append(record)
        if cfg.target_accuracy and self.time_to_target is None and record.get("test_acc", 0.0) >= cfg.target_accuracy:
            self.time_to_target = self.elapsed
        self.console.print(_epoch_line(record, ctx.epochs))
        if out_path is None:
            return
        if self.rank == 0:
            with open(out_path / "metrics.jsonl", "a") as log_file:
                log_file.write(json.dumps(record) + "\n")
        epoch = record["epoch"]
        if force_checkpoint or (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0):
            self._save(out_path / "checkpoint.pt", epoch)

    def end_training(self) -> None:
        """``on_train_end`` hooks (export, physical pruning, factorisation), then, when a method has one, a fresh
        evaluation of the exported model: the summary's final accuracy is that of the model ``fit`` returns. The
        checkpoint keeps the model before export (it is what a resume needs)."""
        ctx = self.ctx
        if not any(m.overrides("on_train_end") for m in self.methods):
            return
        self.hooks.call("on_train_end", ctx)
        self.raw_model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        eval_net = self.hooks.eval_model(ctx.model, ctx)
        for name, dataset in (("val", self.data.val), ("test", self.data.test)):
            if dataset is not None:
                result = evaluate(eval_net, dataset, self.normalize, self.cfg.eval_batch_size, ctx.device,
                                  self.rank, self.world_size, ctx.all_reduce)
                self.final_metrics[f"{name}_acc"] = result["acc"]

    def _save(self, path: Path, epochs_done: int) -> None:
        fabric, ctx = self.fabric, self.ctx
        process_rng = capture_rng()
        generator_state = ctx.generator.get_state()
        if fabric.world_size > 1:  # every rank's RNG, so a resumed DDP run draws what the original would have
            torch_states = fabric.all_gather(process_rng["torch"].to(fabric.device)).cpu()
            generator_states = list(fabric.all_gather(generator_state.to(fabric.device)).cpu())
            process_states = [dict(process_rng, torch=torch_states[r]) for r in range(fabric.world_size)]
        else:
            process_states, generator_states = [process_rng], [generator_state]
        if self.rank != 0:
            return
        save_checkpoint({
            "format": CHECKPOINT_FORMAT, "recipe": self.recipe.model_dump(), "model_spec": self.model_spec,
            "model": self.raw_model.state_dict(), "optimizer": ctx.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(), "methods": [m.state_dict() for m in self.methods],
            "rng": {"process": process_states, "generator": generator_states}, "epoch": epochs_done,
            "step": ctx.step, "per_device_batch": self.loader.batch_size, "history": self.history,
            "elapsed": self.elapsed, "samples_seen": self.samples_seen,
        }, path)

    def finish(self, out_path: Path | None) -> FitResult:
        summary = self._summary()
        if self.rank == 0 and out_path is not None:
            (out_path / "summary.json").write_text(json.dumps(summary, indent=2))
        self.console.print(
            f"[bold]done[/bold]: final test acc {summary['final_test_acc']:.4f} (best "
            f"{summary['best_test_acc']:.4f}), {summary['train_time']:.1f} s training, "
            f"{summary['samples_per_s']:.0f} samples/s, peak memory {summary['peak_memory_mb']:.0f} MB")
        return FitResult(summary=summary, history=self.history, model=self.raw_model, rank=self.rank)

    def _summary(self) -> dict[str, Any]:
        history = self.history

        def best(key: str) -> float:
            values = [h[key] for h in history if key in h]
            return max(values) if values else math.nan

        last = dict(history[-1] if history else {}, **self.final_metrics)
        return {
            "recipe": self.recipe.name, "epochs": len(history), "steps": self.ctx.step,
            "params": sum(p.numel() for p in self.raw_model.parameters()),
            "final_test_acc": last.get("test_acc", math.nan), "best_test_acc": best("test_acc"),
            "exported_after_training": bool(self.final_metrics),
            "final_val_acc": last.get("val_acc", math.nan), "best_val_acc": best("val_acc"),
            "final_train_loss": last.get("train_loss", math.nan), "train_time": self.elapsed,
            "samples_per_s": self.samples_seen / self.elapsed if self.elapsed else 0.0,
            "time_to_target": self.time_to_target, "target_accuracy": self.cfg.target_accuracy,
            "peak_memory_mb": _peak_memory_mb(self.ctx.device), "world_size": self.world_size,
            "global_batch": self.ctx.global_batch, "device": str(self.ctx.device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": sys.version.split()[0],
        }


def _check_selection(positions: list[int], available: int, accumulation: int, name: str) -> None:
    if not positions:
        raise ValueError(f"method {name!r} selected no batches; select_batches must keep at least one optimizer step")
    if any(b <= a for a, b in zip(positions, positions[1:])) or positions[0] < 0 or positions[-1] >= available:
        raise ValueError(f"method {name!r}: select_batches must return strictly increasing positions in "
                         f"[0, {available}), got {positions[:8]}{' ...' if len(positions) > 8 else ''}")
    if len(positions) % accumulation:
        raise ValueError(f"method {name!r} selected {len(positions)} micro-batches, not a multiple of "
                         f"train.accumulation={accumulation}; keep whole optimizer steps")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}",
             f"train {record['train_acc']:.4f}"]
    parts += [f"{split} {record[f'{split}_acc']:.4f}" for split in ("val", "test") if f"{split}_acc" in record]
    parts += [f"lr {record['lr']:.4g}", f"{record['epoch_time']:.1f} s",
              f"{record['samples_per_s']:.0f} samples/s"]
    return "  ".join(parts)
