"""ElasticViT's conflict-aware sub-network samplers for supernet training: complexity-aware and performance-aware.

Uniformly sampling sub-networks of a supernet whose sizes span a wide range makes consecutive steps train networks
of very different cost, whose gradients conflict. The *complexity-aware* sampler groups the candidate sub-networks
into cost buckets and lets the bucket of each training step move by a random walk to an adjacent bucket only (stay
with probability 1/3 in the middle, 2/3 at the ends); every step's sub-networks come from that bucket, plus the
bucket's smallest one (the sandwich "min"). The *performance-aware* sampler adds, per bucket, a bank of the best
sub-networks seen so far (score = −cross-entropy on the current clean batch); with probability ``bank_prob`` (once
the bank is at least half full) a step draws from the bank with ``softmax(score)`` weights, otherwise it draws up to
``comparisons`` random candidates of the bucket and keeps the one a ``preference`` rule ranks lowest (ElasticViT:
the one whose extra cost over the anchor comes from width rather than from depth).

Both work on any finite table of candidates with known costs (pitfall: costs are precomputed, never measured in the
training loop): Once-for-All's uniform settings (``OnceForAllMethod(sampler="complexity" | "performance")``), the
widths of ``NestedWidth`` (candidates = widths, costs = MACs of ``extract(w)``), or a ViT's depths and widths.

Paper:
    Tang, Zhang, Jiang, Xu, Cao, Zhang, Yang, Wang, Yang — "ElasticViT: Conflict-aware Supernet Training for
    Deploying Fast Vision Transformer on Diverse Mobile Devices", ICCV 2023, arXiv 2303.09730 (reference code:
    github.com/microsoft/Moonlit, ElasticViT/process.py ``get_bank_id`` and ElasticViT/models/model.py
    ``arch_sampling``, ``_importance_comparison``, ``bank_arch_update``, ``_arch_bank_sampling``).

Formulas (``b_t`` = the bucket of step ``t`` among ``B`` buckets; ``s(a)`` = a candidate's bank score)::

    b_{t+1} = b_t + δ,  δ ~ U{−1, 0, +1} (0 < b_t < B−1),  U{0, 0, +1} (b_t = 0),  U{−1, 0, 0} (b_t = B−1)
    bank draw:       P(a) = exp(s(a)) / Σ_{a' ∈ bank(b_t)} exp(s(a')),      s(a) = −CE(f_a(x), y)
    preference:      a* = argmin_{a ∈ {a_1 … a_m} ⊂ bucket(b_t)} pref(a, anchor)
    bank insertion:  append while |bank| < size; else replace the worst entry when s(a) beats it

Pitfalls handled:
    * The random walk and every draw use the sampler's own ``torch.Generator``: seed it alike on every rank and all
      processes train the same sub-networks (the reference reseeds ``random`` with the step).
    * The "min" sub-network is the current bucket's cheapest, not the global minimum.
    * Bank scores go stale as the weights change: ``rescore(score_fn)`` re-evaluates a bank (the reference does it
      every quarter epoch for the current bank and on the first batch of every epoch for all banks).
    * Buckets are consecutive groups of the candidates sorted by cost with equal counts, so none is empty on a
      small discrete table (the paper's buckets are fixed FLOPs levels, 20 MFLOPs wide, over a huge space).
    * A candidate already in the bank gets its score updated instead of a duplicate entry (a small table would
      otherwise fill the bank with copies of one sub-network).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from regimen.method import checked_arguments

__all__ = [
    "ComplexityAwareSampler",
    "PerformanceAwareSampler",
    "adjacent_bucket_step",
    "cost_buckets",
]


@checked_arguments
def adjacent_bucket_step(bucket: int, buckets: int, generator: torch.Generator | None = None) -> int:
    """One step of ElasticViT's bucket random walk: ``bucket + δ`` with ``δ`` uniform over ``[−1, 0, +1]`` inside,
    ``[0, 0, +1]`` at the first bucket and ``[−1, 0, 0]`` at the last (one bucket: stays)."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"buckets must be an int >= 1, got {buckets!r}")
    if isinstance(bucket, bool) or not isinstance(bucket, int) or not 0 <= bucket < buckets:
        raise ValueError(f"bucket must be an int in [0, {buckets}), got {bucket!r}")
    if buckets == 1:
        return 0
    if bucket == 0:
        steps = (0, 0, 1)
    elif bucket == buckets - 1:
        steps = (-1, 0, 0)
    else:
        steps = (-1, 0, 1)
    return bucket + steps[int(torch.randint(3, (1,), generator=generator))]


