"""Once-for-All: kernel transform by hand, elastic conv against F.conv2d, depth skipping by hand, width against
NestedWidth, extract equals the supernet, BN recalibration against batch statistics, the phase schedule, the method."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import get_method
from regimen.models import resnet
from regimen.models.vit import ViT
from regimen.subnet import count_macs
from regimen.subnet.nested import NestedWidth
from regimen.subnet.ofa import (
    ElasticKernelConv2d,
    OnceForAll,
    OnceForAllMethod,
    apply_elastic_kernel,
    centre_crop_kernel,
    check_kernels,
    progressive_phases,
    recalibrate_batch_norm,
    transform_kernel,
)


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """BN statistics/affine and transform matrices away from their defaults, so equalities are not trivial."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.2, 0.2, generator=generator)
            if isinstance(m, ElasticKernelConv2d):
                for t in m.transforms():
                    t.add_(0.1 * torch.randn(t.shape, generator=generator))


def _supernet(**kwargs) -> tuple[OnceForAll, torch.Tensor]:
    torch.manual_seed(0)
    model = resnet(widths=(4, 8, 16), depths=(2, 2, 2), kernel_size=5)
    x = torch.randn(3, 1, 16, 16)
    options = dict(kernels=(3, 5), depths=(1, 2), widths=(0.25, 0.5, 1.0))
    options.update(kwargs)
    supernet = OnceForAll(model, x, **options)
    _randomize(supernet, torch.Generator().manual_seed(1))
    return supernet, x


