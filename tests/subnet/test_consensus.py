"""Consensus gates (arXiv 2302.10798): the STE gradient and both regularisers by hand, the gate against an explicit
per-sample loop, the surgery (same Parameters, unchanged function, residual groups left alone), extraction equal to
the masked network, executed MACs by hand, bad input leaving the model unchanged, the Method end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.errors import ConfigurationError
from regimen.method import Context, get_method
from regimen.models.resnet import ResNet
from regimen.subnet import (
    ConsensusGate,
    apply_consensus_gates,
    consensus_dynamic_macs,
    consensus_masks,
    consensus_plan,
    count_macs,
    extract_consensus,
    firing_rates,
    gate_polarization,
    gate_sparsity_loss,
    polarization_penalty,
    remove_consensus_gates,
    straight_through_gate,
)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _inputs(n=8, seed=1):
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Random predictor weights (so gates differ per input) and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ConsensusGate):
                m.predictor.weight.copy_(torch.randn(m.predictor.weight.shape, generator=g) * 3)
                m.predictor.bias.copy_(torch.randn(m.predictor.bias.shape, generator=g))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)


# ------------------------------------------------------------------------------------------------ functional core
def test_straight_through_gate_is_hard_forward_and_sigmoid_derivative_backward():
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    gates = straight_through_gate(logits)
    assert torch.equal(gates.detach(), (logits.detach() > 0).float())  # exactly 0 / 1
    (weights * gates).sum().backward()
    p = [[1 / (1 + math.exp(-float(v))) for v in row] for row in logits.detach()]
    expected = torch.tensor([[float(weights[i, j]) * p[i][j] * (1 - p[i][j]) for j in range(7)] for i in range(5)])
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_sparsity_loss_matches_the_formula_by_hand():
    rates = [torch.tensor([1.0, 0.0, 0.5]), torch.tensor([0.25, 1.0])]
    costs = [torch.tensor([2.0, 2.0, 2.0]), torch.tensor([10.0, 10.0])]
    weighted = (2 * 1.0 + 2 * 0.0 + 2 * 0.5 + 10 * 0.25 + 10 * 1.0) / (3 * 2 + 2 * 10)
    assert float(gate_sparsity_loss(rates, 0.3, costs)) == pytest.approx((weighted - 0.3) ** 2)
    plain = (1.0 + 0.0 + 0.5 + 0.25 + 1.0) / 5
    assert float(gate_sparsity_loss(rates, 0.6)) == pytest.approx((plain - 0.6) ** 2)
    layers = ((1.0 + 0.0 + 0.5) / 3 - 0.3) ** 2, ((0.25 + 1.0) / 2 - 0.3) ** 2  # each layer's own weighted rate
    assert float(gate_sparsity_loss(rates, 0.3, costs, per_layer=True)) == pytest.approx(sum(layers) / 2)


@pytest.mark.parametrize("t", [0.0, 0.6, 1.2])
def test_polarization_matches_the_formula_by_hand_with_the_global_mean(t):
    rates = [torch.tensor([0.9, 0.1, 0.4]), torch.tensor([0.7, 0.0, 1.0, 0.3])]
    flat = [0.9, 0.1, 0.4, 0.7, 0.0, 1.0, 0.3]
    mean = sum(flat) / len(flat)
    expected = sum(t * abs(r) - abs(r - mean) for r in flat) / len(flat)
    assert float(gate_polarization(rates, t)) == pytest.approx(expected)
    assert float(gate_polarization(rates, t)) == pytest.approx(float(polarization_penalty(rates, t)) / len(flat))
    # minimisers are polarised: a rate above the mean is pushed up, one below it down (t = 0)
    r = torch.tensor([0.8, 0.2, 0.6, 0.4], requires_grad=True)
    gate_polarization(r, 0.0).backward()
    assert bool((r.grad[:3:2] < 0).all()) and bool((r.grad[1::2] > 0).all())


def test_regularisers_refuse_bad_input():
    with pytest.raises(ValueError, match="target"):
        gate_sparsity_loss(torch.rand(3), 1.5)
    with pytest.raises(ValueError, match="costs"):
        gate_sparsity_loss(torch.rand(3), 0.5, torch.ones(4))
    with pytest.raises(ValueError, match="rates"):
        gate_polarization(torch.zeros(0))
    with pytest.raises(TypeError, match="logits"):
        straight_through_gate(torch.ones(3, dtype=torch.long))


# ------------------------------------------------------------------------------------------------------- the gate
def test_gate_equals_an_explicit_per_sample_loop():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5)
    gate = ConsensusGate(conv, bn).eval()
    with torch.no_grad():
        gate.predictor.weight.copy_(torch.randn(5, 3) * 2)
        gate.predictor.bias.copy_(torch.randn(5))
        bn.running_mean.copy_(torch.randn(5))
    x = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    out = gate(x)
    W, b = gate.predictor.weight.detach(), gate.predictor.bias.detach()
    for n in range(6):
        pooled = [float(x[n, c].mean()) for c in range(3)]
        single = bn(conv(x[n:n + 1]))[0]
        for c in range(5):
            logit = sum(float(W[c, i]) * pooled[i] for i in range(3)) + float(b[c])
            g = 1.0 if 1 / (1 + math.exp(-logit)) > 0.5 else 0.0
            assert torch.allclose(out[n, c], single[c] * g, atol=1e-6)
            assert float(gate.last_gates[n, c]) == g


def test_linear_gate_broadcasts_over_leading_dims_and_rates_carry_the_ste_gradient():
    lin = nn.Linear(4, 3)
    gate = ConsensusGate(lin).train()
    with torch.no_grad():
        gate.predictor.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 0, 0]]))
    x = torch.randn(5, 2, 4, generator=torch.Generator().manual_seed(0))
    out = gate(x)
    pooled = x.mean(1)
    expected_gates = (pooled @ gate.predictor.weight.detach().T + gate.predictor.bias.detach() > 0).float()
    assert torch.allclose(out, lin(x) * expected_gates[:, None, :])
    assert gate.rates.shape == (3,) and gate.rates.requires_grad
    assert torch.equal(gate.rates.detach(), expected_gates.mean(0))


# ------------------------------------------------------------------------------------------------------- surgery
def test_surgery_keeps_parameters_and_function_and_undoes_exactly():
    model = small_cnn()
    x = _inputs()
    _randomise(model)
    model.eval()
    expected = model(x)
    params = {id(p) for p in model.parameters()}
    names = apply_consensus_gates(model, x[:2])
    assert names == ["0", "4"]
    assert isinstance(model[1], nn.Identity) and isinstance(model[5], nn.Identity)
    assert params <= {id(p) for p in model.parameters()}
    assert torch.allclose(model(x), expected, atol=1e-6)  # init_bias > 0: every gate on
    removed = remove_consensus_gates(model)
    assert set(removed) == {"0", "4"} and isinstance(model[1], nn.BatchNorm2d)
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_residual_coupled_groups_are_not_gated():
    torch.manual_seed(0)
    model = ResNet(in_channels=1, num_classes=4, widths=(8, 16), depths=(1, 1))
    names = apply_consensus_gates(model, torch.randn(2, 1, 12, 12))
    assert names and all(name.endswith("conv1") for name in names)  # the blocks' inner channels only


def test_a_gate_on_the_wrong_side_of_its_norm_is_refused():
    class BnAfterRelu(nn.Module):  # conv -> relu -> bn: gating after the BN is not removing the conv's channels
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.head = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.bn(F.relu(self.conv(x))).mean((2, 3)))

    torch.manual_seed(0)
    model = BnAfterRelu()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="no ConsensusGate could be placed"):
        apply_consensus_gates(model, torch.randn(2, 2, 6, 6))
    assert isinstance(model.conv, nn.Conv2d) and isinstance(model.bn, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_models_without_gateable_groups_are_refused_unchanged():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no channel group"):
        apply_consensus_gates(model, torch.randn(2, 4))
    assert isinstance(model[0], nn.Linear)
    with pytest.raises(ValueError, match="ignore"):
        apply_consensus_gates(small_cnn(), _inputs(2), ignore=["nope"])


# ---------------------------------------------------------------------------------------------------- extraction
def test_extracted_network_equals_the_masked_network():
    model = small_cnn()
    x = _inputs(16)
    apply_consensus_gates(model, x[:2])
    _randomise(model, seed=3)
    rates = firing_rates(model, x)
    assert all(0.0 < float(r.mean()) < 1.0 for r in rates.values())  # the gates differ per input
    consensus_masks(model, rates)
    model.eval()
    masked = model(x)
    macs_masked = consensus_dynamic_macs(model, x)
    extracted = copy.deepcopy(model)
    for g in extracted.modules():
        if isinstance(g, ConsensusGate):
            g.force(None)
    summary = extract_consensus(extracted, x[:2], rates=rates)
    assert not any(isinstance(m, ConsensusGate) for m in extracted.modules())
    kept = summary["kept"]
    assert extracted[0].out_channels == len(kept["0"]) and extracted[4].out_channels == len(kept["4"])
    assert len(kept["0"]) + len(kept["4"]) < 14 and summary["units"] == (len(kept["0"]) + len(kept["4"]), 14)
    assert torch.allclose(extracted.eval()(x), masked, atol=1e-5)
    predictors = 2 * 6 + 6 * 8
    assert torch.allclose(macs_masked - predictors, torch.full((16,), float(count_macs(extracted, x[:2]))))


def test_plan_with_a_mac_budget_and_failures_leave_the_gates_in_place():
    model = small_cnn()
    x = _inputs(16)
    apply_consensus_gates(model, x[:2])
    _randomise(model, seed=4)
    rates = firing_rates(model, x)
    model.eval()
    expected = model(x)
    with pytest.raises(ValueError, match="rates"):
        extract_consensus(model, x[:2], rates={"nope": torch.ones(6)})
    assert sum(isinstance(m, ConsensusGate) for m in model.modules()) == 2
    assert torch.allclose(model(x), expected)
    with pytest.raises(ValueError, match="remove_consensus_gates"):
        consensus_plan(model, x[:2], rates)
    plain = copy.deepcopy(model)
    remove_consensus_gates(plain)
    dense = count_macs(plain, x[:2])
    plan = consensus_plan(plain, x[:2], rates, macs=0.3 * dense)
    pruned = copy.deepcopy(plain)
    from regimen.subnet import prune_groups
    prune_groups(pruned, plan)
    assert count_macs(pruned, x[:2]) <= 0.3 * dense


def test_dynamic_macs_by_hand():
    model = small_cnn()
    x = _inputs(4)
    apply_consensus_gates(model, x[:2])
    _randomise(model, seed=5)
    macs = consensus_dynamic_macs(model, x)
    g1, g2 = model[0].last_gates, model[4].last_gates
    for n in range(4):
        on1, on2 = float(g1[n].sum()), float(g2[n].sum())
        conv1 = 8 * 8 * 6 * 2 * 9 * on1 / 6
        conv2 = 4 * 4 * 8 * 6 * 9 * (on1 / 6) * (on2 / 8)
        head = 3 * 8 * on2 / 8
        predictors = 2 * 6 + 6 * 8
        assert float(macs[n]) == pytest.approx(conv1 + conv2 + head + predictors)


# ------------------------------------------------------------------------------------------------------ the Method
def _context(model, optimizer, epochs=2, steps=3):
    images = (torch.rand(32, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ArrayDataset(images, torch.arange(32) % 3, 3)
    return Context(model, optimizer, F.cross_entropy, num_classes=3, per_device_batch=8, epochs=epochs,
                   steps_per_epoch=steps, train_data=data), images


def test_method_regularises_and_extracts_at_the_end():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx, images = _context(model, optimizer)
    method = get_method("consensus_gates")(keep=0.3, lam_sparsity=50.0, lam_polar=0.5, anneal=0.5,
                                           calibration_samples=32)
    method.setup(ctx)
    assert len(method.gates) == 2 and len(optimizer.param_groups) == 2
    for step in range(6):
        x = images[:8].float() / 255
        loss, _ = method.forward_loss(model, x, torch.arange(8) % 3,
                                      lambda m, a, b: (F.cross_entropy(m(a), b), None), ctx)
        optimizer.zero_grad()
        loss.backward()
        assert model[0].predictor.bias.grad is not None  # the STE carries the regulariser to the predictors
        optimizer.step()
        ctx.step = step + 1
    method.on_epoch_end(ctx)
    method.on_train_end(ctx)
    assert not any(isinstance(m, ConsensusGate) for m in model.modules())
    assert isinstance(model[1], nn.BatchNorm2d)
    assert 0 < ctx.log["consensus_gates/macs_ratio"] <= 1
    assert "consensus_gates/dynamic_macs_ratio" in ctx.log
    assert model(images[:2].float() / 255).shape == (2, 3)


def test_method_refuses_an_ungateable_model_unchanged():
    model = nn.Sequential(nn.Flatten(), nn.Linear(128, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx, _ = _context(model, optimizer)
    with pytest.raises(ConfigurationError, match="consensus_gates"):
        get_method("consensus_gates")().setup(ctx)
    assert len(optimizer.param_groups) == 1 and isinstance(model[1], nn.Linear)


@pytest.mark.parametrize("kwargs", [{"keep": 0.0}, {"keep": 1.5}, {"lam_sparsity": -1.0}, {"lam_polar": -1.0},
                                    {"anneal": 2.0}, {"gate_lr": 0.0}, {"threshold": 1.0},
                                    {"calibration_samples": 0}])
def test_bad_arguments_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        get_method("consensus_gates")(**kwargs)
