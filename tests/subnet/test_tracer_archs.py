"""The tracer on real architectures (issue 17): zeroed groups removed without changing outputs on 13 models, head and
grouped-query structure, attention attributes after surgery, hidden-size pruning, and refusals that name the op and
leave the model unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.subnet import UntraceableError, prune, prune_groups, trace_dependencies, zero_units
from regimen.subnet._common import normalize_inputs
from tests.subnet.archs import randomize_norms
from tests.subnet.archs_real import HF_ARCHS, REAL_ARCHS, output, shuffle


def _build(arch: str):
    if arch in HF_ARCHS:
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model, x = REAL_ARCHS[arch]()
    randomize_norms(model)
    return model.eval(), x


def _run(model, x):
    args, kwargs = normalize_inputs(x)
    with torch.no_grad():
        return output(model(*args, **kwargs))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


# what each architecture must expose: (head groups, channel groups that are lossless and prunable, lossy groups)
EXPECTED = {
    "shufflenet_v1_shuffle": (0, 1, 0),
    "shufflenet_v2_chunk": (0, 4, 0),
    "ghostnet_split_concat": (0, 3, 0),
    "swiglu_glu_mlp": (0, 3, 0),
    "transformer_encoder_decoder": (3, 2, 0),
    "transformer_encoder_stack": (3, 3, 1),
    "sdpa_vit": (2, 2, 1),
    "functional_layers": (0, 3, 0),
    "pixel_shuffle": (0, 3, 0),
    "hf_gpt2": (2, 2, 1),
    "hf_bert": (2, 3, 1),
    "hf_llama_gqa": (2, 2, 1),
    "hf_vit": (2, 2, 1),
}


@pytest.mark.parametrize("arch", sorted(REAL_ARCHS))
def test_zeroed_groups_are_removed_without_changing_outputs(arch):
    model, x = _build(arch)
    graph = trace_dependencies(model, x)
    heads = [g for g in graph.groups if g.kind == "head"]
    exact = [g for g in graph.groups if g.kind == "channel" and g.lossless and g.size > 1]
    lossy = [g for g in graph.groups if not g.lossless]
    assert (len(heads), len(exact), len(lossy)) == EXPECTED[arch], graph.groups
    plan = {}
    for group in graph.groups:
        if group.lossless:
            zero_units(model, group, torch.arange(1, group.size, 2))
            plan[group] = torch.arange(0, group.size, 2)
    before = _run(model, x)
    params = sum(p.numel() for p in model.parameters())
    prune_groups(model, plan, example_inputs=x)
    assert sum(p.numel() for p in model.parameters()) < params
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)


def test_grouped_query_attention_prunes_whole_key_value_groups():
    model, x = _build("hf_llama_gqa")
    graph = trace_dependencies(model, x)
    group = next(g for g in graph.groups if g.kind == "head")
    assert group.size == 2  # 4 query heads share 2 key/value heads: one unit = one key/value head + its 2 queries
    rows = {s.module.rsplit(".", 1)[-1]: s for s in group.slices if s.dim == 0 and s.param == "weight"}
    assert rows["q_proj"].indices.shape == (2, 16) and rows["k_proj"].indices.shape == (2, 8)
    assert torch.equal(rows["q_proj"].indices[1], torch.arange(16, 32))
    (site,) = group.attention
    assert site.module.endswith("self_attn") and site.q_units.tolist() == [0, 0, 1, 1]
    zero_units(model, group, [1])
    before = _run(model, x)
    prune_groups(model, {group: [0]}, example_inputs=x)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 16 and attn.k_proj.out_features == 8 and attn.o_proj.in_features == 16
    assert attn.num_key_value_groups == 2
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)


def test_head_count_attributes_follow_head_pruning():
    model, x = _build("hf_gpt2")
    graph = trace_dependencies(model, x)
    group = next(g for g in graph.groups if g.kind == "head")
    assert [s.module for s in group.attention] == ["transformer.h.0.attn"]
    prune_groups(model, {group: [0, 3]}, example_inputs=x)
    attn = model.transformer.h[0].attn
    assert attn.num_heads == 2 and attn.split_size == 16 and attn.c_attn.nf == 48 and attn.c_proj.nx == 16
    model, x = _build("sdpa_vit")  # a hand-written module that writes num_heads into its reshape
    graph = trace_dependencies(model, x)
    group = next(g for g in graph.groups if g.kind == "head")
    zero_units(model, group, [1, 2])
    before = _run(model, x)
    prune_groups(model, {group: [0, 3]}, example_inputs=x)
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[1].attn.num_heads == 4
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["hf_gpt2", "hf_bert", "hf_llama_gqa", "hf_vit", "sdpa_vit"])
def test_hidden_size_is_pruned_only_without_lossless_only(arch):
    model, x = _build(arch)
    norm = next(m for m in model.modules() if type(m).__name__ in ("LayerNorm", "LlamaRMSNorm"))
    width = norm.weight.numel()
    shape = _run(model, x).shape
    kept = copy.deepcopy(model)
    prune(kept, x, ratio=0.5, scope="uniform", lossless_only=True)
    assert norm.weight.numel() == width and next(
        m for m in kept.modules() if type(m).__name__ in ("LayerNorm", "LlamaRMSNorm")).weight.numel() == width
    assert sum(p.numel() for p in kept.parameters()) < sum(p.numel() for p in model.parameters())
    report = prune(model, x, ratio=0.5, scope="uniform")  # default: LayerNorm-coupled residual stream pruned too
    assert norm.weight.numel() == width // 2
    assert _run(model, x).shape == shape and report.params_after < report.params_before


def test_stock_encoder_fast_path_is_traced_and_still_matches_after_pruning(monkeypatch):
    model, x = _build("transformer_encoder_stack")
    calls = []
    fused = torch._transformer_encoder_layer_fwd

    def counting(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", counting)
    graph = trace_dependencies(model, x)
    _run(model, x)
    assert calls, "the unpruned stock encoder should take its fused eval fast path"
    plan = {}
    for group in graph.groups:
        if group.lossless:
            zero_units(model, group, torch.arange(1, group.size, 2))
            plan[group] = torch.arange(0, group.size, 2)
    before = _run(model, x)
    prune_groups(model, plan, example_inputs=x)
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)
    model.train()  # the pruned encoder trains too (slow path, PrunedMultiheadAttention)
    args, _ = normalize_inputs(x)
    model(*args).sum().backward()


class _Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(shuffle(F.relu(self.a(x)), 2))


def test_channel_shuffle_couples_the_same_channel_of_every_group():
    model, x = _Shuffle().eval(), torch.randn(2, 1, 6, 6)
    (group,) = trace_dependencies(model, x).groups
    producer = next(s for s in group.slices if s.module == "a" and s.param == "weight")
    consumer = next(s for s in group.slices if s.module == "b")
    assert torch.equal(producer.indices, torch.tensor([[j, j + 4] for j in range(4)]))
    assert torch.equal(consumer.indices, torch.tensor([[2 * j, 2 * j + 1] for j in range(4)]))
    zero_units(model, group, [1, 2])
    before = _run(model, x)
    prune_groups(model, {group: [0, 3]}, example_inputs=x)
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)


class _Roll(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 6, 3), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, dims=1))


class _ComputedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3)
        self.weight = nn.Parameter(torch.randn(4, 6, 1, 1))

    def forward(self, x):
        return F.conv2d(self.a(x), self.weight * 2.0)


class _BufferProduct(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.register_buffer("projection", torch.randn(6, 3))

    def forward(self, x):
        return self.a(x) @ self.projection


@pytest.mark.parametrize(("make", "x", "op"), [
    (_Roll, torch.randn(2, 1, 6, 6), "roll"),
    (_ComputedWeight, torch.randn(2, 1, 6, 6), "conv2d"),
    (_BufferProduct, torch.randn(3, 4), "matmul"),
])
@pytest.mark.parametrize("tracer", ["fx", "eager"])
def test_refusals_name_the_op_before_surgery_and_leave_the_model_untouched(make, x, op, tracer):
    model = make()
    state = _state(model)
    with pytest.raises(UntraceableError, match=op):
        prune(model, x, ratio=0.5, tracer=tracer)
    assert _same_state(model, state)


class _ExplicitSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 6, 3), nn.Conv2d(2, 3, 1), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        left, right = self.a(x).split([2, 4], dim=1)
        return self.b(left) + self.c(right)


def test_split_with_sizes_written_in_the_code_is_left_alone():
    model, x = _ExplicitSplit().eval(), torch.randn(2, 1, 6, 6)
    graph = trace_dependencies(model, x)
    assert any("'split'" in reason for reason in graph.skipped)
    assert not any("a" in g.modules for g in graph.groups)  # a's channels are not pruned, nothing else is left
    state = _state(model)
    prune(model, x, ratio=0.5)
    assert _same_state(model, state)


def test_head_pruned_hugging_face_model_saves_and_loads(tmp_path):
    from regimen.subnet import load_pruned, save_pruned

    model, x = _build("hf_gpt2")
    prune(model, x, ratio=0.5, scope="uniform")
    assert model.transformer.h[0].attn.num_heads == 2
    save_pruned(model, tmp_path / "gpt2.pt")
    fresh, _ = _build("hf_gpt2")
    loaded = load_pruned(tmp_path / "gpt2.pt", model=fresh)
    assert loaded.transformer.h[0].attn.split_size == model.transformer.h[0].attn.split_size
    torch.testing.assert_close(_run(loaded, x), _run(model, x), rtol=0, atol=1e-6)


class _FixedSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 5, 3), nn.Conv2d(3, 2, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        y = self.a(x)
        z = self.c(y)
        return self.b(y[:, :3]) + z[:, :, 1:].mean() + z.narrow(1, 0, 4).sum()  # only the first slice is partial


@pytest.mark.parametrize("tracer", ["fx", "eager"])
def test_indexing_channels_at_fixed_positions_leaves_them_alone(tracer):
    model, x = _FixedSlice().eval(), torch.randn(2, 1, 6, 6)
    graph = trace_dependencies(model, x, tracer=tracer)
    assert any("'getitem'" in reason and "fixed" in reason for reason in graph.skipped)
    assert [g.name for g in graph.groups] == ["c"]  # c's channels: sliced over space only, and narrowed in full


@pytest.mark.parametrize("arch", ["shufflenet_v2_chunk", "ghostnet_split_concat", "swiglu_glu_mlp", "sdpa_vit",
                                  "functional_layers", "pixel_shuffle"])
def test_fx_and_eager_recorders_agree(arch):
    model, x = _build(arch)

    def layout(groups):
        return sorted((tuple((s.module, s.param, s.dim, tuple(s.indices.reshape(-1).tolist())) for s in g.slices),
                       g.lossless, g.kind, tuple(a.module for a in g.attention)) for g in groups)

    fx_graph = trace_dependencies(model, x, tracer="fx")
    eager_graph = trace_dependencies(model, x, tracer="eager")
    assert fx_graph.tracer == "fx" and layout(fx_graph.groups) == layout(eager_graph.groups)


class _RootAttention(nn.Module):
    """Attention written in the model's own forward (the model is the module whose num_heads must follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.qkv, self.out = nn.Linear(8, 48), nn.Linear(16, 3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, -1).transpose(1, 3).unbind(2)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)).mean(1)


