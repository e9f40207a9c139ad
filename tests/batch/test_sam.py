"""SAM / ASAM as an optimizer-step wrapper: the two-step formula by hand (softmax regression, closed-form gradients),
through the trainer with an LR schedule and gradient accumulation, BatchNorm statistics, bad input."""

import math

import pytest
import torch
from torch import nn

from regimen.batch import SAMMethod, frozen_bn_statistics, sam_epsilon, sam_step
from regimen.errors import ConfigurationError
from regimen.train import fit
from regimen.train.schedule import schedule_factor


def _softmax_regression_grad(w, b, x, y):
    """∇ of the mean cross-entropy of softmax(x wᵀ + b) by hand: (p - onehot)ᵀ x / n and the column sum."""
    p = torch.softmax(x @ w.T + b, dim=1)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y), p.sum(0) / len(y)


def _problem(seed=0, n=24, d=5, c=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,), generator=g),
            torch.randn(c, d, generator=g, dtype=torch.float64) * 0.3, torch.randn(c, generator=g,
                                                                                  dtype=torch.float64) * 0.1)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_matches_the_two_step_formula_by_hand(adaptive):
    x, y, w0, b0 = _problem()
    rho, eta, lr = 0.3, 0.01, 0.5
    # by hand: g = ∇L(w); T = |w| + η on the weight, 1 on the bias (ASAM); ε = ρ T² g / ‖T g‖; w ← w - lr ∇L(w + ε)
    gw, gb = _softmax_regression_grad(w0, b0, x, y)
    tw = (w0.abs() + eta) if adaptive else torch.ones_like(w0)
    norm = torch.sqrt(((tw * gw) ** 2).sum() + (gb ** 2).sum())
    ew, eb = rho * tw ** 2 * gw / norm, rho * gb / norm
    gw2, gb2 = _softmax_regression_grad(w0 + ew, b0 + eb, x, y)
    want_w, want_b = w0 - lr * gw2, b0 - lr * gb2

    model = nn.Linear(5, 3).double()
    with torch.no_grad():
        model.weight.copy_(w0)
        model.bias.copy_(b0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    sam_step(closure, optimizer.step, [model.weight, model.bias], rho, adaptive=[adaptive, False], eta=eta)
    torch.testing.assert_close(model.weight.detach(), want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), want_b, rtol=1e-10, atol=1e-12)


def test_sam_epsilon_has_norm_rho_and_the_gradient_direction():
    params = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    eps = sam_epsilon(params, 0.05)
    total = torch.sqrt(sum((e ** 2).sum() for e in eps))
    assert math.isclose(total.item(), 0.05, rel_tol=1e-5)
    assert torch.allclose(eps[0] / params[0].grad, eps[1][0] / params[1].grad[0])
    params[0].grad[0, 0] = float("nan")
    assert sam_epsilon(params, 0.05) == [None, None]  # no ascent on a non-finite gradient (grad-scaler overflow)


def _linear_fit(sam: dict | None, accumulation=1, lr=0.4, steps=3):
    x, y, w0, b0 = _problem(seed=1, n=32)
    x, w0, b0 = x.float(), w0.float(), b0.float()
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.copy_(w0)
        model.bias.copy_(b0)
    recipe = {"task": "classification", "seed": 0, "data": {"normalize": False},
              "optim": {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0},
              "schedule": {"name": "cosine", "warmup_epochs": 1.0},
              "train": {"epochs": steps, "batch_size": 32 // accumulation, "accumulation": accumulation,
                        "threads": 1},
              "methods": [dict(name="sam", **sam)] if sam is not None else []}
    result = fit(recipe, model=model, data={"train": (x, y), "val": (x[:4], y[:4])})
    return result, (x, y, w0, b0)


def test_sam_in_the_trainer_follows_the_lr_schedule_and_the_formula():
    """Composer #3259: SAM must step with the scheduled LR of the one optimizer. Three full-batch steps of a warm-up +
    cosine schedule, each checked against the two-step formula with the schedule's LR."""
    rho, lr, steps = 0.2, 0.4, 3
    result, (x, y, w, b) = _linear_fit({"rho": rho}, lr=lr, steps=steps)
    x, w, b = x.double(), w.double(), b.double()
    config = type("S", (), {"name": "cosine", "warmup_epochs": 1.0, "min_lr_ratio": 0.0, "pct_start": 0.3})()
    for step in range(steps):
        step_lr = lr * schedule_factor(config, (step + 1) / steps, steps)
        assert step_lr > 0 or step == steps - 1  # warm-up, then cosine to 0 at the end
        gw, gb = _softmax_regression_grad(w, b, x, y)
        norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
        gw2, gb2 = _softmax_regression_grad(w + rho * gw / norm, b + rho * gb / norm, x, y)
        w, b = w - step_lr * gw2, b - step_lr * gb2
    torch.testing.assert_close(result.model.weight.detach().double(), w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.model.bias.detach().double(), b, rtol=1e-4, atol=1e-5)


def test_sam_with_gradient_accumulation_equals_the_full_batch():
    full, _ = _linear_fit({"rho": 0.2})
    accumulated, _ = _linear_fit({"rho": 0.2}, accumulation=4)
    plain, _ = _linear_fit(None)
    torch.testing.assert_close(accumulated.model.weight, full.model.weight, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain.model.weight, full.model.weight, atol=1e-4)  # SAM did change the update


def test_second_pass_leaves_batchnorm_running_statistics_alone():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    bn = model[1]
    after_first = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    sam_step(closure, optimizer.step, list(model.parameters()), 0.05, model=model)
    assert torch.equal(bn.running_mean, after_first[0]) and torch.equal(bn.running_var, after_first[1])
    assert bn.num_batches_tracked == after_first[2] and bn.momentum == 0.1
    with frozen_bn_statistics(model):
        model(x)
    assert torch.equal(bn.running_mean, after_first[0])


@pytest.mark.parametrize("rho", [0.0, -0.1, float("nan")])
def test_rho_not_positive_is_refused_naming_rho(rho):
    with pytest.raises(ValueError, match="rho must be"):
        SAMMethod(rho=rho)
    with pytest.raises(ConfigurationError, match="rho"):
        fit({"task": "classification", "data": {"name": "iris"}, "methods": [{"name": "sam", "rho": rho}]})


def test_bad_interval_and_eta_are_refused():
    with pytest.raises(ValueError, match="interval"):
        SAMMethod(interval=0)
    with pytest.raises(ValueError, match="eta"):
        SAMMethod(eta=-1.0)
