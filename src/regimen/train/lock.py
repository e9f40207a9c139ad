"""One writer per run folder: an exclusive lock file in ``--out`` that holds the writer's PID, host and start time.

A run takes the lock before it writes anything and removes it when it ends (normally or with an error). Only the
process that writes the folder holds it: global rank 0 of a DDP job, on whichever node it runs; the other ranks write
nothing and never touch the lock, so it does not matter whether the folder is on a shared file system (every node
sees the same ``run.lock``) or node-local (only node 0's folder is written and locked).

- **Atomic create.** The lock's content is written to a private temp file first and then hard-linked to
  ``run.lock``: ``link`` fails when the name exists, on local disks and on NFS alike, and a reader never sees a
  half-written lock. File systems without hard links fall back to ``open(O_CREAT | O_EXCL)``.
- **A second writer** (another run on the same folder, from this machine or another one) gets a ``RunLockError``
  naming the holder: PID, host and start time.
- **Stale locks.** A lock whose process is gone is taken over: on the same host (same host name and boot id) the PID
  is checked and the process's start time (Linux ``/proc/<pid>/stat``) must match, so a reused PID does not keep a
  dead run's lock alive; a zombie counts as gone; a lock from before a reboot is stale. The take-over renames the
  stale lock aside and checks that what it moved is the lock it judged stale, so two processes that find the same
  stale lock cannot both win. A lock held on *another* host cannot be checked from here: the error says to delete
  it if that run is dead.

So a run killed with SIGKILL leaves a stale lock that its ``--resume`` takes over.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from regimen.errors import RegimenError

__all__ = ["LOCK_NAME", "RunLock", "RunLockError", "acquire_run_lock", "check_run_folder_free", "hold_run_folder",
           "lock_holder"]

#: The lock file's name inside the run folder.
LOCK_NAME = "run.lock"

#: A lock file without readable content (a writer killed between create and write, on a file system without hard
#: links) is stale once it is this old.
_UNREADABLE_GRACE_S = 10.0


class RunLockError(RegimenError, RuntimeError):
    """The run folder is being written by another run (or the lock could not be taken)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None where ``/proc`` cannot say."""
    stat = _proc_stat(pid)
    return int(stat[19]) if stat is not None and len(stat) > 19 else None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _identity() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "boot_id": _boot_id(), "process_start": _process_start(pid),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "token": uuid.uuid4().hex}


def lock_holder(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The content of ``folder``'s lock (pid, host, boot_id, process_start, started, token), ``None`` when the folder
    is not locked, or ``{"unreadable": True, "age_s": ...}`` for a lock file that holds no valid content."""
    return _read(Path(folder) / LOCK_NAME)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
            return holder
    except ValueError:
        pass
    return {"unreadable": True, "age_s": age}


