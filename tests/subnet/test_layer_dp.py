"""Layer-adaptive DP allocation: the DP against brute force (random instances and a tiny model's real curves), the
curves against a hand computation, the budget minimum and bad input leaving the model unchanged."""

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from regimen.method import Context
from regimen.subnet import LayerDPMethod, apply_layer_dp, dp_allocate, layer_costs, rd_curves


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3))


def _brute_force(curves, costs, budget):
    best, best_value = None, math.inf
    for picks in itertools.product(*[range(curves.shape[1])] * curves.shape[0]):
        cost = sum(int(costs[i, d]) for i, d in enumerate(picks))
        value = sum(float(curves[i, d]) for i, d in enumerate(picks))
        if cost <= budget and value < best_value - 1e-12:
            best, best_value = picks, value
    return best, best_value


@pytest.mark.parametrize("seed", range(8))
def test_dp_matches_brute_force_on_random_instances(seed):
    g = torch.Generator().manual_seed(seed)
    layers, choices = 4, 4
    curves = torch.rand(layers, choices, generator=g, dtype=torch.float64)
    costs = torch.randint(0, 12, (layers, choices), generator=g)
    budget = int(costs.min(1).values.sum()) + int(torch.randint(0, 20, (1,), generator=g))
    picks = dp_allocate(curves, costs, budget)
    _, best_value = _brute_force(curves, costs, budget)
    assert sum(int(costs[i, d]) for i, d in enumerate(picks)) <= budget
    assert sum(float(curves[i, d]) for i, d in enumerate(picks)) == pytest.approx(best_value, abs=1e-12)


def test_dp_matches_brute_force_on_a_tiny_models_curves():
    model = _net()
    x = torch.randn(64, 5)
    curves, amounts, names = rd_curves(model, x, grid=5, max_amount=0.8)
    sizes = [model.get_submodule(n).weight.numel() for n in names]
    costs = torch.tensor([[n - math.floor(a * n + 1e-9) for a in amounts.tolist()] for n in sizes])
    for budget in (int(costs[:, -1].sum()), 50, 60, 80, int(costs[:, 0].sum())):
        picks = dp_allocate(curves, costs, budget)
        _, best_value = _brute_force(curves, costs, budget)
        assert sum(float(curves[i, d]) for i, d in enumerate(picks)) == pytest.approx(best_value, abs=1e-12)


def test_curves_match_a_hand_computation_and_restore_weights():
    model = _net()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 5)
    curves, amounts, names = rd_curves(model, x, ["2"], grid=3, max_amount=0.5, worst_case=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    reference = model(x).detach()
    pruned = copy.deepcopy(model)
    w = pruned[2].weight.data
    k = math.floor(0.5 * w.numel())
    flat = w.reshape(-1)
    flat[torch.sort(flat.abs(), stable=True).indices[:k]] = 0
    d = (pruned(x).detach() - reference).pow(2).mean(1)
    assert curves[0, 0] == 0
    assert curves[0, 2].item() == pytest.approx(float(d.max()), rel=1e-5)
    mean_curves, _, _ = rd_curves(model, x, ["2"], grid=3, max_amount=0.5, worst_case=False)
    assert mean_curves[0, 2].item() == pytest.approx(float(d.mean()), rel=1e-5)


def test_budget_below_the_minimum_is_refused_naming_it():
    curves = torch.zeros(2, 3, dtype=torch.float64)
    costs = torch.tensor([[10, 5, 2], [8, 4, 1]])
    with pytest.raises(ValueError, match="budget 2 is below the minimum reachable cost 3"):
        dp_allocate(curves, costs, 2)


@pytest.mark.parametrize("sparsity", [-0.5, 1.0, 0.99])
def test_bad_sparsity_leaves_the_model_unchanged(sparsity):
    model = _net()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="sparsity"):
        apply_layer_dp(model, torch.randn(8, 5), sparsity, max_amount=0.95)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_apply_meets_the_mac_budget_and_the_method_keeps_masks():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.randn(16, 1, 8, 8)
    assert layer_costs(model, x, ["0", "2", "5"], "macs") == [64, 16, 1]
    result = apply_layer_dp(copy.deepcopy(model), x, 0.6, grid=6, cost="macs", resolution=None)
    used = sum(int(m.sum()) * c for m, c in zip(result["masks"].values(), [64, 16, 1]))
    assert used <= result["budget"] == math.floor(0.4 * result["total"])
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.5), example_batch=lambda n: (x[:n], None))
    method = LayerDPMethod(sparsity=0.5, grid=6, calib_size=16)
    method.setup(ctx)
    model(x).sum().backward()
    ctx.optimizer.step()
    method.after_step(ctx)
    for name, mask in method.masks.items():
        assert bool((model.get_submodule(name).weight[~mask] == 0).all())
