"""Stochastically subsampled attention: the gathered computation equals full attention under the mask that keeps
only the sampled keys plus the diagonal; the method trains subsampled, evaluates dense, and ends dense."""

import math

import pytest
import torch

from regimen.method import Context
from regimen.models import GPT, ViT
from regimen.subnet import (
    SubsampledAttentionMethod,
    sample_kept_positions,
    subsampled_attention,
    subsampled_causal_attention,
)
from regimen.train import fit


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


def test_bidirectional_subsampled_attention_equals_masked_full_attention():
    torch.manual_seed(0)
    b, h, t, d = 2, 2, 9, 4
    q, k, v = (torch.randn(b, h, t, d, dtype=torch.float64) for _ in range(3))
    kept = sample_kept_positions(b, t, 3, torch.Generator().manual_seed(2))
    out = subsampled_attention(q, k, v, kept, causal=False)
    for s in range(b):
        allowed = torch.eye(t, dtype=torch.bool)
        allowed[:, kept[s]] = True  # every query sees every kept key, and itself once
        scores = (q[s] @ k[s].transpose(-1, -2)) / math.sqrt(d)
        torch.testing.assert_close(out[s], scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v[s])
    every = subsampled_attention(q, k, v, torch.arange(t).expand(b, t), causal=False)
    torch.testing.assert_close(every, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_locality_biased_sampling_follows_its_distribution():
    length, keep, tau = 40, 1, 3.0
    kept = sample_kept_positions(20_000, length, keep, torch.Generator().manual_seed(0), locality=tau)
    assert kept.shape == (20_000, 1) and int(kept.min()) >= 0 and int(kept.max()) < length
    # one draw: P(j) = mean over centres c of exp(-|j-c|/tau) / sum_j' exp(-|j'-c|/tau), by hand
    expected = torch.zeros(length, dtype=torch.float64)
    for c in range(length):
        w = torch.tensor([math.exp(-abs(j - c) / tau) for j in range(length)], dtype=torch.float64)
        expected += w / w.sum() / length
    observed = torch.bincount(kept[:, 0], minlength=length).double() / kept.shape[0]
    assert float((observed - expected).abs().max()) < 0.01
    # K draws without replacement stay distinct, sorted, and near one another
    local = sample_kept_positions(500, 64, 8, torch.Generator().manual_seed(1), locality=2.0)
    uniform = sample_kept_positions(500, 64, 8, torch.Generator().manual_seed(1))
    assert all(row.tolist() == sorted(set(row.tolist())) for row in local)
    spread = (local[:, -1] - local[:, 0]).double().mean()
    assert float(spread) < 0.5 * float((uniform[:, -1] - uniform[:, 0]).double().mean())
    with pytest.raises(ValueError, match="locality"):
        sample_kept_positions(2, 5, 2, locality=-1.0)
    with pytest.raises(ValueError, match="locality"):
        SubsampledAttentionMethod(locality=float("nan"))


def test_ssa_trains_a_vit_on_images_and_evaluates_dense(tiny_recipe):
    model = ViT(image_size=(8, 8), patch=2, dim=16, depth=1, heads=2)
    images = torch.rand(2, 1, 8, 8)
    model.eval()
    dense = model(images)
    method = SubsampledAttentionMethod(ratio=4, locality=2.0)
    method.setup(Context(model, steps_per_epoch=4, epochs=1))
    torch.testing.assert_close(model(images), dense)  # evaluation: full bidirectional attention
    tiny_recipe["model"] = {"name": "vit", "options": {"patch": 2, "dim": 16, "depth": 1, "heads": 2}}
    tiny_recipe["optim"] = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}
    tiny_recipe["train"] = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4, "threads": 1}
    tiny_recipe["methods"] = [{"name": "ssa", "ratio": 4.0, "locality": 2.0}]
    result = fit(tiny_recipe)
    assert math.isfinite(result.summary["final_test_acc"])
