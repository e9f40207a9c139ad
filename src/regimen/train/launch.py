"""Processes and nodes: what the launcher started must be what the recipe asks for, and a rendezvous that cannot
complete ends with a message instead of a hang.

A run's processes are ``train.devices`` per node × ``train.num_nodes`` nodes. They are started by

- Lightning Fabric itself (no launcher): one command per node; Fabric starts the node's ``devices`` processes. With
  ``num_nodes > 1`` each node needs ``MASTER_ADDR``, ``MASTER_PORT`` and ``NODE_RANK`` in its environment.
- ``torchrun`` (torchelastic: ``TORCHELASTIC_RUN_ID``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``GROUP_WORLD_SIZE``) on each node.
- SLURM's ``srun`` (``SLURM_NTASKS``, ``SLURM_NNODES``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_PROCID`` ...), which
  Fabric's ``SLURMEnvironment`` reads.

Fabric only compares the launcher's numbers with ``devices × num_nodes`` when it runs a DDP strategy: with
``devices=1, num_nodes=1`` under a launcher that started several processes it picks a single-device strategy, and
every process trains alone into the same folder. ``check_launch`` refuses that, and any other disagreement, in one
line before Fabric is built.

``train.dist_timeout_s`` bounds the process-group set-up (connecting to the master address, waiting for every
process) and each collective afterwards; a rendezvous that does not complete in time raises ``LaunchError`` naming
the master address, the port and what to check.

The rendezvous port: without ``MASTER_PORT`` (and without a launcher, which sets it), Lightning Fabric picks one by
binding port 0 and *closing* the socket (``find_free_network_port``); rank 0's TCPStore binds it again only after the
other processes have been spawned. In between, any process of the machine (another run's gloo pairs, an outgoing
connection's ephemeral port) may take it: rank 0 fails with "address already in use", or a rank connects to a stranger
and waits for ``train.dist_timeout_s``. ``launch_fabric`` therefore reserves the port itself when it starts the
processes: it binds a free port with ``SO_REUSEADDR`` and holds it, bound but never listening, until the processes
have started and met (the kernel hands a bound port neither to ``bind(0)`` nor to outgoing connections, while the
TCPStore, binding with ``SO_REUSEADDR`` too, can listen on it), and passes it on as ``MASTER_PORT``. A ``MASTER_PORT``
(or Fabric's ``STANDALONE_PORT``) set by the user, torchrun or SLURM is used as given.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import socket
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from regimen.errors import ConfigurationError, RegimenError

__all__ = ["LaunchError", "Launcher", "check_launch", "detect_launcher", "launch_fabric", "launcher_rank",
           "make_fabric", "reserved_master_port"]


class LaunchError(RegimenError, RuntimeError):
    """The processes of a distributed run could not be brought together (rendezvous timeout, unreachable master)."""


@dataclass(frozen=True)
class Launcher:
    """What a launcher's environment says about the job, with the variable names it read (for messages)."""

    name: str  # "torchrun", "SLURM" or "environment"
    world_size: int | None = None
    world_size_var: str = "WORLD_SIZE"
    per_node: int | None = None
    per_node_var: str = "LOCAL_WORLD_SIZE"
    nodes: int | None = None
    nodes_var: str = "GROUP_WORLD_SIZE"
    rank: int | None = None
    node_rank: int | None = None
    node_rank_var: str = "NODE_RANK"
    local_rank: int | None = None


def _int(env: Mapping[str, str], name: str) -> int | None:
    """The leading integer of ``env[name]`` (SLURM writes ``2(x3)`` in some variables), or None."""
    value = env.get(name)
    if value is None:
        return None
    match = re.match(r"\s*(-?\d+)", value)
    if match is None:
        raise ConfigurationError(f"environment variable {name}={value!r} is not an integer")
    return int(match.group(1))


