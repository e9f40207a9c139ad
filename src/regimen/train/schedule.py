"""Learning-rate schedules as a function of training progress (fractional epochs), so they stay correct when a
method changes the number of steps per epoch (adaptive batch size).

factor(p), p = progress in [0, 1]:
- warmup (any schedule): linear from 1/warmup_steps to 1 over the first ``warmup_epochs``;
- cosine: min + (1 - min) * (1 + cos(pi * q)) / 2 with q the progress after warmup;
- onecycle (Smith & Topin 2017): cosine from 1/25 up to 1 over ``pct_start``, then cosine down to 1/(25 * 1e4);
- step: gamma ** (number of milestones passed), milestones given as fractions of training;
- constant: 1.

A run resumed with more ``train.epochs`` than its schedule was laid out for extends it as ``schedule.extend`` says:
``"stretch"`` lays the schedule out again over all epochs (the LR jumps to its value at the new progress: back up,
for a cosine that had decayed); ``"continue"`` keeps the final LR of the original schedule for the added epochs;
``"restart"`` runs the schedule again (warm-up included) over the added epochs, a warm restart (SGDR, Loshchilov &
Hutter 2017). The trainer warns with the LR before and after whenever it extends a schedule.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ProgressSchedule", "schedule_factor"]


def _cosine(start: float, end: float, q: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * min(max(q, 0.0), 1.0))) / 2.0


def schedule_factor(config, progress: float, epochs: float) -> float:
    """LR multiplier at ``progress`` (fraction of training done) for the recipe's ``schedule`` table."""
    warmup = min(config.warmup_epochs / epochs, 1.0) if epochs > 0 else 0.0
    if config.name == "onecycle":
        if progress < config.pct_start:
            return _cosine(1.0 / 25.0, 1.0, progress / config.pct_start)
        return _cosine(1.0, 1.0 / 25.0 / 1e4, (progress - config.pct_start) / (1.0 - config.pct_start))
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)
    if config.name == "cosine":
        q = (progress - warmup) / (1.0 - warmup) if warmup < 1.0 else 1.0
        return _cosine(1.0, config.min_lr_ratio, q)
    if config.name == "step":
        return config.gamma ** sum(progress >= m for m in config.milestones)
    return 1.0


class ProgressSchedule:
    """Sets every param group's ``lr = initial_lr * factor(progress)``; call ``update(progress)`` before a step.

    ``progress`` is the fraction of the run's ``total`` epochs done; the schedule's own shape spans ``epochs`` (the
    same unless :meth:`extend` added epochs with ``"continue"`` or ``"restart"``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, config, epochs: float) -> None:
        self.optimizer = optimizer
        self.config = config
        self.epochs = epochs
        self.total = epochs
        self.mode = "stretch"
        self.initial_lrs = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:  # SGDW scales its decoupled decay by lr / initial_lr: the schedule's base
            if "initial_lr" in group:
                group["initial_lr"] = group["lr"]
        self.last_factor = 1.0

    def factor(self, progress: float) -> float:
        """The LR multiplier at ``progress`` of the run."""
        done = progress * self.total
        if self.mode == "stretch" or done <= self.epochs:
            return schedule_factor(self.config, done / self.epochs, self.epochs)
        if self.mode == "continue":
            return schedule_factor(self.config, 1.0, self.epochs)
        added = self.total - self.epochs
        return schedule_factor(self.config, (done - self.epochs) / added, added)

    def extend(self, total: float, mode: str) -> None:
        """Make the run ``total`` epochs long: ``"stretch"`` lays the schedule out again over ``total``;
        ``"continue"`` / ``"restart"`` keep its shape over its epochs and hold its final LR / run it again over the
        added ones. Fewer epochs always stretch (there is nothing to continue)."""
        if mode not in ("stretch", "continue", "restart"):
            raise ValueError(f"schedule.extend must be 'stretch', 'continue' or 'restart', got {mode!r}")
        if mode == "stretch" or total < self.epochs:
            self.epochs, self.total, self.mode = total, total, "stretch"
        else:
            self.total, self.mode = total, mode

    def update(self, progress: float) -> float:
        self.last_factor = self.factor(progress)
        for group, initial in zip(self.optimizer.param_groups, self.initial_lrs):
            group["lr"] = initial * self.last_factor
        return self.last_factor

    def state_dict(self) -> dict:
        return {"initial_lrs": list(self.initial_lrs), "last_factor": self.last_factor, "epochs": self.epochs,
                "total": self.total, "mode": self.mode}

    def load_state_dict(self, state: dict) -> None:
        self.initial_lrs = list(state["initial_lrs"])
        self.last_factor = state["last_factor"]
        self.epochs = state["epochs"]
        self.total = state.get("total", self.epochs)
        self.mode = state.get("mode", "stretch")
