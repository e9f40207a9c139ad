"""The Composer-parity recipe of issue 19: SAM + SWA + CutOut + BlurPool + selective backprop train together, are
reproducible, and a run stopped inside an epoch resumes bit-identically; SAM composes with multi-sample dropout and the
Z-loss."""

import copy

import pytest
import torch

from regimen.train import fit, load_checkpoint
from tests.helpers import InterruptAtStep

BASE = {
    "name": "composer", "seed": 3,
    "data": {"name": "digits", "val_fraction": 0.1},
    "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 6, "threads": 1, "checkpoint_every_steps": 4},
    "methods": [
        {"name": "blurpool", "min_channels": 8},
        {"name": "cutout", "length": 0.5},
        {"name": "selective_backprop", "keep": 0.5, "start": 0.0, "end": 1.0, "interrupt": 3},
        {"name": "sam", "rho": 0.05},
        {"name": "swa", "start": 0.3, "swa_lr": 0.02, "bn_batches": 4},
    ],
}


def _same(a, b):
    want, got = a.model.state_dict(), b.model.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_sam_swa_cutout_blurpool_selective_backprop_train_reproducibly_and_resume_bit_identically(tmp_path):
    recipe = copy.deepcopy(BASE)
    recipe["methods"].append({"name": "_test_interrupt_at_step", "step": 9})
    InterruptAtStep.armed = False
    reference = fit(recipe, out_dir=tmp_path / "ref")
    assert reference.history[-1]["swa/n_averaged"] == 3 and reference.summary["exported_after_training"]
    assert torch.isfinite(torch.tensor(reference.history[-1]["train_loss"]))
    InterruptAtStep.armed = True
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["position"] is not None and state["epoch"] == 1  # stopped inside the second epoch
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    _same(reference, resumed)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]
    again = fit(recipe)  # reproducible: the same seed gives the same weights
    _same(reference, again)


def test_sam_composes_with_multi_sample_dropout_and_the_z_loss():
    recipe = copy.deepcopy(BASE)
    recipe["train"].update(epochs=1, checkpoint_every_steps=None)
    recipe["methods"] = [{"name": "sam", "rho": 0.05}, {"name": "multi_sample_dropout", "num_samples": 2, "p": 0.2},
                         {"name": "z_loss"}]
    result = fit(recipe)
    assert torch.isfinite(torch.tensor(result.history[-1]["train_loss"]))
    assert "sam/perturbed_loss" in result.history[-1]
