"""Splitting blocks into modules: exact balance against brute force, and clear errors on bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from regimen.local import LocalLearning, balanced_split_points, block_costs, resolve_stages, split_points_to_ranges
from regimen.models import resnet


def _brute_force(costs, k, min_last=1):
    n = len(costs)
    best = None
    for points in itertools.combinations(range(1, n), k - 1):
        if n - (points[-1] if points else 0) < min_last:
            continue
        bounds = [0, *points, n]
        worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        if best is None or worst < best:
            best = worst
    return best


@pytest.mark.parametrize("seed", range(6))
def test_balanced_split_minimises_the_largest_module_like_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(3, 9, (1,), generator=g))
    costs = [float(c) for c in torch.randint(1, 50, (n,), generator=g)]
    for k in range(1, n + 1):
        for min_last in (1, 2):
            if k - 1 + min_last > n:
                continue
            points = balanced_split_points(costs, k, min_last)
            assert len(points) == k - 1
            bounds = [0, *points, n]
            assert n - bounds[-2] >= min_last
            worst = max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
            assert worst == pytest.approx(_brute_force(costs, k, min_last))


def test_params_balance_counts_parameters_and_the_head_joins_the_last_block():
    model = resnet(widths=(4, 8), depths=(1, 1))
    costs = block_costs(list(model.stages), "params")
    expected = [sum(p.numel() for p in s.parameters()) for s in model.stages[:-1]]
    expected[-1] += sum(p.numel() for p in model.stages[-1].parameters())
    assert costs == expected


def test_activation_balance_moves_cuts_towards_the_wide_early_blocks():
    model = resnet(widths=(8, 16, 32), depths=(2, 2, 2))
    by_params = LocalLearning(model, num_modules=3, balance="params", input_shape=(1, 16, 16))
    by_acts = LocalLearning(model, num_modules=3, balance="activations", input_shape=(1, 16, 16))
    assert by_acts.split_points[0] < by_params.split_points[0]
    assert model.training  # shape inference restored the training flags


def test_split_points_define_the_module_ranges():
    assert split_points_to_ranges([2, 4], 6) == [(0, 2), (2, 4), (4, 6)]
    assert split_points_to_ranges([], 3) == [(0, 3)]


class _NoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.a(x))


def test_bad_input_gives_clear_errors():
    model = resnet(widths=(4, 8), depths=(1, 1))  # 3 blocks before the head
    with pytest.raises(ValueError, match="larger than the number of blocks"):
        LocalLearning(model, num_modules=4, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="aux must be one of"):
        LocalLearning(model, num_modules=2, aux="hebbian", input_shape=(1, 8, 8))
    with pytest.raises(TypeError, match=r"stages\[1\] must be an nn.Module"):
        LocalLearning([nn.Linear(2, 2), "relu", nn.Linear(2, 2)], num_modules=1)
    with pytest.raises(ValueError, match="has no `stages`"):
        LocalLearning(_NoStages(), num_modules=2, input_shape=(1, 2, 2))
    with pytest.raises(ValueError, match="strictly increasing"):
        LocalLearning(model, split_points=[2, 1], num_modules=None, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="must lie in"):
        LocalLearning(model, split_points=[3], num_modules=None, input_shape=(1, 8, 8))  # head alone
    with pytest.raises(ValueError, match="disagrees"):
        LocalLearning(model, split_points=[1], num_modules=3, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        LocalLearning(model, num_modules=2)
    with pytest.raises(ValueError, match="num_modules must be >= 1"):
        LocalLearning(model, num_modules=0, input_shape=(1, 8, 8))
    with pytest.raises(TypeError, match="num_modules must be an int"):
        LocalLearning(model, num_modules=2.0, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="balance must be one of"):
        LocalLearning(model, num_modules=2, balance="flops", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="example_input"):
        block_costs(list(model.stages), "activations")
    with pytest.raises(TypeError, match="stages must be"):
        resolve_stages(42)
    with pytest.raises(ValueError, match="at least one block and a head"):
        resolve_stages([nn.Linear(2, 2)])


def test_a_model_without_stages_splits_at_given_points_over_its_children():
    model = _NoStages()
    wrapper = LocalLearning(model, split_points=[], num_modules=None, input_shape=(1, 2, 2))
    assert wrapper.num_modules == 1
    x = torch.randn(5, 1, 2, 2)
    assert torch.equal(wrapper(x), model(x))


def test_example_inputs_drive_shapes_and_the_old_keyword_still_works_with_a_warning():
    model = resnet(widths=(8, 16, 32), depths=(2, 2, 2))
    x = torch.zeros(2, 1, 16, 16)
    expected = block_costs(list(model.stages), "activations", example_inputs=x)
    with pytest.warns(DeprecationWarning, match="example_inputs"):
        assert block_costs(list(model.stages), "activations", example_input=x) == expected
    new = LocalLearning(model, num_modules=3, balance="activations", example_inputs=x)
    assert new.split_points == LocalLearning(model, num_modules=3, balance="activations", input_shape=(1, 16, 16)
                                             ).split_points
    with pytest.warns(DeprecationWarning, match="example_inputs"):
        old = LocalLearning(model, num_modules=3, balance="activations", example_input=x)
    assert old.split_points == new.split_points
    with pytest.raises(TypeError, match="both"):
        LocalLearning(model, num_modules=3, example_input=x, example_inputs=x)
