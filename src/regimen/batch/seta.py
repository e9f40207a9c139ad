"""SeTa: dynamic data pruning by random pruning, loss-based k-means groups and an easy-to-hard sliding window.

Paper: Qing Zhou, Junyu Gao, Qi Wang, "Scale Efficient Training for Large Datasets", CVPR 2025, arXiv 2503.13385
(reference code: github.com/mrazhou/SeTa, ``seta.py``).

Algorithm, every epoch e (per sample, on the training set):

1. **random pruning** (redundancy): keep a random ``floor(keep · N)`` of the samples, keep = max(0.1, 1 - prune_ratio);
2. **difficulty groups**: 1-D k-means of the kept samples' scores (each sample's last training loss, 3.0 before its
   first visit) into G groups, sorted by mean loss (easy → hard);
3. **sliding window**: keep the groups [s, s + w) with w = round(G · window_scale) and s = e mod (G - w + 1), so the
   window slides from the easy groups to the hard ones and back to the start, dropping both the too-easy and the
   too-hard (often mislabelled) samples; epoch 0 keeps every group (scores are not informative yet);
4. **partial annealing**: from epoch ``anneal · epochs`` on, only the random keep fraction (step 1), no grouping.

Losses are not re-weighted (only InfoBatch rescales). Scores are the per-sample training losses of the batches that
trained (``ctx.criterion(..., reduction="none")`` on the training forward: no extra pass), so a sample not trained in
an epoch keeps a stale score.

Implementation: the method is a ``select_samples`` hook (the trainer's loader then shuffles and batches only the
selected indices, so an epoch has fewer full batches and costs less; the LR schedule is spread over them) and a
``forward_loss`` link that records the scores at ``ctx.batch_indices``. :func:`seta_select` is the functional core
(:func:`kmeans_1d`, :func:`sliding_window` its parts). ``num_groups=1`` is random dynamic pruning (the paper's
"random" baseline).

Pitfalls handled:

- The reference captures batch indices by monkey-patching PyTorch's DataLoader iterator; here the loader yields them.
- Every rank must train the same samples: the selection draws from a generator seeded by (seed, epoch), and the
  per-rank score updates are combined with an all-reduce at the end of every epoch.
- k-means is deterministic (quantile initialisation, Lloyd iterations; the reference uses scikit-learn's KMeans
  with ``random_state=0``) and vectorised; all-equal scores are split into equal chunks, as in the reference.
- The window must fit the groups: ``window_scale`` in (0, 1] and round(G · window_scale) >= 1, else a ValueError
  naming it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["SeTaMethod", "kmeans_1d", "seta_select", "seta_window", "sliding_window"]


@checked_arguments
def kmeans_1d(values: torch.Tensor, num_groups: int, iterations: int = 100) -> torch.Tensor:
    """Group labels ``(n,)`` in ``[0, num_groups)`` of 1-D k-means on ``values``, numbered by increasing group mean.

    Quantile initialisation, then Lloyd iterations until the assignment stops changing; an emptied group keeps its
    centre. All-equal values are cut into ``num_groups`` equal chunks in index order (the reference's fallback)."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1:
        raise ValueError(f"values must be a 1-d tensor, got {tuple(getattr(values, 'shape', ()))}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    n = values.numel()
    if n < num_groups:
        raise ValueError(f"num_groups ({num_groups}) must not exceed the number of values ({n})")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    require_data(values=values)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values must be finite")
    if num_groups == 1:
        return torch.zeros(n, dtype=torch.int64)
    v = values.double()
    if bool(v.max() == v.min()):
        return torch.div(torch.arange(n) * num_groups, n, rounding_mode="floor")
    centres = torch.quantile(v, (torch.arange(num_groups, dtype=torch.float64) + 0.5) / num_groups)
    labels = torch.full((n,), -1, dtype=torch.int64)
    for _ in range(max(iterations, 1)):  # iterations = 0: the quantile centres' assignment (not the -1 placeholder)
        new = torch.argmin((v.unsqueeze(1) - centres.unsqueeze(0)).abs(), dim=1)
        if torch.equal(new, labels):
            break
        labels = new
        sums = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, labels, v)
        counts = torch.bincount(labels, minlength=num_groups).double()
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    rank = torch.empty(num_groups, dtype=torch.int64)
    rank[torch.argsort(centres, stable=True)] = torch.arange(num_groups)
    return rank[labels]


@checked_arguments
def seta_window(num_groups: int, window_scale: float) -> int:
    """w = round(G · window_scale), checked to lie in [1, G]."""
    if isinstance(window_scale, bool) or not isinstance(window_scale, int | float) or not 0.0 < window_scale <= 1.0:
        raise ValueError(f"window_scale must be in (0, 1] (the window cannot be larger than the {num_groups} groups), "
                         f"got {window_scale!r}")
    window = round(num_groups * window_scale)
    if window < 1:
        raise ValueError(f"window_scale={window_scale} keeps round({num_groups} x {window_scale}) = 0 of the "
                         f"{num_groups} groups; raise window_scale or num_groups")
    return window


@checked_arguments
def sliding_window(num_groups: int, window: int, epoch: int) -> tuple[int, int]:
    """The groups ``[start, end)`` kept at ``epoch``: all at epoch 0, else start = epoch mod (G - w + 1)."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if window > num_groups:
        raise ValueError(f"window ({window}) is larger than the group count num_groups ({num_groups})")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if epoch == 0:
        return 0, num_groups
    start = epoch % (num_groups - window + 1)
    return start, start + window


@checked_arguments
def seta_select(scores: torch.Tensor, epoch: int, epochs: int, prune_ratio: float = 0.3, num_groups: int = 5,
                window_scale: float = 0.9, anneal: float = 0.875,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The training-set indices SeTa keeps at ``epoch`` (sorted), from the per-sample ``scores`` ``(N,)``."""
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
    if not 0.0 <= anneal <= 1.0:
        raise ValueError(f"anneal must be in [0, 1], got {anneal!r}")
    if epoch < 0 or epochs < 1:
        raise ValueError(f"epoch must be >= 0 and epochs >= 1, got epoch={epoch}, epochs={epochs}")
    window = seta_window(num_groups, window_scale)
    if scores.dim() != 1:
        raise ValueError(f"scores must be a 1-d tensor (N,), got shape {tuple(scores.shape)}")
    require_data(scores=scores)
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores must be finite")
    n = scores.numel()
    keep = min(1.0, max(0.1, 1.0 - prune_ratio))
    if int(n * keep) < num_groups:
        raise ValueError(f"num_groups={num_groups} exceeds the int({n} x {keep:g}) = {int(n * keep)} of the {n} scores "
                         f"kept by the random prune_ratio={prune_ratio:g} pruning")
    kept = torch.randperm(n, generator=generator)[: int(n * keep)]
    if epoch >= anneal * epochs:  # partial annealing: the random fraction only
        return torch.sort(kept).values
    labels = kmeans_1d(scores[kept].double(), num_groups)
    start, end = sliding_window(num_groups, window, epoch)
    chosen = kept[(labels >= start) & (labels < end)]
    if chosen.numel() == 0:
        chosen = kept[:1]
    return torch.sort(chosen).values


@register_method
class SeTaMethod(Method):
    """SeTa dynamic data pruning (Zhou et al. 2025): random pruning, loss k-means groups, easy-to-hard sliding
    window; per sample.

    Args:
        prune_ratio: fraction removed by the random pruning (keep = max(0.1, 1 - prune_ratio)).
        num_groups: G, the k-means groups of per-sample loss (1 = random dynamic pruning only).
        window_scale: the window keeps round(G · window_scale) groups, in (0, 1].
        anneal: from this fraction of the epochs on, random pruning only (the reference's delta).
        initial_score: the score of a sample never trained yet (reference: 3.0).
    """

    name = "seta"
    targets = ("labels",)
    paper_id = "arXiv:2503.13385"
    claim = ("random pruning + loss-grouped easy-to-hard sliding window cuts training cost by up to 50 % while "
             "maintaining or improving accuracy")
    claimed_effect = "no_worse"

    def __init__(self, prune_ratio: float = 0.3, num_groups: int = 5, window_scale: float = 0.9,
                 anneal: float = 0.875, initial_score: float = 3.0) -> None:
        if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, int | float) or not 0 <= prune_ratio < 1:
            raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio!r}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        seta_window(num_groups, window_scale)
        if isinstance(anneal, bool) or not isinstance(anneal, int | float) or not 0 <= anneal <= 1:
            raise ValueError(f"anneal must be in [0, 1], got {anneal!r}")
        if not math.isfinite(initial_score):
            raise ValueError(f"initial_score must be finite, got {initial_score!r}")
        self.prune_ratio, self.num_groups, self.window_scale = float(prune_ratio), num_groups, float(window_scale)
        self.anneal, self.initial_score = float(anneal), float(initial_score)
        self.scores: torch.Tensor | None = None
        self._updated: torch.Tensor | None = None

    def setup(self, ctx: Context) -> None:
        if ctx.train_data is None:
            raise ValueError("seta needs the training set (ctx.train_data)")
        size = len(ctx.train_data)
        if self.scores is None or self.scores.numel() != size:
            self.scores = torch.full((size,), self.initial_score, dtype=torch.float32)
        if size < self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) exceeds the {size} training samples")
        self._updated = torch.zeros(size, dtype=torch.bool)

    def select_samples(self, ctx: Context) -> torch.Tensor:
        generator = torch.Generator().manual_seed(ctx.run.seed * 1_000_003 + ctx.epoch + 7_777)  # same on every rank
        chosen = seta_select(self.scores, ctx.epoch, ctx.run.epochs, self.prune_ratio, self.num_groups,
                             self.window_scale, self.anneal, generator)
        self.log(ctx, "kept_fraction", chosen.numel() / self.scores.numel())
        return chosen

    def forward_loss(self, model, x, y, next, ctx: Context):
        loss, output = next(model, x, y)
        indices = ctx.batch_indices
        if indices is not None and torch.is_grad_enabled():
            with torch.no_grad():
                per_sample = ctx.criterion(output, y, reduction="none")
            if per_sample.dim() == 1 and per_sample.numel() == indices.numel():
                where = indices.cpu()
                self.scores[where] = per_sample.detach().float().cpu()
                self._updated[where] = True
        return loss, output

    def on_epoch_end(self, ctx: Context) -> None:
        if ctx.run.world_size > 1:  # every rank updated the scores of its own share: combine them
            device = ctx.run.device
            weight = self._updated.to(device=device, dtype=torch.float32)
            total = ctx.all_reduce(self.scores.to(device) * weight, "sum")
            count = ctx.all_reduce(weight.clone(), "sum")
            seen = count > 0
            self.scores[seen.cpu()] = (total[seen] / count[seen]).cpu()
        self._updated.zero_()
        self.log(ctx, "mean_score", float(self.scores.mean()))

    def state_dict(self) -> dict[str, Any]:
        return {"scores": None if self.scores is None else self.scores.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scores") is not None:
            self.scores = state["scores"].clone()
