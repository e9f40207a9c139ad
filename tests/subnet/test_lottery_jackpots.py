"""Lottery Jackpots: the short-restriction swap against an explicit loop, the STE gradient by hand, the magnitude
initialisation, bad input leaving the model and optimizer unchanged, and the Method on a tiny run."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from regimen.method import Context
from regimen.subnet import (
    JackpotMask,
    LotteryJackpotsMethod,
    apply_lottery_jackpots,
    export_lottery_jackpots,
    jackpot_init_scores,
    jackpot_mask_update,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3))


def _reference_update(scores, mask, rate=1.0):
    s, m = scores.reshape(-1).tolist(), mask.reshape(-1).tolist()
    prune_num = sum(1 for k in m if not k)
    theta = sorted(s)[prune_num - 1]
    revive = [i for i in range(len(s)) if not m[i] and s[i] > theta]
    drop = [i for i in range(len(s)) if m[i] and s[i] <= theta]
    out = list(m)
    if revive and len(revive) == len(drop):
        n = math.ceil(len(revive) * rate)
        for i in sorted(revive, key=lambda i: -s[i])[:n]:
            out[i] = True
        for i in sorted(drop, key=lambda i: s[i])[:n]:
            out[i] = False
    return torch.tensor(out).reshape(mask.shape)


@pytest.mark.parametrize("seed", range(6))
def test_mask_update_matches_the_explicit_swap_rule(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(5, 7, generator=g) > 0.4
    scores = jackpot_init_scores(mask) + 0.02 * torch.randn(5, 7, generator=g)
    new = jackpot_mask_update(scores, mask)
    assert torch.equal(new, _reference_update(scores, mask))
    assert int(new.sum()) == int(mask.sum())  # the sparsity never changes
    half = jackpot_mask_update(scores, mask, rate=0.5)
    assert torch.equal(half, _reference_update(scores, mask, 0.5))


def test_unequal_candidate_sets_leave_the_mask_unchanged():
    mask = torch.tensor([True, True, False, False])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.2])  # ties at theta: revive {} vs drop {0, 1}
    assert torch.equal(jackpot_mask_update(scores, mask), mask)


def test_init_scores_encode_the_magnitude_mask():
    mask = torch.tensor([[True, False], [False, True]])
    assert torch.equal(jackpot_init_scores(mask), torch.tensor([[1.0, 0.99], [0.99, 1.0]]))


def test_ste_gradient_is_masked_product_gradient_times_weight():
    w = torch.randn(4, 5)
    mask = torch.rand(4, 5) > 0.5
    layer = JackpotMask(mask)
    x = torch.randn(3, 5)
    (x @ layer(w).T).pow(2).sum().backward()
    eff = (w * mask).requires_grad_(True)
    (x @ eff.T).pow(2).sum().backward()
    assert torch.allclose(layer.scores.grad, eff.grad * w)


def test_apply_uses_one_global_magnitude_threshold_and_freezes_weights():
    model = _net()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    names = apply_lottery_jackpots(model, 0.5, optimizer=optimizer)
    assert names == ["0", "2"]  # the classifier stays dense
    weights = torch.cat([before["0.weight"].abs().reshape(-1), before["2.weight"].abs().reshape(-1)])
    threshold = weights.sort().values[int(0.5 * weights.numel()) - 1]
    for name in names:
        mask = model.get_submodule(name).parametrizations.weight[0].mask
        assert torch.equal(mask, before[f"{name}.weight"].abs() > threshold)
    assert len(optimizer.param_groups) == 2
    assert all(not p.requires_grad for n, p in model.named_parameters() if "scores" not in n)
    export_lottery_jackpots(model)
    assert not parametrize.is_parametrized(model[0])
    assert torch.equal(model[0].weight, before["0.weight"] * (before["0.weight"].abs() > threshold))


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity_leaves_model_and_optimizer_unchanged(sparsity):
    model = _net()
    state = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        apply_lottery_jackpots(model, sparsity, optimizer=optimizer)
    assert len(optimizer.param_groups) == 1
    assert not parametrize.is_parametrized(model[0])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.requires_grad for p in model.parameters())


def test_method_searches_masks_without_changing_weights():
    model = _net()
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, num_classes=3)
    method = LotteryJackpotsMethod(sparsity=0.6, score_lr=5.0)
    method.setup(ctx)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(ctx)
    method.on_train_end(ctx)
    for name in ("0", "2"):
        w = model.get_submodule(name).weight
        nonzero = w != 0
        assert torch.equal(w[nonzero], dense[f"{name}.weight"][nonzero])  # kept weights are the dense ones
    total_kept = sum(int((model.get_submodule(n).weight != 0).sum()) for n in ("0", "2"))
    assert total_kept == (72 + 120) - math.floor(0.6 * (72 + 120))
    assert torch.equal(model[4].weight, dense["4.weight"])
