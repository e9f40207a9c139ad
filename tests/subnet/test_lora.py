"""LoRA / ALLoRA: the update formula, merge = unmerge forward, conv deltas against F.conv2d, ALLoRA's row
coefficient by hand, freezing, bad ranks, and both Methods on a tiny run."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, get_method
from regimen.subnet import (
    LoRAConv2d,
    LoRALinear,
    allora_row_scale,
    allora_scale_,
    apply_lora,
    lora_delta,
    lora_parameters,
    merge_lora,
    unmerge_lora,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8))


def _randomise(model):
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_()


def test_linear_lora_forward_is_w_plus_scaled_ba_by_hand():
    base = nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + 1.5 * (x @ layer.lora_a.T @ layer.lora_b.T)
    torch.testing.assert_close(layer(x), expected)


def test_lora_starts_at_the_pretrained_function():
    model = _mlp()
    reference = copy.deepcopy(model)
    apply_lora(model, rank=3, alpha=6.0, dropout=0.1)
    model.eval()
    x = torch.randn(5, 12)
    torch.testing.assert_close(model(x), reference(x))


def test_merged_lora_equals_unmerged_forward_and_unmerge_restores_the_weight():
    model = _mlp().double()
    apply_lora(model, rank=3, alpha=6.0)
    _randomise(model)
    model.eval()
    x = torch.randn(7, 12, dtype=torch.float64)
    before = model(x)
    weight = model[0].base.weight.clone()
    assert merge_lora(model) == 2
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    assert unmerge_lora(model) == 2
    torch.testing.assert_close(model[0].base.weight, weight, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), before, rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="not merged"):
        model[0].unmerge()


def test_conv_lora_delta_matches_f_conv2d_with_the_summed_kernel():
    torch.manual_seed(1)
    base = nn.Conv2d(3, 6, 3, stride=2, padding=1)
    layer = LoRAConv2d(copy.deepcopy(base), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(2, 3, 9, 9)
    # the delta kernel by an explicit loop over the rank
    delta = torch.zeros_like(base.weight)
    for k in range(2):
        delta += layer.lora_b[:, k, 0, 0][:, None, None, None] * layer.lora_a[k][None]
    expected = F.conv2d(x, base.weight + 2.0 * delta, base.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lora_delta(layer.lora_a, layer.lora_b, 2.0), 2.0 * delta)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_apply_lora_freezes_all_but_the_factors_and_the_trainable_modules():
    model = _mlp()
    apply_lora(model, rank=2, trainable=["2"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.lora_a", "0.lora_b", "2.weight", "2.bias"}


def test_lora_rank_at_or_above_layer_width_is_refused_naming_rank_and_leaves_the_model():
    model = _mlp()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"rank must be below the layer width min\(in, out\) = 8 of 2"):
        apply_lora(model, rank=8)
    assert isinstance(model[0], nn.Linear)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        LoRALinear(nn.Linear(4, 4), rank=0)


def test_lora_dropout_uses_the_generator():
    outs = []
    for _ in range(2):
        model = _mlp()
        apply_lora(model, rank=2, dropout=0.5, generator=torch.Generator().manual_seed(3))
        _randomise(model)
        outs.append(model(torch.ones(2, 12)))
    torch.testing.assert_close(outs[0], outs[1])


def test_allora_row_scale_is_the_formula_by_hand():
    param = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    eta = 2.0
    expected = torch.tensor([1 / (25 + 0.25) ** 0.5, 1 / 0.25 ** 0.5, 1 / (1 + 0.25) ** 0.5])[:, None]
    torch.testing.assert_close(allora_row_scale(param, eta), expected)
    conv_factor = torch.ones(2, 3, 1, 1)
    torch.testing.assert_close(allora_row_scale(conv_factor, eta).flatten(), torch.full((2,), 1 / (3 + 0.25) ** 0.5))
    grad_param = nn.Parameter(param.clone())
    grad_param.grad = torch.ones_like(param)
    allora_scale_([grad_param], eta)
    torch.testing.assert_close(grad_param.grad, expected.expand_as(param))
    with pytest.raises(ValueError, match="eta must be > 0"):
        allora_row_scale(param, 0.0)


def _ctx(model, lr=0.1, optimizer="sgd"):
    opt = (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(model.parameters(), lr=lr)
    return Context(model, opt, generator=torch.Generator().manual_seed(0), num_classes=8)


def _train_step(method, ctx, x, y):
    def closure():
        ctx.optimizer.zero_grad()
        loss = F.cross_entropy(ctx.model(x), y)
        loss.backward()
        method.after_backward(ctx)
        return loss
    closure()
    method.optimizer_step(closure, lambda c: ctx.optimizer.step(), ctx)


def test_allora_update_mode_scales_each_row_step_by_the_coefficient():
    model = _mlp()
    method = get_method("allora")(rank=2, eta=2.0, mode="update")
    ctx = _ctx(model, optimizer="adam")
    method.setup(ctx)
    layer = model[0]
    assert layer.scaling == 1.0 and layer.dropout == 0.0
    # reference: the same Adam step without ALLoRA, then the per-row coefficient of the old parameters
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.Adam(lora_parameters(reference), lr=0.1)
    x, y = torch.randn(6, 12), torch.randint(0, 8, (6,))
    old = [p.detach().clone() for p in lora_parameters(model)]
    _train_step(method, ctx, x, y)
    ref_opt.zero_grad()
    F.cross_entropy(reference(x), y).backward()
    ref_opt.step()
    for new, ref, before in zip(lora_parameters(model), lora_parameters(reference), old):
        torch.testing.assert_close(new, before + (ref - before) * allora_row_scale(before, 2.0), rtol=1e-5,
                                   atol=1e-6)


def test_allora_gradient_mode_with_sgd_moves_b_rows_eta_times_the_plain_step():
    model = _mlp()
    method = get_method("allora")(rank=2, eta=3.0, mode="gradient")
    ctx = _ctx(model)
    method.setup(ctx)
    reference = copy.deepcopy(model)
    x, y = torch.randn(6, 12), torch.randint(0, 8, (6,))
    _train_step(method, ctx, x, y)
    F.cross_entropy(reference(x), y).backward()
    plain_step = -0.1 * reference[0].lora_b.grad  # B = 0: every row's coefficient is eta
    torch.testing.assert_close(model[0].lora_b.detach(), 3.0 * plain_step, rtol=1e-5, atol=1e-7)


def test_lora_method_trains_only_factors_and_merges_at_end():
    model = _mlp()
    frozen = model[0].weight.clone()
    method = get_method("lora")(rank=2, merge_at_end=True)
    ctx = _ctx(model)
    method.setup(ctx)
    assert model[0].scaling == 2.0 and model[0].dropout == 0.1
    x, y = torch.randn(6, 12), torch.randint(0, 8, (6,))
    for _ in range(3):
        _train_step(method, ctx, x, y)
    assert torch.equal(model[0].base.weight, frozen)
    model.eval()
    out = model(x)
    method.on_train_end(ctx)
    assert model[0].merged
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)


def test_apply_lora_twice_wraps_no_frozen_base_and_unknown_trainable_is_named():
    model = _mlp()
    apply_lora(model, rank=2, ignore=["2"])
    assert apply_lora(model, rank=2) == {"2": 2}
    assert isinstance(model[0].base, nn.Linear)
    with pytest.raises(ValueError, match="trainable names modules that do not exist"):
        apply_lora(_mlp(), rank=2, trainable=["head"])


def test_weight_property_is_the_effective_weight_for_code_that_reads_it():
    layer = LoRALinear(nn.Linear(6, 5), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 6)
    torch.testing.assert_close(F.linear(x, layer.weight, layer.bias), layer(x))
    conv = LoRAConv2d(nn.Conv2d(3, 4, 3, padding=1), rank=2)
    with torch.no_grad():
        conv.lora_b.normal_()
    images = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(F.conv2d(images, conv.weight, conv.bias, padding=1), conv(images), rtol=1e-5,
                               atol=1e-5)
    layer.merge()
    torch.testing.assert_close(F.linear(x, layer.weight, layer.bias), layer(x))
