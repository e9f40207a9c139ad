"""A-priori CP conv kernels: the kernel as a loop of outer products, the layer against F.conv2d, exact SVD
factors, the variance of the initialisation, surgery and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, get_method
from regimen.subnet import CPKernelConv2d, apply_cp_kernels, cp_kernel, cp_kernel_factors


def test_cp_kernel_is_a_sum_of_outer_products_by_loop():
    a, b = torch.randn(3, 2, 2, 5), torch.randn(3, 2, 2, 4)
    kernel = cp_kernel(a, b)
    for o in range(3):
        for i in range(2):
            expected = sum(torch.outer(a[o, i, r], b[o, i, r]) for r in range(2))
            torch.testing.assert_close(kernel[o, i], expected)


def test_layer_equals_dense_conv_with_the_reconstructed_kernel():
    torch.manual_seed(0)
    layer = CPKernelConv2d(4, 6, 3, rank=1, stride=2, padding=1, dilation=1, groups=2)
    x = torch.randn(2, 4, 11, 11)
    expected = F.conv2d(x, cp_kernel(layer.factor_h, layer.factor_w), layer.bias, stride=2, padding=1, groups=2)
    torch.testing.assert_close(layer(x), expected)


def test_full_rank_factors_reproduce_a_trained_conv_and_rank_one_is_the_best_rank_one_kernel():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, (3, 5), padding=1)
    x = torch.randn(2, 3, 8, 8)
    exact = CPKernelConv2d.from_conv(conv, rank=3)
    torch.testing.assert_close(exact(x), conv(x), rtol=1e-5, atol=1e-5)
    a, b = cp_kernel_factors(conv.weight, 1)
    u, s, vh = torch.linalg.svd(conv.weight.detach()[1, 2])
    torch.testing.assert_close(cp_kernel(a, b)[1, 2], s[0] * torch.outer(u[:, 0], vh[0]), rtol=1e-5, atol=1e-6)


def test_initial_kernel_variance_matches_conv2d_default():
    layer = CPKernelConv2d(32, 64, 3, rank=2, generator=torch.Generator().manual_seed(0))
    dense = nn.Conv2d(32, 64, 3)
    ratio = cp_kernel(layer.factor_h, layer.factor_w).detach().var() / dense.weight.detach().var()
    assert 0.85 < float(ratio) < 1.15


def test_apply_counts_parameters_and_skips_layers_without_savings():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    replaced = apply_cp_kernels(model, rank=2, optimizer=optimizer, generator=torch.Generator().manual_seed(0))
    assert replaced == {"3": 2}  # 3x3 at rank 2 stores 12 > 9; 1x1 is never factorised
    assert sum(p.numel() for p in model[3].parameters()) == 8 * 8 * 2 * 10 + 8
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model[3].factor_h) in held and id(model[3].bias) in held


def test_rank_zero_is_refused_naming_rank():
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        CPKernelConv2d(3, 3, 3, rank=0)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        apply_cp_kernels(nn.Conv2d(3, 3, 3), rank=0)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        get_method("cp_kernels")(rank=0)


def test_method_factorises_a_resnet_from_scratch():
    from regimen.models import resnet
    model = resnet(num_classes=10, in_channels=1, widths=[8, 16], depths=[1, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, generator=torch.Generator().manual_seed(0), num_classes=10)
    before = sum(p.numel() for p in model.parameters())
    get_method("cp_kernels")(rank=1).setup(ctx)
    assert sum(p.numel() for p in model.parameters()) < before
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
