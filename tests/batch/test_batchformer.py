"""BatchFormer: attention runs across the batch (against a hand-written encoder layer looping over samples), batch
permutation equivariance, cross-sample dependence in training only, the batch_first pitfall, surgery and Method."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import BatchFormer, BatchFormerHead, BatchFormerMethod, apply_batchformer, batch_former
from regimen.errors import ConfigurationError
from regimen.models import MLP
from regimen.train import fit


def _encoder_by_hand(layer: nn.TransformerEncoderLayer, x: torch.Tensor, nhead: int) -> torch.Tensor:
    """Post-norm encoder layer (ReLU, no dropout) on the N rows of x as one sequence: sample i attends to every
    sample j of the batch (explicit loops over samples and heads)."""
    n, c = x.shape
    d = c // nhead
    w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
    q, k, v = (x @ w[i * c:(i + 1) * c].T + b[i * c:(i + 1) * c] for i in range(3))
    rows = []
    for i in range(n):
        heads = []
        for h in range(nhead):
            sl = slice(h * d, (h + 1) * d)
            scores = torch.stack([q[i, sl] @ k[j, sl] / math.sqrt(d) for j in range(n)])
            weights = scores.softmax(0)
            heads.append(sum(weights[j] * v[j, sl] for j in range(n)))
        rows.append(torch.cat(heads))
    attn = layer.self_attn.out_proj(torch.stack(rows))
    x1 = layer.norm1(x + attn)
    return layer.norm2(x1 + layer.linear2(F.relu(layer.linear1(x1))))


def _features(n=6, c=8, seed=0):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_mixed_features_equal_an_encoder_layer_written_by_hand_over_the_batch():
    torch.manual_seed(0)
    bf = BatchFormer(8, nhead=2, dropout=0.0).double()
    x = _features()
    assert torch.allclose(bf.mix(x), _encoder_by_hand(bf.encoder, x, 2), atol=1e-10)


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_runs_over_the_batch_whatever_batch_first(batch_first):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=8, dropout=0.0, batch_first=batch_first).double()
    x = _features()
    assert torch.allclose(batch_former(x, layer), _encoder_by_hand(layer, x, 2), atol=1e-10)
    if batch_first:  # the pitfall: the reference's unsqueeze(1) with batch_first=True attends over 1 token only
        naive = layer(x.unsqueeze(1)).squeeze(1)
        alone = torch.stack([layer(x[i:i + 1].unsqueeze(1)).squeeze(1)[0] for i in range(len(x))])
        assert torch.allclose(naive, alone)
        assert not torch.allclose(naive, batch_former(x, layer))


def test_permuting_the_batch_permutes_the_output():
    torch.manual_seed(0)
    bf = BatchFormer(8, nhead=4, dropout=0.0).double().train()
    x = _features(n=7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    out, out_perm = bf(x), bf(x[perm])
    assert out.shape == (14, 8)
    assert torch.allclose(out_perm[:7], out[:7][perm]) and torch.allclose(out_perm[7:], out[7:][perm], atol=1e-10)


def test_a_samples_output_depends_on_the_others_in_training_only():
    torch.manual_seed(0)
    model = MLP(8, num_classes=3, hidden=[16]).double()
    apply_batchformer(model, nhead=4, dropout=0.0)
    x = _features()
    changed = x.clone()
    changed[5] += 3.0
    model.train()
    a, b = model(x), model(changed)
    assert a.shape == (12, 3)
    assert torch.allclose(a[:5], b[:5])  # the original rows are per-sample
    assert not torch.allclose(a[6:11], b[6:11])  # mixed rows of samples 0-4 see sample 5
    model.eval()
    a, b = model(x), model(changed)
    assert a.shape == (6, 3) and torch.allclose(a[:5], b[:5])


def test_eval_output_is_the_plain_model_and_surgery_adds_a_param_group():
    torch.manual_seed(0)
    model = MLP(8, num_classes=3, hidden=[16])
    plain = MLP(8, num_classes=3, hidden=[16])
    plain.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    layer = apply_batchformer(model, optimizer=opt, lr_mult=0.1)
    assert isinstance(model.stages[-1], BatchFormerHead)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == pytest.approx(0.05)
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in layer.parameters()}
    x = torch.randn(4, 8)
    model.eval(), plain.eval()
    assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize("kwargs, match", [
    ({"nhead": 3}, "nhead=3 must divide"), ({"dropout": -0.1}, "dropout"), ({"nhead": 0}, "nhead"),
    ({"lr_mult": -1.0}, "lr_mult"),
])
def test_bad_arguments_are_named_and_leave_the_model_unchanged(kwargs, match):
    model = MLP(8, num_classes=3, hidden=[16])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        apply_batchformer(model, **kwargs)
    assert not isinstance(model.stages[-1], BatchFormerHead)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ConfigurationError, match="classifier head"):
        apply_batchformer(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_method_trains_with_repeated_targets_and_reports_n_row_outputs():
    recipe = {"name": "bf", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [16]}},
              "optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2,
                                                               "threads": 1},
              "methods": [{"name": "batchformer", "nhead": 4}]}
    result = fit(recipe)
    assert 0.0 <= result.history[-1]["train_acc"] <= 1.0
    assert isinstance(result.model.stages[-1], BatchFormerHead)
    with pytest.raises(ValueError, match="nhead"):
        BatchFormerMethod(nhead=-1)
