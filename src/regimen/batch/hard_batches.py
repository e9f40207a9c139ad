"""Train on the hardest mini-batches: rank the epoch's mini-batches by loss and keep the top fraction δ.

Paper: Sahayam, Zakkam & Jayaraman, "Can we learn better with hard samples?", 2023, arXiv 2304.03486. The network is
trained only on the ``⌈δ · n_batches⌉`` mini-batches with the highest loss
``L_b = (1/|b|) Σ_{i∈b} ℓ(f(x_i), y_i)``, the mean loss of batch ``b`` under the current model (the paper reports
faster generalisation for small δ).

Usage in any loop::

    selector = HighLossBatchSelector(fraction=0.5)
    batches = list(loader)                        # this epoch's mini-batches
    for x, y in selector(model, batches, loss_fn):  # scored without gradients, hardest first
        ...train step...

In the trainer, the recipe method ``high_loss_batches`` (:class:`HighLossBatchesMethod`) does this through the
``select_batches`` hook: at the start of every epoch (from ``start_epoch`` on) it scores that epoch's mini-batches
with one no-grad forward pass each, keeps the top δ and the loop trains on them in loader order. With gradient
accumulation a "mini-batch" is one optimizer step's global batch. Under DDP each rank scores its share and the loss
sums and counts are all-reduced, so every rank keeps the same steps.

How this differs from the authors' code (github.com/imjohnzakkam/DyBAT, ``run.py``): there the
batch partition is fixed (no shuffling), the first epoch trains on every batch, and afterwards batches are ranked by
the loss recorded at their *last training step* (stale for batches not retrained, no extra forward pass); it stops
after ``epochs × n_batches`` steps, i.e. at the same number of updates as the baseline, and keeps
``int(δ · n_batches)`` (floor). Here batches are reshuffled every epoch, so they are scored afresh under the current
model (costs one forward pass per batch, in eval mode), the count is rounded up, and ``train.epochs`` counts passes
over the selected batches: compare at equal updates by giving δ = 0.5 twice the epochs. ``start_epoch=1`` (default)
trains the first epoch on every batch, as the authors' code does.

Pitfalls handled:
  * Scoring runs under ``torch.no_grad`` in eval mode (restored afterwards), so scoring does not update BatchNorm
    running statistics or draw dropout masks; pass ``eval_mode=False`` to score in the model's current mode. Scoring
    sees the un-augmented images (``transform_batch`` runs only for the trained batches).
  * Ties are broken by batch position (stable), so selection is deterministic.
  * At least ``min_batches`` batches are kept; ``fraction`` must be in (0, 1]; NaN losses are an error (a NaN would
    sort arbitrarily).
  * Scoring costs one forward pass per batch; the selection itself is one ``argsort``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["HighLossBatchSelector", "HighLossBatchesMethod", "batch_loss_sums", "select_high_loss"]


@checked_arguments
def select_high_loss(batch_losses: torch.Tensor | Sequence[float], fraction: float, min_batches: int = 1
                     ) -> torch.Tensor:
    """Indices of the ``max(min_batches, ⌈fraction · n⌉)`` highest losses, hardest first (ties by position).

    Args:
        batch_losses: one loss per mini-batch, 1-d.
        fraction: δ in (0, 1].
        min_batches: lower bound on the number kept.
    """
    require_data(batch_losses=batch_losses)
    losses = torch.as_tensor(batch_losses, dtype=torch.float64)
    if losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"batch_losses must be a non-empty 1-d sequence, got shape {tuple(losses.shape)}")
    if bool(torch.isnan(losses).any()):
        raise ValueError("batch_losses contains NaN")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if min_batches < 1:
        raise ValueError(f"min_batches must be >= 1, got {min_batches}")
    keep = min(losses.numel(), max(min_batches, math.ceil(fraction * losses.numel() - 1e-9)))
    order = torch.sort(losses, descending=True, stable=True).indices
    return order[:keep]


@checked_arguments
@torch.no_grad()
def batch_loss_sums(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], eval_mode: bool = True
                    ) -> torch.Tensor:
    """``(n_batches, 2)`` float64: the summed loss ``|b| · L_b`` and the size ``|b|`` of every batch (no gradients).

    Sums and counts, not means, so that the shares of one global batch on several ranks (or several micro-batches
    of one optimizer step) add up to the global batch's mean loss. ``loss_fn`` returns the batch mean.
    """
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        rows = [(float(loss_fn(model(x), y)) * y.shape[0], float(y.shape[0])) for x, y in batches]
    finally:
        model.train(was_training)
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 2)


@checked_arguments
class HighLossBatchSelector:
    """Keep the top fraction of an epoch's mini-batches ranked by loss (Sahayam et al. 2023).

    Args:
        fraction: δ, the fraction of batches trained on.
        min_batches: keep at least this many.
        eval_mode: score in eval mode (no BN-statistics update, no dropout).
    """

    def __init__(self, fraction: float = 0.5, min_batches: int = 1, eval_mode: bool = True) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if min_batches < 1:
            raise ValueError(f"min_batches must be >= 1, got {min_batches}")
        self.fraction, self.min_batches, self.eval_mode = fraction, min_batches, eval_mode
        self.last_losses: torch.Tensor | None = None

    def select(self, batch_losses: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """Indices of the batches to train on, hardest first."""
        return select_high_loss(batch_losses, self.fraction, self.min_batches)

    @torch.no_grad()
    def score(self, model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The mean loss of every batch under ``model`` (no gradients)."""
        sums = batch_loss_sums(model, batches, loss_fn, self.eval_mode)
        self.last_losses = sums[:, 0] / sums[:, 1].clamp_min(1.0)
        return self.last_losses

    def __call__(self, model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> list[Any]:
        """Score ``batches`` and return the selected ones, hardest first."""
        batches = list(batches)
        indices = self.select(self.score(model, batches, loss_fn))
        return [batches[i] for i in indices.tolist()]


def _check_start_epoch(start_epoch: int) -> None:
    if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
        raise ValueError(f"start_epoch must be an int >= 0, got {start_epoch!r}")


def _step_positions(steps: torch.Tensor, accumulation: int) -> list[int]:
    """Micro-batch positions of the chosen optimizer steps, in loader order."""
    return [step * accumulation + micro for step in sorted(steps.tolist()) for micro in range(accumulation)]


@register_method
class HighLossBatchesMethod(Method):
    """Train each epoch only on the top-δ fraction of its mini-batches ranked by loss (Sahayam et al. 2023).

    Args:
        fraction: δ in (0, 1], the fraction of the epoch's optimizer steps trained on (1.0 = no selection).
        min_batches: keep at least this many optimizer steps per epoch.
        eval_mode: score in eval mode (no BN-statistics update, no dropout).
        start_epoch: epochs trained on every batch before selection starts (the authors' code: 1).
    """

    name = "high_loss_batches"
    paper_id = "arXiv:2304.03486"
    claim = "training only on the highest-loss mini-batches keeps accuracy with fewer updates"
    claimed_effect = "no_worse"

    def __init__(self, fraction: float = 0.5, min_batches: int = 1, eval_mode: bool = True,
                 start_epoch: int = 1) -> None:
        self.selector = HighLossBatchSelector(fraction, min_batches, eval_mode)
        _check_start_epoch(start_epoch)
        self.start_epoch = start_epoch

    def select_batches(self, batches: Iterable[Any], ctx: Context) -> list[int] | None:
        if ctx.epoch < self.start_epoch or self.selector.fraction == 1.0:
            self.log(ctx, "kept_fraction", 1.0)
            return None
        accumulation = ctx.run.accumulation
        with ctx.autocast():
            sums = batch_loss_sums(ctx.model, ((ctx.normalize(x), y) for x, y, _ in batches), ctx.criterion,
                                   self.selector.eval_mode)
        sums = ctx.all_reduce(sums.to(ctx.run.device), "sum").cpu()  # each rank holds its share of every batch
        steps = sums.shape[0] // accumulation  # a trailing incomplete step is not trained anyway
        per_step = sums[: steps * accumulation].reshape(steps, accumulation, 2).sum(dim=1)
        losses = per_step[:, 0] / per_step[:, 1].clamp_min(1.0)
        kept = self.selector.select(losses)
        self.selector.last_losses = losses
        self.log(ctx, "kept_fraction", kept.numel() / steps)
        self.log(ctx, "loss_all", losses.mean())
        self.log(ctx, "loss_kept", losses[kept].mean())
        return _step_positions(kept, accumulation)


__getattr__ = deprecated_aliases(__name__, {"HighLossBatches": "HighLossBatchesMethod"}, globals())
