"""Stochastic weight averaging (SWA): the equal-weight average of the weights visited over the end of training, with
BatchNorm statistics re-estimated for the averaged weights before it is evaluated.

Paper: Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, "Averaging Weights Leads to Wider Optima and Better
Generalization", UAI 2018, arXiv 1803.05407.

From the epoch at ``start`` (a fraction of training) on, at the end of every epoch (or every step, ``update =
"step"``)

    w_swa ← w_swa + (w − w_swa) / (n + 1),   n ← n + 1          (the running mean of the n + 1 weights seen)

and, optionally, the LR is annealed from the scheduled value to a constant ``swa_lr`` over ``anneal_epochs``
(cosine or linear, like ``torch.optim.swa_utils.SWALR``) and held there. The averaged weights were never trained
with the BatchNorm running statistics of the live model, so before every evaluation of the average those statistics
are recomputed on training data: reset, then one forward pass in training mode with cumulative averaging
(``momentum = None``), as ``torch.optim.swa_utils.update_bn`` does. Composer's SWA skips this and relies on training
after ``swa_end`` to refresh them; here the average is evaluated with statistics that belong to it.

Pitfalls handled: buffers other than BN statistics are copied from the live model; integer parameters are not
averaged; the BN pass runs without gradients and on the un-augmented training data (normalised as the model sees it),
in fixed order, so every process computes the same statistics; the averaged model is kept on the model's device and
saved in checkpoints (a resumed run continues the same average); at the end of training the averaged weights (and
their statistics) are loaded into the model (``export = true``), so ``fit`` returns the SWA model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method
from regimen.models import copy_module

__all__ = ["SWAMethod", "recompute_bn_statistics", "swa_lr_factor", "swa_update"]


@checked_arguments
@torch.no_grad()
def swa_update(average: nn.Module, model: nn.Module, n_averaged: int) -> int:
    """``average ← average + (model − average) / (n + 1)`` on floating parameters (the first call, ``n = 0``, copies);
    buffers copied. Returns ``n + 1``."""
    if isinstance(n_averaged, bool) or not isinstance(n_averaged, int) or n_averaged < 0:
        raise ValueError(f"n_averaged must be an int >= 0, got {n_averaged!r}")
    pairs = list(zip(average.parameters(), model.parameters(), strict=True))
    for avg, param in pairs:
        if avg.shape != param.shape:
            raise ValueError(f"average and model differ in a parameter's shape: {tuple(avg.shape)} vs "
                             f"{tuple(param.shape)}")
    for avg, param in pairs:
        if n_averaged == 0 or not avg.is_floating_point():
            avg.copy_(param.detach())
        else:
            avg.add_((param.detach().to(avg.dtype) - avg) / (n_averaged + 1))
    for avg_buffer, buffer in zip(average.buffers(), model.buffers(), strict=True):
        avg_buffer.copy_(buffer)
    return n_averaged + 1


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@checked_arguments
@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches: Iterable[Any]) -> bool:
    """Reset the running statistics of every BatchNorm layer of ``model`` and re-estimate them as the plain average
    over ``batches`` (inputs, or ``(inputs, ...)`` tuples) of one training-mode forward pass each; the model's mode
    and the layers' momenta are restored. Returns False (nothing done) when the model has no BatchNorm layer."""
    norms = _batch_norms(model)
    if not norms:
        return False
    momenta = [bn.momentum for bn in norms]
    was_training = model.training
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    seen = 0
    try:
        for batch in batches:
            model(batch[0] if isinstance(batch, tuple | list) else batch)
            seen += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.train(was_training)
    if seen == 0:
        raise ValueError("batches is empty: BatchNorm statistics need at least one batch")
    return True


