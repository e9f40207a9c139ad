"""Structured pruning: ratios, importance formulas, optimizer carry-over, serialization, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.models import MLP, resnet
from regimen.subnet import (
    PrunedMultiheadAttention,
    count_macs,
    dependency_groups,
    group_scores,
    load_pruned,
    plan_pruning,
    prune,
    prune_groups,
    save_pruned,
)
from tests.subnet.archs import DenseNet, TinyViT


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_uniform_ratio_keeps_the_rest_of_every_group():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    report = prune(model, x, ratio=0.5, scope="uniform")
    assert model.stages[0][0].out_channels == 8 and model.stages[1].conv1.out_channels == 8
    assert model.stages[3].conv1.out_channels == 32 and model.stages[-1].fc.in_features == 32
    assert model.stages[-1].fc.out_features == 10  # outputs are never pruned
    assert report.units_removed == report.units_total // 2
    assert report.widths_after["stages.3.conv2"] == 32 and report.widths_before["stages.3.conv2"] == 64
    assert model(x).shape == (2, 10)
    assert report.params_after == sum(p.numel() for p in model.parameters())


def test_macs_match_the_hand_formula():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                          nn.Flatten(), nn.Linear(8 * 5 * 5, 4))
    x = torch.randn(4, 3, 5, 5)
    expected = 8 * 25 * 3 * 9 + 8 * 25 * 4 * 9 + 4 * 200
    assert count_macs(model, x) == expected


def test_l2_l1_and_bn_scale_scores_follow_their_formulas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0, 3.0]))
    x = torch.randn(2, 2, 6, 6)
    (group,) = dependency_groups(model, x)
    w0, g, b, w3 = model[0].weight, model[1].weight, model[1].bias, model[3].weight
    for p, name in ((1, "l1"), (2, "l2")):
        filters = torch.stack([w0[c].abs().pow(p).sum() for c in range(4)])  # explicit loop over channels
        columns = torch.stack([w3[:, c].abs().pow(p).sum() for c in range(4)])
        per_slice = [filters, model[0].bias.abs().pow(p), g.abs().pow(p), b.abs().pow(p), columns]
        torch.testing.assert_close(group_scores(model, group, name), torch.stack(per_slice).mean(0).detach())
    torch.testing.assert_close(group_scores(model, group, "bn_scale"), torch.tensor([0.5, 2.0, 1.0, 3.0]))


def test_taylor_needs_gradients_and_uses_weight_times_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 4)
    (group,) = dependency_groups(model, x)
    with pytest.raises(ValueError, match="gradients"):
        group_scores(model, group, "taylor")
    model(x).sum().backward()
    w0, b0, w2 = model[0].weight, model[0].bias, model[2].weight
    parts = [(w0 * w0.grad).abs().sum(1), (b0 * b0.grad).abs(), (w2 * w2.grad).abs().sum(0)]
    torch.testing.assert_close(group_scores(model, group, "taylor"), torch.stack(parts).mean(0).detach())


def test_global_scope_removes_the_lowest_normalized_scores():
    torch.manual_seed(0)
    model, x = MLP(in_features=16, hidden=(6, 4)), torch.randn(3, 16)
    groups = dependency_groups(model, x)
    plan = plan_pruning(model, groups, ratio=0.4, importance="l1", scope="global")
    scores = [group_scores(model, g, "l1") for g in groups]
    normalized = torch.cat([s / s.mean() for s in scores])
    removed = set(torch.argsort(normalized)[:4].tolist())  # floor(0.4 * 10) lowest over both groups
    kept = {i for i in range(10)} - removed
    got = set(plan[groups[0]].tolist()) | {6 + i for i in plan[groups[1]].tolist()}
    assert got == kept


def test_round_to_keeps_multiples():
    model, x = resnet(widths=(16, 32, 64)), torch.randn(2, 1, 16, 16)
    prune(model, x, ratio=0.3, scope="uniform", round_to=8)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths


def test_ignore_leaves_named_modules_alone():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    prune(model, x, ratio=0.5, ignore=["stages.0", "stages.1"])
    assert model.stages[0][0].out_channels == 16 and model.stages[1].conv1.out_channels == 16
    assert model.stages[3].conv1.out_channels < 64


def _train_step(model, optimizer, x, y):
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
])
def test_optimizer_state_carries_over_to_the_pruned_model(make_opt):
    torch.manual_seed(0)
    model = DenseNet()
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    optimizer = make_opt(model.parameters())
    for _ in range(2):
        _train_step(model, optimizer, x, y)
    old_params = {name: p for name, p in model.named_parameters()}
    old_state = {name: copy.deepcopy(optimizer.state[p]) for name, p in old_params.items()}
    groups = dependency_groups(model, x)
    plan = {g: torch.arange(0, g.size, 2) for g in groups}
    prune_groups(model, plan, optimizer=optimizer, example_inputs=x)
    assert {id(p) for p in model.parameters()} == {id(p) for g in optimizer.param_groups for p in g["params"]}

    # reference: a fresh copy of the pruned weights and a fresh optimizer whose state is sliced by hand
    fresh = copy.deepcopy(model)
    reference = make_opt(fresh.parameters())
    by_name = dict(fresh.named_parameters())
    for name, p in by_name.items():
        old = old_params[name]
        state = {}
        for key, value in old_state[name].items():
            if isinstance(value, torch.Tensor) and value.shape == old.shape:
                sliced = value
                for dim in range(old.dim()):
                    if p.shape[dim] != old.shape[dim]:
                        sliced = sliced.index_select(dim, _surviving(model, name, dim, old.shape[dim], plan))
                state[key] = sliced.clone()
            else:
                state[key] = copy.deepcopy(value)
        reference.state[p] = state
    _train_step(model, optimizer, x, y)
    _train_step(fresh, reference, x, y)
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # and the carried state really is the sliced one: a fresh optimizer with empty state would differ
    other = copy.deepcopy(fresh)
    _train_step(other, make_opt(other.parameters()), x, y)
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters(), strict=True))


def _surviving(model, name, dim, old_size, plan):
    """Surviving positions along ``dim`` of parameter ``name``, from the plan's group slices."""
    module_name, _, param = name.rpartition(".")
    dropped: set[int] = set()
    for group, keep in plan.items():
        drop = sorted(set(range(group.size)) - set(keep.tolist()))
        for s in group.slices:
            if s.module == module_name and s.param == param and s.dim == dim:
                for unit in drop:
                    dropped.update(s.indices[unit].tolist())
    return torch.tensor([i for i in range(old_size) if i not in dropped])


