"""Lanczos LR estimator: Ritz values against torch.linalg.eigvalsh of the explicit Hessian of a small model; the LR
rules against their formulas; the Method changes the LR only during the step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from regimen.batch import LanczosLRMethod, hessian_vector_product, lanczos, lanczos_step_size, top_hessian_eigenvalues
from regimen.method import Context, compose_optimizer_step


def _small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (16,), generator=g)
    return model, x, y


def _explicit_hessian(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(vector):
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            size = math.prod(shape)
            params[name] = vector[offset:offset + size].view(shape)
            offset += size
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def test_top_eigenvalue_matches_eigvalsh_of_the_explicit_hessian():
    model, x, y = _small_problem()
    exact = torch.linalg.eigvalsh(_explicit_hessian(model, x, y))
    top, bottom = top_hessian_eigenvalues(model, lambda m: F.cross_entropy(m(x), y), iterations=20,
                                          generator=torch.Generator().manual_seed(0))
    assert top == pytest.approx(exact[-1].item(), rel=1e-6)
    full_top, full_bottom = top_hessian_eigenvalues(model, lambda m: F.cross_entropy(m(x), y), iterations=500,
                                                    generator=torch.Generator().manual_seed(1))
    assert (full_top, full_bottom) == pytest.approx((exact[-1].item(), exact[0].item()), rel=1e-6, abs=1e-9)
    assert all(p.grad is None for p in model.parameters())


def test_hessian_vector_product_and_lanczos_on_a_known_matrix():
    model, x, y = _small_problem(1)
    h = _explicit_hessian(model, x, y)
    params = list(model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    v = torch.randn(h.shape[0], dtype=torch.float64)
    assert torch.allclose(hessian_vector_product(grads, params, v), h @ v, atol=1e-10)
    a = torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = a + a.T
    ritz = lanczos(lambda v: a @ v, 30, iterations=30, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ritz, torch.linalg.eigvalsh(a), atol=1e-8)


def test_step_size_rules_are_the_formulas():
    lr, rho = lanczos_step_size(100.0, 1.0, "polyak")
    assert lr == pytest.approx(4 / (10 + 1) ** 2) and rho == pytest.approx((9 / 11) ** 2)
    assert lanczos_step_size(100.0, -5.0, "polyak", min_ratio=0.01) == pytest.approx((4 / 121, (9 / 11) ** 2))
    assert lanczos_step_size(50.0, 1.0, "inverse", lr_scale=0.5) == (0.01, None)
    with pytest.raises(ValueError, match="lambda_max"):
        lanczos_step_size(-1.0, 1.0)


def test_method_sets_lr_and_momentum_during_the_step_only():
    model, x, y = _small_problem(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx = Context(model, opt, criterion=F.cross_entropy)
    method = LanczosLRMethod(interval=1, iterations=8, rule="inverse", lr_scale=0.5)
    method.setup(ctx)
    method.before_forward(x, y, ctx)
    top = ctx.log[f"{method.name}/lambda_max"]
    assert method.lr == pytest.approx(0.5 / top)
    seen = []

    def base(closure):
        seen.append(opt.param_groups[0]["lr"])

    compose_optimizer_step([method], base, ctx)(lambda: None)
    assert seen == [pytest.approx(0.5 / top)] and opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("kwargs, match", [({"interval": 0}, "interval"), ({"lr_scale": -1.0}, "lr_scale"),
                                           ({"min_ratio": 0.0}, "min_ratio"), ({"rule": "cubic"}, "rule")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LanczosLRMethod(**kwargs)