def _same_host(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("boot_id", "") == _boot_id()


def _is_stale(holder: dict[str, Any]) -> bool:
    """Whether the holder is certainly gone (only decidable on the same host; an unreadable lock by its age)."""
    if holder.get("unreadable"):
        return holder["age_s"] > _UNREADABLE_GRACE_S
    if holder.get("host") == socket.gethostname() and holder.get("boot_id") and _boot_id() \
            and holder["boot_id"] != _boot_id():
        return True  # this host has rebooted since
    if not _same_host(holder):
        return False
    pid = holder["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):
        return True  # killed, not yet reaped
    recorded, now = holder.get("process_start"), _process_start(pid)
    return recorded is not None and now is not None and recorded != now  # the PID was reused


def _describe(holder: dict[str, Any], path: Path) -> str:
    if holder.get("unreadable"):
        return f"a lock file being written ({path}, {holder['age_s']:.0f} s old)"
    who = "this process" if holder["pid"] == os.getpid() and _same_host(holder) else f"PID {holder['pid']}"
    return f"{who} on host {holder['host']} since {holder.get('started', '?')} (lock file {path})"


def _refusal(folder: Path, holder: dict[str, Any]) -> RunLockError:
    path = folder / LOCK_NAME
    if holder.get("unreadable") or _same_host(holder):
        hint = "wait for that run to end or use another --out"
    else:
        hint = ("wait for that run to end or use another --out; if that run is dead (its host cannot be checked "
                f"from {socket.gethostname()}), delete {path}")
    return RunLockError(f"run folder {folder} is in use by another run: {_describe(holder, path)}; {hint}")


def check_run_folder_free(folder: str | os.PathLike) -> None:
    """Raise ``RunLockError`` when ``folder`` is locked by a run that is alive (or cannot be checked from here);
    a missing folder or a stale lock passes. Reads only: a quick check before processes are launched."""
    folder = Path(folder)
    holder = _read(folder / LOCK_NAME)
    if holder is not None and not _is_stale(holder):
        raise _refusal(folder, holder)


def _create(path: Path, content: str) -> None:
    """Create ``path`` with ``content`` atomically; ``FileExistsError`` when it exists."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temp, "w", encoding="utf-8") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(temp, path)
        return
    except FileExistsError:
        raise
    except OSError:  # no hard links here: exclusive create, then write
        pass
    finally:
        temp.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def _take_over(path: Path, stale: dict[str, Any]) -> None:
    """Remove the stale lock ``stale`` at ``path``, unless another process has replaced it meanwhile."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # released, or taken over by another process
    moved = _read(aside)
    if moved is not None and (moved == stale or (moved.get("unreadable") and stale.get("unreadable"))):
        aside.unlink(missing_ok=True)
        return
    try:  # we moved a lock that another process created after our read: put it back
        os.link(aside, path)
    except FileExistsError:
        pass
    finally:
        aside.unlink(missing_ok=True)


class RunLock:
    """A held run-folder lock; ``release()`` (or leaving the ``with`` block) removes it."""

    def __init__(self, folder: Path, holder: dict[str, Any], created_folder: bool, took_over: dict | None) -> None:
        self.folder, self.holder, self.created_folder = folder, holder, created_folder
        self.took_over = took_over  #: the stale holder this lock replaced, if any
        self.released = False

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    def release(self) -> None:
        """Remove the lock if it is still ours; a folder this lock created and nothing else wrote is removed too."""
        if self.released:
            return
        self.released = True
        current = _read(self.path)
        if current is not None and current.get("token") == self.holder["token"]:
            self.path.unlink(missing_ok=True)
        if self.created_folder:
            try:
                self.folder.rmdir()  # only when empty: a run that failed before writing leaves nothing behind
            except OSError:
                pass

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_run_lock(folder: str | os.PathLike, attempts: int = 5) -> RunLock:
    """Take the exclusive lock of run folder ``folder`` (created if missing) for this process.

    Raises:
        RunLockError: another live run holds it (the message names its PID, host and start time), or its holder
            cannot be checked from this host.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunLockError(f"--out {folder} exists and is not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    mine = _identity()
    content = json.dumps(mine)
    took_over = None
    for _ in range(attempts):
        try:
            _create(path, content)
            return RunLock(folder, mine, created, took_over)
        except FileExistsError:
            pass
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        if not _is_stale(holder):
            if holder.get("unreadable"):  # a writer between create and write: give it a moment
                time.sleep(0.05)
                holder = _read(path)
                if holder is None or not holder.get("unreadable"):
                    continue
            if created:
                _remove_if_empty(folder)
            raise _refusal(folder, holder)
        _take_over(path, holder)
        took_over = holder
    if created:
        _remove_if_empty(folder)
    raise RunLockError(f"could not lock run folder {folder}: {attempts} attempts lost to other processes taking "
                       "the same stale lock")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def hold_run_folder(folder: str | os.PathLike, rank: int, world_size: int,
                    broadcast: Callable[[Any], Any] | None = None) -> RunLock | None:
    """The lock of a (possibly distributed) run: global rank 0 takes it, every rank learns the outcome.

    Args:
        folder: the run folder.
        rank, world_size: this process's global rank and the number of processes of the job.
        broadcast: sends rank 0's object to every rank (``fabric.broadcast``); needed when ``world_size > 1``, so
            that a refused lock ends every rank with the same error instead of leaving them waiting.

    Returns:
        The lock on rank 0, ``None`` on the other ranks.
    """
    lock, error = None, None
    if rank == 0:
        try:
            lock = acquire_run_lock(folder)
        except RunLockError as refused:
            error = str(refused)
    if world_size > 1:
        if broadcast is None:
            raise ValueError("hold_run_folder needs broadcast when world_size > 1")
        error = broadcast(error)
    if error is not None:
        raise RunLockError(error if rank == 0 else f"rank 0 could not lock the run folder: {error}")
    return lock
