"""Layer freezing: Composer's linear schedule by hand; frozen layers stop changing (weight decay and momentum too)
while the optimizer keeps its groups and the schedule; a resumed run re-freezes; a schedule freezing the head is
refused."""

import pytest
import torch

from regimen.batch import LayerFreezingMethod, freezable_layers, frozen_layer_count
from regimen.errors import ConfigurationError
from regimen.train import fit, load_checkpoint


def test_frozen_count_is_the_linear_schedule_by_hand():
    # L = 4, start 0.5, level 1: t = 0.5 -> 0, 0.75 -> floor(4 * 0.5) = 2, 1.0 -> 4
    assert [frozen_layer_count(t, 4, 0.5, 1.0) for t in (0.25, 0.5, 0.75, 1.0)] == [0, 0, 2, 4]
    assert frozen_layer_count(1.0, 5, 0.0, 0.5) == 2  # floor(5 * 0.5)


@pytest.mark.parametrize("kwargs, match", [({"freeze_level": 1.5}, "would freeze the head"),
                                           ({"freeze_level": 0.0}, "freeze_level"),
                                           ({"freeze_start": 1.0}, "freeze_start")])
def test_bad_schedules_are_refused_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerFreezingMethod(**kwargs)
    with pytest.raises(ConfigurationError, match=match.split()[0]):
        fit({"data": {"name": "digits"}, "methods": [dict(name="layer_freezing", **kwargs)]})


def test_the_head_is_never_among_the_freezable_layers():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert freezable_layers(model) == [model[0]]
    with pytest.raises(ValueError, match="at least one"):
        freezable_layers(torch.nn.Sequential(torch.nn.Linear(3, 2)))


def test_frozen_layers_stop_changing_and_a_resume_refreezes(tmp_path):
    recipe = {"name": "lf", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
              "schedule": {"name": "cosine"},
              "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1},
              "methods": [{"name": "layer_freezing", "freeze_start": 0.0, "freeze_level": 1.0}]}
    fit(recipe, out_dir=tmp_path, stop_epoch=1)  # after epoch 1 of 2: floor(3 * 0.5) = 1 layer (the stem) frozen
    after_first = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after_first["methods"][0] == {"frozen": 1}
    result = fit(recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    final = result.model.state_dict()
    stem = [k for k in final if k.startswith("stages.0.")]
    later = [k for k in final if k.startswith("stages.1.") and k.endswith("weight")]
    assert stem and all(torch.equal(final[k], after_first["model"][k]) for k in stem)  # BN statistics too
    assert any(not torch.equal(final[k], after_first["model"][k]) for k in later)
    assert result.history[-1]["lr"] == 0.0 and result.history[-1]["layer_freezing/frozen_layers"] == 3
