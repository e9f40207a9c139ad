"""Comp-sum losses against the paper's Φ^τ of the sum of exponentials (an explicit loop) and against each member's
closed form: sum-exponential (τ=0), cross-entropy (τ=1, torch's), GCE (τ∈(1,2)), MAE (τ=2)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.losses import CompSumLoss, CompSumLossMethod, comp_sum_loss, comp_sum_phi
from regimen.method import Context, compose_criterion, get_method


def _data(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * 2, torch.randint(0, c, (n,), generator=g)


def _phi_by_hand(u: float, tau: float) -> float:
    return math.log(1 + u) if tau == 1 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0, 1.5, 2.0, 3.0])
def test_comp_sum_equals_phi_tau_of_the_sum_of_exponentials_written_as_a_loop(tau):
    logits, y = _data()
    got = comp_sum_loss(logits, y, tau, reduction="none", min_log_prob=None)
    expected = []
    for i in range(logits.shape[0]):
        row, label = logits[i].tolist(), int(y[i])
        u = sum(math.exp(row[k] - row[label]) for k in range(len(row)) if k != label)
        expected.append(_phi_by_hand(u, tau))
    assert got.tolist() == pytest.approx(expected, rel=1e-10)
    u = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    assert comp_sum_phi(u, tau).tolist() == pytest.approx([_phi_by_hand(v, tau) for v in u.tolist()], rel=1e-12)


def test_tau_one_is_torch_cross_entropy():
    logits, y = _data(seed=1)
    assert torch.allclose(comp_sum_loss(logits, y, 1.0), F.cross_entropy(logits, y))
    assert torch.allclose(comp_sum_loss(logits, y, 1.0, label_smoothing=0.1),
                          F.cross_entropy(logits, y, label_smoothing=0.1))


def test_tau_zero_is_the_sum_exponential_loss():
    logits, y = _data(seed=2)
    mask = F.one_hot(y, logits.shape[1]).bool()
    expected = (torch.exp(logits - logits.gather(1, y[:, None])).masked_fill(mask, 0)).sum(1)
    assert torch.allclose(comp_sum_loss(logits, y, 0.0, reduction="none", min_log_prob=None), expected)


@pytest.mark.parametrize("q", [0.3, 0.7])
def test_tau_in_one_two_is_generalized_cross_entropy(q):
    logits, y = _data(seed=3)
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(comp_sum_loss(logits, y, 1.0 + q, reduction="none"), (1 - p_y ** q) / q)


def test_tau_two_is_the_mean_absolute_error_up_to_its_factor_two():
    logits, y = _data(seed=4)
    mae = (F.one_hot(y, logits.shape[1]) - logits.softmax(1)).abs().sum(1)
    assert torch.allclose(comp_sum_loss(logits, y, 2.0, reduction="none"), mae / 2)


def test_continuous_at_tau_one_and_decreasing_in_tau():
    logits, y = _data(seed=5)
    ce = comp_sum_loss(logits, y, 1.0)
    assert torch.allclose(comp_sum_loss(logits, y, 1.0 + 1e-7), ce, rtol=1e-5)
    values = [comp_sum_loss(logits, y, t, min_log_prob=None).item() for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    assert values == sorted(values, reverse=True)


def test_soft_targets_are_the_expectation_and_one_hot_matches_the_index_form():
    logits, y = _data(seed=6)
    one_hot = F.one_hot(y, logits.shape[1]).double()
    assert torch.allclose(comp_sum_loss(logits, one_hot, 1.5), comp_sum_loss(logits, y, 1.5))
    q = torch.rand(logits.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = q / q.sum(1, keepdim=True)
    per_class = torch.stack([comp_sum_loss(logits, torch.full_like(y, c), 1.5, reduction="none")
                             for c in range(logits.shape[1])], dim=1)
    assert torch.allclose(comp_sum_loss(logits, q, 1.5, reduction="none"), (q * per_class).sum(1))


def test_floor_bounds_the_loss_below_tau_one_only():
    logits = torch.tensor([[30.0, 0.0, 0.0]])
    y = torch.tensor([1])
    assert comp_sum_loss(logits, y, 0.0).item() == pytest.approx(math.expm1(10.0), rel=1e-5)
    assert comp_sum_loss(logits, y, 0.0, min_log_prob=None).item() > 1e12
    assert comp_sum_loss(logits, y, 1.0).item() == pytest.approx(30.0, rel=1e-5)  # CE: no floor


def test_module_and_method_use_the_functional_core():
    logits, y = _data(seed=7)
    assert torch.allclose(CompSumLoss(0.5)(logits, y), comp_sum_loss(logits, y, 0.5))
    assert get_method("comp_sum") is CompSumLossMethod
    ctx = Context(torch.nn.Linear(2, 2), num_classes=5, label_smoothing=0.1)
    method = CompSumLossMethod(tau=1.0)
    criterion = compose_criterion([method], lambda o, t, reduction="mean": 0 * o.sum(), ctx)
    assert torch.allclose(criterion(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1))


@pytest.mark.parametrize("kwargs, match", [
    ({"tau": -0.5}, "tau must be a finite float >= 0"), ({"tau": float("nan")}, "tau"),
    ({"min_log_prob": 1.0}, "min_log_prob must be a finite float < 0"), ({"tau": True}, "tau must be a f"),
])
def test_bad_arguments_are_named(kwargs, match):
    logits, y = _data()
    with pytest.raises((ValueError, TypeError), match=match):
        comp_sum_loss(logits, y, **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        CompSumLossMethod(**kwargs)
    with pytest.raises(ValueError, match="target values must be in"):
        comp_sum_loss(logits, torch.full_like(y, 9))
    with pytest.raises(ValueError, match="reduction"):
        comp_sum_loss(logits, y, reduction="avg")
