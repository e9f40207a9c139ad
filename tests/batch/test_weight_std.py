"""Weight Standardization formula (both eps conventions), which convs get it, and BCN / EstBN by hand."""

import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.batch
import regimen.batch.weight_std
from regimen.batch import (
    BatchChannelNorm2d,
    WeightStandardizationMethod,
    WSConv2d,
    apply_batch_channel_norm,
    apply_weight_standardization,
    convs_followed_by_norm,
    weight_standardize,
)
from regimen.method import Context
from regimen.models import ResNet


def _loop_standardize(weight, eps, mode):
    out = torch.empty_like(weight, dtype=torch.float64)
    for o in range(weight.shape[0]):
        values = [float(v) for v in weight[o].flatten()]
        mean = statistics.fmean(values)
        if mode == "paper":
            denom = statistics.stdev(values) + eps  # unbiased std, eps outside the sqrt
        else:
            denom = (statistics.pvariance(values) + eps) ** 0.5  # biased variance, eps inside
        out[o] = (weight[o].double() - mean) / denom
    return out.float()


@pytest.mark.parametrize("mode", ["paper", "bit"])
def test_weight_standardize_matches_per_channel_formula(mode):
    weight = torch.randn(5, 3, 3, 3) * 0.2 + 0.1
    eps = 1e-2  # large enough that the two conventions differ measurably
    torch.testing.assert_close(weight_standardize(weight, eps, mode), _loop_standardize(weight, eps, mode))
    other = "bit" if mode == "paper" else "paper"
    assert not torch.allclose(weight_standardize(weight, eps, mode), weight_standardize(weight, eps, other))


def test_wsconv_equals_conv_with_standardized_weight_and_gradients_flow():
    conv = WSConv2d(3, 4, 3, padding=1, bias=True)
    x = torch.randn(2, 3, 6, 6)
    expected = F.conv2d(x, _loop_standardize(conv.weight.detach(), 1e-5, "paper"), conv.bias, padding=1)
    out = conv(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
    out.sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mode"):
        weight_standardize(torch.randn(2, 3), mode="other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        weight_standardize(torch.randn(4))
    with pytest.raises(ValueError, match="num_groups"):
        BatchChannelNorm2d(6, num_groups=4)
    with pytest.raises(ValueError, match="input"):
        BatchChannelNorm2d(6, 3)(torch.randn(2, 5, 3, 3))


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3)  # followed by ReLU: must stay plain
        self.c = nn.Conv2d(4, 4, 1)
        self.gn = nn.GroupNorm(2, 4)
        self.head = nn.Conv2d(4, 10, 1)  # a conv classifier, no norm after it

    def forward(self, x):
        x = self.bn(self.a(x))
        x = torch.relu(self.b(x))
        x = self.gn(self.c(x))
        return self.head(x).mean((2, 3))


def test_only_convs_followed_by_a_norm_layer_are_standardized():
    model = _Mixed()
    assert convs_followed_by_norm(model) == ["a", "c"]
    resnet = ResNet(widths=(4, 8), depths=(1, 1))
    params = [id(p) for p in resnet.parameters()]
    optimizer = torch.optim.SGD(resnet.parameters(), lr=0.1)
    names = apply_weight_standardization(resnet, optimizer)
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(names) == sorted(convs)  # every ResNet conv feeds a BN (stem, blocks, projection shortcut)
    assert all(isinstance(resnet.get_submodule(n), WSConv2d) for n in names)
    assert isinstance(resnet.head.fc, nn.Linear)  # never the classifier
    assert [id(p) for p in resnet.parameters()] == params  # optimizer stays bound


def test_bcn_equals_bn_then_group_norm_with_group_affine():
    torch.manual_seed(0)
    bcn = BatchChannelNorm2d(6, num_groups=3)
    with torch.no_grad():
        bcn.bn.weight.uniform_(0.5, 1.5)
        bcn.bn.bias.uniform_(-1, 1)
        bcn.group_weight.copy_(torch.tensor([0.5, 2.0, 1.0]))
        bcn.group_bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 6, 5, 5) * 2 + 1
    bn = nn.BatchNorm2d(6)
    bn.load_state_dict(bcn.bn.state_dict())
    y = bn(x)
    expected = torch.empty_like(y)
    for n in range(4):
        for g in range(3):
            block = y[n, 2 * g:2 * g + 2]
            normed = (block - block.mean()) / torch.sqrt(block.var(unbiased=False) + 1e-5)
            expected[n, 2 * g:2 * g + 2] = normed * bcn.group_weight[g] + bcn.group_bias[g]
    torch.testing.assert_close(bcn(x), expected, atol=1e-5, rtol=1e-5)


