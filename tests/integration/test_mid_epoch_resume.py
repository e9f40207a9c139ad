"""Mid-epoch checkpoints with methods from every pillar: what a method computes at the start of an epoch (a coreset,
a batch selection, a DropBlock rate) or keeps between steps (EMA, N:M masks, an adaptive batch size) survives a stop
inside an epoch, so the resumed run ends with the same weights as one that never stopped."""

import copy

import pytest
import torch

from regimen.train import fit, load_checkpoint
from tests.helpers import InterruptAtStep

BASE = {
    "name": "mid-epoch", "seed": 1,
    "data": {"name": "digits", "val_fraction": 0.1},
    "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 8, "threads": 1, "checkpoint_every_steps": 3},
}

RECIPES = {
    "every pillar": [
        {"name": "randaugment", "num_ops": 2, "magnitude": 9.0},
        {"name": "cutmix", "alpha": 1.0},
        {"name": "ghost_bn", "ghost_batch_size": 8},
        {"name": "logit_z_loss"},
        {"name": "multi_sample_dropout", "num_samples": 2, "p": 0.2},
        {"name": "drop_path", "max_rate": 0.1},
        {"name": "dropblock", "p": 0.1, "block_size": 3, "ramp": True},
        {"name": "nm_sparsity", "n": 2, "m": 4},
        {"name": "ema", "decay": 0.9},
    ],
    "per-epoch choices": [
        {"name": "aug_subset", "fraction": 0.5},
        {"name": "high_loss_batches", "fraction": 0.5},
        {"name": "adaptive_batch", "interval": 3, "max_batch_size": 64},
    ],
    "nested widths": [{"name": "nested_width", "widths": [0.5, 1.0], "n_random": 1}],
    "maestro": [{"name": "maestro"}],
    "hesso": [{"name": "hesso"}],
}


@pytest.mark.parametrize("methods", list(RECIPES.values()), ids=list(RECIPES))
def test_stopped_inside_an_epoch_resumes_to_the_same_weights(methods, tmp_path):
    recipe = copy.deepcopy(BASE)
    recipe["methods"] = [*methods, {"name": "_test_interrupt_at_step", "step": 11}]
    InterruptAtStep.armed = False
    reference = fit(recipe, out_dir=tmp_path / "ref")
    InterruptAtStep.armed = True
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["position"] is not None and state["epoch"] == 1  # stopped inside the second epoch
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    want, got = reference.model.state_dict(), resumed.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]
