"""Dependency groups: lossless removal of zeroed groups on 8 architectures, and the exact index layout of groups."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from regimen.subnet import UntraceableError, dependency_groups, prune, prune_groups, trace_dependencies, zero_units
from tests.subnet.archs import ARCHS, ControlFlowNet, DenseNet, MobileNetV2, ResNeXt, TinyViT, randomize_norms


def _every_other_unit_zeroed(model: nn.Module, x: torch.Tensor):
    graph = trace_dependencies(model, x)
    plan = {}
    for group in graph.groups:
        if group.lossless:
            zero_units(model, group, torch.arange(1, group.size, 2))
            plan[group] = torch.arange(0, group.size, 2)
    return graph, plan


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_zeroed_groups_are_removed_without_changing_outputs(arch):
    torch.manual_seed(0)
    model, x = ARCHS[arch]()
    randomize_norms(model)
    model.eval()
    graph, plan = _every_other_unit_zeroed(model, x)
    assert len(plan) >= 2, f"{arch}: expected several prunable groups, got {graph.groups}"
    with torch.no_grad():
        before = model(x)
    params_before = sum(p.numel() for p in model.parameters())
    prune_groups(model, plan, example_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert sum(p.numel() for p in model.parameters()) < params_before
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_zeroing_only_the_filters_is_not_lossless():
    """Control for the test above: leaving BN beta in place changes the output (the test can fail)."""
    torch.manual_seed(0)
    model, x = ARCHS["resnet_reference"]()
    randomize_norms(model)
    model.eval()
    groups = dependency_groups(model, x)
    group = groups[1]  # stages.1.conv1 -> bn1 -> conv2
    drop = torch.arange(1, group.size, 2)
    conv_slice = next(s for s in group.slices if s.module == "stages.1.conv1" and s.dim == 0)
    with torch.no_grad():
        conv_slice.tensor(model)[group.positions(conv_slice, drop)] = 0
        before = model(x)
    prune_groups(model, {group: torch.arange(0, group.size, 2)})
    with torch.no_grad():
        assert (model(x) - before).abs().max() > 1e-3


def test_flatten_maps_channel_to_its_hw_columns_after_concat_offsets():
    model, x = ARCHS["densenet_concat"]()
    groups = dependency_groups(model, x)
    by_name = {g.name: g for g in groups}
    transition = by_name["transition.2"]  # 12 channels -> avgpool to 4x4 -> flatten -> fc
    fc = next(s for s in transition.slices if s.module == "fc")
    assert fc.dim == 1 and fc.role == "in"
    assert torch.equal(fc.indices, torch.arange(12 * 16).reshape(12, 16))
    last = by_name["dense.2.2"]  # third dense layer: channels 8+6+6 = 20 .. 25 of the concatenation
    consumer = next(s for s in last.slices if s.module == "transition.2")
    assert torch.equal(consumer.indices.reshape(-1), torch.arange(20, 26))
    bn = next(s for s in last.slices if s.module == "transition.0" and s.param == "running_mean")
    assert torch.equal(bn.indices.reshape(-1), torch.arange(20, 26))
    stem = by_name["stem"]  # stem output feeds every dense layer at offset 0
    consumers = {s.module for s in stem.slices if s.role == "in"}
    assert consumers == {"dense.0.2", "dense.1.2", "dense.2.2", "transition.2"}


def test_grouped_conv_unit_spans_the_same_position_of_every_group():
    model = ResNeXt()
    x = torch.randn(2, 1, 16, 16)
    groups = dependency_groups(model, x)
    reduce = next(g for g in groups if g.name == "blocks.0.reduce.0")  # 16 channels -> grouped conv with 4 groups
    assert reduce.size == 4
    producer = next(s for s in reduce.slices if s.module == "blocks.0.reduce.0" and s.dim == 0)
    expected = torch.tensor([[k + 4 * g for g in range(4)] for k in range(4)])
    assert torch.equal(producer.indices, expected)
    grouped_in = next(s for s in reduce.slices if s.module == "blocks.0.grouped.0")
    assert grouped_in.dim == 1 and torch.equal(grouped_in.indices.reshape(-1), torch.arange(4))


def test_depthwise_conv_prunes_inputs_outputs_and_groups_together():
    model = MobileNetV2()
    x = torch.randn(2, 1, 16, 16)
    groups = dependency_groups(model, x)
    expand = next(g for g in groups if g.name == "blocks.0.block.0")
    modules = {s.module for s in expand.slices}
    assert {"blocks.0.block.0", "blocks.0.block.1", "blocks.0.block.3", "blocks.0.block.4",
            "blocks.0.block.6"} <= modules
    multiplier = next(s for s in groups[-1].slices if s.module == "multiplier.0") if any(
        g.name == "multiplier.0" for g in groups) else None
    group = next(g for g in groups if any(s.module == "multiplier.0" and s.dim == 0 for s in g.slices))
    mult = next(s for s in group.slices if s.module == "multiplier.0" and s.dim == 0)
    assert mult.indices.shape[1] == 2  # depth multiplier 2: each input channel owns two outputs
    del multiplier
    model.eval()
    prune_groups(model, {group: torch.arange(0, group.size, 2)}, example_inputs=x)
    assert model.multiplier[0].groups == model.multiplier[0].in_channels == 6
    assert model.multiplier[0].out_channels == 12


def test_attention_heads_form_their_own_group_and_residual_stream_is_lossy():
    model = TinyViT(dim=16, heads=4)
    x = torch.randn(2, 1, 28, 28)
    groups = dependency_groups(model, x)
    heads = [g for g in groups if g.kind == "head"]
    assert len(heads) == 2 and all(g.size == 4 and g.lossless for g in heads)
    rows = next(s for s in heads[0].slices if s.param == "in_proj_weight")
    assert rows.indices.shape == (4, 12)  # q, k and v rows of one head: 3 x head_dim
    assert torch.equal(rows.indices[1], torch.cat([torch.arange(4, 8), torch.arange(20, 24), torch.arange(36, 40)]))
    stream = [g for g in groups if any(s.param == "pos_embed" for s in g.slices)]
    assert len(stream) == 1 and not stream[0].lossless
    assert any(s.param == "cls_token" and s.dim == 2 for s in stream[0].slices)


def test_pruning_the_lossy_residual_stream_still_runs_with_the_right_shapes():
    torch.manual_seed(0)
    model = TinyViT(dim=16, heads=4)
    x = torch.randn(2, 1, 28, 28)
    report = prune(model, x, ratio=0.5, scope="uniform")
    assert model.pos_embed.shape[-1] == 8 and model.blocks[0].attn.num_heads == 2
    assert model(x).shape == (2, 10)
    assert report.params_after < report.params_before


def test_eager_recorder_follows_control_flow_and_agrees_with_fx():
    model, x = ControlFlowNet(), torch.randn(2, 1, 8, 8)
    graph = trace_dependencies(model, x)
    assert graph.tracer == "eager"
    (group,) = graph.groups  # a's output is added to b's output: one coupled group of 8
    assert group.size == 8 and {s.module for s in group.slices} == {"a.0", "a.1", "b.0", "b.1", "fc"}
    for arch in ("densenet_concat", "tiny_vit_mha", "resnext_grouped"):
        model, x = ARCHS[arch]()
        fx_groups = trace_dependencies(model, x, tracer="fx").groups
        eager_groups = trace_dependencies(model, x, tracer="eager").groups

        def layout(groups):
            return sorted((tuple((s.module, s.param, s.dim, tuple(s.indices.reshape(-1).tolist()))
                                 for s in g.slices), g.lossless) for g in groups)

        assert layout(fx_groups) == layout(eager_groups), arch


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        y = torch.fft.fft2(y).real  # an op the tracer has no rule for
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("tracer", ["fx", "eager"])
def test_untraceable_op_is_named_and_model_is_left_unchanged(tracer):
    model, x = _Untraceable(), torch.randn(2, 1, 8, 8)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(UntraceableError, match="fft2"):
        prune(model, x, ratio=0.5, tracer=tracer)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert model.conv.out_channels == 4


def test_tracing_leaves_train_mode_and_bn_statistics_alone():
    model, x = DenseNet(), torch.randn(2, 1, 8, 8)
    model.train()
    stats = copy.deepcopy(model.dense[0][0].running_mean)
    trace_dependencies(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(model.dense[0][0].running_mean, stats)


def test_bad_example_inputs_are_clear_errors():
    model = DenseNet()
    with pytest.raises(ValueError, match="example_inputs do not run the model"):
        dependency_groups(model, torch.randn(2, 3, 8, 8))
    with pytest.raises(TypeError, match="example_inputs must be"):
        dependency_groups(model, "image")
    with pytest.raises(ValueError, match="tracer"):
        dependency_groups(model, torch.randn(2, 1, 8, 8), tracer="jit")