# ----------------------------------------------------------------------------------------------------------- functional
def test_transform_kernel_matches_a_loop_over_channels_with_the_paper_formula():
    """7 → 5 → 3: crop the centre, flatten, multiply by Mᵀ (F.linear), recursively — by hand per (out, in) pair."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2, 2, 7, 7, generator=g)
    m75, m53 = torch.randn(25, 25, generator=g), torch.randn(9, 9, generator=g)
    expected5 = torch.empty(2, 2, 5, 5)
    expected3 = torch.empty(2, 2, 3, 3)
    for o in range(2):
        for i in range(2):
            five = [sum(m75[r, c].item() * weight[o, i, 1 + c // 5, 1 + c % 5].item() for c in range(25))
                    for r in range(25)]
            expected5[o, i] = torch.tensor(five).reshape(5, 5)
            crop = expected5[o, i, 1:4, 1:4].reshape(9)
            expected3[o, i] = torch.tensor([sum(m53[r, c].item() * crop[c].item() for c in range(9))
                                            for r in range(9)]).reshape(3, 3)
    torch.testing.assert_close(transform_kernel(weight, (3, 5, 7), 5, [m53, m75]), expected5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(transform_kernel(weight, (3, 5, 7), 3, [m53, m75]), expected3, rtol=1e-5, atol=1e-5)
    assert torch.equal(transform_kernel(weight, (3, 5, 7), 7, [m53, m75]), weight)


def test_identity_transforms_are_the_centre_crop():
    weight = torch.randn(4, 3, 5, 5)
    eye = [torch.eye(9)]
    assert torch.equal(transform_kernel(weight, (3, 5), 3, eye), weight[:, :, 1:4, 1:4])
    assert torch.equal(centre_crop_kernel(weight, 3), weight[:, :, 1:4, 1:4])
    assert torch.equal(centre_crop_kernel(weight, 1), weight[:, :, 2:3, 2:3])


def test_bad_kernels_are_refused_by_name():
    with pytest.raises(ValueError, match="kernels"):
        check_kernels((3, 4))
    with pytest.raises(ValueError, match="kernels"):
        check_kernels((5, 3))
    with pytest.raises(ValueError, match="kernel must be one of"):
        transform_kernel(torch.randn(1, 1, 5, 5), (3, 5), 7)
    with pytest.raises(ValueError, match="weight"):
        transform_kernel(torch.randn(1, 1, 7, 7), (3, 5), 3)
    with pytest.raises(ValueError, match="matrices"):
        transform_kernel(torch.randn(1, 1, 5, 5), (3, 5), 3, [torch.eye(4)])


def test_elastic_conv_equals_f_conv2d_with_the_transformed_kernel_and_owns_the_parameters():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 5, stride=2, padding=2, bias=True)
    x = torch.randn(2, 3, 11, 11)
    full = conv(x)
    elastic = ElasticKernelConv2d.from_conv(conv, (1, 3, 5))
    assert elastic.weight is conv.weight and elastic.bias is conv.bias
    torch.testing.assert_close(elastic(x), full)
    for t in elastic.transforms():
        t.data.add_(0.05 * torch.randn_like(t))
    for k in (1, 3):
        elastic.active_kernel = k
        weight = transform_kernel(conv.weight, (1, 3, 5), k, elastic.transforms())
        expected = F.conv2d(x, weight, conv.bias, stride=2, padding=k // 2)
        torch.testing.assert_close(elastic(x), expected)
        assert elastic(x).shape == full.shape  # "same" padding: the spatial size does not depend on the kernel
        torch.testing.assert_close(elastic.to_conv(k)(x), expected)


def test_apply_elastic_kernel_adds_the_matrices_to_the_optimizer_and_refuses_models_without_the_kernel():
    model = resnet(widths=(4, 8), depths=(1, 1), kernel_size=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    names = apply_elastic_kernel(model, (3, 5), optimizer=optimizer)
    assert names == ["stages.0.0", "stages.1.conv1", "stages.1.conv2", "stages.2.conv1", "stages.2.conv2"]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimizer for p in model.parameters())
    plain = resnet(widths=(4, 8), depths=(1, 1))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match="kernels"):
        apply_elastic_kernel(plain, (3, 5))
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in before.items())


def test_recalibrate_batch_norm_gives_the_average_of_the_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.1)
    bn.running_mean.fill_(5.0)
    batches = [torch.randn(4, 3, 2, 2) * (i + 1) + i for i in range(3)]
    recalibrate_batch_norm(bn.eval(), batches)
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.1 and not bn.training
    with pytest.raises(ValueError, match="batches"):
        recalibrate_batch_norm(bn, [])


def test_progressive_phases_follow_the_paper_order_and_split_each_phase():
    events = progressive_phases([2, 1, 2, 4], kernels=(3, 5, 7), depths=(2, 3, 4), widths=(0.5, 0.75, 1.0))
    assert events == [(2, "kernel", "kernel", 5), (2, "kernel", "kernel", 3),
                      (3, "depth", "depth", 3), (4, "depth", "depth", 2),
                      (5, "width", "width", 0.75), (7, "width", "width", 0.5)]
    with pytest.raises(ValueError, match="phase_epochs"):
        progressive_phases([1, 1, 1], (3, 5), (1, 2), (1.0,))


# --------------------------------------------------------------------------------------------------------------- module
@pytest.mark.parametrize("setting", [dict(depth=1, width=0.25, kernel=3), dict(depth=2, width=0.5, kernel=5),
                                     dict(depth=(1, 2, 1), width=1.0, kernel=3), dict(depth=2, width=1.0, kernel=5),
                                     dict(depth=(2, 1, 1), width=0.5, kernel=(3, 5) * 6 + (3,))])
def test_extract_equals_the_supernet_at_that_setting(setting):
    supernet, x = _supernet()
    for dim in ("depth", "width", "kernel"):
        for value in (supernet.depths, supernet.widths, supernet.kernels)[("depth", "width", "kernel").index(dim)]:
            supernet.enable(**{dim: value})
    supernet.eval()
    small = supernet.extract(**setting).eval()
    assert (supernet(x, **setting) - small(x)).abs().max() <= 1e-5
    assert not any(isinstance(m, ElasticKernelConv2d) for m in small.modules())


def test_extract_is_smaller_and_macs_follow_kernel_depth_and_width():
    supernet, _ = _supernet()
    example = torch.zeros(1, 1, 16, 16)
    macs = {s.label(): count_macs(supernet.build(s), example) for s in supernet.uniform_settings()}
    assert macs["w1_d2_k5"] == count_macs(resnet(widths=(4, 8, 16), depths=(2, 2, 2), kernel_size=5), example)
    assert macs["w1_d2_k3"] == count_macs(resnet(widths=(4, 8, 16), depths=(2, 2, 2)), example)
    assert macs["w1_d1_k3"] == count_macs(resnet(widths=(4, 8, 16), depths=(1, 1, 1)), example)
    assert macs["w0.5_d1_k3"] == count_macs(resnet(widths=(2, 4, 8), depths=(1, 1, 1)), example)


def test_depth_skips_the_trailing_blocks_of_each_group_by_hand():
    supernet, x = _supernet(kernels=None, widths=(1.0,))
    supernet.eval()
    stages = supernet.model.stages
    h = x
    for index in (0, 1, 3, 4, 5, 7):  # groups (1, 2), (3, 4), (5, 6): depths (1, 2, 1) skip 2 and 6
        h = stages[index](h)
    torch.testing.assert_close(supernet(x, depth=(1, 2, 1)), h)


def test_width_equals_nested_width_with_batch_statistics():
    """In training mode (batch statistics) OFA's shared-BN width slice computes what NestedWidth computes."""
    supernet, x = _supernet(kernels=None, depths=None)
    torch.manual_seed(0)
    reference_model = resnet(widths=(4, 8, 16), depths=(2, 2, 2), kernel_size=5)
    reference_model.load_state_dict(supernet.model.state_dict())
    nested = NestedWidth(reference_model, x, (0.25, 0.5, 1.0), sort_by="none")
    supernet.train()
    nested.train()
    for width in (0.25, 0.5, 1.0):
        torch.testing.assert_close(supernet(x, width=width), nested(x, width=width))


