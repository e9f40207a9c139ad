"""Once-for-All widths on regimen's ViT: whole attention heads and MLP hidden units.

References: a hand-written ViT block (explicit loop over the kept heads, softmax(q kᵀ/√d) v, GELU MLP on the first
hidden units) for the supernet's narrow forward; ``extract`` (a physically smaller copy) against the supernet; the
channel/head sort against the unsorted network; ElasticViT's preference rule by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.models.transformer import CausalSelfAttention
from regimen.models.vit import ViT
from regimen.subnet.nested import NestedWidth
from regimen.subnet.ofa import OnceForAll, OnceForAllMethod, SubnetSetting

DIM, HEADS, HIDDEN = 16, 4, 32


def _vit(depth: int = 3, seed: int = 0) -> tuple[ViT, torch.Tensor]:
    torch.manual_seed(seed)
    vit = ViT(image_size=(8, 8), patch=4, dim=DIM, depth=depth, heads=HEADS, mlp_ratio=2.0)
    with torch.no_grad():  # norms and positions away from their defaults, so equalities are not trivial
        for m in vit.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.3)
    return vit, torch.randn(3, 1, 8, 8)


def _supernet(depth: int = 3) -> tuple[OnceForAll, torch.Tensor]:
    vit, x = _vit(depth)
    supernet = OnceForAll(vit, x, depths=tuple(range(1, depth + 1)), widths=(0.25, 0.5, 0.75, 1.0))
    for d in supernet.depths:
        supernet.enable(depth=d)
    for w in supernet.widths:
        supernet.enable(width=w)
    return supernet.eval(), x


def _block_by_hand(block, x: torch.Tensor, heads: int, hidden: int) -> torch.Tensor:
    """Pre-norm block restricted to the first ``heads`` heads and ``hidden`` MLP units, one head at a time."""
    attn, head_dim = block.attn, block.attn.head_dim
    h = block.norm1(x)
    qkv_w = attn.qkv.weight
    outputs = []
    for i in range(heads):
        rows = slice(i * head_dim, (i + 1) * head_dim)
        q = h @ qkv_w[rows].T
        k = h @ qkv_w[DIM:][rows].T
        v = h @ qkv_w[2 * DIM:][rows].T
        p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        outputs.append(p @ v)
    x = x + torch.cat(outputs, dim=-1) @ attn.proj.weight[:, : heads * head_dim].T
    h = block.norm2(x)
    mlp = F.gelu(h @ block.mlp.fc1.weight[:hidden].T) @ block.mlp.fc2.weight[:, :hidden].T
    return x + mlp


def test_the_tracer_gives_head_groups_and_mlp_groups_to_the_supernet():
    supernet, _ = _supernet()
    assert len(supernet.head_groups) == 3 and all(g.size == HEADS for g in supernet.head_groups)
    assert sorted(g.size for g in supernet._nested.groups) == [HIDDEN] * 3  # the MLP widths
    # the embedding width (LayerNorm-coupled residual stream) is not sliced
    assert all(g.kind == "head" or not g.lossless for g in supernet._nested.fixed)


@pytest.mark.parametrize(("width", "heads", "hidden"), [(0.25, 1, 8), (0.5, 2, 16), (0.75, 3, 24)])
def test_narrow_forward_equals_a_hand_written_vit_on_the_first_heads_and_units(width, heads, hidden):
    supernet, x = _supernet()
    vit = supernet.model
    with torch.no_grad():
        h = vit.stages[0](x)
        for block in vit.stages[1:-1][:2]:  # depth 2: the third block is skipped
            h = _block_by_hand(block, h, heads, hidden)
        expected = vit.stages[-1](h)
        got = supernet(x, depth=2, width=width)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the attention modules' head counts are back after the narrow forward
    assert all(m.heads == HEADS and m.dim == DIM for m in vit.modules() if isinstance(m, CausalSelfAttention))


@pytest.mark.parametrize("setting", [dict(depth=1, width=0.25), dict(depth=2, width=0.5), dict(depth=3, width=0.75),
                                     dict(depth=3, width=1.0), dict(depth=1, width=1.0)])
def test_extract_equals_the_supernet_on_the_vit(setting):
    supernet, x = _supernet()
    small = supernet.extract(**setting).eval()
    with torch.no_grad():
        assert (supernet(x, **setting) - small(x)).abs().max() <= 1e-5
    heads = math.ceil(HEADS * setting["width"])
    hidden = math.ceil(HIDDEN * setting["width"])
    blocks = small.stages[1:-1]
    assert len(blocks) == setting["depth"]
    for block in blocks:
        assert block.attn.heads == heads and block.attn.dim == heads * (DIM // HEADS)
        assert tuple(block.attn.qkv.weight.shape) == (3 * heads * (DIM // HEADS), DIM)
        assert tuple(block.attn.proj.weight.shape) == (DIM, heads * (DIM // HEADS))
        assert tuple(block.mlp.fc1.weight.shape) == (hidden, DIM)
        assert tuple(block.mlp.fc2.weight.shape) == (DIM, hidden)
    # the supernet itself is untouched
    assert all(m.heads == HEADS for m in supernet.model.modules() if isinstance(m, CausalSelfAttention))


def test_sorting_heads_and_mlp_units_keeps_the_function_and_orders_heads_by_l1():
    supernet, x = _supernet()
    with torch.no_grad():
        before = supernet(x)
        supernet.sort_channels("l1")
        after = supernet(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    attn = supernet.model.stages[1].attn
    hd = attn.head_dim
    scores = []
    for i in range(HEADS):  # per head: mean over its slices of the L1 norm (q, k, v rows; proj columns)
        rows = torch.cat([attn.qkv.weight[j * DIM + i * hd: j * DIM + (i + 1) * hd] for j in range(3)])
        scores.append((rows.abs().sum() + attn.proj.weight[:, i * hd:(i + 1) * hd].abs().sum()) / 2)
    assert scores == sorted(scores, reverse=True)


def test_gradients_reach_only_the_kept_heads_and_units():
    supernet, x = _supernet(depth=1)
    supernet.train()
    supernet(x, width=0.5).sum().backward()
    attn, mlp = supernet.model.stages[1].attn, supernet.model.stages[1].mlp
    hd = attn.head_dim
    qkv = attn.qkv.weight.grad.view(3, HEADS, hd, DIM)
    assert qkv[:, :2].abs().sum() > 0 and qkv[:, 2:].abs().sum() == 0
    assert attn.proj.weight.grad[:, 2 * hd:].abs().sum() == 0
    assert mlp.fc1.weight.grad[16:].abs().sum() == 0 and mlp.fc1.weight.grad[:16].abs().sum() > 0


def test_width_plan_accessor_matches_the_supernet_slices():
    vit, x = _vit(depth=1)
    nested = NestedWidth(vit, x, (0.5, 1.0), sort_by="none")
    plan = nested.width_plan(0.5)
    assert sorted(plan) == ["stages.1.mlp.fc1.weight", "stages.1.mlp.fc2.weight"]
    assert [(d, k.tolist()) for d, k in plan["stages.1.mlp.fc1.weight"]] == [(0, list(range(16)))]
    assert [(d, k.tolist()) for d, k in plan["stages.1.mlp.fc2.weight"]] == [(1, list(range(16)))]
    assert [g.name for g in nested.groups_now()] == [g.name for g in nested.groups]
    assert len(nested.groups_now(nested.fixed)) == len(nested.fixed)
    with pytest.raises(ValueError, match="width"):
        nested.width_plan(0.3)


def test_elasticvit_preference_prefers_extra_cost_from_width_by_hand():
    """pref(c, a) = MACs(c's depth, a's width) − MACs(a's depth, c's width): lower wins."""
    method = OnceForAllMethod(depths=[1, 2], widths=[0.5, 1.0])
    method._candidates = [SubnetSetting((d,), w, ()) for d in (1, 2) for w in (0.5, 1.0)]
    method._macs = {s: 10 * s.depth[0] * (1 + 3 * s.width) for s in method._candidates}  # depth-heavy cost model
    anchor = method._candidates.index(SubnetSetting((1,), 0.5, ()))
    deep = method._candidates.index(SubnetSetting((2,), 0.5, ()))  # extra cost from depth
    wide = method._candidates.index(SubnetSetting((1,), 1.0, ()))  # extra cost from width
    assert method._preference(deep, anchor) == 10 * 2 * 2.5 - 10 * 1 * 2.5
    assert method._preference(wide, anchor) == 10 * 1 * 2.5 - 10 * 1 * 4.0
    assert method._preference(wide, anchor) < method._preference(deep, anchor)


def test_method_trains_the_vit_through_the_width_phase():
    from regimen.train import fit

    recipe = {"name": "ofa_vit", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "vit", "options": {"patch": 4, "dim": 16, "depth": 2, "heads": 4, "mlp_ratio": 2.0}},
              "optim": {"name": "adamw", "lr": 1e-3},
              "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 2},
              "methods": [{"name": "ofa", "depths": [1, 2], "widths": [0.5, 1.0], "phase_epochs": [1, 0, 0, 1],
                           "subnets_per_step": [1, 1, 2, 2], "sampler": "performance", "buckets": 2,
                           "eval_width": 0.5}]}
    result = fit(recipe)
    supernet = result.model
    assert isinstance(supernet, OnceForAll) and supernet.head_groups
    assert supernet.trained["width"] == {0.5, 1.0}
    small = supernet.extract(depth=1, width=0.5).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert (supernet.eval()(x, depth=1, width=0.5) - small(x)).abs().max() <= 1e-5
