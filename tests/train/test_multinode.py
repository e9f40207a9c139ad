"""Several nodes: ``train.num_nodes`` reaches Fabric, a launcher that disagrees with devices x num_nodes is refused
in one line, an unreachable master times out with a message, and 2 nodes x 1 process train the same weights as
1 node x 2 processes and as 1 process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from regimen.cli import main
from regimen.errors import ConfigurationError
from regimen.train import RecipeError, fit, load_checkpoint, load_recipe, parse_recipe
from regimen.train.launch import LaunchError, check_launch, detect_launcher, launcher_rank
from tests.distributed.launch import clean_env, finish, reserved_port, start
from tests.train.test_distributed import RECIPE, assert_same_weights

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")

#: What ``torchrun --nnodes 2 --node_rank 1 --nproc_per_node 1`` puts in the environment of its process.
TORCHRUN_2x1 = {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29500"}
#: ``srun --nodes 2 --ntasks-per-node 2``, the process of rank 3.
SLURM_2x2 = {"SLURM_NTASKS": "4", "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "3",
             "SLURM_NODEID": "1", "SLURM_LOCALID": "1", "SLURM_JOB_NAME": "train"}
#: Every variable a launcher or Fabric reads: the tests that run ``fit`` in this process set them all (so that
#: monkeypatch removes what Fabric writes into ``os.environ``).
LAUNCH_VARIABLES = sorted({*TORCHRUN_2x1, *SLURM_2x2, "NODE_RANK", "SLURM_JOB_NUM_NODES"})


def clean_launch_env(monkeypatch, **values: str) -> None:
    """No launcher in this process's environment except ``values`` (restored after the test)."""
    for name in LAUNCH_VARIABLES:  # set, then removed: monkeypatch restores each one (Fabric writes some) after
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# ------------------------------------------------------------------------------------------------- num_nodes key
@pytest.mark.parametrize("value", [0, -1, "2", 1.5, True])
def test_num_nodes_must_be_a_positive_integer(tiny_recipe, value):
    tiny_recipe["train"]["num_nodes"] = value
    with pytest.raises(RecipeError, match=r"train\.num_nodes"):
        parse_recipe(tiny_recipe)


def test_num_nodes_and_dist_timeout_are_recipe_keys(tiny_recipe):
    tiny_recipe["train"].update(num_nodes=3, dist_timeout_s=12.5)
    train = parse_recipe(tiny_recipe).train
    assert (train.num_nodes, train.dist_timeout_s) == (3, 12.5)
    tiny_recipe["train"]["dist_timeout_s"] = 0
    with pytest.raises(RecipeError, match=r"train\.dist_timeout_s"):
        parse_recipe(tiny_recipe)


