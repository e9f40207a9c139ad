"""Class-dependent compression: the ranking loss against a loop, false negatives, per-layer masks, the Method."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.errors import ConfigurationError
from regimen.method import Context, get_method
from regimen.subnet import class_false_negatives, class_rank_loss, class_weighted_loss, layer_prune_masks


def _loop_rank(logits, targets, cls):
    def score(row):
        others = [row[j] for j in range(len(row)) if j != cls]
        return float(row[cls]) - float(torch.logsumexp(torch.stack(others), 0))

    scores = [score(logits[i]) for i in range(len(targets))]
    positives = [s for s, y in zip(scores, targets.tolist()) if y == cls]
    negatives = [s for s, y in zip(scores, targets.tolist()) if y != cls]
    if not positives or not negatives:
        return 0.0
    top = max(negatives)
    return sum(min(s - top, 0.0) ** 2 for s in positives) / (len(positives) + 1)


def test_rank_loss_matches_a_loop_and_is_differentiable():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=g, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 2, 2, 1, 0, 3, 2, 1, 0])
    loss = class_rank_loss(logits, targets, 2)
    assert float(loss.detach()) == pytest.approx(_loop_rank(logits.detach(), targets, 2), rel=1e-5)
    loss.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    assert float(class_rank_loss(logits, torch.zeros(12, dtype=torch.long), 2)) == 0.0  # no positives
    weighted = class_weighted_loss(logits, targets, 2, class_weight=3.0, rank_weight=0.5)
    weight = torch.tensor([1.0, 1.0, 3.0, 1.0])
    expected = F.cross_entropy(logits, targets, weight=weight) + 0.5 * class_rank_loss(logits, targets, 2)
    assert float(weighted) == pytest.approx(float(expected), rel=1e-6)


def test_a_class_outside_the_task_is_refused():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"cls must be a class index in \[0, 3\)"):
        class_rank_loss(logits, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="cls"):
        class_weighted_loss(logits, torch.zeros(4, dtype=torch.long), -1)
    model = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="cls"):
        class_false_negatives(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 7)


def test_false_negatives_count_missed_samples_of_the_class():
    model = nn.Linear(4, 3)
    x = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x).argmax(1)
    expected = sum(1 for p, t in zip(pred.tolist(), y.tolist()) if t == 1 and p != 1)
    assert class_false_negatives(model, x, y, 1, batch_size=7) == expected


def test_layer_masks_remove_the_lowest_scores_per_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    reference = {n: p.detach().clone() * 0.5 for n, p in model.named_parameters() if p.dim() > 1}
    masks = layer_prune_masks(model, 0.5, reference=reference)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            continue
        score = (p.detach().abs() - reference[name].abs()).reshape(-1)
        count = int(0.5 * p.numel())
        dropped = set(torch.argsort(score, stable=True)[:count].tolist())
        assert set((~masks[name]).reshape(-1).nonzero().reshape(-1).tolist()) == dropped
    second = layer_prune_masks(model, 0.5, masks, score="magnitude")
    assert int(second["0.weight"].sum()) == 12 and int(second["2.weight"].sum()) == 6
    with pytest.raises(ValueError, match="reference"):
        layer_prune_masks(model, 0.5)
    with pytest.raises(ValueError, match="fraction"):
        layer_prune_masks(model, 1.0, score="magnitude")


def _ctx(model, optimizer, num_classes=3):
    images = (torch.rand(12, 1, 2, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    data = ArrayDataset(images, torch.arange(12) % num_classes, num_classes)
    return Context(model, optimizer, F.cross_entropy, num_classes=num_classes, epochs=3, steps_per_epoch=2,
                   train_data=data, val_data=data), images


def test_method_prunes_guards_and_refuses_a_class_outside_the_task():
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx, images = _ctx(model, optimizer)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigurationError, match="cls"):
        get_method("class_dependent")(cls=3).setup(ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    method = get_method("class_dependent")(cls=1, rounds=2, fraction=0.5, score="magnitude_increase")
    method.setup(ctx)
    ctx.criterion = lambda out, tgt, reduction="mean": method.criterion(out, tgt, F.cross_entropy, ctx, reduction)
    x, y = images.float() / 255, torch.arange(12) % 3
    for epoch in range(3):
        ctx.epoch = epoch
        method.on_epoch_start(ctx)
        for _ in range(2):
            optimizer.zero_grad()
            ctx.criterion(model(x), y).backward()
            optimizer.step()
            method.after_step(ctx)
        method.on_epoch_end(ctx)
    assert method.done == 2
    density = ctx.log["class_dependent/density"]
    assert 0.2 < density < 0.5  # 50 % then 50 % (or 25 % after the guard halves it) of each layer
    weights = dict(model.named_parameters())
    assert all(bool((weights[n].detach()[~m] == 0).all()) for n, m in method.masks.items())
    assert "class_dependent/false_negatives" in ctx.log
    fresh = get_method("class_dependent")(cls=1)
    fresh.load_state_dict(method.state_dict())
    assert fresh.done == 2 and set(fresh.reference) == set(method.reference) == set(method.masks)
