"""A fast in-memory loader: the whole dataset is a tensor; batches are gathered by index.

Every epoch draws one permutation from a generator seeded by (seed, epoch), so the order is reproducible and a run
resumed at an epoch boundary sees exactly the batches of an uninterrupted one. With ``world_size > 1`` every global
batch of ``batch_size * world_size`` indices is cut into ``world_size`` consecutive slices, one per rank, so the
union of the ranks' batches equals the batch a single process would see at the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["Batch", "InMemoryLoader"]

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
