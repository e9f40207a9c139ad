"""Trained Rank Pruning: the reshape layout, energy truncation, exact factorisation, nuclear sub-gradient, Method."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, get_method
from regimen.models import resnet
from regimen.subnet import FactorizedConv2d, FactorizedLinear, factorize, load_pruned, save_pruned, truncate_weight
from regimen.subnet.lowrank import conv_to_matrix, energy_rank, matrix_to_conv, nuclear_subgradient


def test_conv_reshape_puts_channel_row_and_filter_column_together():
    weight = torch.randn(3, 2, 4, 5)
    matrix = conv_to_matrix(weight)
    assert matrix.shape == (2 * 4, 3 * 5)
    for n in range(3):
        for c in range(2):
            for i in range(4):
                for j in range(5):
                    assert matrix[c * 4 + i, n * 5 + j] == weight[n, c, i, j]
    assert torch.equal(matrix_to_conv(matrix, weight.shape), weight)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_truncation_keeps_the_stated_energy_with_the_smallest_rank(energy):
    weight = torch.randn(8, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(conv_to_matrix(weight).double())
    approx, rank = truncate_weight(weight, energy)
    kept = torch.linalg.svdvals(conv_to_matrix(approx).double())
    assert int((kept > 1e-5 * s[0]).sum()) == rank
    torch.testing.assert_close(kept[:rank], s[:rank], rtol=1e-4, atol=1e-5)
    fraction = (s[:rank] ** 2).sum() / (s ** 2).sum()
    assert fraction >= energy
    assert (s[: rank - 1] ** 2).sum() / (s ** 2).sum() < energy  # one less would not be enough
    assert energy_rank(s, energy) == rank


def test_factorised_conv_computes_the_truncated_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 10, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2))
    approx, rank = truncate_weight(conv.weight, 0.9)
    with torch.no_grad():
        conv.weight.copy_(approx)
    layer = FactorizedConv2d.from_conv(conv, rank)
    x = torch.randn(2, 6, 11, 13)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-4, atol=1e-5)
    linear = nn.Linear(12, 7)
    low = FactorizedLinear.from_linear(linear, 7)
    x2 = torch.randn(3, 12)
    torch.testing.assert_close(low(x2), linear(x2), rtol=1e-4, atol=1e-5)


def test_factorize_replaces_only_layers_below_the_break_even_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    with torch.no_grad():  # first conv rank 1: (C*kh=24) x (N*kw=24) break-even 12
        u, v = torch.randn(24, 1), torch.randn(1, 24)
        model[0].weight.copy_(matrix_to_conv(u @ v, model[0].weight.shape))
    x = torch.randn(2, 8, 6, 6)
    out = model(x)
    params = sum(p.numel() for p in model.parameters())
    replaced = factorize(model, energy=0.99)
    assert replaced == {"0": 1}
    assert isinstance(model[0], FactorizedConv2d) and isinstance(model[2], nn.Conv2d)
    assert sum(p.numel() for p in model.parameters()) < params
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


def test_nuclear_subgradient_matches_autograd_of_the_nuclear_norm():
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    torch.linalg.svdvals(conv_to_matrix(weight)).sum().backward()
    torch.testing.assert_close(nuclear_subgradient(weight), weight.grad)


def test_trp_method_truncates_periodically_and_factorises_at_the_end(tmp_path):
    torch.manual_seed(0)
    model = resnet(widths=(8, 16, 16))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx = Context(model=model, optimizer=optimizer, criterion=F.cross_entropy, num_classes=10, per_device_batch=4)
    method = get_method("trp")(energy=0.6, period=2, nuclear=1e-3)
    method.setup(ctx)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(4):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        method.after_backward(ctx)
        optimizer.step()
        method.after_step(ctx)
    assert method.ranks and "trp/rank_ratio" in ctx.log
    weight = model.stages[1].conv1.weight
    rank = torch.linalg.matrix_rank(conv_to_matrix(weight.detach()).double(), rtol=1e-6)
    assert rank == method.ranks["stages.1.conv1"]
    model.eval()
    out = model(x)
    method.on_train_end(ctx)
    assert ctx.log["trp/layers_factorized"] >= 1 and ctx.log["trp/param_ratio"] < 1
    torch.testing.assert_close(model(x), out, rtol=1e-3, atol=1e-4)
    save_pruned(model, tmp_path / "trp.pt")
    loaded = load_pruned(tmp_path / "trp.pt").eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="energy"):
        energy_rank(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="2-D"):
        conv_to_matrix(torch.randn(3, 3, 3))
    with pytest.raises(ValueError, match="period"):
        get_method("trp")(period=0)
    with pytest.raises(ValueError, match="ignore"):
        factorize(resnet(), ignore=["nope"])


def test_mac_rule_skips_strided_convs_whose_factorisation_costs_more_macs():
    from regimen.subnet import count_macs

    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
    with torch.no_grad():  # rank 10: below the parameter break-even (12) but above the MAC break-even (8)
        conv.weight.copy_(matrix_to_conv(torch.randn(24, 10) @ torch.randn(10, 24), conv.weight.shape))
    x = torch.randn(1, 8, 16, 16)
    by_params, by_macs = nn.Sequential(conv), nn.Sequential(copy.deepcopy(conv))
    dense_macs = count_macs(by_params, x)
    assert factorize(by_params, energy=1 - 1e-10) == {"0": 10}
    assert count_macs(by_params, x) > dense_macs  # fewer parameters, more multiply-adds
    assert factorize(by_macs, energy=1 - 1e-10, rule="macs") == {}
    with pytest.raises(ValueError, match="rule"):
        factorize(by_macs, rule="flops")


def test_factorize_rebinds_the_optimizer_and_keeps_the_bias_and_its_state():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():  # rank 1: below the break-even rank, so it is factorised
        model[0].weight.copy_(matrix_to_conv(torch.randn(24, 1) @ torch.randn(1, 24), model[0].weight.shape))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 8, 6, 6)
    model(x).square().mean().backward()
    optimizer.step()
    old_weight, bias = model[0].weight, model[0].bias
    momentum = optimizer.state[bias]["momentum_buffer"].clone()
    assert factorize(model, energy=0.99, optimizer=optimizer) == {"0": 1}
    layer = model[0]
    assert isinstance(layer, FactorizedConv2d) and layer.second.bias is bias
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.parameters()} and old_weight not in optimizer.state
    assert torch.equal(optimizer.state[bias]["momentum_buffer"], momentum)
    assert layer.first.weight not in optimizer.state and layer.second.weight not in optimizer.state
