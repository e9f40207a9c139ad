"""LR-vs-batch-size rules: the formulas by hand, the optimizer families, every param group, the global batch."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.batch
from regimen.batch import LAMB, LARS, LRScalingMethod, infer_scaling_rule, scale_lr, scale_optimizer_lr
from regimen.method import Context


def test_linear_and_sqrt_rules_match_the_formulas():
    assert scale_lr(0.1, 1024, 128, "linear") == pytest.approx(0.1 * 8)
    assert scale_lr(1e-3, 1024, 128, "sqrt") == pytest.approx(1e-3 * math.sqrt(8))
    assert scale_lr(0.4, 64, 256, "linear") == pytest.approx(0.1)
    assert scale_lr(0.4, 64, 256, "sqrt") == pytest.approx(0.2)
    assert scale_lr(0.3, 128, 128, "sqrt") == pytest.approx(0.3)


@pytest.mark.parametrize("opt, rule", [
    (torch.optim.SGD, "linear"), (LARS, "linear"), (torch.optim.Adam, "sqrt"), (torch.optim.AdamW, "sqrt"),
    (LAMB, "sqrt"), (torch.optim.RMSprop, "sqrt"), ("adagrad", "sqrt"),
])
def test_auto_picks_linear_for_sgd_family_and_sqrt_for_adam_family(opt, rule):
    assert infer_scaling_rule(opt) == rule
    expected = 0.1 * (8 if rule == "linear" else math.sqrt(8))
    assert scale_lr(0.1, 1024, 128, "auto", opt) == pytest.approx(expected)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="batch_size"):
        scale_lr(0.1, 0, 128, "linear")
    with pytest.raises(ValueError, match="base_batch_size"):
        scale_lr(0.1, 128, -1, "linear")
    with pytest.raises(TypeError, match="batch_size"):
        scale_lr(0.1, 12.5, 128, "linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_lr"):
        scale_lr(float("nan"), 128, 128, "linear")
    with pytest.raises(ValueError, match="rule"):
        scale_lr(0.1, 128, 128, "cubic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="optimizer"):
        scale_lr(0.1, 128, 128, "auto")
    with pytest.raises(ValueError, match="rule='linear'"):
        infer_scaling_rule("MyFancyOptimizer")


def test_every_param_group_and_initial_lr_are_scaled():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.1},
                           {"params": model[1].parameters(), "lr": 0.01}], lr=0.5)
    opt.param_groups[0]["initial_lr"] = 0.1
    new = scale_optimizer_lr(opt, 512, 128)
    assert new == pytest.approx([0.4, 0.04])
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.4)
    assert "initial_lr" not in opt.param_groups[1]


def test_method_uses_effective_global_batch():
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam([{"params": [model.weight], "lr": 1e-3}, {"params": [model.bias], "lr": 2e-3}])
    ctx = Context(model=model, optimizer=opt, criterion=F.cross_entropy, num_classes=2, per_device_batch=64,
                  world_size=2, accumulation=4)  # global batch 512 = 4 x 128
    LRScalingMethod(base_batch_size=128).setup(ctx)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 4e-3])  # sqrt(4) = 2 for Adam
    assert ctx.log["lr_scaling/lr"] == pytest.approx(2e-3)
    assert ctx.log["lr_scaling/factor"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="base_batch_size"):
        LRScalingMethod(base_batch_size=0)
    with pytest.warns(DeprecationWarning, match="LRScalingMethod"):
        assert regimen.batch.LRScaling is LRScalingMethod
