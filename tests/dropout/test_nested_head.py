"""Nested dropout on the penultimate features (Chen et al. 2022): the per-batch half-Gaussian sampler, prefix
logits, best-k selection, surgery and the recipe method."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.dropout import (
    NestedLinear,
    apply_nested_dropout_head,
    half_gaussian_nested_index,
    nested_dropout,
    nested_prefix_logits,
    select_nested_k,
)
from regimen.models import ClassifierHead


def test_half_gaussian_index_frequencies_match_the_formula():
    units, sigma, draws = 12, 4.0, 20000
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(units + 1)
    for _ in range(draws):
        counts[half_gaussian_nested_index(units, sigma, generator=generator)] += 1
    weights = [math.exp(-((k - 0.0) / sigma) ** 2) for k in range(1, units + 1)]  # the paper's GaussianDist
    expected = torch.tensor([w / sum(weights) for w in weights])
    assert counts[0] == 0
    assert (counts[1:] / draws - expected).abs().max() < 0.012


def test_half_gaussian_sampler_keeps_one_prefix_per_batch_without_rescaling():
    x = torch.randn(16, 32) + 5
    y = nested_dropout(x, dim=1, sampler="half_gaussian", sigma=8.0, generator=torch.Generator().manual_seed(1))
    kept = (y != 0).sum(dim=1)
    assert (kept == kept[0]).all() and 1 <= int(kept[0]) <= 32
    k = int(kept[0])
    assert torch.equal(y[:, :k], x[:, :k]) and (y[:, k:] == 0).all()
    with pytest.raises(ValueError, match="sigma"):
        nested_dropout(x, sampler="half_gaussian", sigma=0.0)
    with pytest.raises(ValueError, match="sampler"):
        nested_dropout(x, sampler="gaussian")


def test_prefix_logits_equal_a_loop_over_k():
    torch.manual_seed(0)
    h, weight, bias = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3)
    logits = nested_prefix_logits(h, weight, bias)
    for k in range(1, 8):
        mask = torch.zeros(7)
        mask[:k] = 1
        torch.testing.assert_close(logits[:, k - 1], F.linear(h * mask, weight, bias))


class _Data:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def gather(self, indices, device="cpu"):
        return self.x[indices], self.y[indices]


def test_select_nested_k_picks_the_first_best_prefix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 4))
    layer = apply_nested_dropout_head(model, sigma=3.0, module="2")
    data = _Data(torch.randn(300, 6), torch.randint(0, 4, (300,)))
    k, accuracy = select_nested_k(model, data, batch_size=128)
    features = torch.relu(model[0](data.x))
    scores = []
    for j in range(1, 10):  # explicit loop: accuracy of every prefix
        mask = (torch.arange(9) < j).float()
        scores.append(float((F.linear(features * mask, layer.weight, layer.bias).argmax(1) == data.y).double().mean()))
    assert k == 1 + scores.index(max(scores)) and accuracy == pytest.approx(max(scores))
    assert layer.eval_k == k
    model.eval()
    mask = (torch.arange(9) < k).float()
    torch.testing.assert_close(model(data.x), F.linear(features * mask, layer.weight, layer.bias))


def test_surgery_moves_the_parameters_and_keeps_state_dict_keys():
    head = ClassifierHead(8, 3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), head)
    keys, weight = list(model.state_dict()), head.fc.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layer = apply_nested_dropout_head(model, module="1", optimizer=optimizer)
    assert isinstance(model[1].fc, NestedLinear) and layer.weight is weight
    assert list(model.state_dict()) == keys


def test_bad_module_is_refused_and_the_model_left_unchanged():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    before = repr(model)
    with pytest.raises(ValueError, match="module"):
        apply_nested_dropout_head(model, module="1")
    with pytest.raises(ValueError, match="sigma"):
        apply_nested_dropout_head(model, sigma=-1.0, module="0")
    assert repr(model) == before


def test_recipe_method_trains_and_evaluates_at_the_chosen_k():
    from regimen.train import fit

    recipe = {"seed": 0, "data": {"name": "digits", "options": {"label_noise": 0.2}},
              "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05},
              "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1},
              "methods": [{"name": "nested_dropout", "sigma": 4.0}]}
    result = fit(recipe)
    layer = next(m for m in result.model.modules() if isinstance(m, NestedLinear))
    assert result.history[-1]["nested_dropout/k"] == layer.eval_k
    assert 1 <= layer.eval_k <= 16
