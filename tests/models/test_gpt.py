"""The GPT and its transformer blocks against hand-written references: attention (causal softmax, qk-layernorm,
rotary positions as complex rotations), the mixture of experts (a loop over tokens), hidden states × read-out = the
logits, causality, sampling, and one-line errors for bad shapes."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.models import GPT, CausalSelfAttention, MoEFeedForward
from regimen.models.gpt import generate
from regimen.models.transformer import apply_rotary, rotary_tables


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_rotary_matches_complex_rotation():
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    cos, sin = rotary_tables(5, 8)
    out = apply_rotary(x, cos.double(), sin.double())
    pairs = torch.view_as_complex(x.reshape(2, 3, 5, 4, 2).contiguous())
    angles = torch.arange(5, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 8, 2) / 8)[None]
    expected = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).reshape(2, 3, 5, 8)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("qk_norm, rotary", [(False, False), (True, True)])
def test_attention_matches_explicit_masked_softmax(qk_norm, rotary):
    torch.manual_seed(0)
    attn = CausalSelfAttention(16, 4, qk_norm=qk_norm, rotary=rotary, max_len=8).double()
    if qk_norm:
        torch.nn.init.normal_(attn.q_norm.weight)
        torch.nn.init.normal_(attn.k_norm.bias)
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    b, t = 2, 6
    q, k, v = attn.qkv(x).view(b, t, 3, 4, 4).permute(2, 0, 3, 1, 4)
    if qk_norm:
        q = F.layer_norm(q, (4,), attn.q_norm.weight, attn.q_norm.bias)
        k = F.layer_norm(k, (4,), attn.k_norm.weight, attn.k_norm.bias)
    if rotary:
        cos, sin = rotary_tables(t, 4)
        q, k = apply_rotary(q, cos.double(), sin.double()), apply_rotary(k, cos.double(), sin.double())
    scores = q @ k.transpose(-1, -2) / math.sqrt(4)
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    expected = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, 16))
    attn.track_max_logit = True
    torch.testing.assert_close(attn(x), expected)
    assert attn.max_logit == pytest.approx(float(scores.detach().max()))


@pytest.mark.parametrize("top_k, activation", [(1, "gelu"), (2, "swiglu"), (3, "gelu")])
def test_moe_matches_a_loop_over_tokens_and_experts(top_k, activation):
    torch.manual_seed(1)
    moe = MoEFeedForward(8, 12, num_experts=4, top_k=top_k, activation=activation).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    out = moe(x)
    expected = torch.zeros_like(x).reshape(-1, 8)
    for n, h in enumerate(x.reshape(-1, 8)):
        probs = (moe.router.weight @ h).softmax(-1)
        top_p, top_i = probs.topk(top_k)
        gates = top_p / top_p.sum() if top_k > 1 else top_p
        for gate, e in zip(gates, top_i.tolist()):
            hidden = h @ moe.w1[e]
            if activation == "swiglu":
                a, u = hidden.chunk(2)
                hidden = F.silu(a) * u
            else:
                hidden = F.gelu(hidden)
            expected[n] += gate * (hidden @ moe.w2[e])
    torch.testing.assert_close(out, expected.reshape(x.shape))
    assert moe.router_probs.shape == (15, 4) and moe.expert_indices.shape == (15, top_k)
    out.sum().backward()  # every expert weight and the router get gradients
    assert moe.router.weight.grad.abs().sum() > 0 and moe.w1.grad.abs().sum() > 0


@pytest.mark.parametrize("options", [
    {}, {"tie_embeddings": False, "positions": "learned", "norm": "rmsnorm", "activation": "swiglu"},
    {"qk_norm": True, "moe_experts": 4, "moe_top_k": 2, "moe_every": 2},
])
def test_hidden_states_times_output_weight_are_the_logits_and_the_model_is_causal(options):
    torch.manual_seed(0)
    model = GPT(vocab_size=50, block_size=16, dim=32, depth=2, heads=4, **options)
    ids = torch.randint(0, 50, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, 50)
    torch.testing.assert_close(model(ids, return_hidden=True) @ model.output_weight.T, logits)
    assert (model.output_weight is model.stages[0].tok.weight) == options.get("tie_embeddings", True)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    after = model(changed)
    torch.testing.assert_close(after[:, :7], logits[:, :7])  # no position sees the future
    assert not torch.allclose(after[:, 7:], logits[:, 7:])


@pytest.mark.parametrize("options, message", [
    ({"dim": 30, "heads": 4}, "heads: the width dim=30 must be divisible by heads=4"),
    ({"moe_experts": 2, "moe_top_k": 3}, "moe_top_k = 3 must lie in \\[1, moe_experts = 2\\]"),
    ({"moe_experts": 1}, "moe_experts must be 0"),
    ({"positions": "sinusoid"}, "positions must be"),
])
def test_bad_configurations_name_the_key(options, message):
    with pytest.raises(ValueError, match=message):
        GPT(**{"vocab_size": 20, "block_size": 8, "dim": 32, "heads": 4, "depth": 1, **options})


def test_bad_inputs_name_the_limit():
    model = GPT(vocab_size=20, block_size=8, dim=16, heads=2, depth=1)
    with pytest.raises(ValueError, match="exceeds the model's block_size = 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size = 20"):
        model(torch.full((1, 4), 20))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))


def test_generate_is_seeded_and_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = GPT(vocab_size=30, block_size=8, dim=16, heads=2, depth=1)
    prompt = torch.tensor([[1, 2, 3]])
    first = generate(model, prompt, 12, 1.0, None, torch.Generator().manual_seed(5))
    again = generate(model, prompt, 12, 1.0, None, torch.Generator().manual_seed(5))
    assert first.shape == (1, 15) and torch.equal(first, again) and torch.equal(first[:, :3], prompt)
    greedy = generate(model, prompt, 12, 0.0)
    assert torch.equal(generate(model, prompt, 12, 1.0, 1, torch.Generator().manual_seed(9)), greedy)
    with pytest.raises(ValueError, match="top_k"):
        generate(model, prompt, 2, 1.0, 0)