def test_cli_num_nodes_zero_is_a_one_line_error(capsys, tmp_path):
    code = main(["train", "--recipe", str(ROOT / "recipes/smoke.toml"), "--num-nodes", "0", "--quiet",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0
    assert "train.num_nodes" in err and "greater than 0" in err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------- launcher vs recipe check
def test_torchrun_two_nodes_with_default_recipe_is_refused_naming_both_numbers():
    """The issue's launch: torchrun --nnodes 2 --nproc_per_node 1 ... --devices 1 (num_nodes left at 1)."""
    with pytest.raises(ConfigurationError) as raised:
        check_launch(devices=1, num_nodes=1, env=TORCHRUN_2x1)
    message = str(raised.value)
    assert "\n" not in message
    assert "WORLD_SIZE=2" in message and "GROUP_WORLD_SIZE=2" in message
    assert "train.devices=1 x train.num_nodes=1 = 1" in message
    assert "--devices 1 --num-nodes 2" in message and "independent runs" in message


def test_matching_launches_pass():
    assert check_launch(1, 2, TORCHRUN_2x1).name == "torchrun"
    assert check_launch(2, 2, SLURM_2x2).name == "SLURM"
    assert check_launch(1, 1, {}) is None
    fabric_child = {"WORLD_SIZE": "4", "NODE_RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert check_launch(2, 2, fabric_child).name == "environment"


@pytest.mark.parametrize(("devices", "num_nodes", "env", "named"), [
    (2, 1, TORCHRUN_2x1, "LOCAL_WORLD_SIZE=1 per node"),  # same product, other layout
    (1, 3, TORCHRUN_2x1, "GROUP_WORLD_SIZE=2 node(s)"),
    (1, 1, SLURM_2x2, "SLURM_NTASKS=4"),
    (4, 1, SLURM_2x2, "SLURM_NNODES=2 node(s)"),
    (1, 4, SLURM_2x2, "SLURM_NTASKS_PER_NODE=2 per node"),
    (1, 1, {"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2"),
    (1, 1, {**SLURM_2x2, "SLURM_NTASKS_PER_NODE": "2(x2)"}, "SLURM_NTASKS=4"),
])
def test_disagreeing_launches_are_refused(devices, num_nodes, env, named):
    with pytest.raises(ConfigurationError, match=r"started .*recipe asks for") as raised:
        check_launch(devices, num_nodes, env)
    assert named in str(raised.value)


def test_slurm_interactive_job_is_not_a_launcher():
    """Fabric does not treat ``srun --job-name interactive`` as SLURM; neither does the check."""
    assert detect_launcher({**SLURM_2x2, "SLURM_JOB_NAME": "interactive"}) is None


@pytest.mark.parametrize(("env", "problem"), [
    ({}, "MASTER_ADDR, MASTER_PORT, NODE_RANK not set"),
    ({"NODE_RANK": "1"}, "MASTER_ADDR, MASTER_PORT not set"),
    ({"NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "NODE_RANK=2 is not a node"),
    ({**TORCHRUN_2x1, "GROUP_RANK": "5"}, "GROUP_RANK=5 is not a node"),
])
def test_a_node_that_cannot_meet_the_others_is_refused(env, problem):
    with pytest.raises(ConfigurationError, match=problem):
        check_launch(1, 2, env)


def test_launcher_rank_reads_the_environment():
    assert launcher_rank(1, TORCHRUN_2x1) == 1
    assert launcher_rank(2, SLURM_2x2) == 3
    assert launcher_rank(2, {"NODE_RANK": "1", "LOCAL_RANK": "1"}) == 3
    assert launcher_rank(4, {}) == 0


def test_fit_under_a_disagreeing_launcher_writes_nothing(tiny_recipe, tmp_path, monkeypatch):
    clean_launch_env(monkeypatch, **TORCHRUN_2x1)
    with pytest.raises(ConfigurationError, match="torchrun started WORLD_SIZE=2"):
        fit(tiny_recipe, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------- rendezvous timeout
def test_unreachable_master_times_out_with_a_message(tiny_recipe, tmp_path, monkeypatch):
    """Node 1 of 2 whose master never answers: a LaunchError after train.dist_timeout_s, not a hang. The port is
    held (bound, never listening), so no other process can answer on it during the test."""
    with reserved_port() as port:
        clean_launch_env(monkeypatch, NODE_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        tiny_recipe["train"].update(num_nodes=2, dist_timeout_s=1.0)
        with pytest.raises(LaunchError) as raised:
            fit(tiny_recipe, out_dir=tmp_path / "run")
    message = str(raised.value)
    assert "rank 1 of 2 could not join the master at 127.0.0.1:" in message
    assert "train.dist_timeout_s=1" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # only rank 0 writes


def test_master_whose_nodes_never_come_times_out_with_a_message(tiny_recipe, tmp_path, monkeypatch):
    with reserved_port() as port:  # held until the master binds it: nobody else can take it in between
        clean_launch_env(monkeypatch, NODE_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        tiny_recipe["train"].update(num_nodes=2, dist_timeout_s=1.0)
        with pytest.raises(LaunchError,
                           match=r"rank 0 \(the master, 127\.0\.0\.1:\d+\) waited .* 1 process\(es\) of 2"):
            fit(tiny_recipe, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- 2 nodes = 2 processes = 1
def _start(out: Path, *extra: str, launcher: list[str] | None = None, port: int | None = None
           ) -> subprocess.Popen:
    """A run in its own session, without the test process's launcher variables (``port``: its MASTER_PORT)."""
    command = [sys.executable, "-m", "regimen", "train", *RECIPE, "--out", str(out), *extra]
    if launcher is not None:
        command = launcher + command[3:]
    return start(command, clean_env(port))


def _finish(process: subprocess.Popen) -> None:
    finish(process, what=" ".join(process.args[:8]))  # a timeout kills the run's processes, with a message


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_two_nodes_of_one_process_match_one_node_of_two_and_one_process(tmp_path, monkeypatch):
    """torchrun --nnodes 2 --node_rank {0,1} --nproc_per_node 1 on 127.0.0.1 (two launches, as on two machines) at
    per-device batch 16 = Fabric's 2 processes on one node at 16 = one process at 32 (the launches run at once; the
    one-process run trains in this process meanwhile)."""
    clean_launch_env(monkeypatch)
    with reserved_port() as port, reserved_port() as pair_port:
        nodes = [_start(tmp_path / "nodes", "--set", "train.batch_size=16", "--devices", "1", "--num-nodes", "2",
                        launcher=[TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
                                  "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "regimen"])
                 for rank in (0, 1)]
        pair = _start(tmp_path / "pair", "--set", "train.batch_size=16", "--devices", "2", port=pair_port)
        recipe = load_recipe(ROOT / "recipes/smoke.toml", ["train.epochs=1", "train.max_steps_per_epoch=8",
                                                           "train.batch_size=32"])
        fit(recipe, out_dir=tmp_path / "one")
        for process in (*nodes, pair):
            _finish(process)
    two_nodes, one_node, one = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("nodes", "pair", "one"))
    assert two_nodes["step"] == one_node["step"] == one["step"] == 8
    assert_same_weights(one, two_nodes)
    assert_same_weights(one_node, two_nodes)
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert (summary["world_size"], summary["num_nodes"], summary["global_batch"]) == (2, 2, 32)
    assert len((tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()) == 1  # one writer: each epoch once
    assert not (tmp_path / "nodes" / "run.lock").exists()  # released at the end


# ------------------------------------------------------------------------------------- Fabric's LT_* variables
def test_fabric_environment_that_disagrees_with_the_recipe_is_refused(tiny_recipe, monkeypatch, tmp_path):
    """Fabric lets ``LT_DEVICES`` (left by ``fabric run`` or a shell) silently replace the recipe's devices."""
    clean_launch_env(monkeypatch)
    monkeypatch.setenv("LT_DEVICES", "2")
    with pytest.raises(ConfigurationError, match=r"LT_DEVICES=2.*train\.devices = 1"):
        fit(tiny_recipe, out_dir=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_fabric_environment_that_agrees_with_the_recipe_trains(tiny_recipe, monkeypatch, tmp_path):
    clean_launch_env(monkeypatch)
    monkeypatch.setenv("LT_DEVICES", "1")
    monkeypatch.setenv("LT_NUM_NODES", "1")
    fit(tiny_recipe, out_dir=tmp_path / "run", quiet=True)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
