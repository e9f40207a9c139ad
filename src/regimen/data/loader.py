"""A fast in-memory loader: the whole dataset is a tensor; batches are gathered by index.

Every epoch draws one permutation from a generator seeded by (seed, epoch), so the order is reproducible and a run
resumed at an epoch boundary sees exactly the batches of an uninterrupted one. With ``world_size > 1`` every global
batch of ``batch_size * world_size`` indices is cut into ``world_size`` consecutive slices, one per rank, so the
union of the ranks' batches equals the batch a single process would see at the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["Batch", "BatchSamplerLoader", "InMemoryLoader"]

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs (images: float in [0, 1]), targets, dataset indices


class InMemoryLoader:
    """Yields ``(inputs, targets, indices)`` batches (``dataset.gather``) of a rank's share of every global batch."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.epoch = 0
        #: Dataset indices this epoch draws from (``None``: all): per-sample selection methods set it.
        self.subset: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def num_samples(self) -> int:
        """Samples this epoch draws from: the subset's size when one is set, else the dataset's."""
        return len(self.dataset) if self.subset is None else len(self.subset)

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch)
        return full if self.drop_last or rest == 0 else full + 1

    def _order(self) -> torch.Tensor:
        base = torch.arange(len(self.dataset)) if self.subset is None else self.subset
        if not self.shuffle:
            return base
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return base[torch.randperm(len(base), generator=generator)]

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, positions: Sequence[int] | None = None, start: int = 0) -> Iterator[Batch]:
        """This epoch's batches, or only those at ``positions`` (in the given order), from the ``start``-th on (a
        resumed epoch); skipped ones cost nothing."""
        order = self._order()
        chosen = range(len(self)) if positions is None else positions
        for batch in list(chosen)[start:]:
            chunk = order[batch * self.global_batch : (batch + 1) * self.global_batch]
            share = -(-len(chunk) // self.world_size)  # ceil: the last partial batch splits as evenly as it can
            indices = chunk[self.rank * share : (self.rank + 1) * share]
            inputs, targets = self.dataset.gather(indices, self.device)
            yield inputs, targets, indices


class BatchSamplerLoader:
    """Yields ``(inputs, targets, indices)`` batches of a batch sampler (lists of dataset indices per batch, e.g.
    :class:`regimen.batch.LengthBucketBatchSampler`), with :class:`InMemoryLoader`'s interface for the trainer.

    The sampler shards batches over ranks itself (``num_replicas``/``rank``) and draws its order from
    ``set_epoch``; the epoch's batches are computed once per epoch. ``batch_size`` is the sampler's sequences per
    batch where it has one; a token-budget sampler has none (its batches vary), so it is the mean of the first
    epoch's batches (what LR scaling and the run facts see), and a method that changes it is refused.
    """

    def __init__(self, dataset, sampler, world_size: int = 1, device: torch.device | str = "cpu") -> None:
        self.dataset, self.sampler, self.world_size = dataset, sampler, world_size
        self.device = torch.device(device)
        self.epoch = -1
        self._epoch_batches: list[list[int]] | None = None
        size = getattr(sampler, "batch_size", None)
        if size is None:
            sampler.set_epoch(0)
            batches = list(sampler)
            size = max(1, round(sum(len(b) for b in batches) / max(len(batches), 1)))
        self._batch_size = int(size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        self._epoch_batches = None

    def _batches(self) -> list[list[int]]:
        if self._epoch_batches is None:
            self._epoch_batches = list(self.sampler)
        return self._epoch_batches

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if value == self._batch_size:
            return
        if not hasattr(self.sampler, "batch_size"):
            raise ValueError(f"this loader's {type(self.sampler).__name__} sets each batch's size from its token "
                             "budget; a method cannot set the batch size")
        self.sampler.batch_size = self._batch_size = int(value)
        self._epoch_batches = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, positions: Sequence[int] | None = None, start: int = 0) -> Iterator[Batch]:
        """This epoch's batches, or only those at ``positions`` (in the given order), from the ``start``-th on."""
        batches = self._batches()
        chosen = range(len(batches)) if positions is None else positions
        for batch in list(chosen)[start:]:
            indices = torch.as_tensor(batches[batch], dtype=torch.int64)
            inputs, targets = self.dataset.gather(indices, self.device)
            yield inputs, targets, indices
