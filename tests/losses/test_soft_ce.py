"""The default criterion against F.cross_entropy and the soft-target formula, per reduction; the renamed keyword;
mixed_cross_entropy against the pair-interpolated losses; (K, N, C) multi-sample logits refused with the right loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.losses import (
    classification_loss,
    mixed_cross_entropy,
    multi_sample_cross_entropy,
    soft_target_cross_entropy,
)
from regimen.tasks.classification import classification_criterion


def _soft_by_hand(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> list[float]:
    """-(Σ_c q_c log softmax(o)_c) per row with q = (1 - eps) t + eps / C, written with scalars."""
    rows = []
    for o, t in zip(logits.tolist(), target.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in o))
        q = [(1 - smoothing) * p + smoothing / len(o) for p in t]
        rows.append(-sum(qc * (oc - log_z) for qc, oc in zip(q, o, strict=True)))
    return rows


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_classification_loss_matches_cross_entropy_and_the_soft_formula(reduction, smoothing):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    index = torch.randint(0, 4, (5,), generator=g)
    expected = F.cross_entropy(logits, index, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(classification_loss(logits, index, smoothing, reduction), expected)
    soft = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1)
    by_hand = torch.tensor(_soft_by_hand(logits, soft, smoothing), dtype=torch.float32)
    by_hand = {"mean": by_hand.mean(), "sum": by_hand.sum(), "none": by_hand}[reduction]
    torch.testing.assert_close(classification_loss(logits, soft, smoothing, reduction), by_hand, check_dtype=False)


def test_old_keyword_targets_warns_and_bad_reduction_is_refused():
    logits, target = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.warns(DeprecationWarning, match=r"targets=\.\.\.\) is deprecated; use target="):
        torch.testing.assert_close(classification_loss(logits, targets=target), F.cross_entropy(logits, target))
    soft = torch.full((3, 4), 0.25)
    with pytest.warns(DeprecationWarning, match=r"targets=\.\.\.\) is deprecated; use target="):
        old = soft_target_cross_entropy(logits, targets=soft)
    torch.testing.assert_close(old, soft_target_cross_entropy(logits, soft))
    with pytest.raises(ValueError, match="reduction"):
        classification_loss(logits, target, reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_cross_entropy_interpolates_the_two_losses(reduction, smoothing):
    """lam_i CE(o_i, a_i) + (1 - lam_i) CE(o_i, b_i), with torch's cross-entropy on each side (index targets) and
    the by-hand formula (soft targets)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a, b = torch.randint(0, 4, (6,), generator=g), torch.randint(0, 4, (6,), generator=g)
    lam = torch.rand(6, generator=g)
    ce_a = F.cross_entropy(logits, a, label_smoothing=smoothing, reduction="none")
    ce_b = F.cross_entropy(logits, b, label_smoothing=smoothing, reduction="none")
    per_sample = lam * ce_a + (1 - lam) * ce_b
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    got = mixed_cross_entropy(logits, a, b, lam, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(got, expected, check_dtype=False)
    soft_a = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    per_sample = (lam * torch.tensor(_soft_by_hand(logits, soft_a, smoothing))
                  + (1 - lam) * torch.tensor(_soft_by_hand(logits, F.one_hot(b, 4).double(), smoothing)))
    expected = {"mean": per_sample.mean(), "sum": per_sample.sum(), "none": per_sample}[reduction]
    got = mixed_cross_entropy(logits, soft_a, b, lam, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(got, expected.float(), check_dtype=False)
    # one number for lam: the same as a batch of it
    torch.testing.assert_close(mixed_cross_entropy(logits, a, b, 0.3), mixed_cross_entropy(logits, a, b,
                                                                                              torch.full((6,), 0.3)))


def test_mixed_cross_entropy_bad_input():
    logits = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"target_b must be class indices in \[0, 4\)"):
        mixed_cross_entropy(logits, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 4]), 0.5)
    with pytest.raises(ValueError, match="target_a must have 3 rows"):
        mixed_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([0, 1, 2]), 0.5)
    with pytest.raises(ValueError, match=r"lam must be a number or have shape \(3,\)"):
        mixed_cross_entropy(logits, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.rand(2))


MULTI_SAMPLE = r"got \(K, N, C\) logits \(2, 5, 4\) \(multi-sample dropout in training\): use " \
               r"regimen.losses.multi_sample_cross_entropy, or the multi_sample_dropout Method, which flattens them"


def _multi_sample_helpers():
    index = torch.tensor([0, 1, 2, 3, 0])
    soft = torch.full((5, 4), 0.25)
    return [
        ("classification_loss index", lambda o: classification_loss(o, index)),
        ("classification_loss soft", lambda o: classification_loss(o, soft, 0.1)),
        ("soft_target_cross_entropy", lambda o: soft_target_cross_entropy(o, soft)),
        ("mixed_cross_entropy", lambda o: mixed_cross_entropy(o, index, index.flip(0), 0.5)),
        ("classification_criterion index", lambda o: classification_criterion(0.1)(o, index)),
        ("classification_criterion soft", lambda o: classification_criterion()(o, soft, reduction="none")),
    ]


@pytest.mark.parametrize("name, loss", _multi_sample_helpers(), ids=[n for n, _ in _multi_sample_helpers()])
def test_multi_sample_logits_are_refused_with_the_loss_to_use(name, loss):
    logits_k = torch.randn(2, 5, 4)  # K = 2 dropout samples of N = 5 rows, C = 4 classes
    with pytest.raises(ValueError, match=MULTI_SAMPLE):
        loss(logits_k)
    # the loss it names takes them: the mean over K of the per-sample cross-entropies
    index = torch.tensor([0, 1, 2, 3, 0])
    expected = (F.cross_entropy(logits_k[0], index) + F.cross_entropy(logits_k[1], index)) / 2
    torch.testing.assert_close(multi_sample_cross_entropy(logits_k, index), expected)


def test_per_position_cross_entropy_still_passes():
    """(N, C, d) logits with index targets (N, d) are torch's K-dimensional cross-entropy, not multi-sample."""
    logits, target = torch.randn(3, 4, 6), torch.randint(0, 4, (3, 6))
    torch.testing.assert_close(classification_loss(logits, target), F.cross_entropy(logits, target))
    torch.testing.assert_close(classification_criterion()(logits, target), F.cross_entropy(logits, target))
