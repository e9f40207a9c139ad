"""LOST: SVD split and channel choice by hand, the layer against its dense weight, parameter counts, surgery, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from regimen.method import Context, get_method
from regimen.subnet import LOSTLinear, apply_lost, lost_decompose, lost_linear, lost_parameter_count, select_channels


def test_decompose_keeps_the_dominant_triplets_and_the_top_residual_columns():
    torch.manual_seed(0)
    weight = torch.randn(10, 12, dtype=torch.float64)
    b, a, s, index = lost_decompose(weight, rank=3, channels=4)
    u, sigma, vh = torch.linalg.svd(weight, full_matrices=False)
    best = u[:, :3] @ torch.diag(sigma[:3]) @ vh[:3]
    torch.testing.assert_close(b @ a, best)
    torch.testing.assert_close(b.norm(dim=0), a.norm(dim=1))  # sqrt(sigma) on both sides
    residual = weight - best
    norms = [float(residual[:, j].norm()) for j in range(12)]
    expected = sorted(sorted(range(12), key=lambda j: -norms[j])[:4])
    assert index.tolist() == expected
    torch.testing.assert_close(s, residual[:, expected])


def test_l1_and_random_selection():
    residual = torch.tensor([[3.0, 2.0, 0.5, 0.1], [0.0, 2.0, 0.5, 0.1]])  # l2: 3 > 2.83; l1: 3 < 4
    assert select_channels(residual, 1, "l2").tolist() == [0]
    assert select_channels(residual, 1, "l1").tolist() == [1]
    first = select_channels(residual, 2, "random", torch.Generator().manual_seed(1))
    second = select_channels(residual, 2, "random", torch.Generator().manual_seed(1))
    assert torch.equal(first, second) and len(set(first.tolist())) == 2


def test_layer_equals_its_dense_effective_weight_and_the_formula():
    torch.manual_seed(2)
    layer = LOSTLinear.from_linear(nn.Linear(8, 6), rank=2, channels=3, gamma=0.3)
    x = torch.randn(4, 5, 8)
    dense = torch.zeros(6, 8)
    dense += 0.3 * layer.lora_b @ layer.lora_a
    for k, j in enumerate(layer.index.tolist()):
        dense[:, j] += 0.7 * layer.sparse[:, k]
    torch.testing.assert_close(layer.effective_weight(), dense)
    torch.testing.assert_close(layer.weight, dense)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias, rtol=1e-5, atol=1e-6)
    silu = lost_linear(x, layer.lora_b, layer.lora_a, layer.sparse, layer.index, None, 0.3, "silu")
    expected = 0.3 * torch.nn.functional.silu(x @ layer.lora_a.T) @ layer.lora_b.T \
        + 0.7 * x[..., layer.index] @ layer.sparse.T
    torch.testing.assert_close(silu, expected, rtol=1e-5, atol=1e-6)


def test_gamma_half_and_all_channels_reconstructs_half_the_weight():
    linear = nn.Linear(6, 6)
    layer = LOSTLinear.from_linear(linear, rank=2, channels=6, gamma=0.5)
    # γ B A + (1 − γ)(W − B A) over every channel is W / 2
    torch.testing.assert_close(layer.effective_weight(), 0.5 * linear.weight.detach(), rtol=1e-5, atol=1e-6)


def test_parameter_count_and_apply_skips_tied_weights():
    torch.manual_seed(0)
    emb = nn.Embedding(20, 16)
    head = nn.Linear(16, 20, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "fc": nn.Linear(16, 32), "head": head})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    replaced = apply_lost(model, rank=4, channels=2, optimizer=optimizer)
    assert replaced == {"fc": (4, 2)}
    assert isinstance(model["head"], nn.Linear)
    fc = model["fc"]
    assert sum(p.numel() for p in fc.parameters()) == lost_parameter_count(16, 32, 4, 2) == 4 * 48 + 2 * 32 + 32
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert {id(fc.lora_a), id(fc.lora_b), id(fc.sparse), id(fc.bias)} <= held


def test_bad_rank_and_channels_name_the_argument_and_leave_the_model():
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="rank must be below min"):
        apply_lost(model, rank=4, channels=0)
    with pytest.raises(ValueError, match="rank must be an int >= 1"):
        apply_lost(model, rank=0)
    with pytest.raises(ValueError, match="channels must be"):
        apply_lost(model, rank=1, channels=9)
    assert all(isinstance(m, nn.Linear) for m in model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="rank must be"):
        get_method("lost")(rank=0.0)


def test_method_replaces_linears_and_trains():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 5))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ctx = Context(model, optimizer, generator=torch.Generator().manual_seed(0), num_classes=5)
    method = get_method("lost")(rank=0.25, channels=0.1)
    method.setup(ctx)
    assert isinstance(model[0], LOSTLinear) and model[0].rank == 3 and model[0].channels == 1
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