def detect_launcher(env: Mapping[str, str] | None = None) -> Launcher | None:
    """The launcher that started this process, as Fabric would detect it (torchrun before SLURM), or a bare
    ``WORLD_SIZE``/``NODE_RANK`` environment (Fabric's own child processes, a hand launch), or None."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env:
        return Launcher("torchrun", world_size=_int(env, "WORLD_SIZE"), per_node=_int(env, "LOCAL_WORLD_SIZE"),
                        nodes=_int(env, "GROUP_WORLD_SIZE"), rank=_int(env, "RANK"),
                        node_rank=_int(env, "GROUP_RANK"), node_rank_var="GROUP_RANK",
                        local_rank=_int(env, "LOCAL_RANK"))
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        nodes_var = "SLURM_NNODES" if "SLURM_NNODES" in env else "SLURM_JOB_NUM_NODES"
        return Launcher("SLURM", world_size=_int(env, "SLURM_NTASKS"), world_size_var="SLURM_NTASKS",
                        per_node=_int(env, "SLURM_NTASKS_PER_NODE"), per_node_var="SLURM_NTASKS_PER_NODE",
                        nodes=_int(env, nodes_var), nodes_var=nodes_var, rank=_int(env, "SLURM_PROCID"),
                        node_rank=_int(env, "SLURM_NODEID"), node_rank_var="SLURM_NODEID",
                        local_rank=_int(env, "SLURM_LOCALID"))
    node_var = "NODE_RANK" if "NODE_RANK" in env else "GROUP_RANK"
    if any(name in env for name in ("WORLD_SIZE", "RANK", "NODE_RANK", "GROUP_RANK")):
        return Launcher("environment", world_size=_int(env, "WORLD_SIZE"), rank=_int(env, "RANK"),
                        node_rank=_int(env, node_var), node_rank_var=node_var, local_rank=_int(env, "LOCAL_RANK"))
    return None


def launcher_rank(devices: int, env: Mapping[str, str] | None = None) -> int:
    """This process's global rank as the environment says before Fabric is built (0 without a launcher)."""
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher is None:
        return 0
    if launcher.rank is not None:
        return launcher.rank
    return (launcher.node_rank or 0) * devices + (launcher.local_rank or 0)


def check_launch(devices: int, num_nodes: int, env: Mapping[str, str] | None = None) -> Launcher | None:
    """Refuse, in one line, a launch whose environment disagrees with ``devices × num_nodes`` processes.

    Raises:
        ConfigurationError: a bad ``devices``/``num_nodes``; a launcher that started another number of processes,
            nodes or processes per node; a rank out of range; ``num_nodes > 1`` with no launcher and no
            ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` (the processes could never meet).
    """
    env = os.environ if env is None else env
    for name, value in (("train.devices", devices), ("train.num_nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")
    wanted = devices * num_nodes
    asked = f"train.devices={devices} x train.num_nodes={num_nodes} = {wanted} process(es)"
    launcher = detect_launcher(env)
    if num_nodes > 1 and (launcher is None or launcher.name == "environment"):
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in env]
        missing += [] if "NODE_RANK" in env or "GROUP_RANK" in env else ["NODE_RANK"]
        if missing:
            raise ConfigurationError(
                f"train.num_nodes={num_nodes} needs a launcher on every node: torchrun, SLURM's srun, or "
                f"MASTER_ADDR, MASTER_PORT and NODE_RANK set on each node ({', '.join(missing)} not set); "
                "see docs/multinode.md")
    if launcher is None:
        return None
    parts = []
    if launcher.world_size is not None and launcher.world_size != wanted:
        parts.append(f"{launcher.world_size_var}={launcher.world_size}")
    if launcher.nodes is not None and launcher.nodes != num_nodes:
        parts.append(f"{launcher.nodes_var}={launcher.nodes} node(s)")
    if launcher.per_node is not None and launcher.per_node != devices:
        parts.append(f"{launcher.per_node_var}={launcher.per_node} per node")
    if parts:
        fix = _suggestion(launcher)
        raise ConfigurationError(f"{launcher.name} started {', '.join(parts)} but the recipe asks for {asked}"
                                 f"{fix}; refusing to train as independent runs")
    if launcher.node_rank is not None and not 0 <= launcher.node_rank < num_nodes:
        raise ConfigurationError(f"{launcher.name}: {launcher.node_rank_var}={launcher.node_rank} is not a node of "
                                 f"train.num_nodes={num_nodes} (0 to {num_nodes - 1})")
    if launcher.rank is not None and not 0 <= launcher.rank < wanted:
        raise ConfigurationError(f"{launcher.name}: rank {launcher.rank} is out of range for {asked}")
    if launcher.local_rank is not None and not 0 <= launcher.local_rank < devices:
        raise ConfigurationError(f"{launcher.name}: LOCAL_RANK={launcher.local_rank} is out of range for "
                                 f"train.devices={devices} per node")
    return launcher


def _suggestion(launcher: Launcher) -> str:
    """``; pass --devices 1 --num-nodes 2`` when the launcher's layout is known."""
    per_node, nodes = launcher.per_node, launcher.nodes
    if per_node is None and nodes is not None and launcher.world_size is not None and nodes > 0 \
            and launcher.world_size % nodes == 0:
        per_node = launcher.world_size // nodes
    if nodes is None and per_node is not None and launcher.world_size is not None and per_node > 0 \
            and launcher.world_size % per_node == 0:
        nodes = launcher.world_size // per_node
    if per_node is None or nodes is None:
        return ""
    return f"; pass --devices {per_node} --num-nodes {nodes} (train.devices, train.num_nodes) to match it"


