"""Two CPU processes (gloo) at per-device batch B/2 must train the same weights as one process at batch B."""

import contextlib
import os
import shutil
import subprocess
import sys

import pytest
import torch

from regimen.train import load_checkpoint
from tests.distributed.launch import ROOT, TIMEOUT_S, clean_env, finish, reserved_port, start

RECIPE = ["--recipe", str(ROOT / "recipes/smoke.toml"), "--set", "train.epochs=1", "--set",
          "train.max_steps_per_epoch=8",
          "--quiet", "--overwrite"]


def train(out, *extra, launcher=None):
    """A run with a reserved rendezvous port (``MASTER_PORT``; torchrun gets it as ``--master_port``) and a timeout
    that kills every process of the run with a message."""
    command = [sys.executable, "-m", "regimen", "train", *RECIPE, "--out", str(out), *extra]
    with reserved_port() as port:
        if launcher is not None:
            command = [*launcher, "--master_port", str(port), "-m", "regimen", *command[3:]]
        finish(start(command, clean_env(port)), what=f"regimen train --out {out.name}")
    return load_checkpoint(out / "checkpoint.pt")


def assert_same_weights(a, b):
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], atol=1e-6), key


@pytest.mark.slow
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path):
    single = train(tmp_path / "one", "--set", "train.batch_size=32")
    double = train(tmp_path / "two", "--set", "train.batch_size=16", "--devices", "2")
    assert double["step"] == single["step"] == 8
    assert_same_weights(single, double)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(
    sys.executable), "torchrun")), reason="torchrun not installed")
def test_torchrun_launch_matches_one_process(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    single = train(tmp_path / "one", "--set", "train.batch_size=32")
    launched = train(tmp_path / "tr", "--set", "train.batch_size=16", "--devices", "2",
                     launcher=[torchrun, "--nproc_per_node", "2"])
    assert_same_weights(single, launched)


@pytest.mark.slow
def test_two_processes_killed_inside_an_epoch_resume_to_the_same_weights_and_log(tmp_path):
    """SIGKILL of both processes after a mid-epoch checkpoint, then a resume with two processes: the same weights
    and per-epoch losses as an uninterrupted two-process run (every rank's RNG and the epoch's sums are restored)."""
    import json
    import signal
    import time

    steps = ["--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=12", "--set",
             "train.checkpoint_every_steps=4", "--set", "train.batch_size=16", "--devices", "2"]
    reference = train(tmp_path / "ref", *steps)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "regimen", "train", *RECIPE, "--out", str(out), *steps]
    with reserved_port() as port:
        process = subprocess.Popen(command, cwd=ROOT, env=clean_env(port), start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        reached, deadline = False, time.monotonic() + TIMEOUT_S
        try:
            while process.poll() is None and time.monotonic() < deadline:  # the first mid-epoch checkpoint, epoch 2
                if (out / "checkpoint.pt").exists():
                    state = load_checkpoint(out / "checkpoint.pt")
                    if state["position"] is not None and state["epoch"] == 1:
                        reached = True
                        break
                time.sleep(0.02)
        finally:  # killed at the checkpoint, or at the deadline: no rank outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert reached, (f"no mid-epoch checkpoint of epoch 2 within {TIMEOUT_S:g} s (exit code {process.returncode}: "
                     "the run ended before one, or hung and was killed)")
    resumed = train(out, *steps, "--resume", str(out / "checkpoint.pt"))
    for key, value in reference["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref_rows]