@pytest.mark.parametrize("tracer", ["fx", "eager"])
def test_attention_in_the_models_own_forward(tracer):
    model, x = _RootAttention().eval(), torch.randn(2, 5, 8)
    (group,) = [g for g in trace_dependencies(model, x, tracer=tracer).groups if g.kind == "head"]
    assert [site.module for site in group.attention] == [""]
    zero_units(model, group, [0, 2])
    before = _run(model, x)
    prune_groups(model, {group: [1, 3]}, example_inputs=x)
    assert model.num_heads == 2 and model.qkv.out_features == 24
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)


class _MatmulAttention(nn.Module):
    """Attention by hand: q @ k.T, softmax, @ v (no SDPA), then nn.ChannelShuffle / F.channel_shuffle on a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(8, 12), nn.Linear(12, 8)
        self.conv1, self.conv2, self.conv3 = nn.Conv1d(8, 12, 1), nn.Conv1d(12, 12, 1), nn.Conv1d(12, 4, 1)
        self.shuffle = nn.ChannelShuffle(3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, -1, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        y = self.o((attn @ v).transpose(1, 2).reshape(b, n, -1))
        z = F.relu(self.shuffle(F.relu(self.conv1(y.transpose(1, 2)))))
        z = F.channel_shuffle(F.relu(self.conv2(z)), 2)
        return self.conv3(z).mean(-1)


@pytest.mark.parametrize("tracer", ["fx", "eager"])
def test_matmul_attention_and_channel_shuffle_modules(tracer):
    model, x = _MatmulAttention().eval(), torch.randn(2, 5, 8)
    graph = trace_dependencies(model, x, tracer=tracer)
    heads = next(g for g in graph.groups if g.kind == "head")
    assert heads.size == 3 and heads.lossless
    conv1 = next(g for g in graph.groups if g.name == "conv1")
    assert conv1.size == 4 and torch.equal(conv1.slices[0].indices, torch.tensor([[j, j + 4, j + 8] for j in range(4)]))
    conv2 = next(g for g in graph.groups if g.name == "conv2")
    assert conv2.size == 6
    plan = {}
    for group in graph.groups:
        zero_units(model, group, [0])
        plan[group] = torch.arange(1, group.size)
    before = _run(model, x)
    prune_groups(model, plan, example_inputs=x)
    assert model.o.in_features == 8 and model.conv2.out_channels == 10
    torch.testing.assert_close(_run(model, x), before, rtol=0, atol=1e-5)
