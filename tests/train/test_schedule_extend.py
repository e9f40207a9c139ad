"""Resuming with more ``train.epochs``: the schedule is extended as ``schedule.extend`` says, with a warning that
gives the LR before and after (a silent jump of the LR back up was a trap)."""

import math

import pytest

from regimen.train import fit


def _recipe(tiny_recipe, epochs, extend="stretch"):
    return dict(tiny_recipe, optim={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                schedule={"name": "cosine", "min_lr_ratio": 0.1, "extend": extend},
                train={"epochs": epochs, "batch_size": 64})


def _cosine(q):  # the recipe's factor: 0.1 + 0.9 * (1 + cos(pi q)) / 2
    return 0.1 + 0.9 * (1 + math.cos(math.pi * q)) / 2


@pytest.mark.parametrize("extend, expected", [
    ("stretch", [_cosine(3 / 4), _cosine(1.0)]),   # laid out again over 4 epochs: the LR jumps back up
    ("continue", [0.1, 0.1]),                      # the final LR of the 2-epoch schedule
    ("restart", [_cosine(1 / 2), _cosine(1.0)]),   # the schedule again over the 2 added epochs
])
def test_resume_with_more_epochs_extends_the_schedule_as_asked_and_warns(tiny_recipe, tmp_path, extend, expected):
    first = fit(_recipe(tiny_recipe, 2, extend), out_dir=tmp_path)
    assert first.history[-1]["lr"] == pytest.approx(0.1 * _cosine(1.0))
    with pytest.warns(UserWarning, match=rf"train.epochs changed from 2 to 4 on resume: the LR schedule is extended "
                                         rf"by '{extend}' \(LR factor at epoch 2: 0.1 -> "):
        resumed = fit(_recipe(tiny_recipe, 4, extend), out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert [h["lr"] for h in resumed.history[2:]] == pytest.approx([0.1 * f for f in expected])


def test_resume_with_the_same_epochs_does_not_warn(tiny_recipe, tmp_path, recwarn):
    fit(_recipe(tiny_recipe, 2), out_dir=tmp_path, stop_epoch=1)
    fit(_recipe(tiny_recipe, 2), out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert not [w for w in recwarn if "on resume" in str(w.message)]
