"""Multi-Similarity loss with its pair mining, and a P×K class-balanced batch sampler.

Paper: Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair Weighting for Deep Metric
Learning", CVPR 2019, arXiv 1904.06627. With L2-normalised embeddings and cosine similarities S_ik, for each anchor
i with positives P_i (same label, k ≠ i) and negatives N_i (other labels):

    mining:  keep negative k if S_ik + ε > min_{p ∈ P_i} S_ip;  keep positive k if S_ik − ε < max_{n ∈ N_i} S_in
    L = (1/m) Σ_i [ (1/α) log(1 + Σ_{k ∈ P̃_i} e^{−α (S_ik − λ)}) + (1/β) log(1 + Σ_{k ∈ Ñ_i} e^{β (S_ik − λ)}) ]

with defaults α = 2, β = 40, λ = 0.5 (``base``), ε = 0.1 (``margin``).

Pitfalls handled: self pairs are excluded by index, not by value (the reference code drops positives with
S ≥ 1 − 1e-5, which also drops genuine duplicates); as in the authors' reference code, an anchor whose mined
positive *or* negative set is empty contributes zero and the sum is divided by the batch size m; the log-sum-exps
are computed stably (``logsumexp`` with a zero entry for the ``1 +``); everything is one vectorised (m × m) pass.
``PKSampler`` draws P classes and K samples per class per batch (with replacement only for classes smaller than
K), vectorised, from a ``torch.Generator`` so batches are reproducible.

``MultiSimilarityMethod`` (recipe ``multi_similarity``) makes it the criterion of the ``metric_learning`` task (it
replaces the task's contrastive loss; ``pk_batches`` gives it the P×K batches the paper trains with).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Sampler

from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = ["MultiSimilarityLoss", "MultiSimilarityMethod", "PKSampler", "multi_similarity_loss"]


@checked_arguments
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 40.0,
    base: float = 0.5,
    margin: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """Multi-Similarity loss of a batch of embeddings, with the paper's hard-pair mining.

    Args:
        embeddings: ``(m, d)`` floating embeddings.
        labels: ``(m,)`` integer class labels.
        alpha: positive-pair scale α (> 0).
        beta: negative-pair scale β (> 0).
        base: similarity offset λ.
        margin: mining margin ε (>= 0).
        normalize: L2-normalise the embeddings first (the paper's setting); pass ``False`` if they already are.
        reduction: ``"mean"`` over the m anchors (the paper's 1/m), ``"sum"``, or ``"none"`` (each anchor's term).

    Returns:
        Scalar loss (mean over the m anchors; anchors without mined positives or negatives count as 0), or the
        ``(m,)`` anchor terms for ``reduction="none"``.
    """
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point() or embeddings.dim() != 2:
        raise ValueError(f"embeddings must be a floating (m, d) tensor, got {getattr(embeddings, 'shape', embeddings)}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise TypeError("labels must be a 1-D integer tensor")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) differ in length")
    require_same_device(embeddings=embeddings, labels=labels)
    if embeddings.shape[0] < 2:
        raise ValueError("multi_similarity_loss needs at least 2 embeddings")
    if not (alpha > 0 and beta > 0):
        raise ValueError(f"alpha and beta must be > 0, got {alpha} and {beta}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or inf")
    x = embeddings.float()
    if normalize:
        x = F.normalize(x, dim=1)
    sim = x @ x.T
    m = sim.shape[0]
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(m, dtype=torch.bool, device=sim.device)
    pos = same & ~eye
    neg = ~same
    inf = torch.tensor(float("inf"), device=sim.device)
    min_pos = torch.where(pos, sim, inf).amin(dim=1, keepdim=True)  # +inf when no positive
    max_neg = torch.where(neg, sim, -inf).amax(dim=1, keepdim=True)  # -inf when no negative
    neg_keep = neg & (sim + margin > min_pos)
    pos_keep = pos & (sim - margin < max_neg)
    active = pos_keep.any(dim=1) & neg_keep.any(dim=1)
    zero_col = sim.new_zeros(m, 1)
    pos_logits = torch.where(pos_keep, -alpha * (sim - base), -inf)
    neg_logits = torch.where(neg_keep, beta * (sim - base), -inf)
    pos_term = torch.logsumexp(torch.cat([zero_col, pos_logits], dim=1), dim=1) / alpha
    neg_term = torch.logsumexp(torch.cat([zero_col, neg_logits], dim=1), dim=1) / beta
    per_anchor = torch.where(active, pos_term + neg_term, torch.zeros_like(pos_term))
    if reduction == "none":
        return per_anchor
    return per_anchor.sum() if reduction == "sum" else per_anchor.sum() / m


@checked_arguments
class MultiSimilarityLoss(nn.Module):
    """Module form of :func:`multi_similarity_loss`."""

    def __init__(
        self, alpha: float = 2.0, beta: float = 40.0, base: float = 0.5, margin: float = 0.1, normalize: bool = True
    ) -> None:
        super().__init__()
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"alpha and beta must be > 0, got {alpha} and {beta}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.alpha, self.beta, self.base, self.margin, self.normalize = alpha, beta, base, margin, normalize

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return multi_similarity_loss(embeddings, labels, self.alpha, self.beta, self.base, self.margin, self.normalize)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}, margin={self.margin}"


@register_method
class MultiSimilarityMethod(Method):
    """Train embeddings with the Multi-Similarity loss and its pair mining (Wang et al., CVPR 2019).

    A ``criterion`` link that *replaces* the task's loss (it never calls ``next``), so it is the innermost link: list
    it after the methods that wrap the criterion (``bt2`` hands it the new feature). The model's output is the
    embedding; pair the method with ``pk_batches`` (every anchor then has K - 1 positives) as the paper does."""
    name = "multi_similarity"
    paper_id = "arXiv:1904.06627"
    claim = ("multi-similarity pair weighting with hard-pair mining beats contrastive, triplet, lifted-structure and "
             "binomial-deviance losses on retrieval Recall@K (CUB-200, Cars-196, SOP, In-Shop)")
    claimed_effect = "better"
    targets = ("identity",)
    after = ("bt2",)
    constraint_reason = "the loss replaces the criterion, so the criterion wrappers (bt2) come first"
    def __init__(self, alpha: float = 2.0, beta: float = 40.0, base: float = 0.5, margin: float = 0.1) -> None:
        if not (alpha > 0 and beta > 0):
            raise ValueError(f"multi_similarity: alpha and beta must be > 0, got {alpha} and {beta}")
        if not margin >= 0:
            raise ValueError(f"multi_similarity: margin must be >= 0, got {margin}")
        self.alpha, self.beta, self.base, self.margin = float(alpha), float(beta), float(base), float(margin)
    def criterion(self, output: torch.Tensor, target: torch.Tensor, next, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        return multi_similarity_loss(output, target, self.alpha, self.beta, self.base, self.margin,
                                     reduction=reduction)
@checked_arguments
class PKSampler(Sampler[list[int]]):
    """Batch sampler: every batch holds ``p`` distinct classes × ``k`` samples of each (P×K sampling).

    Use as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k, generator=g))``. Classes with fewer than
    ``k`` samples are sampled with replacement (they would otherwise never fill a slot); classes are drawn without
    replacement within a batch. Each ``__iter__`` draws new batches from ``generator``, so a seeded generator gives
    the same sequence of epochs.

    Args:
        labels: class label of every dataset item (sequence or 1-D integer tensor).
        p: classes per batch (<= number of classes).
        k: samples per class (>= 1; >= 2 for metric learning so every anchor has a positive).
        num_batches: batches per epoch; default ``len(labels) // (p * k)`` (at least 1).
        generator: ``torch.Generator`` for reproducible sampling (``None``: torch's global RNG).
    """

    def __init__(
        self,
        labels: Sequence[int] | torch.Tensor,
        p: int,
        k: int,
        num_batches: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        require_data(labels=labels)
        labels_t = torch.as_tensor(labels)
        if labels_t.dim() != 1 or labels_t.is_floating_point() or labels_t.numel() == 0:
            raise ValueError("labels must be a non-empty 1-D sequence of integer labels")
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ValueError(f"p must be an int >= 1, got {p!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        classes, inverse, counts = torch.unique(labels_t, return_inverse=True, return_counts=True)
        if p > classes.numel():
            raise ValueError(f"p={p} classes per batch but labels have only {classes.numel()} classes")
        if num_batches is None:
            num_batches = max(1, labels_t.numel() // (p * k))
        if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
            raise ValueError(f"num_batches must be an int >= 1, got {num_batches!r}")
        # dataset indices grouped by class: members of class c are order[offsets[c] : offsets[c] + counts[c]]
        self._order = torch.argsort(inverse, stable=True)
        self._counts = counts
        self._offsets = torch.cumsum(counts, 0) - counts
        self.p, self.k, self.num_batches, self.generator = p, k, num_batches, generator

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        g = self.generator
        num_classes = self._counts.numel()
        max_count = int(self._counts.max())
        for _ in range(self.num_batches):
            chosen = torch.randperm(num_classes, generator=g)[: self.p]  # (P,)
            counts = self._counts[chosen]
            # without replacement: the first k of a random order of each class's members
            keys = torch.rand(self.p, max_count, generator=g)
            keys = keys.masked_fill(torch.arange(max_count).unsqueeze(0) >= counts.unsqueeze(1), 2.0)
            ranks = torch.argsort(keys, dim=1)[:, : min(self.k, max_count)]
            if ranks.shape[1] < self.k:
                ranks = torch.cat([ranks, ranks.new_zeros(self.p, self.k - ranks.shape[1])], dim=1)
            # with replacement for classes smaller than k
            repl = (torch.rand(self.p, self.k, generator=g) * counts.unsqueeze(1)).long()
            small = (counts < self.k).unsqueeze(1)
            within = torch.where(small, repl, ranks)
            idx = self._order[self._offsets[chosen].unsqueeze(1) + within]
            yield idx.reshape(-1).tolist()
