"""muP on the GPT: the per-parameter rules against the paper's table by hand, identity at the base width, and
refusals."""

import copy
import math

import pytest
import torch

from regimen.batch import MuPMethod, apply_mup, mup_hidden_parameters
from regimen.method import Context
from regimen.models import GPT


def _gpt(dim):
    torch.manual_seed(0)
    return GPT(vocab_size=30, block_size=8, dim=dim, depth=2, heads=4)


def test_rules_at_four_times_the_base_width():
    model = _gpt(64)
    before = copy.deepcopy(model)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                                   {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=1e-2)
    assert apply_mup(model, 16, optimizer=optimizer) == 4.0
    hidden = {id(p) for p in mup_hidden_parameters(model)}
    assert len(hidden) == 2 * 4  # qkv, proj, fc1, fc2 of two blocks
    for group in optimizer.param_groups:
        is_hidden = {id(p) in hidden for p in group["params"]}
        assert len(is_hidden) == 1
        if is_hidden.pop():
            assert group["lr"] == pytest.approx(1e-2 / 4) and group["weight_decay"] == pytest.approx(0.4)
        else:
            assert group["lr"] == 1e-2
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    attn, old = model.stages[1].attn, before.stages[1].attn
    assert attn.scale == pytest.approx(math.sqrt(16 // 4) / 16)
    assert torch.equal(attn.qkv.weight[:64], torch.zeros(64, 64))  # zero query
    torch.testing.assert_close(attn.qkv.weight[64:], old.qkv.weight[64:] / 2)  # std / sqrt(m)
    torch.testing.assert_close(model.stages[1].mlp.fc2.weight, before.stages[1].mlp.fc2.weight / 2)
    assert torch.equal(model.stages[0].tok.weight, before.stages[0].tok.weight)  # vector-like: unchanged
    assert model.head.logit_scale == pytest.approx(0.25)
    ids = torch.randint(0, 30, (2, 8))
    torch.testing.assert_close(model(ids), model(ids, return_hidden=True) @ model.output_weight.T)


def test_at_the_base_width_mup_is_the_standard_model_with_zero_queries():
    model, reference = _gpt(32), _gpt(32)
    apply_mup(model, 32)
    for block in reference.stages[1:-1]:
        with torch.no_grad():
            block.attn.qkv.weight[:32].zero_()
    ids = torch.randint(0, 30, (2, 8))
    torch.testing.assert_close(model(ids), reference(ids))


def test_refusals():
    with pytest.raises(ValueError, match="Adam"):
        apply_mup(_gpt(32), 16, optimizer=torch.optim.SGD(_gpt(32).parameters(), lr=0.1))
    with pytest.raises(ValueError, match="GPT"):
        MuPMethod().setup(Context(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="divisible by heads"):
        apply_mup(_gpt(32), 18)
