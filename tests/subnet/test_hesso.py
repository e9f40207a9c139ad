"""HESSO progressive zeroing: the decay schedule, exact zeros, lossless removal, selection, resume, the Method."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from regimen.data import ArrayDataset
from regimen.method import Context, get_method
from regimen.models import MLP, resnet
from regimen.subnet import HESSOPruner, group_scores, hesso_factor
from tests.subnet.archs import DenseNet, randomize_norms


def test_factors_decay_linearly_and_end_at_exactly_zero():
    period = 7
    value = 1.0
    for t in range(period):
        value *= hesso_factor(t, period)
        assert value == pytest.approx((period - t - 1) / period, abs=1e-12)
    assert value == 0.0
    with pytest.raises(ValueError):
        hesso_factor(7, 7)


def _train(model, pruner, steps, lr=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        x = torch.randn(4, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (4,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
    return optimizer


def _unit_values(model, group, units):
    values = []
    for s in group.slices:
        if s.is_buffer:
            continue
        values.append(s.tensor(model).detach().index_select(s.dim, group.positions(s, units)).reshape(-1))
    return torch.cat(values)


def test_selected_units_are_exactly_zero_and_removal_is_lossless():
    torch.manual_seed(0)
    model, x = DenseNet(), torch.randn(2, 1, 8, 8)
    randomize_norms(model)
    pruner = HESSOPruner(model, x, ratio=0.4, warmup_steps=2, period_steps=3, periods=2)
    _train(model, pruner, pruner.total_steps + 2)
    total = sum(g.size for g in pruner.groups)
    assert sum(len(u) for u in pruner.zeroed.values()) == int(0.4 * total)
    for i, units in pruner.zeroed.items():
        assert torch.count_nonzero(_unit_values(model, pruner.groups[i], units)) == 0
    model.eval()
    with torch.no_grad():
        before = model(x)
    params = sum(p.numel() for p in model.parameters())
    report = pruner.prune(example_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert report.params_after < params == report.params_before
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_decay_follows_the_schedule_when_nothing_else_moves_the_weights():
    torch.manual_seed(0)
    model, x = MLP(in_features=12, hidden=(8,)), torch.randn(2, 12)  # a single group: fc1 rows, head columns
    period = 4
    pruner = HESSOPruner(model, x, ratio=0.5, warmup_steps=1, period_steps=period, periods=1, scope="uniform")
    (group,) = pruner.groups
    original = copy.deepcopy(model)
    pruner.step()  # warm-up: nothing happens
    assert not pruner.pending
    for t in range(period):
        pruner.step()
        units = (pruner.pending or pruner.zeroed)[0]
        expected = _unit_values(original, group, units) * ((period - t - 1) / period)
        torch.testing.assert_close(_unit_values(model, group, units), expected, rtol=1e-6, atol=1e-7)
        others = sorted(set(range(group.size)) - set(units))
        assert torch.equal(_unit_values(model, group, others), _unit_values(original, group, others))
    assert torch.count_nonzero(_unit_values(model, group, units)) == 0


def test_first_period_selects_the_lowest_importance_units():
    torch.manual_seed(0)
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    pruner = HESSOPruner(model, x, ratio=0.5, period_steps=2, scope="uniform")
    pruner.step()
    for i, group in enumerate(pruner.groups):
        scores = group_scores(model, group, "l2")  # after one step of scaling the order is unchanged
        lowest = set(torch.argsort(scores)[: group.size // 2].tolist())
        assert set(pruner.pending[i]) == lowest


def test_resume_from_state_dict_is_bitwise():
    torch.manual_seed(0)
    twin, x = DenseNet(), torch.randn(2, 1, 8, 8)
    first = HESSOPruner(twin, x, ratio=0.3, warmup_steps=1, period_steps=3, periods=2)
    _train(twin, first, 4)
    state = copy.deepcopy(first.state_dict())
    resumed_model = copy.deepcopy(twin)
    resumed = HESSOPruner(resumed_model, x, ratio=0.3, warmup_steps=1, period_steps=3, periods=2)
    resumed.load_state_dict(state)
    _train(resumed_model, resumed, 4, seed=1)
    _train(twin, first, 4, seed=1)
    for a, b in zip(resumed_model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert resumed.zeroed == first.zeroed and resumed.steps == first.steps == 8


def test_hesso_method_prunes_at_the_end_of_training():
    torch.manual_seed(0)
    model = resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    images = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8)
    data = ArrayDataset(images, torch.arange(8) % 10, 10)
    ctx = Context(model, optimizer, F.cross_entropy, num_classes=10, per_device_batch=4, epochs=2, steps_per_epoch=5,
                  train_data=data)
    method = get_method("hesso")(ratio=0.5, start=0.2, end=0.8, periods=2)
    method.setup(ctx)
    assert ctx.log["hesso/groups"] == len(method.pruner.groups) > 0
    for step in range(10):
        x = images[:4].float() / 255
        optimizer.zero_grad()
        F.cross_entropy(model(x), torch.arange(4)).backward()
        optimizer.step()
        ctx.step = step + 1
        method.after_step(ctx)
    assert (method.pruner.warmup_steps, method.pruner.period_steps) == (2, 3)  # 20 % of 10 steps; 60 % / 2 periods
    assert method.pruner.done
    params = sum(p.numel() for p in model.parameters())
    method.on_train_end(ctx)
    assert sum(p.numel() for p in model.parameters()) < params
    assert 0 < ctx.log["hesso/param_ratio"] < 1
    assert ctx.log["hesso/zeroed_fraction"] == pytest.approx(0.5, abs=0.05)
    assert model(images[:2].float() / 255).shape == (2, 10)


@pytest.mark.parametrize("kwargs", [{"ratio": 1.0}, {"periods": 0}, {"period_steps": 0}, {"warmup_steps": -1},
                                    {"ignore": ["nope"]}, {"scope": "layer"}])
def test_bad_arguments_are_clear_errors(kwargs):
    with pytest.raises(ValueError):
        HESSOPruner(resnet(), torch.randn(2, 1, 16, 16), **kwargs)
    with pytest.raises(ValueError):
        get_method("hesso")(start=0.5, end=0.4)