@checked_arguments
def swa_lr_factor(t: float, anneal_epochs: float, anneal: str = "cos") -> float:
    """Weight of ``swa_lr`` after ``t`` epochs of annealing: ``lr = (1 − a) · lr_start + a · swa_lr`` with
    ``a = (1 − cos(π t/T))/2`` (cos) or ``t/T`` (linear), 1 from ``T`` on (and at once when ``T = 0``)."""
    if anneal not in ("cos", "linear"):
        raise ValueError(f"anneal must be 'cos' or 'linear', got {anneal!r}")
    if t < 0 or anneal_epochs < 0:
        raise ValueError(f"t and anneal_epochs must be >= 0, got t={t}, anneal_epochs={anneal_epochs}")
    if anneal_epochs <= 0:
        return 1.0
    q = min(max(t / anneal_epochs, 0.0), 1.0)
    return (1.0 - math.cos(math.pi * q)) / 2.0 if anneal == "cos" else q


@register_method
class SWAMethod(Method):
    """Stochastic weight averaging (Izmailov 2018): the mean of the weights over the end of training, evaluated with
    BatchNorm statistics recomputed on training data.

    Args:
        start: fraction of training in [0, 1) after which averaging starts (epochs from ``floor(start · epochs)`` on
            are averaged at their end; Izmailov et al.: 0.75).
        update: average at every ``"epoch"`` end (the paper) or after every optimizer ``"step"``.
        swa_lr: a constant LR for the averaging phase (reached after ``anneal_epochs``); ``None`` keeps the recipe's
            schedule.
        anneal_epochs, anneal: how the LR goes from the scheduled value to ``swa_lr`` (``"cos"`` or ``"linear"``).
        bn_batch_size: batch size of the BatchNorm re-estimation pass; ``bn_batches`` caps its number of batches
            (``None``: one pass over the training set).
        export: load the averaged weights into the model at the end of training.
    """

    name = "swa"
    after = ("hesso", "maestro", "nested_width", "nm_sparsity", "trp")
    constraint_reason = ("the averaged weights are loaded into the model at the end of training, before the methods "
                         "that export a pruned, factorised or masked model do (on_train_end runs in reverse order)")
    paper_id = "arXiv:1803.05407"
    claim = ("averaging the weights along the SGD trajectory with a cyclical or constant LR gives wider optima and "
             "better test accuracy than conventional training on CIFAR-10/100 and ImageNet")
    claimed_effect = "better"

    def __init__(self, start: float = 0.75, update: Literal["epoch", "step"] = "epoch", swa_lr: float | None = None,
                 anneal_epochs: float = 1.0, anneal: Literal["cos", "linear"] = "cos", bn_batch_size: int = 256,
                 bn_batches: int | None = None, export: bool = True) -> None:
        if isinstance(start, bool) or not isinstance(start, int | float) or not 0.0 <= start < 1.0:
            raise ValueError(f"start must be a fraction of training in [0, 1) (SWA must start before the end of "
                             f"training), got {start!r}")
        if update not in ("epoch", "step"):
            raise ValueError(f"update must be 'epoch' or 'step', got {update!r}")
        if swa_lr is not None and not (isinstance(swa_lr, int | float) and swa_lr > 0):
            raise ValueError(f"swa_lr must be a float > 0 or None, got {swa_lr!r}")
        if not (isinstance(anneal_epochs, int | float) and anneal_epochs >= 0):
            raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs!r}")
        swa_lr_factor(0.0, 1.0, anneal)  # checks anneal
        if isinstance(bn_batch_size, bool) or not isinstance(bn_batch_size, int) or bn_batch_size < 1:
            raise ValueError(f"bn_batch_size must be an int >= 1, got {bn_batch_size!r}")
        if bn_batches is not None and (isinstance(bn_batches, bool) or not isinstance(bn_batches, int)
                                       or bn_batches < 1):
            raise ValueError(f"bn_batches must be an int >= 1 or None, got {bn_batches!r}")
        self.start, self.update, self.swa_lr = float(start), update, swa_lr
        self.anneal_epochs, self.anneal = float(anneal_epochs), anneal
        self.bn_batch_size, self.bn_batches, self.export = bn_batch_size, bn_batches, bool(export)
        self.average: nn.Module | None = None
        self.n_averaged = 0
        self.lr_start: list[float] | None = None  # the scheduled LRs when the SWA phase began
        self.phase_start_step: int | None = None
        self._bn_fresh_for = -1  # n_averaged the BN statistics were computed for
        self._exported = False
        self._pending: dict[str, Any] | None = None

    # -------------------------------------------------------------------------------------------------- phases
    def start_epoch(self, ctx: Context) -> int:
        """0-based index of the first averaged epoch."""
        return int(math.floor(self.start * ctx.run.epochs))

    def _in_phase(self, ctx: Context) -> bool:
        return ctx.epoch >= self.start_epoch(ctx)

    @staticmethod
    def _unwrapped(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def _ensure(self, ctx: Context) -> None:
        """The averaged copy, made when first needed (after every method's surgery), or restored from a checkpoint."""
        if self.average is None:
            self.average = copy_module(self._unwrapped(ctx.model)).requires_grad_(False)
            if self._pending is not None:
                self._load(self._pending)

    def _average_in(self, ctx: Context) -> None:
        self._ensure(ctx)
        self.n_averaged = swa_update(self.average, self._unwrapped(ctx.model), self.n_averaged)

    # ------------------------------------------------------------------------------------------------------ hooks
    def optimizer_step(self, closure, next, ctx: Context) -> None:
        if self.swa_lr is not None and self._in_phase(ctx):
            groups = ctx.optimizer.param_groups
            if self.phase_start_step is None:
                self.phase_start_step, self.lr_start = ctx.step, [g["lr"] for g in groups]
            t = (ctx.step - self.phase_start_step) / max(ctx.run.steps_per_epoch, 1)
            a = swa_lr_factor(t, self.anneal_epochs, self.anneal)
            for group, lr0 in zip(groups, self.lr_start):
                group["lr"] = (1.0 - a) * lr0 + a * self.swa_lr
        return next(closure)

    def after_step(self, ctx: Context) -> None:
        if self.update == "step" and self._in_phase(ctx):
            self._average_in(ctx)

    def on_epoch_end(self, ctx: Context) -> None:
        if self.update == "epoch" and self._in_phase(ctx):
            self._average_in(ctx)
        if self.average is not None:
            self.log(ctx, "n_averaged", self.n_averaged)

    def _bn_batches(self, ctx: Context):
        data = ctx.train_data
        n = len(data)
        count = math.ceil(n / self.bn_batch_size)
        if self.bn_batches is not None:
            count = min(count, self.bn_batches)
        for i in range(count):
            index = torch.arange(i * self.bn_batch_size, min(n, (i + 1) * self.bn_batch_size))
            x, _ = data.gather(index, ctx.run.device)
            yield ctx.normalize(x)

    def averaged_model(self, ctx: Context) -> nn.Module | None:
        """The averaged model with BatchNorm statistics for its weights, or ``None`` before averaging started."""
        if self.average is None and self._pending is None:
            return None
        self._ensure(ctx)
        self.average.to(ctx.run.device)
        if self._bn_fresh_for != self.n_averaged:
            if ctx.train_data is not None:
                recompute_bn_statistics(self.average, self._bn_batches(ctx))
            self._bn_fresh_for = self.n_averaged
        return self.average

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        if self._exported:
            return None
        return self.averaged_model(ctx)

    def on_train_end(self, ctx: Context) -> None:
        average = self.averaged_model(ctx)
        if self.export and average is not None:
            with torch.no_grad():
                self._unwrapped(ctx.model).load_state_dict(average.state_dict())
            self._exported = True

    # ------------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.average is None:
            return {} if self._pending is None else self._pending
        return {"average": self.average.state_dict(), "n_averaged": self.n_averaged, "lr_start": self.lr_start,
                "phase_start_step": self.phase_start_step}

    def _load(self, state: dict[str, Any]) -> None:
        self.average.load_state_dict(state["average"])
        self.n_averaged = state["n_averaged"]
        self._pending = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.lr_start, self.phase_start_step = state["lr_start"], state["phase_start_step"]
        self.n_averaged = state["n_averaged"]
        if self.average is None:
            self._pending = state
        else:
            self._load(state)
