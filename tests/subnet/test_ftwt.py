"""FTWT: heat and targets against explicit loops, the mask loss by hand, the gate surgery (same Parameters, unchanged
function with every channel on, decoupled predictors), executed MACs by hand, bad input leaving the model unchanged."""

import copy
import math

import pytest
import torch
from torch import nn

from regimen.method import Context
from regimen.subnet import (
    FTWTGate,
    FTWTMethod,
    apply_ftwt,
    channel_heat,
    count_macs,
    ftwt_dynamic_macs,
    ftwt_mask_loss,
    ftwt_targets,
)


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _reference_targets(heat, mode, threshold):
    out = torch.zeros_like(heat)
    for n in range(heat.shape[0]):
        h = heat[n].tolist()
        order = sorted(range(len(h)), key=lambda c: (-h[c], c))
        if mode == "uniform":
            kept = [c for c in order[:len(h) - math.floor(threshold * len(h) + 1e-9)] if h[c] > 1e-5]
        else:
            total = sum(h)
            kept, cumulative = [], 0.0
            for c in order:
                cumulative += h[c] / total
                if cumulative <= threshold + 1e-5:
                    kept.append(c)
            kept = kept or order[:1]
        for c in kept + order[:1]:
            out[n, c] = 1.0
    return out


def test_heat_is_the_max_absolute_activation_per_channel():
    o = torch.randn(3, 4, 5, 5)
    expected = torch.tensor([[o[n, c].abs().max().item() for c in range(4)] for n in range(3)])
    assert torch.equal(channel_heat(o), expected)


@pytest.mark.parametrize("mode, threshold", [("mass", 0.5), ("mass", 0.9), ("uniform", 0.25), ("uniform", 0.6)])
def test_targets_match_an_explicit_loop(mode, threshold):
    heat = torch.rand(6, 9, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ftwt_targets(heat, mode, threshold), _reference_targets(heat, mode, threshold))


def test_mass_threshold_one_drops_only_dead_channels():
    heat = torch.tensor([[0.0, 2.0, 1e-9, 3.0]])
    assert torch.equal(ftwt_targets(heat, "mass", 1.0), torch.tensor([[0.0, 1.0, 0.0, 1.0]]))
    assert torch.equal(ftwt_targets(heat, "uniform", 0.25), torch.tensor([[0.0, 1.0, 0.0, 1.0]]))


def test_mask_loss_sums_channels_of_the_per_sample_mean():
    logits, target = torch.randn(4, 3), (torch.rand(4, 3) > 0.5).float()
    p = torch.sigmoid(logits)
    manual = -(target * p.log() + (1 - target) * (1 - p).log()).mean(0).sum()
    assert ftwt_mask_loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-5)


def test_gates_keep_the_parameters_and_the_function_with_every_channel_on():
    model = _cnn()
    x = torch.randn(5, 2, 6, 6)
    reference = copy.deepcopy(model).eval()(x)
    weight = model[0].weight
    gates = apply_ftwt(model, init_bias=20.0)
    assert len(gates) == 2 and isinstance(model[0], FTWTGate) and isinstance(model[1], nn.Identity)
    assert model[0].conv.weight is weight
    assert torch.allclose(model.eval()(x), reference, atol=1e-6)


def test_decoupled_mask_loss_does_not_reach_the_backbone():
    model = _cnn()
    gates = apply_ftwt(model, mode="uniform", threshold=0.5, init_bias=0.1)
    model.train()(torch.randn(4, 2, 6, 6))
    torch.stack([g.loss for g in gates]).sum().backward()
    assert model[0].conv.weight.grad is None and gates[0].predictor.linear.bias.grad is not None
    for g in gates:
        g.predictor.zero_grad()
    model(torch.randn(4, 2, 6, 6)).sum().backward()  # the task loss never reaches the predictors (as the reference)
    assert all(p.grad is None or not bool(p.grad.any()) for g in gates for p in g.predictor.parameters())


def test_dynamic_macs_count_active_inputs_and_kept_outputs():
    model = _cnn()
    x = torch.randn(4, 2, 6, 6)
    dense = count_macs(model, x)
    gates = apply_ftwt(model, init_bias=20.0)
    with torch.no_grad():
        gates[0].predictor.linear.bias[:3] = -20.0  # first gate keeps 3 of 6 channels for every input
    macs = ftwt_dynamic_macs(model, x)
    conv1, conv2, fc = 36 * 2 * 9 * 6, 36 * 6 * 9 * 8, 8 * 3
    assert dense == conv1 + conv2 + fc
    active_second = (model[3].block[2](model[3].block[1](model[3].block[0](
        model[0](x)))).reshape(4, 8, -1) != 0).any(2).float().sum(1)
    expected = conv1 * 3 / 6 + conv2 * 3 / 6 + fc * active_second / 8
    assert torch.allclose(macs, expected)


def test_a_model_without_conv_bn_relu_runs_is_refused_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="conv -> BatchNorm2d -> ReLU"):
        apply_ftwt(model)
    assert list(model.state_dict()) == list(state)
    with pytest.raises(ValueError, match="threshold"):
        apply_ftwt(_cnn(), mode="uniform", threshold=1.0)


def test_method_adds_the_mask_loss_and_a_predictor_group():
    model = _cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = Context(model, optimizer, num_classes=3, epochs=2)
    method = FTWTMethod(mode="uniform", threshold=0.5)
    method.setup(ctx)
    assert len(optimizer.param_groups) == 2 and optimizer.param_groups[1]["lr"] == 0.1
    x, y = torch.randn(4, 2, 6, 6), torch.randint(0, 3, (4,))

    def base(m, xb, yb):
        out = m(xb)
        return nn.functional.cross_entropy(out, yb), out

    loss, _ = method.forward_loss(model, x, y, base, ctx)
    plain, _ = base(model, x, y)
    assert loss.item() > plain.item()
