"""The rendezvous port of ``regimen train --devices N`` (issue 21): reserved by the trainer from its choice until the
processes have met, never picked by Fabric's bind-and-close; a user's ``MASTER_PORT`` is used as given."""

from __future__ import annotations

import errno
import os
import socket
from datetime import timedelta

import pytest
import torch.distributed as dist

from regimen.train.launch import launch_fabric, reserved_master_port


def _bind_fails(port: int) -> bool:
    """Whether another process's plain bind of ``port`` (what Fabric's pick or any server does) is refused."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", port))
    except OSError as error:
        return error.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


def test_the_port_is_held_until_the_block_ends_and_the_store_can_listen_on_it():
    env: dict[str, str] = {}
    with reserved_master_port(env) as port:
        assert port is not None and env["MASTER_PORT"] == str(port)
        assert _bind_fails(port), "the reserved port was free for anyone to bind"
        ephemeral = []
        for _ in range(200):  # bind(0) never hands out the held port
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            ephemeral.append(s)
        try:
            assert port not in {s.getsockname()[1] for s in ephemeral}
        finally:
            for s in ephemeral:
                s.close()
        # rank 0's TCPStore (SO_REUSEADDR) listens on the held port; a client reaches it
        store = dist.TCPStore("127.0.0.1", port, world_size=1, is_master=True, timeout=timedelta(seconds=30),
                              wait_for_workers=False)
        client = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=30))
        store.set("ping", "pong")
        assert client.get("ping") == b"pong"
        del client, store
    assert not _bind_fails(port), "the port stayed reserved after the processes started"


@pytest.mark.parametrize("env", [{"MASTER_PORT": "29517"}, {"STANDALONE_PORT": "29517"},
                                 {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "1234"},
                                 {"WORLD_SIZE": "2", "LOCAL_RANK": "1", "NODE_RANK": "0"}],
                         ids=["user MASTER_PORT", "STANDALONE_PORT", "torchrun", "a spawned child"])
def test_a_given_port_or_a_launcher_is_left_alone(env):
    before = dict(env)
    with reserved_master_port(env) as port:
        assert port is None
    assert env == before


class _Fabric:
    """What launch_fabric sees of Fabric: launch() reads MASTER_PORT as Fabric's LightningEnvironment does."""

    global_rank, world_size = 0, 2

    def __init__(self):
        self.seen = None

    def launch(self):
        self.seen = int(os.environ["MASTER_PORT"])
        assert _bind_fails(self.seen), "the port was not held while the processes were started"


def test_launch_fabric_reserves_the_port_it_passes_to_fabric(monkeypatch):
    for name in ("MASTER_PORT", "STANDALONE_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                 "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    fabric = _Fabric()
    launch_fabric(fabric, 30.0)
    assert fabric.seen is not None and os.environ["MASTER_PORT"] == str(fabric.seen)
    assert not _bind_fails(fabric.seen)


def test_launch_fabric_keeps_the_users_master_port(monkeypatch):
    for name in ("STANDALONE_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                 "TORCHELASTIC_RUN_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    monkeypatch.setenv("MASTER_PORT", str(port))
    fabric = _Fabric()
    try:
        launch_fabric(fabric, 30.0)
    finally:
        holder.close()
    assert fabric.seen == port and os.environ["MASTER_PORT"] == str(port)


@pytest.mark.slow
def test_regimen_train_two_devices_without_master_port(tmp_path):
    """The users' command: ``regimen train --devices 2`` with no MASTER_PORT in the environment trains (the port is
    the trainer's reservation, not Fabric's bind-and-close pick)."""
    import sys

    from regimen.train import load_checkpoint
    from tests.distributed.launch import ROOT, clean_env, finish, start

    command = [sys.executable, "-m", "regimen", "train", "--recipe", str(ROOT / "recipes/smoke.toml"), "--set",
               "train.epochs=1", "--set", "train.max_steps_per_epoch=4", "--set", "train.batch_size=16",
               "--devices", "2", "--quiet", "--overwrite", "--out", str(tmp_path / "run")]
    env = clean_env()  # no launcher variables, no MASTER_PORT
    assert "MASTER_PORT" not in env
    finish(start(command, env), what="regimen train --devices 2 without MASTER_PORT")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4
