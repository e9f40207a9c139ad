"""One writer per run folder: an atomic lock holding PID, host and start time; a second writer is refused naming
the holder; a stale lock (killed process, reused PID, zombie, unreadable and old) is taken over exactly once."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from regimen.train import fit
from regimen.train.lock import (
    LOCK_NAME,
    RunLockError,
    _boot_id,
    _process_start,
    acquire_run_lock,
    check_run_folder_free,
    hold_run_folder,
    lock_holder,
)

ROOT = Path(__file__).resolve().parents[2]


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder: Path, **fields) -> dict:
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
              "process_start": _process_start(os.getpid()), "started": "2025-01-01T00:00:00+00:00", "token": "t0"}
    holder.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder))
    return holder


def test_lock_holds_pid_host_and_start_and_refuses_a_second_writer(tmp_path):
    run = tmp_path / "run"
    with acquire_run_lock(run) as lock:
        holder = lock_holder(run)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["started"] and holder["token"] == lock.holder["token"]
        with pytest.raises(RunLockError) as raised:
            acquire_run_lock(run)
        message = str(raised.value)
        assert f"run folder {run} is in use by another run" in message and "this process" in message
        assert socket.gethostname() in message and str(run / LOCK_NAME) in message and "\n" not in message
        with pytest.raises(RunLockError):
            check_run_folder_free(run)
    assert not (run / LOCK_NAME).exists()
    assert not run.exists()  # created by the lock, nothing written: removed on release


def test_release_keeps_a_folder_that_existed_and_files_in_it(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    acquire_run_lock(tmp_path).release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_release_does_not_remove_another_writers_lock(tmp_path):
    lock = acquire_run_lock(tmp_path)
    (tmp_path / LOCK_NAME).unlink()
    other = write_lock(tmp_path, token="other")
    lock.release()
    assert lock_holder(tmp_path) == other


def test_live_process_of_this_host_is_refused_with_its_pid(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path, pid=sleeper.pid, process_start=_process_start(sleeper.pid))
        with pytest.raises(RunLockError, match=f"PID {sleeper.pid} on host {socket.gethostname()} since 2025"):
            acquire_run_lock(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_lock_of_another_host_is_refused_with_the_way_out(tmp_path):
    write_lock(tmp_path, host="node-17", pid=1234)
    with pytest.raises(RunLockError, match=rf"PID 1234 on host node-17 .*delete {tmp_path / LOCK_NAME}"):
        acquire_run_lock(tmp_path)


@pytest.mark.parametrize("case", ["dead", "reused_pid", "rebooted", "unreadable_old"])
def test_stale_lock_is_taken_over(tmp_path, case):
    if case == "unreadable_old":
        (tmp_path / LOCK_NAME).write_text("")
        old = time.time() - 60
        os.utime(tmp_path / LOCK_NAME, (old, old))
    else:
        fields = {"dead": {"pid": dead_pid()},
                  "reused_pid": {"process_start": (_process_start(os.getpid()) or 0) + 1},  # our PID, other start
                  "rebooted": {"boot_id": "an-earlier-boot"}}[case]
        if case == "reused_pid" and _process_start(os.getpid()) is None:
            pytest.skip("no /proc: process start times unknown")
        write_lock(tmp_path, **fields)
    check_run_folder_free(tmp_path)  # a stale lock does not stop a run
    lock = acquire_run_lock(tmp_path)
    assert lock.took_over is not None
    assert lock_holder(tmp_path)["token"] == lock.holder["token"]
    lock.release()


def test_zombie_holder_is_stale(tmp_path):
    """A killed process not yet reaped by its parent still has its PID: it must count as gone."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    write_lock(tmp_path, pid=process.pid, process_start=_process_start(process.pid))
    process.kill()
    time.sleep(0.2)  # killed, not waited for: a zombie
    try:
        acquire_run_lock(tmp_path).release()
    finally:
        process.wait()


def test_fresh_unreadable_lock_is_a_writer_in_progress(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    with pytest.raises(RunLockError, match="lock file being written"):
        acquire_run_lock(tmp_path)


def _contend(folder: str, barrier, results) -> None:
    try:
        barrier.wait()
        lock = acquire_run_lock(folder)
    except RunLockError:
        results.put("refused")
        barrier.wait()
        return
    results.put("won")
    barrier.wait()  # hold the lock until every contender has tried
    lock.release()


def test_processes_racing_for_one_stale_lock_have_one_winner(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(6), context.Queue()
    workers = [context.Process(target=_contend, args=(str(tmp_path), barrier, results)) for _ in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in workers)
    assert outcomes == ["refused"] * 5 + ["won"]
    assert not (tmp_path / LOCK_NAME).exists()
    assert not [p.name for p in tmp_path.iterdir()]  # no temp or set-aside files left


def test_hold_run_folder_tells_every_rank(tmp_path):
    write_lock(tmp_path, host="node-3", pid=99)
    sent = []

    def broadcast(obj):
        sent.append(obj)
        return obj

    with pytest.raises(RunLockError, match="in use"):
        hold_run_folder(tmp_path, rank=0, world_size=2, broadcast=broadcast)
    assert sent and "node-3" in sent[0]
    with pytest.raises(RunLockError, match="rank 0 could not lock the run folder: .*node-3"):
        hold_run_folder(tmp_path, rank=1, world_size=2, broadcast=lambda obj: sent[0])
    (tmp_path / LOCK_NAME).unlink()
    assert hold_run_folder(tmp_path, rank=1, world_size=2, broadcast=lambda obj: None) is None
    assert not (tmp_path / LOCK_NAME).exists()  # only rank 0 creates the lock


# ---------------------------------------------------------------------------------------------------- with fit
def test_fit_is_refused_while_another_run_holds_the_folder(tiny_recipe, tmp_path):
    with acquire_run_lock(tmp_path / "run"):
        with pytest.raises(RunLockError, match="in use by another run"):
            fit(tiny_recipe, out_dir=tmp_path / "run", overwrite=True)
        assert [p.name for p in (tmp_path / "run").iterdir()] == [LOCK_NAME]  # nothing written


def test_fit_holds_the_lock_while_training_and_releases_it(tiny_recipe, tmp_path, monkeypatch):
    from regimen.train.trainer import _Run

    seen = []
    finish_epoch = _Run.finish_epoch

    def probe(self, record, out_path, force_checkpoint=False):
        seen.append(lock_holder(tmp_path / "run"))
        return finish_epoch(self, record, out_path, force_checkpoint)

    monkeypatch.setattr(_Run, "finish_epoch", probe)
    tiny_recipe["train"]["max_steps_per_epoch"] = 4
    fit(tiny_recipe, out_dir=tmp_path / "run")
    assert len(seen) == 2 and all(h is not None and h["pid"] == os.getpid() for h in seen)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_fit_takes_over_a_killed_runs_lock_and_resumes(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    tiny_recipe["train"].update(epochs=2, max_steps_per_epoch=4)
    fit(tiny_recipe, out_dir=run, stop_epoch=1)
    write_lock(run, pid=dead_pid())  # what a SIGKILL leaves behind
    result = fit(tiny_recipe, out_dir=run, resume=run / "checkpoint.pt")
    assert result.summary["epochs"] == 2
    assert not (run / LOCK_NAME).exists()
