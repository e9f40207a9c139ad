"""``regimen adapt``: a clean iid stream reproduces the run's own test accuracy (the source model, an independent
measurement), Tent at batch 1 updates once per image, the corruptions against their formulas, the checkpoint left
unchanged, and bad input refused in one line naming the flag."""

from __future__ import annotations

import json
import math

import pytest
import torch

from regimen.commands.adapt import _corrupt
from tests.cli.helpers import run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from regimen.train import fit

    out = tmp_path_factory.mktemp("adapt") / "run"
    recipe = {"name": "adapt-tiny", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "schedule": {"name": "cosine"},
              "train": {"epochs": 1, "batch_size": 32, "threads": 1}}
    fit(recipe, out_dir=out)
    return out


def test_clean_iid_stream_reproduces_the_runs_test_accuracy(capsys, run_dir):
    before = (run_dir / "checkpoint.pt").read_bytes()
    code, out, err = run_cli(capsys, "adapt", "--checkpoint", str(run_dir / "checkpoint.pt"), "--method", "sar",
                             "--corruption", "none", "--out", str(run_dir / "clean"))
    assert code == 0, err
    result = json.loads((run_dir / "clean" / "adapt.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["source_accuracy"] == pytest.approx(summary["final_test_acc"], abs=1e-9)
    assert result["method"] == "sar" and result["samples"] == round(result["samples"])
    assert "| sar |" in (run_dir / "clean" / "adapt.md").read_text() and "accuracy" in out
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_tent_at_batch_one_updates_once_per_image(capsys, run_dir):
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", str(run_dir / "checkpoint.pt"), "--method", "tent",
                           "--corruption", "contrast", "--severity", "2", "--stream", "batch1", "--samples", "12",
                           "--lr", "0.01", "--out", str(run_dir / "tent"), "--quiet")
    assert code == 0, err
    result = json.loads((run_dir / "tent" / "adapt.json").read_text())
    assert (result["batch_size"], result["samples"], result["updates"], result["lr"]) == (1, 12, 12, 0.01)
    assert result["gain"] == pytest.approx(result["adapted_accuracy"] - result["source_accuracy"])
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", str(run_dir / "checkpoint.pt"), "--method", "tent",
                           "--stream", "batch1", "--samples", "4", "--out", str(run_dir / "tent"))
    assert code == 1 and "--overwrite" in err


@pytest.mark.parametrize("flags, named", [(["--severity", "6"], "--severity"), (["--batch-size", "0"], "--batch-size"),
                                          (["--lr", "-1"], "--lr"), (["--samples", "0"], "--samples")])
def test_bad_flags_are_refused_naming_them(capsys, tmp_path, flags, named):
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", str(tmp_path / "missing.pt"), *flags, "--out",
                           str(tmp_path / "o"))
    assert code == 1 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_model_without_norm_layers_is_refused(capsys, tmp_path):
    from regimen.train import fit

    fit({"name": "mlp", "seed": 0, "data": {"name": "digits"}, "model": {"name": "mlp", "options": {"hidden": [8]}},
         "train": {"epochs": 1, "batch_size": 64, "threads": 1}}, out_dir=tmp_path / "run")
    code, _, err = run_cli(capsys, "adapt", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--out",
                           str(tmp_path / "o"))
    assert code == 1 and "norm" in err
    assert not (tmp_path / "o").exists()


def test_corruptions_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 12, generator=g)
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(_corrupt(x, "contrast", 3, g), (m + 0.1 * (x - m)).clamp(0, 1))
    flat = torch.full((1, 2, 10, 10), 0.3)
    torch.testing.assert_close(_corrupt(flat, "gaussian_blur", 5, g), flat)  # a normalised kernel keeps a constant
    # blur of a single bright pixel (away from the border) is the separable Gaussian by hand
    dot = torch.zeros(1, 1, 15, 15)
    dot[0, 0, 7, 7] = 1.0
    w = torch.tensor([math.exp(-(t * t) / (2 * 1.5 ** 2)) for t in range(-4, 5)])
    w = w / w.sum()
    blurred = _corrupt(dot, "gaussian_blur", 2, g)
    torch.testing.assert_close(blurred[0, 0, 3:12, 3:12], torch.outer(w, w))
    noisy = _corrupt(x, "gaussian_noise", 5, torch.Generator().manual_seed(1))
    expected = (x + 1.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    torch.testing.assert_close(noisy, expected)
    assert _corrupt(x, "none", 3, g) is x
