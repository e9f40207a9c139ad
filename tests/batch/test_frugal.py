"""FRUGAL (Zmushko et al. 2025): ρ = 1 is torch's AdamW, ρ = 0 is signSGD by hand, the split step by hand, the
refresh resets the moments, state bytes shrink, the recipe method trains."""

import pytest
import torch
from torch import nn

from regimen.batch import FRUGAL, optimizer_state_bytes


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    return model, x, y


def _train(model, optimizer, x, y, steps=5):
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_density_one_is_torch_adamw():
    model, x, y = _problem()
    twin = _problem()[0]
    _train(model, FRUGAL(model.parameters(), lr=0.01, weight_decay=0.1, density=1.0, update_gap=100), x, y)
    _train(twin, torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1), x, y)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q)


def test_density_zero_is_sign_sgd_on_matrices_and_adamw_on_vectors():
    model, x, y = _problem()
    weight, bias = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    optimizer = FRUGAL(model.parameters(), lr=0.01, density=0.0)
    nn.functional.cross_entropy(model(x), y).backward()
    g_w, g_b = model[0].weight.grad.clone(), model[0].bias.grad.clone()
    optimizer.step()
    torch.testing.assert_close(model[0].weight, weight - 0.01 * g_w.sign())
    # AdamW's first step on a vector: m̂ / (√v̂ + ε) = g / (|g| + ε)
    torch.testing.assert_close(model[0].bias, bias - 0.01 * g_b / (g_b.abs() + 1e-8))
    assert optimizer_state_bytes(optimizer) < sum(p.numel() for p in model.parameters() if p.dim() == 1) * 8 + 64


def test_rows_split_step_by_hand():
    torch.manual_seed(1)
    p = nn.Parameter(torch.randn(8, 4))
    optimizer = FRUGAL([p], lr=0.1, density=0.25, update_gap=100, projection="rows", free_lr_ratio=0.5, seed=3)
    p.grad = torch.randn(8, 4)
    before, g = p.detach().clone(), p.grad.clone()
    optimizer.step()
    index = optimizer.state[p]["index"]
    assert index.numel() == 2
    expected = before - 0.05 * g.sign()
    expected[index] = before[index] - 0.1 * g[index] / (g[index].abs() + 1e-8)  # Adam's first step on the rows
    torch.testing.assert_close(p.detach(), expected)
    assert optimizer.state[p]["exp_avg"].shape == (2, 4)


def test_refresh_draws_a_new_subspace_and_resets_the_moments():
    p = nn.Parameter(torch.zeros(40, 3))
    optimizer = FRUGAL([p], lr=0.1, density=0.25, update_gap=2, projection="rows", seed=0)
    indices = []
    for _ in range(3):
        p.grad = torch.ones(40, 3)
        optimizer.step()
        indices.append(optimizer.state[p]["index"].clone())
    assert torch.equal(indices[0], indices[1]) and not torch.equal(indices[1], indices[2])
    assert float(optimizer.state[p]["step"]) == 1  # reset at the refresh


def test_columns_split_step_by_hand():
    torch.manual_seed(2)
    p = nn.Parameter(torch.randn(3, 8))
    optimizer = FRUGAL([p], lr=0.1, density=0.25, update_gap=100, projection="columns", seed=1)
    p.grad = torch.randn(3, 8)
    before, g = p.detach().clone(), p.grad.clone()
    optimizer.step()
    index = optimizer.state[p]["index"]
    assert index.numel() == 2  # int(8 * 0.25), the reference's CoordinateProjector
    expected = before - 0.1 * g.sign()
    expected[:, index] = before[:, index] - 0.1 * g[:, index] / (g[:, index].abs() + 1e-8)
    torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("shape", [(8, 4), (3, 8)])
def test_svd_projection_step_by_hand(shape):
    """GaLore-like projector (reference galore_projector.py, proj_side="std"): right singular vectors when
    rows >= cols, left otherwise; Adam on the projection, signSGD on the residual g − P⁻¹P(g)."""
    torch.manual_seed(3)
    p = nn.Parameter(torch.randn(*shape))
    optimizer = FRUGAL([p], lr=0.1, density=0.5, update_gap=100, projection="svd", free_lr_ratio=0.5)
    p.grad = torch.randn(*shape)
    before, g = p.detach().clone(), p.grad.clone()
    optimizer.step()
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    if shape[0] >= shape[1]:
        b = vh[:2]
        low = g @ b.T
        adam = (low / (low.abs() + 1e-8)) @ b
        residual = g - low @ b
    else:
        a = u[:, :2]  # round(0.5 * 3) = 2
        low = a.T @ g
        adam = a @ (low / (low.abs() + 1e-8))
        residual = g - a @ low
    torch.testing.assert_close(p.detach(), before - 0.1 * adam - 0.05 * residual.sign())
    assert optimizer.state[p]["exp_avg"].shape == low.shape


def test_random_projection_is_semi_orthogonal_and_blocks_pick_round_n_rho_matrices():
    p = nn.Parameter(torch.zeros(10, 6))
    optimizer = FRUGAL([p], lr=0.1, density=0.5, projection="random", seed=4)
    p.grad = torch.randn(10, 6)
    optimizer.step()
    proj = optimizer.state[p]["proj"]
    assert proj.shape == (3, 6)
    torch.testing.assert_close(proj @ proj.T, torch.eye(3), atol=1e-5, rtol=0)
    params = [nn.Parameter(torch.zeros(4, 4)) for _ in range(8)]
    blocks = FRUGAL(params, lr=0.1, density=0.25, seed=5)  # the default projection, the reference's block_adamw
    for q in params:
        q.grad = torch.ones(4, 4)
    blocks.step()
    active = [q for q in params if blocks.state[q]["exp_avg"].numel()]
    assert len(active) == 2  # round(8 * 0.25)
    for q in params:
        moved = q.detach()
        expected = -0.1 * torch.ones(4, 4)  # Adam's first step = signSGD's for a constant gradient
        torch.testing.assert_close(moved, expected)


@pytest.mark.parametrize("kwargs, match", [({"density": 1.5}, "density"), ({"update_gap": 0}, "update_gap"),
                                           ({"projection": "galore"}, "projection"), ({"free": "adam"}, "free")])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FRUGAL([nn.Parameter(torch.zeros(2, 2))], **kwargs)


@pytest.mark.slow
def test_method_trains_the_language_model_with_less_optimizer_state():
    from regimen.train import fit

    recipe = {"task": "language_model", "seed": 0, "data": {"name": "auto", "test_subset": 8,
                                                             "options": {"seq_len": 32}},
              "model": {"name": "gpt", "options": {"dim": 32, "depth": 1, "heads": 2}},
              "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.1},
              "train": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 3, "threads": 1, "eval_batch_size": 8}}
    result = fit(dict(recipe, methods=[{"name": "frugal", "density": 0.25, "update_gap": 2}]))
    adamw_bytes = 2 * 4 * sum(p.numel() for p in result.model.parameters())  # two fp32 moments per parameter
    assert 0 < result.history[-1]["frugal/state_bytes"] < 0.8 * adamw_bytes
    assert torch.isfinite(torch.tensor(result.summary["final_test_bits_per_byte"]))