def _strategy(name: str, world_size: int, timeout_s: float) -> Any:
    """The recipe's strategy with ``timeout_s`` as its process-group timeout, where the strategy takes one (the
    DDP family, FSDP); other strategies, and one process, keep the name as given."""
    from lightning_fabric.strategies import STRATEGY_REGISTRY

    if world_size == 1 and name == "auto":
        return name
    key = "ddp" if name == "auto" else name
    if key not in STRATEGY_REGISTRY:
        return name  # Fabric's own error names the valid strategies
    entry = STRATEGY_REGISTRY[key]
    cls, params = entry["strategy"], dict(entry["init_params"])
    if "timeout" not in inspect.signature(cls.__init__).parameters:
        return name
    return cls(timeout=timedelta(seconds=timeout_s), **params)


def check_fabric_environment(settings: dict[str, Any]) -> None:
    """Refuse ``LT_<NAME>`` environment variables that disagree with the recipe: Lightning Fabric reads
    ``LT_ACCELERATOR``, ``LT_STRATEGY``, ``LT_DEVICES``, ``LT_NUM_NODES`` and ``LT_PRECISION`` (set by the
    ``fabric run`` CLI, or left in a shell) and lets them silently replace the arguments it was given, so a recipe
    asking for 1 device would train on what a stale ``LT_DEVICES`` says."""
    for name, value in settings.items():
        variable = f"LT_{name.upper()}"
        found = os.environ.get(variable)
        if found is not None and found != str(value):
            raise ConfigurationError(f"the environment sets {variable}={found}, which Lightning Fabric would use "
                                     f"instead of the recipe's train.{name} = {value!r}; unset {variable} or set "
                                     f"train.{name} to match it")


def make_fabric(cfg: Any):
    """A Fabric for the recipe's ``train`` table (``accelerator``, ``devices``, ``num_nodes``, ``strategy``,
    ``precision``, ``dist_timeout_s``), after checking that the launcher agrees with ``devices × num_nodes``."""
    from lightning_fabric import Fabric

    num_nodes = getattr(cfg, "num_nodes", 1)
    check_launch(cfg.devices, num_nodes)
    check_fabric_environment({"accelerator": cfg.accelerator, "strategy": cfg.strategy, "devices": cfg.devices,
                              "num_nodes": num_nodes, "precision": cfg.precision})
    strategy = _strategy(cfg.strategy, cfg.devices * num_nodes, getattr(cfg, "dist_timeout_s", 1800.0))
    return Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=num_nodes, strategy=strategy,
                  precision=cfg.precision)


@contextlib.contextmanager
def reserved_master_port(env: MutableMapping[str, str] | None = None) -> Iterator[int | None]:
    """Hold a free rendezvous port for the block when this process is about to start the job's processes itself.

    Without a launcher (torchrun, SLURM, Fabric's own children) and without ``MASTER_PORT``/``STANDALONE_PORT`` in
    ``env`` (default ``os.environ``): bind a free TCP port with ``SO_REUSEADDR`` (never listening), write it to
    ``env["MASTER_PORT"]`` (Fabric reads it there and passes it to the processes it spawns, as it would its own
    pick) and yield it; the socket is closed when the block ends. Otherwise yield None and change nothing.
    """
    env = os.environ if env is None else env
    if "MASTER_PORT" in env or "STANDALONE_PORT" in env or detect_launcher(env) is not None:
        yield None
        return
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # not inherited by the spawned processes (PEP 446)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("", 0))
        port = holder.getsockname()[1]
        env["MASTER_PORT"] = str(port)
        yield port
    finally:
        holder.close()


_RENDEZVOUS_WORDS = re.compile(r"timed out|timeout|connect|refused|unreachable|clients joined|no route", re.I)


def launch_fabric(fabric, timeout_s: float) -> None:
    """``fabric.launch()``: start (or join) the job's processes and set up the process group, holding the
    rendezvous port from its choice until the processes have met when this process starts them
    (:func:`reserved_master_port`); a rendezvous that fails or times out becomes a one-line ``LaunchError``."""
    import torch.distributed as dist

    try:
        with reserved_master_port():
            fabric.launch()
    except (dist.DistError, RuntimeError) as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        first = first.rstrip(".")
        if not isinstance(error, dist.DistError) and not _RENDEZVOUS_WORDS.search(str(error)):
            raise
        address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        rank, world = fabric.global_rank, fabric.world_size
        if rank == 0:
            what = (f"rank 0 (the master, {address}) waited train.dist_timeout_s={timeout_s:g} s for the other "
                    f"{world - 1} process(es) of {world}")
            check = "start regimen on every node with the same --num-nodes/--devices, and check that they can reach "
        else:
            what = (f"rank {rank} of {world} could not join the master at {address} within "
                    f"train.dist_timeout_s={timeout_s:g} s")
            check = "check MASTER_ADDR/MASTER_PORT, that node 0 is running, and that the nodes can reach "
        raise LaunchError(f"{what}: {first}; {check}{address} (raise train.dist_timeout_s for slow starts)") from None
