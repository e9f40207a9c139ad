"""Sequence-length warm-up: train a language model on short sequences first and grow them to full length.

Paper: Li, Zhang, He, "The Stability-Efficiency Dilemma: Investigating Sequence Length Warmup for Training GPT
Models", NeurIPS 2022, arXiv 2108.06084; MosaicML Composer's ``SeqLengthWarmup`` is the anchor for the schedule.
For training progress ``p`` (optimizer steps done / total) and warm-up fraction ``duration``::

    L(p) = min(max_len, min_len + step_size · ⌊(max_len − min_len) · min(p / duration, 1) / step_size⌋)

and every micro-batch ``(inputs, targets)`` of shape ``(N, T)`` is truncated to its first ``L(p)`` positions
(``truncate``; Composer's default). Evaluation always sees full sequences. Pitfalls handled: ``L`` never exceeds the
batch's own length, is at least ``min_len`` and a multiple of ``step_size`` above it; the length is a pure function
of the step, so a resumed run truncates exactly as the uninterrupted one did.
"""

from __future__ import annotations

from typing import Any

import torch

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["SeqLengthWarmupMethod", "seq_length_at", "truncate_sequences"]


@checked_arguments
def seq_length_at(progress: float, min_len: int, max_len: int, duration: float, step_size: int = 8) -> int:
    """``L(p)`` of the module docstring."""
    if not 0 < duration <= 1:
        raise ValueError(f"duration must be in (0, 1], got {duration}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    if not progress >= 0:
        raise ValueError(f"progress must be >= 0 (the fraction of training done), got {progress}")
    fraction = min(progress / duration, 1.0)
    grown = int((max_len - min_len) * fraction) // step_size * step_size
    return max_len if fraction >= 1.0 else min(max_len, min_len + grown)


@checked_arguments
def truncate_sequences(inputs: torch.Tensor, targets: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``length`` positions of ``(N, T)`` token inputs and their next-token targets."""
    if inputs.dim() < 2 or targets.shape[:2] != inputs.shape[:2]:
        raise ValueError(f"seq_length_warmup needs (N, T) inputs and targets, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    return inputs[:, :length], targets[:, :length]


@register_method
class SeqLengthWarmupMethod(Method):
    """Grow the training sequence length linearly from ``min_len`` over the first ``duration`` of training.

    Logs ``seq_length_warmup/length`` (the length of the last step) at every epoch end.

    Args:
        duration: fraction of training over which the length grows (Composer: 0.3).
        min_len: the first length (Composer: 8). max_len: the last (``0``: the data's ``seq_len``).
        step_size: lengths are ``min_len`` plus multiples of this (Composer: 8).
    """

    name = "seq_length_warmup"
    inputs = ("tokens",)
    targets = ("tokens",)
    paper_id = "arXiv:2108.06084"
    claim = ("sequence length warm-up stabilises GPT pre-training at large batches and learning rates, reaching the "
             "same validation perplexity with fewer tokens and less wall-clock time")
    claimed_effect = "no_worse"

    def __init__(self, duration: float = 0.3, min_len: int = 8, max_len: int = 0, step_size: int = 8) -> None:
        if not 0 < duration <= 1:
            raise ValueError(f"seq_length_warmup: duration must be in (0, 1], got {duration}")
        if min_len < 1 or max_len < 0 or step_size < 1:
            raise ValueError(f"seq_length_warmup: need min_len >= 1, max_len >= 0 (0: the data's), step_size >= 1; "
                             f"got {min_len}, {max_len}, {step_size}")
        if max_len and max_len < min_len:
            raise ValueError(f"seq_length_warmup: max_len = {max_len} is shorter than min_len = {min_len}")
        self.duration, self.min_len, self.max_len, self.step_size = float(duration), min_len, max_len, step_size
        self.length = 0

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        full = x.shape[1]
        top = min(self.max_len or full, full)
        total = max(ctx.run.steps_per_epoch * ctx.run.epochs, 1)
        self.length = seq_length_at(ctx.step / total, min(self.min_len, top), top, self.duration, self.step_size)
        return truncate_sequences(x, y, self.length)

    def on_epoch_end(self, ctx: Context) -> None:
        self.log(ctx, "length", self.length)
