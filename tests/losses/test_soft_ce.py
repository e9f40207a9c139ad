"""The default criterion against F.cross_entropy and the soft-target formula, per reduction; the renamed keyword."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.losses import classification_loss, soft_target_cross_entropy


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
