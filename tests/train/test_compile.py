"""``train.compile``: a compiled model trains, and checkpoints keep the plain module's keys (resume works)."""

import math

import pytest
import torch

from regimen.train import fit, load_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # compilation takes minutes on 2 loaded cores


def test_compile_trains_with_finite_loss_and_plain_checkpoint_keys(tiny_recipe, tmp_path):
    recipe = dict(tiny_recipe, train=dict(tiny_recipe["train"], compile=True, epochs=2, max_steps_per_epoch=3))
    result = fit(recipe, out_dir=tmp_path / "run", stop_epoch=1)
    assert math.isfinite(result.history[0]["train_loss"])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert not any("_orig_mod" in key for key in state["model"])
    assert set(state["model"]) == set(result.model.state_dict())
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    assert [h["epoch"] for h in resumed.history] == [1, 2] and math.isfinite(resumed.history[-1]["train_loss"])
    eager = fit(dict(recipe, train=dict(recipe["train"], compile=False)))
    assert resumed.summary["final_test_acc"] == pytest.approx(eager.summary["final_test_acc"], abs=0.05)
    assert isinstance(result.model, torch.nn.Module) and not hasattr(result.model, "_orig_mod")
