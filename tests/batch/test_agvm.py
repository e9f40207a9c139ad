"""AGVM: the variance proxy and factors against their formulas, the module grouping, LR factors applied only inside
the step, half-batch gradients against explicit per-half backward passes, and named errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import AGVM, AGVMMethod, agvm_factors, gradient_variance_proxy, module_group_of
from regimen.method import Context, compose_optimizer_step


class TwoHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.cls_head = nn.Linear(8, 3)
        self.box_head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.backbone(x)
        return torch.cat([self.cls_head(h), self.box_head(h)], dim=1)


def test_variance_proxy_is_one_minus_cosine_over_the_concatenated_group():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([[2.0]])]
    b = [torch.tensor([0.0, 1.0]), torch.tensor([[2.0]])]
    cos = 4.0 / (math.sqrt(5) * math.sqrt(5))
    assert gradient_variance_proxy(a, b) == pytest.approx(1 - cos)
    assert gradient_variance_proxy(a, a) == pytest.approx(0.0, abs=1e-12)


def test_factors_are_the_clamped_square_root_of_the_reference_ratio():
    phis = [0.2, 0.4, 0.001, 10.0]
    expected = [1.0, math.sqrt((0.2 + 1e-6) / (0.4 + 1e-6)), math.sqrt(10.0), math.sqrt(0.5)]
    assert agvm_factors(phis) == pytest.approx(expected)


def test_parameters_group_by_longest_dotted_prefix():
    prefixes = ["backbone", "backbone.0", "head"]
    assert module_group_of("backbone.0.weight", prefixes) == 1
    assert module_group_of("backbone.2.bias", prefixes) == 0
    assert module_group_of("header.weight", prefixes) is None


def test_param_groups_split_and_lr_scaled_only_inside_the_step():
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    agvm = AGVM(model, opt, ["backbone", "cls_head", "box_head"], momentum=0.5)
    assert sorted(g["agvm_group"] for g in opt.param_groups) == [0, 1, 2]
    assert all(g["weight_decay"] == 1e-4 and g["momentum"] == 0.9 for g in opt.param_groups)
    agvm.scales = [1.0, 2.0, 0.5]
    with agvm.scaled():
        assert {g["agvm_group"]: g["lr"] for g in opt.param_groups} == pytest.approx({0: 0.1, 1: 0.2, 2: 0.05})
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_half_gradients_equal_separate_backward_passes_and_update_smooths():
    torch.manual_seed(0)
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agvm = AGVM(model, opt, ["backbone", "cls_head", "box_head"], momentum=0.5)
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    halves = (slice(0, 4), slice(4, 8))
    grads = agvm.half_gradients(lambda h: F.cross_entropy(model(x[halves[h]]), y[halves[h]]), model)
    for h in (0, 1):
        model.zero_grad()
        F.cross_entropy(model(x[halves[h]]), y[halves[h]]).backward()
        assert torch.allclose(grads[h][1][0], model.cls_head.weight.grad)
        assert torch.allclose(grads[h][0][0], model.backbone[0].weight.grad)
    agvm.update(grads[0], grads[1])
    mus = agvm_factors([gradient_variance_proxy(a, b) for a, b in zip(grads[0], grads[1])])
    assert agvm.scales == pytest.approx([0.5 + 0.5 * m for m in mus])


def test_method_updates_on_schedule_and_restores_lrs():
    torch.manual_seed(0)
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, opt, criterion=F.cross_entropy)
    method = AGVMMethod(groups=["backbone", "cls_head", "box_head"], interval=1, momentum=0.0)
    method.setup(ctx)
    x, y = torch.randn(8, 4), torch.randint(0, 5, (8,))
    F.cross_entropy(model(x), y).backward()
    method.before_forward(x, y, ctx)
    seen = []
    compose_optimizer_step([method], lambda closure: seen.append({g["agvm_group"]: g["lr"]
                                                                  for g in opt.param_groups}), ctx)(lambda: None)
    assert seen[0][0] == pytest.approx(0.1)
    assert seen[0][1] == pytest.approx(0.1 * method.agvm.scales[1])
    assert all(g["lr"] == 0.1 for g in opt.param_groups)


def test_bad_groups_are_named_and_leave_the_optimizer_unchanged():
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [list(g["params"]) for g in opt.param_groups]
    with pytest.raises(ValueError, match="'neck' names no trainable parameter"):
        AGVM(model, opt, ["backbone", "neck"])
    with pytest.raises(ValueError, match="at least 2"):
        AGVM(model, opt, ["backbone"])
    with pytest.raises(ValueError, match="momentum"):
        AGVM(model, opt, ["backbone", "cls_head"], momentum=1.5)
    assert [list(g["params"]) for g in opt.param_groups] == before
    with pytest.raises(ValueError, match="interval"):
        AGVMMethod(interval=0)
    with pytest.raises(ValueError, match="start"):
        AGVMMethod(start=-1)


def test_adam_normalization_is_the_reference_form_by_hand():
    """Sense-X/AGVM ``_cat_all_param_grads(use_adam=True)``: g / (sqrt(β2·v + (1 − β2)·g²) + eps), v not corrected."""
    torch.manual_seed(0)
    model = TwoHead()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    agvm = AGVM(model, opt, ["backbone", "cls_head", "box_head"], momentum=0.0)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    F.cross_entropy(model(x)[:, :3], y).backward()
    opt.step()  # exp_avg_sq now exists
    grads = agvm.half_gradients(lambda h: F.cross_entropy(model(x[4 * h:4 * h + 4])[:, :3], y[4 * h:4 * h + 4]))
    by_hand = []
    for half in grads:
        rows = []
        for params, gs in zip(agvm.params, half):
            rows.append([g / ((0.99 * opt.state[p]["exp_avg_sq"] + 0.01 * g * g).sqrt() + 1e-8)
                         for p, g in zip(params, gs)])
        by_hand.append(rows)
    for got, want in zip((agvm.normalized(grads[0]), agvm.normalized(grads[1])), by_hand):
        for row_got, row_want in zip(got, want):
            for a, b in zip(row_got, row_want):
                torch.testing.assert_close(a, b)
    agvm.update(grads[0], grads[1])
    phis = [gradient_variance_proxy(a, b) for a, b in zip(*by_hand)]
    assert agvm.last_phis == pytest.approx(phis)
    raw = [gradient_variance_proxy(a, b) for a, b in zip(*grads)]
    assert agvm.last_phis != pytest.approx(raw)


def test_adam_normalization_off_for_sgd_and_refused_when_forced():
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    agvm = AGVM(model, opt, ["backbone", "cls_head", "box_head"])
    grads = [[torch.ones_like(p) for p in params] for params in agvm.params]
    assert all(a is b for ra, rb in zip(agvm.normalized(grads), grads) for a, b in zip(ra, rb))
    with pytest.raises(ValueError, match="adam_normalize"):
        AGVM(model, torch.optim.SGD(model.parameters(), lr=0.1), ["backbone", "cls_head"], adam_normalize=True)
    with pytest.raises(TypeError, match="adam_normalize"):
        AGVM(model, torch.optim.SGD(model.parameters(), lr=0.1), ["backbone", "cls_head"], adam_normalize="yes")