@checked_arguments
def cost_buckets(costs: Sequence[float], buckets: int) -> list[list[int]]:
    """Split candidate indices into ``buckets`` groups of consecutive cost (sorted ascending, equal counts ±1).

    Ties are kept in index order; each bucket is sorted by cost, so ``bucket[0]`` is its cheapest candidate.
    """
    values = [float(c) for c in costs]
    if not values:
        raise ValueError("costs must not be empty")
    if any(not c == c or c < 0 for c in values):
        raise ValueError(f"costs must be numbers >= 0, got {list(costs)!r}")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= len(values):
        raise ValueError(f"buckets must be an int in [1, {len(values)}] (the number of candidates), got {buckets!r}")
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    return [order[(j * len(order)) // buckets:((j + 1) * len(order)) // buckets] for j in range(buckets)]


@checked_arguments
class ComplexityAwareSampler:
    """ElasticViT's complexity-aware sampler over a table of candidates with known costs.

    Args:
        costs: the cost (MACs, FLOPs, latency) of each candidate ``0 … n−1``.
        buckets: number of cost buckets (consecutive, equal counts; at most ``n``).
        generator: the source of every draw (seed it alike on every rank).
        start: the bucket of the first step (ElasticViT starts at the smallest, 0).

    ``sample(n)`` moves the bucket one random-walk step and returns ``n`` candidate indices of that bucket: ``n − 1``
    uniform draws and the bucket's cheapest last (``n = 1``: one uniform draw). ``bucket`` is the current bucket.
    """

    def __init__(self, costs: Sequence[float], buckets: int = 4, generator: torch.Generator | None = None,
                 start: int = 0) -> None:
        self.costs = [float(c) for c in costs]
        self.groups = cost_buckets(self.costs, buckets)
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < len(self.groups):
            raise ValueError(f"start must be a bucket in [0, {len(self.groups)}), got {start!r}")
        self.generator = generator
        self.bucket = start
        self._bucket_of = {i: b for b, group in enumerate(self.groups) for i in group}

    def bucket_of(self, index: int) -> int:
        """The bucket of candidate ``index``."""
        if index not in self._bucket_of:
            raise ValueError(f"index must be a candidate in [0, {len(self.costs)}), got {index!r}")
        return self._bucket_of[index]

    def step(self) -> int:
        """Move the bucket one step of the random walk; returns it."""
        self.bucket = adjacent_bucket_step(self.bucket, len(self.groups), self.generator)
        return self.bucket

    def _uniform(self) -> int:
        group = self.groups[self.bucket]
        return group[int(torch.randint(len(group), (1,), generator=self.generator))]

    def _draw(self) -> int:
        return self._uniform()

    def sample(self, n: int = 1) -> list[int]:
        """Candidate indices for one training step (the bucket moves first)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        self.step()
        if n == 1:
            return [self._draw()]
        return [self._draw() for _ in range(n - 1)] + [self.groups[self.bucket][0]]


@checked_arguments
class PerformanceAwareSampler(ComplexityAwareSampler):
    """ElasticViT's performance-aware sampler: the complexity-aware walk plus a bank of good candidates per bucket.

    Args:
        costs, buckets, generator, start: as :class:`ComplexityAwareSampler`.
        bank_size: entries per bucket's bank (ElasticViT: 150; a draw uses the bank once it holds more than half).
        bank_prob: probability of drawing from the bank (ElasticViT: 0.2, raised by 0.15 every 100 of 600 epochs;
            change the attribute to schedule it).
        comparisons: random candidates compared by ``preference`` when not drawing from the bank (ElasticViT: 5).
        preference: ``pref(candidate, anchor) -> float``, lower is preferred (ElasticViT: the cost with the anchor's
            widths minus the cost with the anchor's depths, i.e. prefer extra cost from width). ``None``: the first
            random candidate (no comparison).

    Call ``update(index, score)`` with each trained candidate's score (−cross-entropy on the clean batch) and
    ``rescore(score_fn)`` now and then to refresh stale scores.
    """

    def __init__(self, costs: Sequence[float], buckets: int = 4, generator: torch.Generator | None = None,
                 start: int = 0, bank_size: int = 30, bank_prob: float = 0.2, comparisons: int = 5,
                 preference: Callable[[int, int], float] | None = None) -> None:
        super().__init__(costs, buckets, generator, start)
        if isinstance(bank_size, bool) or not isinstance(bank_size, int) or bank_size < 1:
            raise ValueError(f"bank_size must be an int >= 1, got {bank_size!r}")
        if isinstance(bank_prob, bool) or not isinstance(bank_prob, int | float) or not 0.0 <= bank_prob <= 1.0:
            raise ValueError(f"bank_prob must be in [0, 1], got {bank_prob!r}")
        if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
            raise ValueError(f"comparisons must be an int >= 1, got {comparisons!r}")
        if preference is not None and not callable(preference):
            raise TypeError(f"preference must be callable (candidate, anchor) -> float, got {preference!r}")
        self.bank_size, self.bank_prob, self.comparisons = bank_size, float(bank_prob), comparisons
        self.preference = preference
        #: per bucket: {candidate index: score}
        self.banks: list[dict[int, float]] = [{} for _ in self.groups]
        #: whether the last draw came from the bank
        self.from_bank = False

    def _bank_ready(self, bucket: int) -> bool:
        return len(self.banks[bucket]) > self.bank_size // 2

    def anchor(self) -> int:
        """The anchor of the preference rule: the best banked candidate of the lowest bucket when the current
        bucket is above it and that bank is not empty, else the current bucket's cheapest candidate."""
        if self.bucket > 0 and self.banks[0]:
            return max(self.banks[0].items(), key=lambda item: (item[1], -item[0]))[0]
        return self.groups[self.bucket][0]

    def _draw(self) -> int:
        bank = self.banks[self.bucket]
        if float(torch.rand((), generator=self.generator)) < self.bank_prob and self._bank_ready(self.bucket):
            self.from_bank = True
            indices = sorted(bank)
            weights = torch.softmax(torch.tensor([bank[i] for i in indices], dtype=torch.float64), dim=0)
            return indices[int(torch.multinomial(weights, 1, generator=self.generator))]
        self.from_bank = False
        first = self._uniform()
        if self.preference is None or not self._bank_ready(self.bucket):
            return first  # the reference stops at one candidate while the bank is less than half full
        anchor = self.anchor()
        candidates = [first] + [self._uniform() for _ in range(self.comparisons - 1)]
        scores = [float(self.preference(c, anchor)) for c in candidates]
        return candidates[scores.index(min(scores))]

    def update(self, index: int, score: float) -> None:
        """Insert (or re-score) candidate ``index`` in its bucket's bank; a full bank replaces its worst entry when
        ``score`` beats it."""
        bank = self.banks[self.bucket_of(index)]
        score = float(score)
        if score != score:
            raise ValueError("score must not be NaN")
        if index in bank or len(bank) < self.bank_size:
            bank[index] = score
            return
        worst = min(bank.items(), key=lambda item: (item[1], item[0]))
        if worst[1] < score:
            del bank[worst[0]]
            bank[index] = score

    def rescore(self, score_fn: Callable[[int], float], bucket: int | None = None) -> None:
        """Re-evaluate the scores of one bucket's bank (default: every bank) with ``score_fn(index)``."""
        targets = range(len(self.banks)) if bucket is None else [bucket]
        for b in targets:
            if not 0 <= b < len(self.banks):
                raise ValueError(f"bucket must be in [0, {len(self.banks)}), got {b!r}")
            self.banks[b] = {i: float(score_fn(i)) for i in self.banks[b]}