def test_estbn_normalizes_with_running_estimates_in_training():
    bcn = BatchChannelNorm2d(4, num_groups=1, momentum=0.5, estimate=True)
    x = torch.randn(2, 4, 3, 3) + 3
    old_mean = bcn.bn.running_mean.clone()
    old_var = bcn.bn.running_var.clone()
    out = bcn(x)
    mean = 0.5 * old_mean + 0.5 * x.mean((0, 2, 3))
    var = 0.5 * old_var + 0.5 * ((x - old_mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    torch.testing.assert_close(bcn.bn.running_mean, mean)
    torch.testing.assert_close(bcn.bn.running_var, var)
    est = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    expected = F.group_norm(est, 1, eps=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_method_and_bcn_surgery_register_new_parameters_with_the_optimizer():
    model = ResNet(widths=(4,), depths=(1,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model=model, optimizer=optimizer, criterion=F.cross_entropy, num_classes=10, per_device_batch=2)
    WeightStandardizationMethod(bcn=True, bcn_groups=2).setup(ctx)
    assert ctx.log["weight_std/convs"] == 3.0 and ctx.log["weight_std/bcn_layers"] == 3.0
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in model.parameters()} == in_optimizer
    loss = F.cross_entropy(model(torch.randn(2, 1, 8, 8)), torch.tensor([1, 2]))
    loss.backward()
    optimizer.step()
    assert apply_batch_channel_norm(nn.Sequential(nn.Conv2d(1, 2, 1))) == []


@pytest.mark.parametrize("bias, padding", [(True, 1), (False, "same")])
def test_from_conv_builds_through_the_constructor_and_takes_over_the_parameters(bias, padding):
    conv = nn.Conv2d(4, 6, 3, stride=1, padding=padding, dilation=1, groups=2, bias=bias).eval()
    conv.register_forward_hook(lambda *args: None)
    ws = WSConv2d.from_conv(conv, ws_eps=1e-3, ws_mode="bit")
    assert ws.weight is conv.weight and ws.bias is conv.bias
    assert not ws._forward_hooks and ws._forward_hooks is not conv._forward_hooks
    assert not any(p.is_meta for p in ws.parameters()) and not ws.training
    assert (ws.padding, ws.groups, ws.ws_eps, ws.ws_mode) == (conv.padding, 2, 1e-3, "bit")
    x = torch.randn(2, 4, 5, 5)
    expected = F.conv2d(x, _loop_standardize(conv.weight.detach(), 1e-3, "bit"), conv.bias, padding=padding, groups=2)
    torch.testing.assert_close(ws(x), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        WSConv2d.from_conv(nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ws_mode"):
        WSConv2d.from_conv(conv, ws_mode="other")  # type: ignore[arg-type]


def test_old_method_name_is_a_deprecated_alias():
    for module in (regimen.batch, regimen.batch.weight_std):
        with pytest.warns(DeprecationWarning, match="WeightStandardizationMethod"):
            assert module.WeightStandardization is WeightStandardizationMethod


def test_a_model_without_normalised_convs_is_refused_not_trained_as_a_silent_no_op(tiny_recipe):
    from regimen.errors import ConfigurationError
    from regimen.train import fit

    tiny_recipe["methods"] = [{"name": "weight_std"}]
    with pytest.raises(ConfigurationError, match="weight_std: MLP has no Conv2d followed by a norm layer"):
        fit(tiny_recipe)
