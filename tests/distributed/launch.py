"""One way to start multi-process tests: a reserved free port, a clean environment, a timeout with a message.

Why (issue 21, the flaky ``test_two_processes_select_and_train_like_one_process``): without ``MASTER_PORT`` Lightning
Fabric picks the rendezvous port by binding port 0 and *closing* the socket (``find_free_network_port``); the
TCPStore binds it again only after the child process has been spawned. In between, any other process of the machine
(another test's gloo pairs, a client connection's ephemeral port, Ray's workers, another engineer's run) may take
that port: rank 0 then fails with "address already in use", or rank 1 connects to a stranger and the run waits for
``train.dist_timeout_s`` (30 minutes by default) while the test's ``subprocess.run(timeout=300)`` kills only the
launcher, leaving rank 1 alive to slow the rest of the suite. Fixed torchrun ports (``--master_port 29531``) collide
the same way with any concurrent run.

Here the port is reserved (bound with ``SO_REUSEADDR``, never listening) for as long as the processes run: the
kernel hands a bound port neither to ``bind(0)`` nor to outgoing connections, while the TCPStore (which binds with
``SO_REUSEADDR`` too) can still listen on it. Every process runs in its own session and the whole group is killed at
the timeout; the failure names the command, the timeout and the tail of the output. The environment never inherits
launcher variables (``WORLD_SIZE``, ``RANK``, ``MASTER_PORT`` ...) from the test process (Fabric writes some into
``os.environ``), and ``PYTHONPATH`` points at this checkout's ``src``, with the working directory at its root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Environment variables a launcher or Fabric reads: never inherited by a test's processes.
LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE",
                    "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS",
                    "SLURM_NNODES", "SLURM_JOB_NUM_NODES", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_NODEID",
                    "SLURM_LOCALID", "SLURM_JOB_NAME", "PL_GLOBAL_SEED")

#: Default limit of one multi-process command (a loaded 2-core machine runs a tiny two-process training in ~20 s).
TIMEOUT_S = 300.0


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A free TCP port on 127.0.0.1, held (bound, not listening) until the block ends."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]
    finally:
        holder.close()


def clean_env(port: int | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without launcher variables, one OpenMP thread, this checkout's ``src`` (or
    ``$REGIMEN_TEST_SRC``) first on ``PYTHONPATH``; with ``port``, ``MASTER_ADDR=127.0.0.1`` and
    ``MASTER_PORT=port`` (Fabric and torchrun use them instead of picking a port themselves)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    source = os.environ.get("REGIMEN_TEST_SRC", str(ROOT / "src"))  # scripts/mutants.py: a mutated copy of src
    paths = [source, str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)))
    if port is not None:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    env.update(extra)
    return env


def start(command: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """``command`` in its own session (so :func:`finish` can kill every process it starts, Fabric's children
    included), from the checkout's root, stdout and stderr together in one pipe."""
    return subprocess.Popen(list(command), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def finish(process: subprocess.Popen, timeout: float = TIMEOUT_S, what: str = "") -> str:
    """Wait for ``process`` and every process holding its output (Fabric's children); its output. A timeout kills
    the session and fails with a message naming the command and the limit; a non-zero exit fails with the tail of
    the output."""
    import pytest

    name = what or " ".join(str(a) for a in process.args[:6])
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        pytest.fail(f"{name}: no result after {timeout:g} s (a rendezvous that never completed, or a hang); every "
                    f"process of the run was killed. Last output:\n{(output or '')[-3000:]}", pytrace=False)
    _kill_group(process)  # nothing should be left; a stray process must not outlive the test
    if process.returncode != 0:
        pytest.fail(f"{name}: exit code {process.returncode}. Last output:\n{(output or '')[-3000:]}",
                    pytrace=False)
    return output or ""


def run(command: Sequence[str], timeout: float = TIMEOUT_S, env: dict[str, str] | None = None, what: str = "",
        port: bool = True) -> str:
    """Run ``command`` to the end with a reserved ``MASTER_PORT`` (``port=True``) and a timeout; its output."""
    if not port:
        return finish(start(command, env or clean_env()), timeout, what)
    with reserved_port() as reserved:
        return finish(start(command, env or clean_env(reserved)), timeout, what)


def regimen_train(out: Path, *arguments: str, timeout: float = TIMEOUT_S) -> str:
    """``python -m regimen train --quiet --overwrite --out OUT ARGUMENTS`` (a reserved port, a timeout)."""
    return run([sys.executable, "-m", "regimen", "train", "--quiet", "--overwrite", "--out", str(out), *arguments],
               timeout=timeout, what=f"regimen train --out {out.name} {' '.join(arguments[-4:])}")


def spawn(function, args: tuple, nprocs: int = 2, timeout: float = TIMEOUT_S, what: str = "") -> None:
    """``torch.multiprocessing.spawn`` with a deadline: a hang kills every worker and fails with a message (a
    worker's exception still propagates as in ``spawn``)."""
    import time

    import pytest
    import torch.multiprocessing as mp

    context = mp.spawn(function, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"{what or getattr(function, '__name__', 'spawned workers')}: {nprocs} processes did not "
                        f"finish within {timeout:g} s; all were killed", pytrace=False)
