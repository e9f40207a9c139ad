"""Ghost BN equals nn.BatchNorm applied chunk by chunk (outputs, gradients, running stats), and its surgery."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.batch
import regimen.batch.ghost_bn
from regimen.batch import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNormMethod,
    apply_ghost_batch_norm,
    ghost_batch_norm,
)
from regimen.method import Context
from regimen.models import ResNet


def _pair(cls_ghost, cls_bn, channels, ghost, momentum=0.1, **kwargs):
    torch.manual_seed(0)
    g = cls_ghost(channels, ghost, momentum=momentum, **kwargs)
    with torch.no_grad():
        g.weight.uniform_(0.5, 1.5)
        g.bias.uniform_(-0.5, 0.5)
        g.running_mean.uniform_(-1, 1)
        g.running_var.uniform_(0.5, 2)
    ref = cls_bn(channels, momentum=momentum)
    ref.load_state_dict(g.state_dict())
    return g, ref


def _chunk_reference(ref, x, sizes):
    return torch.cat([ref(chunk) for chunk in x.split(sizes)])


@pytest.mark.parametrize(
    "shape, ghost, cls_ghost, cls_bn",
    [
        ((64, 3, 5, 5), 16, GhostBatchNorm2d, nn.BatchNorm2d),
        ((70, 3, 4, 4), 16, GhostBatchNorm2d, nn.BatchNorm2d),  # last ghost batch of 6
        ((48, 5), 8, GhostBatchNorm1d, nn.BatchNorm1d),
        ((50, 5), 8, GhostBatchNorm1d, nn.BatchNorm1d),  # last ghost batch of 2
        ((40, 4, 7), 10, GhostBatchNorm1d, nn.BatchNorm1d),
    ],
)
@pytest.mark.parametrize("momentum", [0.3, None])
def test_ghost_bn_equals_batchnorm_chunk_by_chunk(shape, ghost, cls_ghost, cls_bn, momentum):
    g, ref = _pair(cls_ghost, cls_bn, shape[1], ghost, momentum)
    x = (torch.randn(*shape) * 3 + 1).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    for _ in range(2):  # two training steps: running stats accumulate across calls too
        out = g(x)
        expected = _chunk_reference(ref, x_ref, ghost)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    upstream = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, g.weight, g.bias], upstream)
    grads_ref = torch.autograd.grad(expected, [x_ref, ref.weight, ref.bias], upstream)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g.running_mean, ref.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g.running_var, ref.running_var, atol=1e-6, rtol=1e-5)
    assert int(g.num_batches_tracked) == int(ref.num_batches_tracked) == 2 * len(x.split(ghost))


def test_merge_folds_remainder_into_previous_ghost_batch():
    g, ref = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 3, 16, last_partial="merge")
    x = torch.randn(37, 3, 2, 2)
    out = g(x)
    torch.testing.assert_close(out, _chunk_reference(ref, x, [16, 21]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g.running_var, ref.running_var)
    assert int(g.num_batches_tracked) == 2


def test_eval_uses_running_stats_and_small_batch_is_plain_bn():
    g, ref = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 4, 32)
    x = torch.randn(20, 4, 3, 3)
    torch.testing.assert_close(g(x), ref(x))  # 20 <= 32: one ghost batch = BatchNorm
    torch.testing.assert_close(g.running_mean, ref.running_mean)
    g.eval(), ref.eval()
    big = torch.randn(128, 4, 3, 3)
    torch.testing.assert_close(g(big), ref(big))


def test_large_mean_input_takes_exact_path():
    g, ref = _pair(GhostBatchNorm2d, nn.BatchNorm2d, 2, 8)
    ref = ref.double()
    x = torch.randn(32, 2, 4, 4) * 0.01 + 1000.0  # mean^2 / var = 1e10: one-pass variance would cancel
    expected = _chunk_reference(ref, x.double(), 8).float()
    # float32 resolution of 1000 is 6e-5, i.e. 6e-3 after dividing by std 0.01: agree to that, not better
    torch.testing.assert_close(g(x), expected, atol=5e-3, rtol=0)
    torch.testing.assert_close(g.running_var, ref.running_var.float(), atol=1e-6, rtol=1e-3)


def test_functional_matches_module_and_leaves_input_alone():
    x = torch.randn(24, 3, 2, 2)
    before = x.clone()
    rm, rv = torch.zeros(3), torch.ones(3)
    out = ghost_batch_norm(x, 8, rm, rv, training=True, momentum=0.2)
    expected = torch.cat([F.batch_norm(c, None, None, training=True) for c in x.split(8)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(x, before)
    assert not torch.equal(rm, torch.zeros(3))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNorm2d(3, 0)
    with pytest.raises(TypeError, match="ghost_batch_size"):
        GhostBatchNorm2d(3, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_partial"):
        GhostBatchNorm1d(3, 4, last_partial="drop")  # type: ignore[arg-type]
    g = GhostBatchNorm1d(3, 8)
    with pytest.raises(ValueError, match="merge"):
        g(torch.randn(17, 3))  # last ghost batch of one sample: no variance
    assert GhostBatchNorm1d(3, 8, last_partial="merge")(torch.randn(17, 3)).shape == (17, 3)
    with pytest.raises(ValueError, match="running_mean"):
        ghost_batch_norm(torch.randn(8, 3), 4, torch.zeros(4), torch.ones(4))
    with pytest.raises(TypeError, match="floating"):
        ghost_batch_norm(torch.ones(8, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="shape"):
        ghost_batch_norm(torch.randn(8), 4)


def test_apply_ghost_batch_norm_keeps_parameters_and_optimizer_bound():
    torch.manual_seed(0)
    model = ResNet(widths=(4, 8), depths=(1, 1))
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ids = [id(p) for p in model.parameters()]
    keys = list(model.state_dict())
    result = apply_ghost_batch_norm(model, 4, optimizer)
    assert result is model
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, GhostBatchNorm2d) for m in bns)
    assert [id(p) for p in model.parameters()] == ids
    assert list(model.state_dict()) == keys
    model.eval(), reference.eval()
    x = torch.randn(16, 1, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    model.train()
    model(x).sum().backward()
    before = model.stages[0][1].weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.stages[0][1].weight, before)  # the optimizer updates the live BN parameters


def test_ghost_bn_method_swaps_layers_in_setup():
    model = ResNet(widths=(4,), depths=(1,))
    ctx = Context(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=F.cross_entropy,
                  num_classes=10, per_device_batch=64)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    GhostBatchNormMethod(ghost_batch_size=16).setup(ctx)
    assert any(isinstance(m, GhostBatchNorm2d) and m.ghost_batch_size == 16 for m in ctx.model.modules())
    assert ctx.log["ghost_bn/layers"] == float(bns) > 0
    assert ctx.log["ghost_bn/ghost_batches"] == 4.0
    with pytest.raises(ValueError, match="ghost_batch_size"):
        GhostBatchNormMethod(ghost_batch_size=-1)
    with pytest.raises(ValueError, match="last_partial"):
        GhostBatchNormMethod(last_partial="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize("affine, track", [(True, True), (False, False), (True, False)])
def test_surgery_builds_a_fresh_layer_that_takes_over_the_bn_tensors(affine, track):
    """Through the constructor: the new layer has its own hook dicts, no meta tensor is left, every Parameter and
    buffer is the old object, and the hyper-parameters and training flag carry over."""
    bn = nn.BatchNorm2d(3, eps=1e-3, momentum=0.2, affine=affine, track_running_stats=track).eval()
    calls = []
    bn.register_forward_hook(lambda *args: calls.append(1))
    ghost = apply_ghost_batch_norm(bn, 4, last_partial="merge")
    assert isinstance(ghost, GhostBatchNorm2d) and ghost is not bn
    assert ghost._forward_hooks is not bn._forward_hooks and not ghost._forward_hooks
    assert dict(ghost.named_parameters()).keys() == dict(bn.named_parameters()).keys()
    assert all(p is dict(bn.named_parameters())[n] for n, p in ghost.named_parameters())
    assert all(b is dict(bn.named_buffers())[n] for n, b in ghost.named_buffers())
    assert not any(t.is_meta for t in [*ghost.parameters(), *ghost.buffers()])
    assert (ghost.eps, ghost.momentum, ghost.affine, ghost.track_running_stats) == (1e-3, 0.2, affine, track)
    assert (ghost.ghost_batch_size, ghost.last_partial, ghost.training) == (4, "merge", False)
    assert (ghost.weight is None) == (not affine) and (ghost.running_mean is None) == (not track)
    x = torch.randn(12, 3, 2, 2)
    torch.testing.assert_close(ghost.train()(x), _chunk_reference(nn.BatchNorm2d(3, eps=1e-3, affine=False), x, 4))
    assert not calls
    bn.train()(x)
    assert calls == [1]  # the old layer keeps its own hook


def test_setup_logs_land_in_the_first_row_of_metrics_jsonl(tiny_recipe, tmp_path):
    """Logged in setup (before any epoch), the layer count is in the 1-epoch run's only metrics row."""
    import json

    from regimen.train import fit

    recipe = dict(tiny_recipe, model={"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}},
                  methods=[{"name": "ghost_bn", "ghost_batch_size": 16}])
    recipe["train"] = dict(recipe["train"], epochs=1, max_steps_per_epoch=2)
    result = fit(recipe, out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    bns = sum(isinstance(m, GhostBatchNorm2d) for m in result.model.modules())
    assert len(rows) == 1 and bns > 0
    assert rows[0]["ghost_bn/layers"] == bns
    assert rows[0]["ghost_bn/ghost_batches"] == 4  # per-device batch 64 / 16


def test_old_names_are_deprecated_aliases():
    for module in (regimen.batch, regimen.batch.ghost_bn):
        with pytest.warns(DeprecationWarning, match="GhostBatchNormMethod"):
            assert module.GhostBN is GhostBatchNormMethod
        with pytest.warns(DeprecationWarning, match="apply_ghost_batch_norm"):
            assert module.apply_ghost_batchnorm is apply_ghost_batch_norm


def test_a_model_without_batchnorm_is_refused_not_trained_as_a_silent_no_op(tiny_recipe):
    from regimen.errors import ConfigurationError
    from regimen.train import fit

    tiny_recipe["methods"] = [{"name": "ghost_bn", "ghost_batch_size": 16}]
    with pytest.raises(ConfigurationError, match="ghost_bn: MLP has no BatchNorm layer"):
        fit(tiny_recipe)
