"""Maestro low-rank layers: SVD init, ordered dropout, hierarchical group lasso, shrinking, export, surgery, Method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from regimen.method import Context
from regimen.models import MLP, resnet
from regimen.subnet.maestro import (
    MaestroMethod,
    OrderedLowRankConv2d,
    OrderedLowRankLinear,
    apply_maestro,
    hierarchical_group_lasso,
    low_rank_layers,
    rank_importance,
    sample_rank,
    set_rank_fraction,
    svd_factors,
    truncate_model,
)


def _ctx(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int = 0) -> Context:
    return Context(model=model, optimizer=optimizer, criterion=nn.functional.cross_entropy, num_classes=10,
                   per_device_batch=4, generator=torch.Generator().manual_seed(seed))


def test_svd_factors_split_root_spectrum_and_give_best_rank_r_approximation():
    torch.manual_seed(0)
    weight = torch.randn(6, 9, dtype=torch.float64)
    u, v = svd_factors(weight, 3)
    s = np.linalg.svd(weight.numpy(), compute_uv=False)
    # √S split: both factors' component norms equal √s_i
    np.testing.assert_allclose(u.norm(dim=0).numpy(), np.sqrt(s[:3]), rtol=1e-10)
    np.testing.assert_allclose(v.norm(dim=1).numpy(), np.sqrt(s[:3]), rtol=1e-10)
    # Eckart–Young: the Frobenius error of the best rank-3 approximation is sqrt(sum of the dropped s_i^2)
    error = torch.linalg.norm(weight - u @ v).item()
    assert error == pytest.approx(float(np.sqrt((s[3:] ** 2).sum())), rel=1e-10)
    assert weight.shape == (6, 9)  # input untouched


def test_full_rank_linear_equals_the_original_layer():
    torch.manual_seed(0)
    for bias in (True, False):
        layer = nn.Linear(13, 7, bias=bias)
        low = OrderedLowRankLinear.from_linear(layer)
        x = torch.randn(5, 3, 13)
        torch.testing.assert_close(low(x), layer(x), atol=1e-5, rtol=0)
        assert low.max_rank == 7
        if bias:
            assert low.bias is layer.bias  # same Parameter: optimizer state survives surgery


@pytest.mark.parametrize("kwargs", [dict(stride=1, padding=1), dict(stride=2, padding=0, dilation=2),
                                    dict(stride=(2, 1), padding="valid", bias=False),
                                    dict(padding="same", dilation=(1, 2))])
def test_full_rank_conv_equals_the_original_conv(kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 10, (3, 2), **kwargs)
    low = OrderedLowRankConv2d.from_conv(conv)
    x = torch.randn(2, 3, 11, 9)
    torch.testing.assert_close(low(x), conv(x), atol=1e-5, rtol=0)
    assert low.max_rank == min(10, 3 * 3 * 2)
    torch.testing.assert_close(low.to_dense().weight, conv.weight, atol=1e-5, rtol=0)


def test_ordered_dropout_uses_exactly_the_first_b_components_in_training_only():
    torch.manual_seed(0)
    low = OrderedLowRankLinear(8, 6, bias=True)
    x = torch.randn(4, 8)
    low.train()
    low.sample_rank = 2
    # explicit sum over the kept components: y = Σ_{i<2} u_i (v_i · x) + bias
    expected = low.bias.detach().clone().expand(4, 6).clone()
    for i in range(2):
        expected += (x @ low.v[i].detach())[:, None] * low.u[:, i].detach()[None, :]
    torch.testing.assert_close(low(x), expected, atol=1e-6, rtol=0)
    low.eval()  # evaluation ignores the sampled rank
    torch.testing.assert_close(low(x), x @ (low.u @ low.v).detach().T + low.bias.detach(), atol=1e-6, rtol=0)


def test_hierarchical_group_lasso_matches_the_nested_tail_sum_by_hand():
    torch.manual_seed(0)
    u, v = torch.randn(5, 4, dtype=torch.float64), torch.randn(4, 3, 2, 2, dtype=torch.float64)
    expected = 0.0
    for b in range(4):
        expected += np.sqrt((v[b:].numpy() ** 2).sum()) + np.sqrt((u[:, b:].numpy() ** 2).sum())
    assert hierarchical_group_lasso(u, v).item() == pytest.approx(expected, rel=1e-12)
    # only the active prefix takes part
    expected2 = sum(np.sqrt((v[b:2].numpy() ** 2).sum()) + np.sqrt((u[:, b:2].numpy() ** 2).sum()) for b in range(2))
    assert hierarchical_group_lasso(u, v, rank=2).item() == pytest.approx(expected2, rel=1e-12)
    importance = rank_importance(u, v)
    assert torch.all(importance[1:] <= importance[:-1])


def test_group_lasso_gradient_is_finite_when_tail_components_are_zero():
    u = torch.zeros(4, 3, requires_grad=True)
    v = torch.zeros(3, 5, requires_grad=True)
    with torch.no_grad():
        u[:, 0] = 1.0
        v[0] = 1.0
    hierarchical_group_lasso(u, v).backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(v.grad).all()


def test_truncate_is_physically_smaller_and_computes_the_active_rank_output():
    torch.manual_seed(0)
    conv = OrderedLowRankConv2d(4, 8, 3, padding=1)
    x = torch.randn(2, 4, 7, 7)
    conv.eval()
    conv.set_active_rank(3)
    small = conv.truncate()
    assert small.u.shape == (8, 3) and small.v.shape == (3, 4, 3, 3)
    torch.testing.assert_close(small(x), conv(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(conv.to_dense()(x), conv(x), atol=1e-5, rtol=0)
    lin = OrderedLowRankLinear(10, 6).eval()
    y = torch.randn(3, 10)
    torch.testing.assert_close(lin.truncate(2)(y), (lin.set_active_rank(2), lin(y))[1], atol=1e-6, rtol=0)


def test_apply_maestro_keeps_outputs_and_rebinds_the_optimizer():
    torch.manual_seed(0)
    model = resnet(widths=(8, 16), depths=(1, 1)).eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 1, 28, 28)
    model.head.fc.bias.grad = torch.ones_like(model.head.fc.bias)
    optimizer.step()  # creates momentum for every param with a grad (only the fc bias)
    reference = model(x)
    old_weight = model.head.fc.weight
    apply_maestro(model, ignore=["stages.0"], optimizer=optimizer)
    torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=0)
    assert isinstance(model.stages[0][0], nn.Conv2d)  # ignored stem stays dense
    assert isinstance(model.head.fc, OrderedLowRankLinear)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}
    assert id(old_weight) not in in_optimizer
    assert "momentum_buffer" in optimizer.state[model.head.fc.bias]  # bias kept its state


def test_set_rank_fraction_and_truncate_model_agree():
    torch.manual_seed(0)
    model = apply_maestro(MLP(20, 5, hidden=(16, 12))).eval()
    x = torch.randn(4, 20)
    set_rank_fraction(model, 0.5)
    assert [layer.rank for _, layer in low_rank_layers(model)] == [8, 6, 3]
    expected = model(x)
    truncate_model(model)
    assert [layer.max_rank for _, layer in low_rank_layers(model)] == [8, 6, 3]
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=0)


def test_method_single_layer_sampler_is_seeded_and_touches_one_layer():
    def ranks(seed):
        model = MLP(20, 5, hidden=(16, 12))
        method = MaestroMethod()
        method.setup(_ctx(model, torch.optim.SGD(model.parameters(), lr=0.1)))
        ctx = _ctx(model, None, seed)
        out = []
        for _ in range(5):
            method.before_forward(torch.zeros(1), torch.zeros(1), ctx)
            out.append(tuple(layer.sample_rank for layer in method._layers))
        return out

    first = ranks(3)
    assert first == ranks(3)
    assert all(sum(r is not None for r in step) == 1 for step in first)


def test_method_group_lasso_adds_lambda_times_penalty_gradient():
    torch.manual_seed(0)
    model = MLP(6, 3, hidden=(5,))
    method = MaestroMethod(sampler="none", group_lasso=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = _ctx(model, optimizer)
    method.setup(ctx)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    penalty = sum(layer.group_lasso() for _, layer in low_rank_layers(model))
    (nn.functional.cross_entropy(model(x), y) + 0.1 * penalty).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    method.after_backward(ctx)
    for g, e in zip([p.grad for p in model.parameters()], expected, strict=True):
        torch.testing.assert_close(g, e)
    assert not all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))


def test_method_shrinking_keeps_a_prefix_above_threshold():
    torch.manual_seed(0)
    model = MLP(6, 3, hidden=(5,))
    method = MaestroMethod(shrink_threshold=1e-3)
    ctx = _ctx(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.setup(ctx)
    layer = method._layers[0]
    with torch.no_grad():
        layer.u[:, 3:] = 0.0
        layer.v[3:] = 0.0
    method.on_epoch_end(ctx)
    assert int(layer.active_rank) == 3
    assert 0 < ctx.log["maestro/rank_fraction"] < 1


def test_bad_input_is_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        OrderedLowRankLinear(4, 6, rank=5)
    with pytest.raises(ValueError, match="rank"):
        OrderedLowRankLinear.from_linear(nn.Linear(4, 6), rank=0)
    with pytest.raises(ValueError, match="rank"):
        OrderedLowRankConv2d(2, 30, 3, rank=19)  # min(30, 2*3*3) = 18
    with pytest.raises(ValueError, match="groups"):
        OrderedLowRankConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(TypeError):
        OrderedLowRankLinear.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="2-D"):
        svd_factors(torch.randn(3))
    with pytest.raises(ValueError, match="rank_ratio"):
        apply_maestro(MLP(4, 2), rank_ratio=0.0)
    with pytest.raises(ValueError, match="sampler"):
        MaestroMethod(sampler="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_rank"):
        sample_rank(0)
    low = OrderedLowRankLinear(4, 6)
    with pytest.raises(ValueError, match="rank"):
        low.truncate(5)


def test_recipe_method_maestro_is_registered():
    from regimen.method import get_method

    assert get_method("maestro") is MaestroMethod


def test_maestro_recipe_trains_through_fit_and_resumes_bitwise(tmp_path):

    from regimen.train import fit

    recipe = {"name": "m", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [16]}}, "optim": {"name": "sgd", "lr": 0.05},
              "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 3},
              "methods": [{"name": "maestro", "group_lasso": 1e-3, "shrink_threshold": 1e-4}]}
    reference = fit(recipe, out_dir=tmp_path / "ref")
    assert len(low_rank_layers(reference.model)) == 2
    fit(recipe, out_dir=tmp_path / "run", stop_epoch=1)  # stopped after epoch 1, as a killed run would be
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_fresh_layer_is_the_svd_of_the_dense_layers_initialisation(dtype):
    torch.manual_seed(3)
    dense = nn.Linear(7, 5, dtype=dtype)
    torch.manual_seed(3)
    low = OrderedLowRankLinear(7, 5, dtype=dtype)
    assert low.u.dtype == dtype and int(low.active_rank) == low.max_rank == 5 and low.sample_rank is None
    torch.testing.assert_close(low.u @ low.v, dense.weight.detach())
    torch.testing.assert_close(low.bias, dense.bias)
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, (3, 2), padding=1, dtype=dtype)
    torch.manual_seed(3)
    low_conv = OrderedLowRankConv2d(3, 4, (3, 2), padding=1, dtype=dtype)
    torch.testing.assert_close(low_conv.to_dense().weight, conv.weight.detach())
    torch.testing.assert_close(low_conv.bias, conv.bias)


def test_converted_and_truncated_layers_start_with_every_stored_component_active():
    conv = nn.Conv2d(3, 6, 3, dtype=torch.float64)
    low = OrderedLowRankConv2d.from_conv(conv, rank=4)
    assert int(low.active_rank) == low.max_rank == 4 and low.u.dtype == torch.float64
    low.set_active_rank(2)
    small = low.truncate()
    assert int(small.active_rank) == small.max_rank == 2 and small.bias is not low.bias


def test_method_truncates_the_layers_at_the_end_by_default():
    torch.manual_seed(0)
    model = MLP(6, 3, hidden=(5,))
    method = MaestroMethod()
    ctx = _ctx(model, torch.optim.SGD(model.parameters(), lr=0.1))
    method.setup(ctx)
    method._layers[0].set_active_rank(2)
    method.on_train_end(ctx)
    assert [layer.max_rank for _, layer in low_rank_layers(model)] == [2, 3]