def test_bad_settings_and_untrained_values_are_refused_by_name():
    supernet, x = _supernet()
    with pytest.raises(ValueError, match="kernel must be one of the elastic kernel sizes"):
        supernet(x, kernel=7)
    with pytest.raises(ValueError, match="depth must be one of"):
        supernet(x, depth=3)
    with pytest.raises(ValueError, match="width must be one of"):
        supernet(x, width=0.3)
    with pytest.raises(ValueError, match=r"depth=1 was never trained"):
        supernet.extract(depth=1)
    with pytest.raises(ValueError, match=r"kernel=3 was never trained"):
        supernet.extract(kernel=3)
    with pytest.raises(ValueError, match="depths"):
        OnceForAll(resnet(widths=(4, 8), depths=(2, 3), kernel_size=5), x, depths=(1, 2))
    with pytest.raises(TypeError, match="model"):
        OnceForAll(nn.Sequential(nn.Conv2d(1, 2, 3)), x)


def test_shared_bn_recalibration_equals_the_recalibrated_extracted_copy():
    supernet, x = _supernet()
    for value in (1,):
        supernet.enable(depth=value)
    supernet.enable(width=0.5)
    supernet.enable(kernel=3)
    batches = [torch.randn(4, 1, 16, 16) for _ in range(2)]
    small = supernet.extract(depth=1, width=0.5, kernel=3, calibration=batches).eval()
    supernet.recalibrate_bn(batches, depth=1, width=0.5, kernel=3)
    supernet.eval()
    assert (supernet(x, depth=1, width=0.5, kernel=3) - small(x)).abs().max() <= 1e-5


def test_vit_blocks_are_elastic_in_depth():
    """regimen's ViT: blocks skip (depth); widths (heads, MLP units) are in test_ofa_vit.py."""
    torch.manual_seed(0)
    vit = ViT(image_size=(8, 8), patch=4, dim=16, depth=3, heads=2)
    x = torch.randn(2, 1, 8, 8)
    supernet = OnceForAll(vit, x, depths=(1, 2, 3))
    supernet.enable(depth=1)
    supernet.eval()
    small = supernet.extract(depth=1).eval()
    assert (supernet(x, depth=1) - small(x)).abs().max() <= 1e-5
    assert len(small.stages) == 3 and small.config["depth"] == 1
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in vit.parameters())


