"""Selective backprop: score every example of a batch with a no-grad forward pass and backpropagate only a sample of
them, drawn with probability rising with the percentile of their loss.

Paper: Jiang, Wong, Zhou, Andersen, Dean, Ganger, Joshi, Kaminsky, Kozuch, Lipton & Pillai, "Accelerating Deep
Learning by Focusing on the Biggest Losers", 2019, arXiv 1910.00762.

For a batch of N examples with losses ℓ_i (no gradient), let ``r_i`` be the rank of ℓ_i (0 = smallest, ties by
position) and ``q_i = (r_i + ½)/N`` its percentile. ``k = max(1, ⌊keep · N⌋)`` examples are drawn without
replacement with probabilities proportional to

    w_i = q_i^β,   β = 1/keep − 1

(the paper's selection probability ``P(select) = F(ℓ)^β``; β = 1 at keep = ½), and only those k are trained on
(forward with gradient, loss, backward). This is Composer's form (a fixed k per batch, so the batch shape is
predictable); the paper instead keeps each example independently and fills a backprop batch from several forward
batches. Sampling without replacement proportional to ``w`` is done with Gumbel-top-k (``argtopk(log w + G)``, G
standard Gumbel from the run's generator), which draws the same distribution as sequential weighted sampling
(``numpy.random.choice(N, k, replace=False, p=w/Σw)``).

As a trainer method (:class:`SelectiveBackpropMethod`, ``transform_batch``) selection happens per micro-batch, only
within ``[start, end)`` of training and not on every ``interrupt``-th step (those train on the whole batch, as in
Composer); it works on any batch whose rows are examples (the inputs and targets are indexed, and so are
``ctx.batch_indices``). Methods listed before it in the recipe transform the batch first (list it last to score the
batch as it will be trained). The scoring pass runs in the model's training mode with BatchNorm running statistics
frozen (``eval_mode = true`` scores in eval mode); it costs one forward pass per batch, and saves backward passes on
the dropped examples. ``scale_factor < 1`` (Composer's option) scores downsampled inputs instead: the scoring pass
sees ``F.interpolate(x, scale_factor=s, mode=bilinear)`` (linear for 3-d, trilinear for 5-d batches, as Composer) and
costs about ``s²`` of a full forward pass on images, while the selected examples train at full size. The model must
accept the smaller input (global pooling does); the ranking is only as good as the small image's losses.

Under DDP the selection is per device, by design (Composer does the same): each process ranks the losses of its own
per-device batch of b examples, keeps ``max(1, ⌊keep · b⌋)`` of them and draws them with its own generator
(``ctx.generator`` is seeded per rank); DDP then averages the processes' gradients, each the mean over that
process's kept examples. So W processes at b equal W independent selections of b, not one selection over the global
batch W·b (``tests/distributed`` measures the difference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch.sam import frozen_bn_statistics
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["SelectiveBackpropMethod", "downsample_for_scoring", "select_by_loss_percentile", "selection_weights"]

_INTERPOLATION = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _check_keep(keep: float) -> float:
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    return float(keep)


@checked_arguments
def selection_weights(losses: torch.Tensor, keep: float) -> torch.Tensor:
    """Unnormalised probabilities ``q_i^(1/keep − 1)`` of each example, ``q_i`` the loss percentile
    ``(rank + ½)/N``."""
    require_data(losses=losses)
    keep = _check_keep(keep)
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or losses.numel() == 0:
        raise ValueError(f"losses must be a non-empty 1-d tensor (one loss per example), got "
                         f"{getattr(losses, 'shape', type(losses).__name__)}")
    if not torch.isfinite(losses).all():
        raise ValueError("losses contain NaN or inf; the percentile of such a loss is undefined")
    n = losses.numel()
    order = torch.argsort(losses.detach(), stable=True)
    rank = torch.empty(n, dtype=torch.float64, device=losses.device)
    rank[order] = torch.arange(n, dtype=torch.float64, device=losses.device)
    return ((rank + 0.5) / n) ** (1.0 / keep - 1.0)


@checked_arguments
def select_by_loss_percentile(losses: torch.Tensor, keep: float, generator: torch.Generator | None = None
                              ) -> torch.Tensor:
    """Positions of the ``max(1, ⌊keep · N⌋)`` examples to backpropagate, sampled without replacement with
    probability ∝ :func:`selection_weights`; returned in increasing order (batch order)."""
    weights = selection_weights(losses, keep)
    n = weights.numel()
    k = max(1, int(keep * n))
    if k >= n:
        return torch.arange(n, device=losses.device)
    u = torch.rand(n, generator=generator, dtype=torch.float64).to(losses.device).clamp_(1e-300, 1.0)
    keys = weights.log() - torch.log(-torch.log(u))  # Gumbel-top-k
    return torch.sort(torch.topk(keys, k).indices).values


@checked_arguments
def downsample_for_scoring(x: torch.Tensor, scale_factor: float) -> torch.Tensor:
    """``x`` resized by ``scale_factor`` in (0, 1] over its spatial dimensions (linear / bilinear / trilinear for a
    3-d / 4-d / 5-d batch, ``align_corners=False``); ``x`` itself at 1."""
    if isinstance(scale_factor, bool) or not isinstance(scale_factor, int | float) or not 0.0 < scale_factor <= 1.0:
        raise ValueError(f"scale_factor must be in (0, 1], got {scale_factor!r}")
    if scale_factor == 1.0:
        return x
    if not isinstance(x, torch.Tensor) or x.dim() not in _INTERPOLATION:
        raise ValueError(f"scale_factor < 1 downsamples 3-d, 4-d or 5-d input tensors (N, C, ...), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point to be resized linearly, got {x.dtype}")
    return F.interpolate(x, scale_factor=scale_factor, mode=_INTERPOLATION[x.dim()], align_corners=False)


def _take(batch: Any, index: torch.Tensor, where: str) -> Any:
    """Rows ``index`` of a tensor, or of every tensor in a tuple/list/dict batch."""
    if isinstance(batch, torch.Tensor):
        return batch[index.to(batch.device)]
    if isinstance(batch, tuple | list):
        return type(batch)(_take(b, index, where) for b in batch)
    if isinstance(batch, dict):
        return {key: _take(value, index, where) for key, value in batch.items()}
    raise TypeError(f"selective_backprop: cannot select rows of {where} of type {type(batch).__name__}")


@register_method
class SelectiveBackpropMethod(Method):
    """Selective backprop (Jiang 2019): per example, a no-grad forward pass scores the loss, and only ⌊keep·N⌋
    examples, sampled with probability ∝ loss-percentile^(1/keep − 1), are backpropagated.

    Args:
        keep: fraction of each batch trained on (0, 1] (Composer: 0.5).
        start, end: the fraction of training in which selection is on (Composer: 0.5 and 0.9).
        interrupt: every ``interrupt``-th step trains on the whole batch (0: never; Composer: 2).
        eval_mode: score in eval mode instead of training mode with frozen BatchNorm statistics.
        scale_factor: downsample image inputs by this factor in (0, 1] for the scoring pass only (Composer: 1).
    """

    name = "selective_backprop"
    conflicts = ("aug_subset",)
    constraint_reason = "both choose the examples of each batch (aug_subset weights them for the whole batch)"
    paper_id = "arXiv:1910.00762"
    claim = ("backpropagating only high-loss examples reaches the target error of standard SGD up to 3.5x faster "
             "(CIFAR-10, CIFAR-100, SVHN) at equal final accuracy")
    claimed_effect = "no_worse"

    def __init__(self, keep: float = 0.5, start: float = 0.5, end: float = 0.9, interrupt: int = 2,
                 eval_mode: bool = False, scale_factor: float = 1.0) -> None:
        self.keep = _check_keep(keep)
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, int | float) or not 0.0 < scale_factor <= 1:
            raise ValueError(f"scale_factor must be in (0, 1] (the scoring pass's downsampling), got {scale_factor!r}")
        self.scale_factor = float(scale_factor)
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a fraction of training in [0, 1], got {value!r}")
        if not start < end:
            raise ValueError(f"start must be < end (the selection window), got start={start}, end={end}")
        if isinstance(interrupt, bool) or not isinstance(interrupt, int) or interrupt < 0 or interrupt == 1:
            raise ValueError(f"interrupt must be 0 (never) or an int >= 2, got {interrupt!r}")
        self.start, self.end, self.interrupt, self.eval_mode = float(start), float(end), interrupt, bool(eval_mode)

    def setup(self, ctx: Context) -> None:
        if self.scale_factor < 1.0 and ctx.run.input_kind != "image":
            raise ValueError(f"scale_factor={self.scale_factor} downsamples images; task {ctx.run.task!r} has "
                             f"{ctx.run.input_kind} inputs (use scale_factor = 1)")

    def active(self, ctx: Context) -> bool:
        """Whether this step selects: inside [start, end) of training and not an interrupt step."""
        total = max(ctx.run.epochs * ctx.run.steps_per_epoch, 1)
        progress = ctx.step / total
        if not self.start <= progress < self.end:
            return False
        return not (self.interrupt and (ctx.step + 1) % self.interrupt == 0)

    @torch.no_grad()
    def losses(self, model: nn.Module, x: Any, y: Any, criterion: Callable) -> torch.Tensor:
        """Per-example losses of the batch under the current model, without gradients or BN statistics updates."""
        was_training = model.training
        if self.eval_mode:
            model.eval()
        try:
            with frozen_bn_statistics(model):
                losses = criterion(model(downsample_for_scoring(x, self.scale_factor)), y, reduction="none")
        finally:
            model.train(was_training)
        if not (isinstance(losses, torch.Tensor) and losses.dim() >= 1 and losses.shape[0] == len(y)):
            raise RuntimeError(f"selective_backprop needs one loss per example from the criterion with "
                               f"reduction='none', got shape {tuple(getattr(losses, 'shape', ()))}")
        return losses.reshape(len(y), -1).mean(dim=1).float()

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        if not self.active(ctx):
            return x, y
        losses = self.losses(ctx.model, ctx.normalize(x), y, ctx.criterion)
        index = select_by_loss_percentile(losses, self.keep, ctx.generator).cpu()
        self.log(ctx, "kept", len(index) / len(losses))
        if ctx.batch_indices is not None:
            ctx.batch_indices = _take(ctx.batch_indices, index, "batch_indices")
        return _take(x, index, "the inputs"), _take(y, index, "the targets")
