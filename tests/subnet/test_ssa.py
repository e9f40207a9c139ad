"""Stochastically subsampled attention: the gathered computation equals full attention under the mask that keeps
only the sampled keys plus the diagonal; the method trains subsampled, evaluates dense, and ends dense."""

import math

import pytest
import torch

from regimen.method import Context
from regimen.models import GPT
from regimen.subnet import SubsampledAttentionMethod, sample_kept_positions, subsampled_causal_attention


def test_subsampled_attention_equals_masked_full_attention():
    torch.manual_seed(0)
    b, h, t, d = 2, 3, 10, 4
    q, k, v = (torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(3))
    kept = sample_kept_positions(b, t, 4, torch.Generator().manual_seed(1))
    assert kept.shape == (2, 4) and all(row.tolist() == sorted(set(row.tolist())) for row in kept)
    out = subsampled_causal_attention(q, k, v, kept)
    for s in range(b):
        allowed = torch.zeros(t, t, dtype=torch.bool)
        for i in range(t):
            allowed[i, i] = True
            for j in kept[s].tolist():
                allowed[i, j] |= j < i
        scores = (q[s] @ k[s].transpose(-1, -2)) / math.sqrt(d)
        expected = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[s]
        torch.testing.assert_close(out[s], expected)
    full = subsampled_causal_attention(q, k, v, torch.arange(t).expand(b, t))
    torch.testing.assert_close(full, torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    with pytest.raises(ValueError, match="keep"):
        sample_kept_positions(2, 5, 6)


def test_method_subsamples_in_training_only_and_ends_dense():
    torch.manual_seed(0)
    model = GPT(vocab_size=20, block_size=16, dim=16, depth=2, heads=2)
    ids = torch.randint(0, 20, (2, 16))
    dense_logits = model(ids)
    method = SubsampledAttentionMethod(ratio=4, dense_fraction=0.25)
    ctx = Context(model, steps_per_epoch=4, epochs=1)
    method.setup(ctx)
    model.eval()
    torch.testing.assert_close(model(ids), dense_logits)  # evaluation: full attention
    model.train()
    method.before_forward(ids, ids, ctx)
    assert not torch.allclose(model(ids), dense_logits)
    ctx.step = 3  # the last quarter: dense fine-tune
    method.before_forward(ids, ids, ctx)
    torch.testing.assert_close(model(ids), dense_logits)
    with pytest.raises(ValueError, match="attention layers"):
        method.setup(Context(torch.nn.Linear(2, 2)))
