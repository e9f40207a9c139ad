"""The flow_matching task and its methods: the CFM pair and loss by hand, OT pairs against scipy's assignment (and
a brute-force search), W-CFM's log-domain weights against the direct kernel, the ODE solvers and W2 by hand, a short
training run per method, and bad data refused naming the key."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from regimen.data import DataError
from regimen.errors import ConfigurationError
from regimen.losses import (
    ICFMMethod,
    OTCFMMethod,
    WCFMMethod,
    add_path_noise,
    cfm_loss,
    cfm_pairs,
    gibbs_weights,
    integrate_flow,
    ot_pairing,
    pair_cost,
    split_cfm_target,
)
from regimen.method import Context
from regimen.tasks import FlowMatchingTask, get_task
from regimen.tasks.flow_matching import CFMPairs, mode_coverage, wasserstein2
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe


def flow_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-flow", "task": "flow_matching", "seed": 0,
        "data": {"name": "eight_gaussians", "val_fraction": 0.0,
                 "options": {"samples": 512, "eval_samples": 64, "ode_steps": 10}},
        "model": {"name": "velocity_mlp", "options": {"hidden": 32, "depth": 2}},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "threads": 1},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            recipe[section][field] = value
        else:
            recipe[section] = value
    return recipe


def test_cfm_pairs_and_loss_match_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    x0, x1, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), torch.rand(5, generator=g)
    noise = torch.randn(5, 3, generator=g)
    inputs, target = cfm_pairs(x0, x1, t, sigma=0.2, noise=noise)
    for i in range(5):  # one pair at a time, as the paper writes it
        xt = (1 - t[i]) * x0[i] + t[i] * x1[i] + 0.2 * noise[i]
        assert torch.allclose(inputs[i, :3], xt, atol=1e-6) and inputs[i, 3] == t[i]
    back = split_cfm_target(target)
    assert all(torch.equal(a, b) for a, b in zip(back, (x0, x1, t)))
    v = torch.randn(5, 3, generator=g)
    by_hand = [sum((v[i, j] - (x1[i, j] - x0[i, j])) ** 2 for j in range(3)) / 3 for i in range(5)]
    assert torch.allclose(cfm_loss(v, target, reduction="none"), torch.stack(by_hand), atol=1e-6)
    assert torch.allclose(cfm_loss(v, target), torch.stack(by_hand).mean(), atol=1e-6)


def test_ot_pairing_is_scipys_assignment_and_the_brute_force_optimum():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    perm = ot_pairing(x0, x1)
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1).double().numpy()
    rows, cols = linear_sum_assignment(cost)
    assert math.isclose(sum(cost[perm[i], i] for i in range(6)), cost[rows, cols].sum(), rel_tol=1e-12)
    brute = min(sum(cost[p[i], i] for i in range(6)) for p in itertools.permutations(range(6)))
    assert math.isclose(cost[perm.numpy(), np.arange(6)].sum(), brute, rel_tol=1e-12)
    assert sorted(perm.tolist()) == list(range(6))


def test_otcfm_repairs_the_batch_and_keeps_each_data_point_and_time():
    g = torch.Generator().manual_seed(2)
    x0, x1, t = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g), torch.rand(8, generator=g)
    inputs, target = cfm_pairs(x0, x1, t)
    new_inputs, new_target = OTCFMMethod().transform_batch(inputs, target, Context(torch.nn.Identity()))
    nx0, nx1, nt = split_cfm_target(new_target)
    assert torch.equal(nx1, x1) and torch.equal(nt, t)
    assert sorted(map(tuple, nx0.tolist())) == sorted(map(tuple, x0.tolist()))  # the same source points, re-paired
    assert pair_cost(nx0, nx1).sum() <= pair_cost(x0, x1).sum() + 1e-6
    assert torch.allclose(new_inputs, cfm_pairs(nx0, nx1, nt)[0])


def test_wcfm_weights_equal_the_direct_gibbs_kernel_at_safe_scales_and_survive_underflow():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(10, generator=g, dtype=torch.float64) * 4
    for eps in (0.5, 1.0, 3.0):
        direct = torch.exp(-cost / eps)
        assert torch.allclose(gibbs_weights(cost, eps), direct / direct.mean(), rtol=1e-10)
    huge = torch.tensor([1000.0, 1001.0, 1002.0], dtype=torch.float64)  # exp(-1000) is 0 in float64
    assert torch.exp(-huge).sum() == 0
    w = gibbs_weights(huge, 1.0)
    assert torch.isfinite(w).all() and math.isclose(float(w.mean()), 1.0, rel_tol=1e-12)
    assert torch.allclose(w / w[0], torch.exp(-(huge - 1000.0)), rtol=1e-10)


def test_wcfm_criterion_is_the_weighted_mean_of_the_per_pair_losses():
    g = torch.Generator().manual_seed(4)
    x0, x1, t = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g), torch.rand(6, generator=g)
    _, target = cfm_pairs(x0, x1, t)
    v = torch.randn(6, 2, generator=g)
    method = WCFMMethod(epsilon=2.0)
    ctx = Context(torch.nn.Identity())
    loss = method.criterion(v, target, cfm_loss, ctx)
    c = [float(((x1[i] - x0[i]) ** 2).sum()) for i in range(6)]
    w = [math.exp(-ci / 2.0) for ci in c]
    per = cfm_loss(v, target, reduction="none").tolist()
    assert math.isclose(float(loss), sum(wi * li for wi, li in zip(w, per)) / sum(w), rel_tol=1e-5)
    assert 0 < ctx.log["wcfm/ess"] <= 1


def test_icfm_adds_sigma_noise_to_x_t_only():
    inputs = torch.tensor([[1.0, 2.0, 0.5]])
    assert torch.equal(add_path_noise(inputs, 0.5, torch.tensor([[2.0, -2.0]])), torch.tensor([[2.0, 1.0, 0.5]]))
    x, y = ICFMMethod(sigma=0.0).transform_batch(*cfm_pairs(torch.zeros(2, 2), torch.ones(2, 2), torch.rand(2)),
                                                 Context(torch.nn.Identity()))
    assert torch.allclose(x[:, :2], x[:, 2:].expand(2, 2))


def test_ode_solvers_are_exact_for_a_constant_field_and_midpoint_for_a_linear_one():
    x0 = torch.tensor([[1.0, -1.0]])
    shift = integrate_flow(lambda z: torch.ones(1, 2).expand(z.shape[0], 2), x0, 3, "euler")
    assert torch.allclose(shift, x0 + 1, atol=1e-6)
    # dx/dt = t: x(1) = x0 + 1/2; Euler with 2 steps gives x0 + 0.5 * (0 + 0.5) = x0 + 0.25, midpoint is exact
    field = lambda z: z[:, -1:].expand(z.shape[0], 2)  # noqa: E731
    assert torch.allclose(integrate_flow(field, x0, 2, "euler"), x0 + 0.25, atol=1e-6)
    assert torch.allclose(integrate_flow(field, x0, 2, "midpoint"), x0 + 0.5, atol=1e-6)


def test_wasserstein2_is_the_best_assignment_and_mode_coverage_counts_modes():
    a = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    b = torch.tensor([[10.0, 1.0], [0.0, 1.0]])
    assert math.isclose(wasserstein2(a, b), 1.0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    coverage, in_mode = mode_coverage(torch.tensor([[0.1, 0.0]] * 9 + [[2.5, 9.0]]), centres, std=0.5)
    assert coverage == 0.5 and math.isclose(in_mode, 0.9)


def test_training_batches_are_seeded_by_the_batch_not_by_call_order():
    data = CFMPairs(torch.randn(20, 2), seed=3)
    first = data.gather(torch.tensor([4, 7, 1]))
    data.gather(torch.tensor([0, 1]))
    again = data.gather(torch.tensor([4, 7, 1]))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], CFMPairs(data.points, seed=4).gather(torch.tensor([4, 7, 1]))[1])


@pytest.mark.parametrize("methods", [[], [{"name": "otcfm"}, {"name": "icfm", "sigma": 0.05}],
                                     [{"name": "wcfm", "relative_epsilon": 0.5}]])
def test_flow_matching_trains_with_each_method_and_reports_its_metrics(methods):
    result = fit(flow_recipe(methods=methods))
    summary = result.summary
    assert summary["primary_metric"] == "test_w2" and summary["higher_is_better"] is False
    for metric in FlowMatchingTask.metrics:
        assert f"final_test_{metric}" in summary
    assert math.isfinite(summary["final_test_w2"]) and 0 <= summary["final_test_mode_coverage"] <= 1


def test_flow_methods_are_refused_on_other_tasks_and_in_conflicting_orders():
    with pytest.raises(RecipeError, match="serves flow inputs"):
        parse_recipe({"methods": [{"name": "otcfm"}]})
    with pytest.raises(RecipeError, match="cannot share a recipe"):
        parse_recipe(flow_recipe(methods=[{"name": "otcfm"}, {"name": "wcfm"}]))
    with pytest.raises(RecipeError, match="must be listed before"):
        parse_recipe(flow_recipe(methods=[{"name": "icfm"}, {"name": "otcfm"}]))
    assert get_task("flow_matching") is FlowMatchingTask


def test_data_of_the_wrong_dimension_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "points.npz"
    np.savez(path, x_train=np.zeros((10, 2), np.float32), x_test=np.zeros((5, 3), np.float32))
    with pytest.raises(DataError, match=r"^data.root \(test points\): points have 3 dimensions, the training points 2"):
        fit(flow_recipe(data={"name": "npz", "root": str(path), "val_fraction": 0.0}))
    with pytest.raises(DataError, match=r"data\['val'\]: points have 5 dimensions"):
        fit(flow_recipe(), data={"train": torch.zeros(10, 2), "val": torch.zeros(4, 5)})
    with pytest.raises(DataError, match=r"data\['train'\]: flow-matching points must be \(N, d\) rows"):
        fit(flow_recipe(), data={"train": torch.zeros(10, 8, 8)})
    with pytest.raises(ConfigurationError, match="data.options.steps: unknown option"):
        parse_recipe(flow_recipe(data={"name": "moons", "options": {"steps": 3}}))
    with pytest.raises(ConfigurationError, match="model.options.dim: set by the task"):
        parse_recipe(flow_recipe(model={"name": "velocity_mlp", "options": {"dim": 3}}))
    with pytest.raises(ValueError, match=r"must be \[x0, x1, t\]"):
        cfm_loss(torch.zeros(4, 2), torch.zeros(4, 4))
