"""Regime adaptation: epochs and epoch milestones scale by B / B_small; the trainer runs the adapted epochs and the
schedule's fractional milestones follow."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.batch
from regimen.batch import RegimeAdaptationMethod, adapt_regime
from regimen.method import Context


def test_adapt_regime_scales_epochs_and_epoch_milestones():
    regime = adapt_regime(10, batch_size=1024, base_batch_size=128, milestones=[3, 6], milestone_unit="epochs")
    assert regime.epochs == 80 and regime.milestones == [24.0, 48.0] and regime.factor == 8.0
    capped = adapt_regime(10, batch_size=1024, base_batch_size=128, max_factor=2.0)
    assert capped.epochs == 20
    assert adapt_regime(3, batch_size=192, base_batch_size=128).epochs == 5  # ceil(4.5)


def test_adapt_regime_on_a_recipe_dict_leaves_input_and_fractions_alone():
    recipe = {"train": {"epochs": 2, "batch_size": 256, "accumulation": 2},
              "schedule": {"name": "step", "milestones": [0.5, 0.75]}}
    adapted = adapt_regime(recipe, base_batch_size=128)
    assert adapted["train"]["epochs"] == 8  # global batch 512 -> factor 4
    assert adapted["schedule"]["milestones"] == [0.5, 0.75]  # fractions of training are scale-free
    assert recipe["train"]["epochs"] == 2
    with pytest.raises(ValueError, match="fractions"):
        adapt_regime(recipe, base_batch_size=128, milestone_unit="epochs")
    with pytest.raises(ValueError, match="batch_size"):
        adapt_regime(5)
    with pytest.raises(ValueError, match="base_batch_size"):
        adapt_regime(5, batch_size=128, base_batch_size=0)


def test_method_sets_the_epochs_of_the_run_in_setup():
    model = nn.Linear(2, 2)
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, num_classes=2,
                  per_device_batch=256, epochs=3)
    RegimeAdaptationMethod(base_batch_size=128).setup(ctx)
    assert ctx.run.epochs == 6
    assert ctx.log["regime_adaptation/factor"] == 2.0 and ctx.log["regime_adaptation/epochs"] == 6.0
    capped = Context(model, per_device_batch=1024, epochs=3)
    RegimeAdaptationMethod(base_batch_size=128, max_factor=2.5).setup(capped)
    assert capped.run.epochs == 8  # ceil(3 x 2.5)


def test_trainer_runs_the_adapted_number_of_epochs(tiny_recipe):
    from regimen.train import fit
    from regimen.train.recipe import parse_recipe

    raw = dict(tiny_recipe, methods=[{"name": "lr_scaling", "base_batch_size": 32},
                                     {"name": "regime_adaptation", "base_batch_size": 32}])
    raw["train"] = dict(raw["train"], epochs=1, batch_size=64, max_steps_per_epoch=2)
    result = fit(parse_recipe(raw), quiet=True)
    assert len(result.history) == 2
    assert result.history[0]["regime_adaptation/factor"] == 2.0  # logged in setup: in the first epoch's row
    assert result.history[0]["lr_scaling/lr"] == pytest.approx(0.1)  # 0.05 x 64 / 32, SGD -> linear


def test_step_milestones_land_at_the_same_fractions_of_the_adapted_run(tiny_recipe):
    """Epochs x2 (batch 64 against 32): a step milestone at 0.6 of training drops the LR in epoch 3 of 4, as it
    drops it in epoch 2 of 2 without adaptation: the same fraction of each run, no rescaling needed."""
    from regimen.train import fit
    from regimen.train.recipe import parse_recipe

    raw = dict(tiny_recipe, schedule={"name": "step", "milestones": [0.6], "gamma": 0.1})
    raw["train"] = dict(raw["train"], epochs=2, batch_size=64, max_steps_per_epoch=3)
    plain = fit(parse_recipe(raw), quiet=True).history
    adapted = fit(parse_recipe(dict(raw, methods=[{"name": "regime_adaptation", "base_batch_size": 32}])),
                  quiet=True).history
    assert [r["lr_factor"] for r in plain] == pytest.approx([1.0, 0.1])
    assert [r["lr_factor"] for r in adapted] == pytest.approx([1.0, 1.0, 0.1, 0.1])
    for history in (plain, adapted):  # the factor at the end of every epoch is the schedule at that fraction
        for record in history:
            fraction = record["epoch"] / len(history)
            assert record["lr_factor"] == pytest.approx(0.1 if fraction >= 0.6 else 1.0)
            assert record["lr"] == pytest.approx(0.05 * record["lr_factor"])


def test_old_method_name_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="RegimeAdaptationMethod"):
        assert regimen.batch.RegimeAdaptation is RegimeAdaptationMethod