def test_pruned_model_saves_and_loads_with_architecture(tmp_path):
    torch.manual_seed(0)
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    prune(model, x, ratio=0.5)
    model.eval()
    path = tmp_path / "pruned.pt"
    save_pruned(model, path)
    loaded = load_pruned(path)
    loaded.eval()
    assert [m.out_channels for m in loaded.modules() if isinstance(m, nn.Conv2d)] == \
        [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_pruned_attention_model_restores_into_its_base(tmp_path):
    torch.manual_seed(0)
    model, x = TinyViT(), torch.randn(2, 1, 28, 28)
    prune(model, x, ratio=0.5, scope="uniform")
    model.eval()
    path = tmp_path / "vit.pt"
    save_pruned(model, path)  # own class: no spec needed
    loaded = load_pruned(path, model=TinyViT()).eval()
    assert isinstance(loaded.blocks[0].attn, PrunedMultiheadAttention)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("batch_first", [True, False])
def test_pruned_attention_equals_nn_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    ours = PrunedMultiheadAttention(8, 2, 4, batch_first=batch_first).eval()
    ours.load_state_dict(mha.state_dict())
    x = torch.randn(3, 5, 8) if batch_first else torch.randn(5, 3, 8)  # 3 sequences of 5 tokens
    mask = torch.rand(5, 5) > 0.7
    mask.fill_diagonal_(False)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[:, -1] = True
    out_a, w_a = mha(x, x, x, attn_mask=mask, key_padding_mask=pad)
    out_b, w_b = ours(x, x, x, attn_mask=mask, key_padding_mask=pad)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-6)


