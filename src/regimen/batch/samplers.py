"""Batch samplers for variable-length sequences: length buckets and token budgets.

Padding a batch to its longest sequence wastes ``Σ (max_len − len_i)`` token slots. Grouping sequences of similar
length (bucketing, as in fairseq / tensor2tensor / the Transformer paper's "batched together by approximate sequence
length", Vaswani et al. 2017, arXiv 1706.03762) removes most of that waste, and a **token budget** makes every batch
cost about the same: a batch holds as many sequences as fit in ``max_tokens ≥ batch_size × longest length``
(padded cost), which keeps memory flat across batches.

Both samplers yield lists of dataset indices (use them as ``DataLoader(batch_sampler=...)``). Randomness:
a ``torch.Generator`` seeded from ``seed + epoch`` (call ``set_epoch`` every epoch, like ``DistributedSampler``),
so the same seed and epoch give the same batches on every rank.

Pitfalls handled:
  * Sorting the whole dataset by length makes batch order (and thus training) length-ordered: samples are first
    shuffled, then sorted only inside *pools* of ``pool_size`` batches' worth of samples, and the batches are
    shuffled again.
  * A single sequence longer than ``max_tokens`` gets a batch of its own (or is dropped with
    ``drop_oversized=True``) instead of an infinite loop or a silent skip.
  * Distributed: with ``num_replicas > 1`` each rank takes every ``num_replicas``-th batch of the same list,
    truncated to the same number of batches on every rank (DDP needs equal step counts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from regimen.method import checked_arguments, require_data

__all__ = ["LengthBucketBatchSampler", "TokenBudgetBatchSampler", "padding_fraction"]


def _lengths_tensor(lengths: Sequence[int] | torch.Tensor) -> torch.Tensor:
    require_data(lengths=lengths)
    t = torch.as_tensor(lengths)
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"lengths must be a non-empty 1-d sequence, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise TypeError(f"lengths must be integers, got {t.dtype}")
    if bool((t < 1).any()):
        raise ValueError("lengths must be >= 1")
    return t.long()


@checked_arguments
def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int] | torch.Tensor) -> float:
    """Fraction of padded token slots: ``Σ_b (|b|·max_len_b − Σ len) / Σ_b |b|·max_len_b``."""
    require_data(lengths=lengths)
    t = _lengths_tensor(lengths)
    padded = real = 0
    for batch in batches:
        sub = t[torch.as_tensor(list(batch), dtype=torch.long)]
        padded += int(sub.max()) * len(batch)
        real += int(sub.sum())
    return 1.0 - real / padded if padded else 0.0


class _BucketBase(Sampler[list[int]]):
    def __init__(self, lengths: Sequence[int] | torch.Tensor, shuffle: bool, seed: int, num_replicas: int,
                 rank: int) -> None:
        self.lengths = _lengths_tensor(lengths)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.shuffle, self.seed, self.num_replicas, self.rank = shuffle, seed, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a new permutation for ``epoch`` (same on every rank)."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return generator

    def _pooled_order(self, pool: int, generator: torch.Generator) -> torch.Tensor:
        """Indices shuffled, then sorted by length inside consecutive pools of ``pool`` samples."""
        n = self.lengths.numel()
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if pool >= n:
            return order[torch.sort(self.lengths[order], stable=True).indices]
        pool_id = torch.arange(n) // pool
        # one stable sort on (pool, length): sorted within pools, pools kept in order
        composite = pool_id * (int(self.lengths.max()) + 1) + self.lengths[order]
        return order[torch.sort(composite, stable=True).indices]

    def _batches(self) -> list[list[int]]:
        raise NotImplementedError

    def _shard(self, batches: list[list[int]], generator: torch.Generator) -> list[list[int]]:
        if self.shuffle and len(batches) > 1:
            perm = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in perm]
        if self.num_replicas > 1:
            per_rank = len(batches) // self.num_replicas
            batches = batches[self.rank::self.num_replicas][:per_rank]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


@checked_arguments
class LengthBucketBatchSampler(_BucketBase):
    """Fixed-size batches of similar-length sequences.

    Args:
        lengths: length of every dataset item.
        batch_size: sequences per batch.
        pool_batches: sort inside pools of ``pool_batches × batch_size`` shuffled samples (``0``: whole dataset).
        shuffle: shuffle samples and batch order.
        drop_last: drop the last incomplete batch of each pool.
        seed: base seed (the epoch is added).
        num_replicas, rank: distributed sharding of batches.
    """

    def __init__(self, lengths: Sequence[int] | torch.Tensor, batch_size: int, pool_batches: int = 100,
                 shuffle: bool = True, drop_last: bool = False, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0) -> None:
        super().__init__(lengths, shuffle, seed, num_replicas, rank)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if pool_batches < 0:
            raise ValueError(f"pool_batches must be >= 0, got {pool_batches}")
        self.batch_size, self.pool_batches, self.drop_last = batch_size, pool_batches, drop_last

    def _batches(self) -> list[list[int]]:
        generator = self._generator()
        n = self.lengths.numel()
        pool = n if self.pool_batches == 0 else self.pool_batches * self.batch_size
        order = self._pooled_order(pool, generator).tolist()
        batches = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            for i in range(0, len(chunk), self.batch_size):
                batch = chunk[i:i + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        return self._shard(batches, generator)


@checked_arguments
class TokenBudgetBatchSampler(_BucketBase):
    """Batches whose padded size ``len(batch) × max length`` stays within ``max_tokens``.

    Args:
        lengths: length of every dataset item.
        max_tokens: padded-token budget per batch.
        max_batch_size: optional cap on sequences per batch.
        pool_size: sort inside pools of this many shuffled samples (``0``: whole dataset).
        shuffle: shuffle samples and batch order.
        drop_oversized: drop sequences longer than ``max_tokens`` (else each gets a batch of its own).
        seed: base seed (the epoch is added).
        num_replicas, rank: distributed sharding of batches.
    """

    def __init__(self, lengths: Sequence[int] | torch.Tensor, max_tokens: int, max_batch_size: int | None = None,
                 pool_size: int = 10_000, shuffle: bool = True, drop_oversized: bool = False, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(lengths, shuffle, seed, num_replicas, rank)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.max_tokens, self.max_batch_size = max_tokens, max_batch_size
        self.pool_size, self.drop_oversized = pool_size, drop_oversized

    def _batches(self) -> list[list[int]]:
        generator = self._generator()
        n = self.lengths.numel()
        pool = n if self.pool_size == 0 else self.pool_size
        order = self._pooled_order(pool, generator)
        lengths = self.lengths[order].tolist()
        order_list = order.tolist()
        cap = self.max_batch_size or n
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for position, (index, length) in enumerate(zip(order_list, lengths, strict=True)):
            if position % pool == 0 and current:  # batches never span pools
                batches.append(current)
                current, longest = [], 0
            if length > self.max_tokens:
                if not self.drop_oversized:
                    batches.append([index])
                continue
            new_longest = max(longest, length)
            if current and (new_longest * (len(current) + 1) > self.max_tokens or len(current) >= cap):
                batches.append(current)
                current, new_longest = [], length
            current.append(index)
            longest = new_longest
        if current:
            batches.append(current)
        return self._shard(batches, generator)
