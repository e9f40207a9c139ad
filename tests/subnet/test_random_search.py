"""Random node-mask search: uniform masks per group, MAC budgets, seeded determinism, best-of-N, the Method."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.method import Context, get_method
from regimen.subnet import count_macs, random_node_plan, random_search


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))


X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_plan_removes_the_same_fraction_per_group_and_is_seeded():
    model = small_cnn()
    plan = random_node_plan(model, X, torch.Generator().manual_seed(3), sparsity=0.5)
    assert sorted(keep.numel() for keep in plan.values()) == [4, 6]
    again = random_node_plan(model, X, torch.Generator().manual_seed(3), sparsity=0.5)
    assert all(torch.equal(plan[g], keep) for g, keep in zip(plan, again.values()))
    other = random_node_plan(model, X, torch.Generator().manual_seed(4), sparsity=0.5)
    assert any(not torch.equal(a, b) for a, b in zip(plan.values(), other.values()))
    # uniformity: over many draws every channel of the first group is kept about half the time
    counts = torch.zeros(8)
    g = torch.Generator().manual_seed(5)
    for _ in range(60):
        counts[next(iter(random_node_plan(model, X, g, sparsity=0.5).values()))] += 1
    assert torch.all((counts / 60 - 0.5).abs() < 0.25)


def test_plan_meets_a_mac_budget():
    model = small_cnn()
    dense = count_macs(model, X)
    plan = random_node_plan(model, X, torch.Generator().manual_seed(0), macs=0.4 * dense)
    from regimen.subnet import prune_groups

    pruned = copy.deepcopy(model)
    prune_groups(pruned, plan)
    assert count_macs(pruned, X) <= 0.4 * dense


def test_search_keeps_the_best_scored_candidate():
    seen = []

    def score(model):
        value = float(model[0].out_channels) + len(seen) * 0.01  # later candidates score a little higher
        seen.append(value)
        return value

    result = random_search(small_cnn, X, score, torch.Generator().manual_seed(0), candidates=4, sparsity=0.25)
    assert result.scores == seen and result.best == 3 and len(result.widths) == 4
    assert result.model[0].out_channels == 6


def test_bad_input_is_refused_and_the_model_unchanged():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    for kwargs in ({"sparsity": 1.0}, {"sparsity": -0.5}, {}, {"sparsity": 0.5, "macs": 10.0}, {"macs": 0.0}):
        with pytest.raises(ValueError):
            random_node_plan(model, X, g, **kwargs)
    with pytest.raises(ValueError, match="candidates"):
        random_search(small_cnn, X, lambda m: 0.0, g, candidates=0, sparsity=0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="sparsity"):
        get_method("random_search")(sparsity=1.0)


def test_method_prunes_the_best_candidate_in_setup_and_rebinds_the_optimizer():
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = (torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ArrayDataset(images, torch.arange(16) % 10, 10)
    ctx = Context(model, optimizer, F.cross_entropy, num_classes=10, per_device_batch=4, epochs=1, steps_per_epoch=4,
                  train_data=data)
    method = get_method("random_search")(sparsity=0.5, candidates=3, proxy_samples=16)
    method.setup(ctx)
    assert model[0].out_channels == 4 and model[3].out_channels == 6
    assert {id(p) for p in model.parameters()} == {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert ctx.log["random_search/best_loss"] <= ctx.log["random_search/mean_loss"]
    optimizer.zero_grad()
    F.cross_entropy(model(images[:4].float() / 255), torch.arange(4)).backward()
    optimizer.step()