def test_pruning_is_deterministic():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model, x = resnet(), torch.randn(2, 1, 16, 16)
        prune(model, x, ratio=0.5)
        outs.append(_state(model))
    assert _same(*outs)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": -0.1}, "ratio"), ({"ratio": 1.0}, "ratio"), ({"ratio": "0.5"}, "ratio"), ({"ratio": True}, "ratio"),
    ({"ignore": ["stages.9"]}, "ignore"), ({"importance": "hessian"}, "importance"), ({"scope": "layer"}, "scope"),
    ({"round_to": 0}, "round_to"),
])
def test_bad_arguments_raise_and_leave_the_model_unchanged(kwargs, match):
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    state = _state(model)
    with pytest.raises(ValueError, match=match):
        prune(model, x, **{"ratio": 0.5, **kwargs})
    assert _same(state, _state(model)) and model.stages[0][0].out_channels == 16


def test_inputs_that_do_not_run_the_model_raise_and_leave_it_unchanged():
    model = resnet()
    state = _state(model)
    with pytest.raises(ValueError, match="example_inputs do not run the model"):
        prune(model, torch.randn(2, 3, 28, 28), ratio=0.5)
    assert _same(state, _state(model))


def test_keeping_zero_channels_is_an_error_and_changes_nothing():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    groups = dependency_groups(model, x)
    state = _state(model)
    with pytest.raises(ValueError, match="zero channels"):
        prune_groups(model, {groups[0]: torch.arange(0, 8), groups[1]: []})
    assert _same(state, _state(model)) and model.stages[0][0].out_channels == 16


def test_surgery_that_breaks_the_forward_is_undone():
    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.reshape(y.shape[0], 4, -1).mean(2))  # the literal 4 breaks once channels go

    model, x = HardCoded(), torch.randn(2, 1, 6, 6)
    groups = dependency_groups(model, x)
    assert len(groups) == 1
    state = _state(model)
    with pytest.raises(Exception):  # noqa: B017 - whatever the forward raises
        prune_groups(model, {groups[0]: torch.tensor([0, 1])}, example_inputs=x)
    assert _same(state, _state(model)) and model.conv.out_channels == 4


@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_uniform_l2_pruning_equals_torch_pruning(ratio):
    """Independent reference: Torch-Pruning's MetaPruner with group L2 magnitude keeps the very same channels."""
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    dense, x = resnet(widths=(8, 16, 16)), torch.randn(2, 1, 16, 16)
    ours, theirs = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(ours, x, ratio=ratio, importance="l2", scope="uniform")
    tp.pruner.MetaPruner(theirs, x, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                         ignored_layers=[theirs.stages[-1].fc]).step()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _LiteralWidth(nn.Module):
    """Attention on a residual stream whose width is hard-coded in the forward: pruning the stream breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        t = self.embed(x)
        a, _ = self.attn(t, t, t)
        return self.head((a + t).reshape(x.shape[0], x.shape[1], 8).mean(1))  # the literal 8


def test_undone_surgery_restores_the_very_same_parameters_attributes_and_modules():
    torch.manual_seed(0)
    model, x = _LiteralWidth(), torch.randn(2, 5, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_step(model, optimizer, x, torch.tensor([0, 2]))
    groups = dependency_groups(model, x)
    assert {g.kind for g in groups} == {"channel", "head"}
    tensors = [(name, t) for name, t in [*model.named_parameters(), *model.named_buffers()]]
    modules = dict(model.named_modules())
    state, optimizer_params = _state(model), [p for g in optimizer.param_groups for p in g["params"]]
    with torch.no_grad():
        before = model(x)
    with pytest.raises(ValueError, match="pruned model does not run on example_inputs"):
        prune_groups(model, {g: torch.arange(g.size // 2) for g in groups}, optimizer=optimizer, example_inputs=x)
    assert dict(model.named_modules()) == modules  # the MultiheadAttention is back (not a pruned copy)
    assert type(model.attn) is nn.MultiheadAttention and model.attn.embed_dim == 8
    assert all(t is dict([*model.named_parameters(), *model.named_buffers()])[name] for name, t in tensors)
    assert model.embed.out_features == 8 and model.head.in_features == 8
    assert _same(state, _state(model))
    assert [p for g in optimizer.param_groups for p in g["params"]] == optimizer_params
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_the_model_is_traced_symbolically_once(monkeypatch):
    from regimen.subnet.dependency.ops import LeafTracer

    calls = []
    original = LeafTracer.trace

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LeafTracer, "trace", counting)
    dependency_groups(resnet(), torch.randn(2, 1, 16, 16))
    assert len(calls) == 1
