"""Layer-wise sparsity allocations: LAMP scores against the formula by hand and an explicit loop, ERK densities
against the formula by hand (with and without a layer capped at density 1), the global/LAMP selections against an
independent global ranking, and bad input leaving the model unchanged."""

import copy
import math

import pytest
import torch
from torch import nn

from regimen.subnet import allocate_sparsity, apply_allocation, erk_densities, lamp_scores


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 10))


def test_lamp_scores_by_hand():
    # sorted |w| = 1, 2, 3: scores 1/(1+4+9), 4/(4+9), 9/9
    scores = lamp_scores(torch.tensor([3.0, -1.0, 2.0]))
    assert torch.allclose(scores, torch.tensor([1.0, 1 / 14, 4 / 13], dtype=torch.float64))


def test_lamp_scores_match_an_explicit_loop():
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(1))  # continuous: no ties
    flat = w.reshape(-1).double()
    expected = torch.empty_like(flat)
    for i in range(flat.numel()):
        tail = sum(float(v) ** 2 for v in flat if abs(float(v)) >= abs(float(flat[i])))
        expected[i] = float(flat[i]) ** 2 / tail
    scores = lamp_scores(w)
    assert scores.shape == w.shape
    assert torch.allclose(scores.reshape(-1), expected, rtol=1e-12, atol=0)
    assert float(scores.max()) == pytest.approx(1.0)  # the largest entry of a layer scores 1


def test_lamp_scores_of_zero_weights_are_zero_not_nan():
    scores = lamp_scores(torch.zeros(5))
    assert torch.equal(scores, torch.zeros(5, dtype=torch.float64))
    scores = lamp_scores(torch.tensor([0.0, 0.0, 2.0]))
    assert torch.equal(scores, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))


def test_erk_densities_by_hand():
    shapes = {"conv": (8, 4, 3, 3), "fc": (10, 8)}
    raw_conv, raw_fc = (8 + 4 + 3 + 3) / (8 * 4 * 9), (10 + 8) / (10 * 8)
    density = 0.3
    epsilon = density * (288 + 80) / (raw_conv * 288 + raw_fc * 80)
    got = erk_densities(shapes, density)
    assert got["conv"] == pytest.approx(epsilon * raw_conv)
    assert got["fc"] == pytest.approx(epsilon * raw_fc)
    assert got["conv"] * 288 + got["fc"] * 80 == pytest.approx(density * 368)


def test_erk_caps_a_layer_at_density_one_and_solves_again():
    # the 2x2 layer's raw probability (4/4 = 1) times epsilon exceeds 1 at density 0.5: it becomes dense, and the
    # other two share the rest: epsilon' = (0.5 * N - 4) / (raw_a * n_a + raw_b * n_b)
    shapes = {"tiny": (2, 2), "a": (16, 16, 3, 3), "b": (64, 32)}
    n = {"tiny": 4, "a": 2304, "b": 2048}
    raw = {"tiny": 1.0, "a": 38 / 2304, "b": 96 / 2048}
    assert 0.5 * sum(n.values()) / sum(raw[k] * n[k] for k in n) * raw["tiny"] > 1
    epsilon = (0.5 * sum(n.values()) - 4) / (raw["a"] * n["a"] + raw["b"] * n["b"])
    got = erk_densities(shapes, 0.5)
    assert got["tiny"] == 1.0
    assert got["a"] == pytest.approx(epsilon * raw["a"])
    assert got["b"] == pytest.approx(epsilon * raw["b"]) and got["b"] < 1
    assert sum(got[k] * n[k] for k in n) == pytest.approx(0.5 * sum(n.values()))


def test_erk_power_zero_is_uniform_and_density_one_is_dense():
    shapes = {"a": (8, 4, 3, 3), "b": (10, 8)}
    assert all(v == pytest.approx(0.4) for v in erk_densities(shapes, 0.4, power=0.0).values())
    assert erk_densities(shapes, 1.0) == {"a": 1.0, "b": 1.0}


@pytest.mark.parametrize("rule", ["global", "lamp"])
def test_global_selections_match_an_independent_ranking(rule):
    model = _net()
    layers = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    total = sum(w.numel() for w in layers.values())
    sparsity = 0.7
    amounts = allocate_sparsity(model, sparsity, rule)
    # independent: score every weight, rank all of them in one list, remove the k lowest
    score = {"global": lambda w: w.abs().double(), "lamp": lamp_scores}[rule]
    entries = sorted((float(s), name) for name, w in layers.items() for s in score(w).reshape(-1))
    k = math.floor(sparsity * total + 1e-9)
    removed = {name: 0 for name in layers}
    for _, name in entries[:k]:
        removed[name] += 1
    for name, w in layers.items():
        assert amounts[name] * w.numel() == pytest.approx(removed[name])
    masks = apply_allocation(model, amounts)
    assert sum(int((~m).sum()) for m in masks.values()) == k
    for name, m in masks.items():  # inside a layer the smallest |w| go
        w = layers[name]
        kept, dropped = w[m].abs(), w[~m].abs()
        if kept.numel() and dropped.numel():
            assert float(dropped.max()) <= float(kept.min())
        assert torch.equal(model.get_submodule(name).weight[~m], torch.zeros(int((~m).sum())))


def test_lamp_keeps_every_layers_largest_weight():
    model = _net()
    amounts = allocate_sparsity(model, 0.99, "lamp")
    masks = apply_allocation(copy.deepcopy(model), amounts)
    assert all(int(m.sum()) >= 1 for m in masks.values())


def test_uniform_and_erk_amounts():
    model = _net()
    assert set(allocate_sparsity(model, 0.6, "uniform").values()) == {0.6}
    amounts = allocate_sparsity(model, 0.6, "erk")
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    densities = erk_densities(shapes, 0.4)
    assert amounts == pytest.approx({n: 1 - d for n, d in densities.items()})
    kept = sum((1 - amounts[n]) * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.4 * sum(math.prod(s) for s in shapes.values()))


def test_allocate_leaves_the_model_unchanged_and_ignore_works():
    model = _net()
    state = copy.deepcopy(model.state_dict())
    amounts = allocate_sparsity(model, 0.5, "lamp", ignore=["5"])
    assert set(amounts) == {"0", "2"}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_sparsity_is_refused(sparsity):
    with pytest.raises((ValueError, TypeError), match="sparsity"):  # NaN: the argument guard's TypeError
        allocate_sparsity(_net(), sparsity, "lamp")


def test_bad_input_is_refused_naming_the_argument_and_leaves_the_model_unchanged():
    model = _net()
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="rule"):
        allocate_sparsity(model, 0.5, "magnitude")
    with pytest.raises(ValueError, match="ignore"):
        allocate_sparsity(model, 0.5, "lamp", ignore=["nope"])
    with pytest.raises(ValueError, match="conv/linear"):
        allocate_sparsity(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match=r"amounts\['2'\]"):  # the first amount is valid: nothing is applied
        apply_allocation(model, {"0": 0.5, "2": 1.0})
    with pytest.raises(ValueError, match="amounts"):
        apply_allocation(model, {"1": 0.5})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="density"):
        erk_densities({"a": (2, 2)}, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        erk_densities({"a": (2, 0)}, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        erk_densities({}, 0.5)
    with pytest.raises(TypeError, match="weight"):
        lamp_scores(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="weight"):
        lamp_scores(torch.tensor([1.0, float("nan")]))
