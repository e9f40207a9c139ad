"""Multi-similarity loss against an explicit per-anchor loop (the authors' reference procedure); P×K sampler."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.losses import MultiSimilarityLoss, PKSampler, multi_similarity_loss


def _ms_loss_loop(emb: torch.Tensor, labels: list[int], alpha, beta, base, margin) -> float:
    """Per anchor, in plain Python: mine pairs with the margin, then the two soft-weighted log terms."""
    x = F.normalize(emb.double(), dim=1).tolist()
    m = len(labels)
    total = 0.0
    for i in range(m):
        sims = [sum(a * b for a, b in zip(x[i], x[k], strict=True)) for k in range(m)]
        pos = [sims[k] for k in range(m) if k != i and labels[k] == labels[i]]
        neg = [sims[k] for k in range(m) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        neg_kept = [s for s in neg if s + margin > min(pos)]
        pos_kept = [s for s in pos if s - margin < max(neg)]
        if not neg_kept or not pos_kept:
            continue
        pos_loss = math.log(1 + sum(math.exp(-alpha * (s - base)) for s in pos_kept)) / alpha
        neg_loss = math.log(1 + sum(math.exp(beta * (s - base)) for s in neg_kept)) / beta
        total += pos_loss + neg_loss
    return total / m


@pytest.mark.parametrize(
    ("alpha", "beta", "base", "margin"), [(2.0, 40.0, 0.5, 0.1), (1.0, 10.0, 0.3, 0.0), (3.0, 50.0, 0.6, 0.5)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_explicit_per_anchor_loop(alpha, beta, base, margin, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(12, 5, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])  # class 3 is a singleton: no positives
    got = multi_similarity_loss(emb, labels, alpha, beta, base, margin)
    want = _ms_loss_loop(emb, labels.tolist(), alpha, beta, base, margin)
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_mining_actually_drops_pairs_and_the_loop_would_notice():
    g = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0])
    emb = torch.eye(4)[labels] * 5 + 0.3 * torch.randn(10, 4, generator=g)  # well separated classes
    mined = multi_similarity_loss(emb, labels, margin=0.0)
    unmined = multi_similarity_loss(emb, labels, margin=10.0)  # a huge margin keeps every pair
    assert float(mined) == 0.0  # every positive is already more similar than every negative: nothing mined
    assert float(unmined) > 0.1
    assert float(unmined) == pytest.approx(_ms_loss_loop(emb, labels.tolist(), 2.0, 40.0, 0.5, 10.0), rel=1e-5)


def test_self_pairs_excluded_by_index_so_duplicates_still_count():
    base = torch.randn(3, 4, generator=torch.Generator().manual_seed(4))
    emb = torch.cat([base, base[:1]])  # item 3 duplicates item 0 (similarity exactly 1)
    labels = torch.tensor([0, 1, 1, 0])
    got = multi_similarity_loss(emb, labels, margin=10.0)
    assert float(got) == pytest.approx(_ms_loss_loop(emb, labels.tolist(), 2.0, 40.0, 0.5, 10.0), rel=1e-5)


def test_gradients_flow_and_module_matches_function():
    emb = torch.randn(8, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss = MultiSimilarityLoss(margin=0.5)(emb, labels)
    loss.backward()
    assert torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    assert float(loss.detach()) == pytest.approx(float(multi_similarity_loss(emb.detach(), labels, margin=0.5)))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: multi_similarity_loss(torch.randn(4, 3), torch.tensor([0, 1, 0])), ValueError, "differ in length"),
        (lambda: multi_similarity_loss(torch.randn(4), torch.tensor([0, 1, 0, 1])), ValueError, r"\(m, d\)"),
        (lambda: multi_similarity_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (lambda: multi_similarity_loss(torch.randn(2, 3), torch.tensor([0, 1]), alpha=0), ValueError, "alpha"),
        (
            lambda: multi_similarity_loss(torch.tensor([[float("nan"), 0.0], [1.0, 0.0]]), torch.tensor([0, 1])),
            ValueError,
            "NaN",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_pk_sampler_batches_hold_p_classes_times_k_samples_and_are_reproducible():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3 + [3] * 12 + [4] * 9)  # class 2 is smaller than k
    sampler = PKSampler(labels, p=3, k=4, num_batches=20, generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    for batch in batches:
        assert len(batch) == 12
        classes = labels[batch].tolist()
        groups = [classes[i : i + 4] for i in range(0, 12, 4)]
        assert all(len(set(grp)) == 1 for grp in groups)  # each group of k is one class
        assert len({grp[0] for grp in groups}) == 3  # p distinct classes
        for grp_idx, grp in enumerate(groups):
            members = batch[grp_idx * 4 : grp_idx * 4 + 4]
            if grp[0] != 2:
                assert len(set(members)) == 4  # without replacement when the class is large enough
    again = list(PKSampler(labels, p=3, k=4, num_batches=20, generator=torch.Generator().manual_seed(0)))
    assert again == batches
    assert list(PKSampler(labels, 3, 4, 20, torch.Generator().manual_seed(1))) != batches


def test_pk_sampler_bad_arguments():
    with pytest.raises(ValueError, match="only 2 classes"):
        PKSampler([0, 0, 1, 1], p=3, k=2)
    with pytest.raises(ValueError, match="k must be"):
        PKSampler([0, 1], p=1, k=0)
    with pytest.raises(ValueError, match="labels"):
        PKSampler([], p=1, k=1)


def test_method_criterion_is_the_loss_and_reduction_none_gives_the_anchor_terms():
    from regimen.losses import MultiSimilarityMethod
    from regimen.method import Context

    g = torch.Generator().manual_seed(3)
    emb = torch.randn(12, 6, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    method = MultiSimilarityMethod(alpha=2.0, beta=40.0, base=0.5, margin=0.1)
    ctx = Context(torch.nn.Identity())

    def never(*args, **kwargs):  # the loss replaces the chain's inner link
        raise AssertionError("multi_similarity must not call next")

    loss = method.criterion(emb, labels, never, ctx)
    assert loss.item() == pytest.approx(_ms_loss_loop(emb, labels.tolist(), 2.0, 40.0, 0.5, 0.1), rel=1e-5)
    per_anchor = method.criterion(emb, labels, never, ctx, reduction="none")
    assert per_anchor.shape == (12,) and per_anchor.mean().item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ValueError, match="margin"):
        MultiSimilarityMethod(margin=-0.1)
