"""Pairs of methods in one recipe: declared conflicts and orders give clear recipe errors; allowed pairs train.

The last test trains ordered pairs of the registered methods (2 epochs of 2 steps each); it found the pairs listed
in the other tests. Every pair grows with the square of the method count (about 1,900 pairs for 44 methods, several
minutes on two cores), so the default suite trains a fixed sample in which every method appears first and second
``PAIR_OFFSETS`` times each, with changing partners; ``REGIMEN_ALL_PAIRS=1`` trains every ordered pair, and
``REGIMEN_PAIR_SEED=N`` draws another sample.
"""

import copy
import itertools
import os
import random

import pytest

from regimen.errors import ConfigurationError
from regimen.method import Method, check_method_order
from regimen.train import RecipeError, fit

BASE = {
    "name": "pair", "seed": 0,
    "data": {"name": "digits", "val_fraction": 0.1},
    "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 2, "threads": 1},
}
PARAMS = {
    "ghost_bn": {"ghost_batch_size": 8}, "drop_path": {"max_rate": 0.1}, "dropblock": {"p": 0.1, "block_size": 3},
    "multi_sample_dropout": {"num_samples": 2, "p": 0.2}, "ema": {"decay": 0.9},
    "high_loss_batches": {"fraction": 0.5, "start_epoch": 0}, "adaptive_batch": {"interval": 1, "max_samples": 8},
    "blurpool": {"min_channels": 8}, "squeeze_excite": {"min_channels": 8, "latent_channels": 4},
    "selective_backprop": {"start": 0.0, "end": 1.0}, "swa": {"start": 0.5, "bn_batches": 2},
    "layer_freezing": {"freeze_start": 0.0}, "sam": {"rho": 0.05},
}


def recipe(*names: str) -> dict:
    r = copy.deepcopy(BASE)
    r["methods"] = [dict(name=name, **PARAMS.get(name, {})) for name in names]
    return r


def _named(name: str, **declared) -> Method:
    return type(f"M_{name}", (Method,), {"name": name, **declared})()


def test_order_and_conflict_declarations_name_the_fix():
    tracer = _named("tracer", before=("surgery",), after=("wrapper",), conflicts=("rival",),
                    constraint_reason="it traces the plain layers")
    check_method_order([_named("wrapper"), tracer, _named("surgery")])  # the allowed order
    with pytest.raises(ValueError, match=r"'tracer' must be listed before 'surgery' \(it traces the plain layers\)"):
        check_method_order([_named("surgery"), tracer])
    with pytest.raises(ValueError, match="'wrapper' must be listed before 'tracer'"):
        check_method_order([tracer, _named("wrapper")])
    with pytest.raises(ValueError, match="'tracer' and 'rival' cannot share a recipe"):
        check_method_order([_named("rival"), tracer])


@pytest.mark.parametrize("first, second", [
    ("weight_std", "hesso"), ("weight_std", "nested_width"), ("nm_sparsity", "hesso"), ("hesso", "trp"),
    ("hesso", "multi_sample_dropout"), ("hesso", "maestro"), ("nested_width", "nm_sparsity"),
    ("cutmix", "z_loss"), ("z_loss", "mixup"), ("z_loss", "logit_z_loss"), ("polarization", "weight_std"),
    ("batchformer", "random_search"), ("squeeze_excite", "ofa"), ("tscnc", "random_search"),
])
def test_pairs_that_failed_inside_training_are_refused_by_the_recipe(first, second):
    with pytest.raises(RecipeError, match="must be listed before|cannot share a recipe"):
        fit(recipe(first, second))


@pytest.mark.parametrize("first, second", [
    ("hesso", "ghost_bn"), ("nested_width", "weight_std"), ("hesso", "nm_sparsity"), ("trp", "hesso"),
    ("multi_sample_dropout", "hesso"), ("nm_sparsity", "adaptive_batch"), ("logit_z_loss", "adaptive_batch"),
    ("nm_sparsity", "ema"), ("ema", "nm_sparsity"), ("ema", "maestro"), ("ema", "local_learning"),
    ("ema", "nested_width"), ("hesso", "drop_path"), ("ghost_bn", "hesso"), ("drop_path", "hesso"),
    ("dropblock", "nested_width"), ("ghost_bn", "nested_width"),
])
def test_pairs_in_their_allowed_order_train(first, second):
    result = fit(recipe(first, second))
    assert len(result.history) == 2


PAIR_OFFSETS = 10


def ordered_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Every ordered pair under ``REGIMEN_ALL_PAIRS=1``; else ``PAIR_OFFSETS`` cyclic offsets drawn with
    ``REGIMEN_PAIR_SEED`` (default 0): pairing ``names[i]`` with ``names[i + offset]`` puts each method first and
    second once per offset, each time beside a different partner."""
    if os.environ.get("REGIMEN_ALL_PAIRS") == "1" or len(names) <= PAIR_OFFSETS + 1:
        return list(itertools.permutations(names, 2))
    rng = random.Random(int(os.environ.get("REGIMEN_PAIR_SEED", "0")))
    offsets = rng.sample(range(1, len(names)), PAIR_OFFSETS)
    return [(names[i], names[(i + offset) % len(names)]) for offset in offsets for i in range(len(names))]


def test_the_pair_sample_puts_every_method_first_and_second_equally_often():
    names = [f"m{i}" for i in range(30)]
    pairs = ordered_pairs(names)
    assert len(pairs) == len(set(pairs)) == PAIR_OFFSETS * len(names)
    assert all(first != second for first, second in pairs)
    for name in names:
        assert sum(first == name for first, _ in pairs) == sum(second == name for _, second in pairs) == PAIR_OFFSETS


@pytest.mark.slow
def test_ordered_pairs_of_methods_train_or_are_refused_by_the_recipe():
    from regimen.method import list_methods

    # test helpers (``_test_*``) are not user methods
    names = [name for name in list_methods() if not name.startswith("_")]
    failures = []
    for first, second in ordered_pairs(names):
        try:
            fit(recipe(first, second))
        except ConfigurationError:
            continue  # refused before training (by the recipe, or by a method's setup), with a message
        except Exception as error:  # noqa: BLE001 - collect every failure, report them together
            failures.append(f"{first} + {second}: {type(error).__name__}: {str(error).splitlines()[0][:160]}")
    assert not failures, "\n".join(failures)
