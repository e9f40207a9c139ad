"""Polarization regulariser: the formula by hand, the reference's histogram threshold, gates, plans, the Method."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.errors import ConfigurationError
from regimen.method import Context, get_method
from regimen.subnet import (
    ChannelGate,
    apply_gates,
    count_macs,
    fold_gates,
    polarization_penalty,
    polarization_plan,
    polarized_fraction,
    prune_groups,
    scaling_factors,
    search_threshold,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


def test_penalty_matches_the_formula_with_the_global_mean():
    g = torch.Generator().manual_seed(0)
    layers = [torch.rand(5, generator=g), torch.rand(7, generator=g)]
    t, alpha = 1.3, 0.9
    values = [float(v) for layer in layers for v in layer]
    mean = sum(values) / len(values)  # global, not per layer
    expected = sum(t * abs(v) - abs(v - alpha * mean) for v in values)
    assert float(polarization_penalty(layers, t, alpha)) == pytest.approx(expected, rel=1e-6)
    per_layer = sum(float(polarization_penalty(layer, t, alpha)) for layer in layers)
    assert per_layer != pytest.approx(expected, rel=1e-6)


def test_penalty_gradient_is_the_subgradient():
    gamma = torch.tensor([0.1, 0.9, 0.2, 0.8], requires_grad=True)
    polarization_penalty(gamma, t=1.0).backward()
    mean = 0.5
    # d/dγ_i [t|γ_i| − Σ_j |γ_j − γ̄|] = t − sign(γ_i − γ̄) + (1/n) Σ_j sign(γ_j − γ̄)
    signs = torch.sign(gamma.detach() - mean)
    expected = 1.0 - signs + signs.mean()
    assert torch.allclose(gamma.grad, expected)


def _reference_threshold(values: np.ndarray) -> float:
    hist_y, hist_x = np.histogram(values, bins=100, range=(0, 1))
    diff = np.diff(hist_y)
    for i in range(len(diff) - 1):
        if diff[i] <= 0 <= diff[i + 1]:
            return float(hist_x[i + 1])
    return float(hist_x[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_matches_the_reference_histogram_rule(seed):
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.uniform(0, 0.05, 40), rng.uniform(0.6, 1.0, 60)]).astype(np.float32)
    with pytest.warns(RuntimeWarning) if _reference_threshold(values) > 0.2 else _nothing():
        got = search_threshold(torch.from_numpy(values))
    assert got == pytest.approx(_reference_threshold(values), abs=1e-6)
    assert search_threshold(torch.from_numpy(values) * 2.0, upper=2.0) == pytest.approx(2 * got, abs=1e-6)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def test_polarized_fraction_counts_both_ends():
    assert polarized_fraction(torch.tensor([0.0, 0.005, 0.5, 0.95])) == (0.5, 0.25)


def test_gates_fold_exactly_and_refuse_models_without_norms():
    model = small_cnn().eval()
    x = torch.randn(3, 1, 8, 8)
    expected = model(x)
    names = apply_gates(model)
    assert len(names) == 2 and isinstance(model.get_submodule(names[0]), ChannelGate)
    with torch.no_grad():
        model.get_submodule(names[0]).weight.copy_(torch.linspace(0, 1, 8))
        gated = model(x)
    factors = fold_gates(model)
    assert set(factors) == {"1", "4"} and torch.allclose(factors["1"], torch.linspace(0, 1, 8))
    assert not any(isinstance(m, ChannelGate) for m in model.modules())
    assert torch.allclose(model(x), gated, atol=1e-5) and not torch.allclose(gated, expected)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    before = copy.deepcopy(plain.state_dict())
    with pytest.raises(ValueError, match="model has no BatchNorm"):
        apply_gates(plain)
    with pytest.raises(ValueError, match="model has no BatchNorm"):
        scaling_factors(plain)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_plan_by_threshold_sparsity_and_macs():
    model = small_cnn()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.0, 0.9, 0.0, 0.8, 0.005, 1.0, 0.7, 0.0]))
        model[4].weight.copy_(torch.tensor([0.9] * 6 + [0.0] * 6))
    plan = polarization_plan(model, x, threshold=0.01)
    kept = {g.modules[0]: keep.tolist() for g, keep in plan.items()}
    assert kept == {"0": [1, 3, 5, 6], "3": [0, 1, 2, 3, 4, 5]}
    by_count = polarization_plan(model, x, sparsity=0.5)  # 10 of 20 units, lowest γ first
    assert sum(keep.numel() for keep in by_count.values()) == 10
    dense = count_macs(model, x)
    budget = polarization_plan(model, x, macs=0.3 * dense)
    pruned = copy.deepcopy(model)
    prune_groups(pruned, budget)
    assert count_macs(pruned, x) <= 0.3 * dense
    with pytest.raises(ValueError, match="sparsity"):
        polarization_plan(model, x, sparsity=1.0)


def test_pruning_polarised_zero_channels_is_lossless():
    model = small_cnn().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight[::2] = 0.0
            bn.bias[::2] = 0.0
    expected = model(x)
    prune_groups(model, polarization_plan(model, x, threshold=0.01))
    assert model[0].out_channels == 4 and model[3].out_channels == 6
    assert torch.allclose(model(x), expected, atol=1e-5)


def _context(model, optimizer, epochs=2, steps=3):
    images = (torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ArrayDataset(images, torch.arange(16) % 10, 10)
    return Context(model, optimizer, F.cross_entropy, num_classes=10, per_device_batch=4, epochs=epochs,
                   steps_per_epoch=steps, train_data=data), images


@pytest.mark.parametrize("gates", [False, True])
def test_method_regularises_clamps_and_prunes_at_the_end(gates):
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx, images = _context(model, optimizer)
    method = get_method("polarization")(lam=1e-2, t=1.2, sparsity=0.5, gates=gates)
    method.setup(ctx)
    factors = method._factors
    assert all(torch.all(f == 0.5) for f in factors) and len(factors) == 2
    for _ in range(6):
        x = images[:4].float() / 255
        loss, _ = method.forward_loss(model, x, torch.arange(4), lambda m, a, b: (F.cross_entropy(m(a), b), None),
                                      ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            factors[0][0] = -1.0  # the projection must undo this
        method.after_step(ctx)
        assert all(float(f.detach().min()) >= 0.0 and float(f.detach().max()) <= 1.0 for f in factors)
    method.on_epoch_end(ctx)
    method.on_train_end(ctx)
    assert not any(isinstance(m, ChannelGate) for m in model.modules())
    assert model[0].out_channels + model[3].out_channels == 10  # 50 % of 20 channels
    assert 0 < ctx.log["polarization/macs_ratio"] < 1
    assert model(images[:2].float() / 255).shape == (2, 10)


def test_method_refuses_a_model_without_norm_layers_unchanged():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    groups_before = len(optimizer.param_groups)
    before = copy.deepcopy(model.state_dict())
    ctx, _ = _context(model, optimizer)
    with pytest.raises(ConfigurationError, match="model has no BatchNorm"):
        get_method("polarization")(gates=True).setup(ctx)
    assert len(optimizer.param_groups) == groups_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kwargs", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"lam": -1.0}, {"upper": 0.0},
                                    {"init": 2.0}, {"mu": -1.0}])
def test_bad_arguments_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get_method("polarization")(**kwargs)