# --------------------------------------------------------------------------------------------------------------- method
def _recipe(**method) -> dict:
    return {"name": "ofa", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
            "model": {"name": "resnet", "options": {"widths": [4, 8], "depths": [2, 2], "kernel_size": 5}},
            "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "train": {"epochs": 4, "batch_size": 16, "max_steps_per_epoch": 2},
            "methods": [{"name": "ofa", "kernels": [3, 5], "depths": [1, 2], "widths": [0.5, 1.0],
                         "phase_epochs": [1, 1, 1, 1], "recalibrate_batches": 2, **method}]}


def test_method_trains_the_phases_in_order():
    from regimen.train import fit

    reference = fit(_recipe())
    supernet = reference.model
    assert isinstance(supernet, OnceForAll)
    assert supernet.trained == {"depth": {1, 2}, "width": {0.5, 1.0}, "kernel": {3, 5}}
    phases = [h.get("ofa/phase") for h in reference.history]
    assert phases[1:] == [1.0, 2.0, 3.0]
    assert [h["ofa/subnets"] for h in reference.history] == [1.0, 1.0, 2.0, 4.0]
    small = supernet.extract(depth=1, width=0.5, kernel=3)
    assert isinstance(small, nn.Module)


@pytest.mark.slow
def test_method_resumes_bitwise_across_a_phase_change(tmp_path):
    """Stopped after epoch 2 (in the kernel phase) and resumed: the teacher, the sort, the trained values and the
    sub-network draws come back, so the weights equal an uninterrupted run bit for bit."""
    from regimen.train import fit

    recipe = _recipe()
    reference = fit(recipe, out_dir=tmp_path / "ref")
    fit(recipe, out_dir=tmp_path / "run", stop_epoch=2)
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_method_with_the_elasticvit_sampler_trains(tmp_path):
    from regimen.train import fit

    result = fit(_recipe(sampler="performance", buckets=2))
    assert isinstance(result.model, OnceForAll)


def test_method_loss_is_the_sum_over_subnets_of_task_loss_plus_kd():
    """forward_loss by hand: Σ_s CE(f_s(x), y) + kd · CE_soft(f_s(x), softmax(teacher(x)))."""
    from regimen.method import Context

    torch.manual_seed(0)
    method = OnceForAllMethod(kernels=[3, 5], depths=[1, 2], widths=[0.5, 1.0], phase_epochs=[1, 1, 1, 1],
                              kd_ratio=0.5)
    model = resnet(widths=(4, 8), depths=(2, 2), kernel_size=5)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    method.supernet = OnceForAll(model, x, (3, 5), (1, 2), (0.5, 1.0))
    method.supernet.enable(kernel=3)
    method.supernet.enable(depth=1)
    method.teacher = method.supernet.build(method.supernet.full_setting())
    method.phase = "depth"
    method.generator = torch.Generator().manual_seed(0)
    settings = [method.supernet.sample(method.generator) for _ in range(2)]
    method.last_settings = settings
    ctx = Context.__new__(Context)
    ctx.log = lambda *a, **k: None

    def chain(m, xb, yb):
        out = m(xb)
        return F.cross_entropy(out, yb), out

    loss, _ = method.forward_loss(method.supernet, x, y, chain, ctx)
    with torch.no_grad():
        soft = F.softmax(method.teacher.train()(x), dim=-1)
    expected = 0.0
    for s in settings:
        out = method.supernet(x, depth=s.depth, width=s.width, kernel=s.kernel)
        expected = expected + F.cross_entropy(out, y) - 0.5 * (soft * F.log_softmax(out, dim=-1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)


def test_method_is_registered_and_refuses_bad_recipes():
    assert get_method("ofa") is OnceForAllMethod
    assert OnceForAllMethod.paper_id == "arXiv:1908.09791" and OnceForAllMethod.claimed_effect == "no_worse"
    with pytest.raises(ValueError, match="kernels"):
        OnceForAllMethod(kernels=[3, 4])
    with pytest.raises(ValueError, match="eval_kernel"):
        OnceForAllMethod(kernels=[3, 5], eval_kernel=7)
    with pytest.raises(ValueError, match="phase_epochs"):
        OnceForAllMethod(phase_epochs=[1, 1])
    from regimen.train import fit

    with pytest.raises(ConfigurationError, match="phase_epochs"):
        fit(_recipe(phase_epochs=[2, 2, 2, 2]))
