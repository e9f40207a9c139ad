"""P×K batches: every training batch holds P classes × K samples of each (class-balanced sampling for metric learning).

Paper: the batch construction of Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
Re-Identification", 2017, arXiv 1703.07737 (P identities × K images per batch), used by Wang et al.'s Multi-Similarity
loss (CVPR 2019, arXiv 1904.06627): with K ≥ 2 every anchor of a pair-based loss has K - 1 positives and
(P - 1)·K negatives, whereas a uniformly shuffled batch of B items from C classes gives each anchor about B/C - 1
positives and, for many classes, often none.

Formula: a batch of ``B = P·K`` draws P distinct classes uniformly without replacement, then K distinct members of
each (with replacement only for a class smaller than K) — :class:`regimen.losses.PKSampler`, vectorised.

In the trainer, ``PKBatchesMethod`` (recipe ``pk_batches``) replaces each micro-batch the loader yields by a P×K
batch of the same size drawn from the training set with ``ctx.generator`` (so a seed gives the same batches, and a
resume continues them), and sets ``ctx.batch_indices`` to the drawn samples. An epoch keeps its number of steps, but
it is no longer one pass over the data: some samples are drawn twice and some not at all (the paper's sampler works
the same way).
"""

from __future__ import annotations

from typing import Any

import torch

from regimen.losses import PKSampler
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["PKBatchesMethod", "pk_batch_indices"]


@checked_arguments
def pk_batch_indices(sampler: PKSampler) -> torch.Tensor:
    """One batch of ``sampler`` (``P·K`` dataset indices, class by class) as an int64 tensor."""
    return torch.tensor(next(iter(sampler)), dtype=torch.int64)


def _dataset_labels(data: Any) -> torch.Tensor:
    for attribute in ("labels", "targets"):
        labels = getattr(data, attribute, None)
        if isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point():
            return labels
    raise ValueError("pk_batches needs a training set with integer class labels (a labels or targets tensor (N,))")


@register_method
class PKBatchesMethod(Method):
    """Draw every training batch as P classes × K samples per class (P = batch size / K)."""

    name = "pk_batches"
    paper_id = "arXiv:1703.07737"
    claim = ("batches of P identities x K images give every anchor K - 1 positives, which pair-based metric losses "
             "(batch-hard triplet, multi-similarity) need to mine informative pairs")
    claimed_effect = "better"
    targets = ("identity",)

    def __init__(self, samples_per_class: int = 4) -> None:
        if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 2:
            raise ValueError(f"pk_batches: samples_per_class must be an int >= 2 (an anchor needs a positive), got "
                             f"{samples_per_class!r}")
        self.k = samples_per_class
        self.sampler: PKSampler | None = None

    def setup(self, ctx: Context) -> None:
        batch = ctx.run.per_device_batch
        if batch % self.k:
            raise ValueError(f"train.batch_size = {batch} is not a multiple of samples_per_class = {self.k}")
        labels = _dataset_labels(ctx.train_data)
        classes = int(labels.unique().numel())
        if batch // self.k > classes:
            raise ValueError(f"train.batch_size = {batch} / samples_per_class = {self.k} asks for {batch // self.k} "
                             f"classes per batch, but the training set has {classes}; raise samples_per_class")
        self.sampler = PKSampler(labels, batch // self.k, self.k, num_batches=1, generator=ctx.generator)

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        if self.sampler is None:
            raise RuntimeError("pk_batches: setup was not called")
        if len(y) != self.sampler.p * self.k:  # the batch size changed (set_batch_size) or a last partial batch
            if len(y) % self.k or len(y) // self.k > self.sampler._counts.numel():
                return x, y
            self.sampler.p = len(y) // self.k
        indices = pk_batch_indices(self.sampler)
        x, y = ctx.train_data.gather(indices, x.device)
        ctx.batch_indices = indices
        return x, y
