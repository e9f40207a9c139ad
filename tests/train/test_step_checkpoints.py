"""Mid-epoch checkpoints (``train.checkpoint_every_steps``): a run stopped at any step, in-process or by a real
SIGKILL of a real process, resumes from its last checkpoint to bit-identical weights and a metrics log with every
epoch exactly once."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from regimen.train import fit, load_checkpoint
from tests.helpers import InterruptAtStep


def _recipe(tiny_recipe, methods=()):
    recipe = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [16], "head_dropout": 0.3}})
    recipe["train"] = dict(recipe["train"], epochs=3, batch_size=64, checkpoint_every_steps=4)
    recipe["methods"] = [{"name": "ema", "decay": 0.9}, *methods]
    return recipe


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("stop_step", [5, 22, 24])  # inside epoch 1, inside epoch 2 (digits: 22 steps an epoch)
def test_interrupted_mid_epoch_resumes_bit_identically(tiny_recipe, tmp_path, stop_step):
    recipe = _recipe(tiny_recipe, [{"name": "_test_interrupt_at_step", "step": stop_step}])
    InterruptAtStep.armed = False
    reference = fit(recipe, out_dir=tmp_path / "ref")
    InterruptAtStep.armed = True
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path / "run")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == (stop_step - 1) // 4 * 4 or state["position"] is None
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())
    ref_rows, rows = _rows(tmp_path / "ref"), _rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "train_acc", "val_acc", "test_acc", "lr", "step"):
        assert [r[key] for r in rows] == [r[key] for r in ref_rows], key
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]  # EMA resumed too


def test_mid_epoch_checkpoint_records_its_position(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, [{"name": "_test_interrupt_at_step", "step": 10}])
    InterruptAtStep.armed = True
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 0 and state["step"] == 8
    assert state["position"]["step_in_epoch"] == 8 and state["position"]["selected"] is None
    assert state["position"]["totals"][1].item() == 8 * 64  # samples of the epoch so far
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def _train_command(recipe_path: Path, out: Path, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "regimen", "train", "--quiet", "--out", str(out)]
    if resume:
        return command + ["--resume", str(out / "checkpoint.pt")]
    return command + ["--recipe", str(recipe_path)]


_RECIPE = """
name = "kill"
seed = 3
[data]
name = "digits"
[model]
name = "mlp"
options = { hidden = [256, 256], head_dropout = 0.2 }
[optim]
name = "sgd"
lr = 0.05
[train]
epochs = 4
batch_size = 32
threads = 1
checkpoint_every_steps = 5
[[methods]]
name = "ema"
decay = 0.95
"""


def test_sigkill_at_random_moments_then_resume_gives_identical_weights_and_log(tmp_path):
    """A real process killed with SIGKILL at random moments (inside epochs, between them, while writing a
    checkpoint), resumed each time from what is on disk, ends with the weights and log of an uninterrupted run."""
    recipe_path = tmp_path / "kill.toml"
    recipe_path.write_text(_RECIPE)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    subprocess.run(_train_command(recipe_path, tmp_path / "ref", resume=False), check=True, env=env,
                   capture_output=True)
    reference = load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    rng = random.Random(int(os.environ.get("REGIMEN_KILL_SEED", "0")))
    mid_epoch_resumes = 0
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        resume = False
        for launch in range(3):  # two kills, then a launch that runs to the end
            process = subprocess.Popen(_train_command(recipe_path, out, resume), env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE)
            if launch < 2 and _wait_for_new_checkpoint(out / "checkpoint.pt", process):
                time.sleep(rng.uniform(0.0, 0.3))  # anywhere: inside a step, between epochs, inside torch.save
                process.send_signal(signal.SIGKILL)
            process.wait()
            if process.returncode == 0:
                break
            assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
            resume = True
            mid_epoch_resumes += load_checkpoint(out / "checkpoint.pt")["position"] is not None
        final = load_checkpoint(out / "checkpoint.pt")
        assert _same_weights(final["model"], reference["model"]), f"attempt {attempt}"
        assert _same_weights(final["methods"][0]["module"], reference["methods"][0]["module"])  # EMA copy
        rows, ref_rows = _rows(out), _rows(tmp_path / "ref")
        assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
        assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]
        assert json.loads((out / "summary.json").read_text())["final_test_acc"] == \
            json.loads((tmp_path / "ref" / "summary.json").read_text())["final_test_acc"]
    assert mid_epoch_resumes >= 1  # the kills did interrupt epochs, not only finished runs


def _wait_for_new_checkpoint(path: Path, process: subprocess.Popen) -> bool:
    """Wait until ``process`` has written ``path`` (a new checkpoint); False if it ended first."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    while process.poll() is None:
        if path.exists() and path.stat().st_mtime_ns != before:
            return True
        time.sleep(0.01)
    return False


def test_a_checkpoint_write_killed_midway_leaves_the_previous_checkpoint(tiny_recipe, tmp_path):
    """What a kill during ``torch.save`` leaves: the previous checkpoint plus a stray temp file, which resume
    ignores."""
    recipe = _recipe(tiny_recipe, [{"name": "_test_interrupt_at_step", "step": 10}])
    InterruptAtStep.armed = True
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path)
    (tmp_path / ".checkpoint.pt.half.tmp").write_bytes(b"PK\x03\x04 truncated")
    resumed = fit(recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert [r["epoch"] for r in _rows(tmp_path)] == [1, 2, 3] and resumed.summary["epochs"] == 3
