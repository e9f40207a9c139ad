"""Synthetic label noise for noisy-label experiments: symmetric and class-pair (asymmetric) flips, seeded.

Recipes turn it on with ``data.options`` of the classification tasks::

    [data]
    options = { label_noise = 0.4, label_noise_kind = "symmetric", label_noise_seed = 0 }

The noise is applied to the **training split only** (after the validation split is carved out of the training
set): the validation and test sets keep their clean labels, so model selection (e.g. nested dropout's best ``k``)
and the reported accuracy are measured against true labels, as with Clothing1M's clean validation set.

Kinds (the construction of Chen et al.'s reference ``data/preprocess_sym_noise_cifar.py``, arXiv 2206.13140, and
Han et al.'s pair flip, arXiv 1804.06872):

- ``"symmetric"``: in every class ``c`` exactly ``ceil(rate * n_c)`` samples, chosen at random, get a label drawn
  uniformly from the *other* ``C - 1`` classes (so ``rate`` is the true fraction of wrong labels).
- ``"pair"`` (class-pair asymmetric): the same chosen samples get the label ``(c + 1) mod C``: each class is confused
  with one neighbour only, the harder structured noise.

The draw depends only on ``label_noise_seed`` (default: the recipe seed) and the labels, so two recipes with the same
seed corrupt the same samples the same way.
"""

from __future__ import annotations

import math

import torch

__all__ = ["LABEL_NOISE_KINDS", "noisy_labels"]

#: The kinds of :func:`noisy_labels`.
LABEL_NOISE_KINDS = ("symmetric", "pair")


def noisy_labels(labels: torch.Tensor, rate: float, kind: str = "symmetric", num_classes: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of ``labels`` (int64 ``(N,)``): ``ceil(rate * n_c)`` samples of each class ``c`` flipped.

    Args:
        labels: clean class indices in ``[0, num_classes)``.
        rate: fraction of each class to corrupt, in ``[0, 1)``.
        kind: ``"symmetric"`` (uniform over the other classes) or ``"pair"`` (``c -> (c + 1) mod C``).
        num_classes: ``C`` (default ``labels.max() + 1``); must be >= 2.
        generator: random source (CPU).

    Returns:
        New labels; ``labels`` is not modified.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise TypeError(f"labels must be an int64 tensor (N,), got {getattr(labels, 'dtype', type(labels))} "
                        f"{tuple(getattr(labels, 'shape', ()))}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ValueError(f"label_noise (rate) must be a number in [0, 1), got {rate!r}")
    if kind not in LABEL_NOISE_KINDS:
        raise ValueError(f"label_noise_kind must be one of {', '.join(LABEL_NOISE_KINDS)}, got {kind!r}")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    if num_classes < 2:
        raise ValueError(f"label noise needs num_classes >= 2, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    out = labels.clone()
    if rate == 0.0 or labels.numel() == 0:
        return out
    n = labels.numel()
    # a random order, then stably grouped by class: the first ceil(rate * n_c) of each class are the corrupted ones
    shuffled = torch.randperm(n, generator=generator)
    grouped = shuffled[torch.sort(labels[shuffled], stable=True).indices]
    counts = torch.bincount(labels, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(n) - starts[labels[grouped]]
    quota = torch.tensor([math.ceil(rate * int(c) - 1e-9) for c in counts.tolist()], dtype=torch.int64)
    chosen = grouped[rank_in_class < quota[labels[grouped]]]
    clean = labels[chosen]
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (chosen.numel(),), generator=generator)
    else:
        shift = torch.ones_like(clean)
    out[chosen] = (clean + shift) % num_classes
    return out
