"""TSCNC: the transformed-ℓ1 and condition-number terms against their formulas, scale invariance, a gradient step
lowering the condition number, FGSM/PGD against hand-written steps, and bad input."""

import copy

import pytest
import torch
from torch import nn

from regimen.method import Context
from regimen.subnet import (
    TSCNCMethod,
    condition_number_penalty,
    condition_numbers,
    fgsm_example,
    pgd_attack,
    transformed_l1,
    tscnc_penalty,
)


@pytest.mark.parametrize("a", [0.1, 1.0, 10.0])
def test_transformed_l1_matches_the_formula(a):
    w = torch.randn(4, 3)
    expected = sum((a + 1) * abs(v) / (a + abs(v)) for v in w.reshape(-1).tolist())
    assert transformed_l1(w, a).item() == pytest.approx(expected, rel=1e-5)


def test_condition_penalties_match_their_definitions_and_are_scale_invariant():
    w = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    m = w.reshape(5, -1)
    kappa_f = torch.linalg.norm(m) * torch.linalg.norm(torch.linalg.pinv(m))
    assert condition_number_penalty(w).item() == pytest.approx(kappa_f.log().item(), rel=1e-4)
    assert condition_number_penalty(w, "spectral").item() == pytest.approx(torch.linalg.cond(m).log().item(),
                                                                           rel=1e-4)
    assert condition_number_penalty(7.0 * w).item() == pytest.approx(condition_number_penalty(w).item(), rel=1e-5)


def test_a_gradient_step_on_the_penalty_lowers_the_condition_number():
    w = torch.diag(torch.tensor([10.0, 1.0, 0.1])).requires_grad_(True)
    before = torch.linalg.cond(w.detach())
    condition_number_penalty(w).backward()
    with torch.no_grad():
        w -= 0.01 * w.grad
    assert torch.linalg.cond(w.detach()) < before


def test_penalty_sums_both_terms_over_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    ws = [model[0].weight, model[2].weight]
    n = sum(w.numel() for w in ws)
    expected = 0.5 * sum(transformed_l1(w, 2.0) for w in ws) / n + 0.25 * sum(
        condition_number_penalty(w) for w in ws) / 2
    assert tscnc_penalty(model, 0.5, 0.25, 2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(condition_numbers(model)) == {"0", "2"}


def test_pgd_one_step_without_random_start_is_fgsm_and_stays_in_the_ball():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    assert torch.allclose(pgd_attack(model, x, y, 0.2, 0.2, 1, random_start=False), fgsm_example(model, x, y, 0.2))
    x = x.clamp(-0.8, 0.8)
    adv = pgd_attack(model, x, y, 0.1, 0.05, 5, generator=torch.Generator().manual_seed(0), bounds=(-1.0, 1.0))
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6 and float(adv.abs().max()) <= 1.0
    x0 = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x0), y).backward()
    assert torch.allclose(fgsm_example(model, x, y, 0.3), x + 0.3 * x0.grad.sign())


@pytest.mark.parametrize("kwargs", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"kind": "nuclear"}, {"epsilon": -1.0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        TSCNCMethod(**kwargs)


def test_method_prunes_once_adds_the_penalty_and_keeps_masks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, num_classes=3)
    method = TSCNCMethod(sparsity=0.75, epsilon=0.05)
    method.setup(ctx)
    zeros = sum(int((model[i].weight == 0).sum()) for i in (0, 2))
    assert zeros == int(0.75 * (48 + 24))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def base(m, xb, yb):
        out = m(xb)
        return nn.functional.cross_entropy(out, yb), out

    before = copy.deepcopy(model)
    loss, _ = method.forward_loss(model, x, y, base, ctx)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    method.after_step(ctx)
    assert sum(int((model[i].weight == 0).sum()) for i in (0, 2)) == zeros
    assert not torch.equal(before[0].weight, model[0].weight)
