"""Distributed equivalence: 2 processes (gloo) at per-device batch b against 1 process at 2b, same seed.

For every method that depends on the global batch or synchronises state, a tiny recipe (digits MLP, a two-stage
ResNet where the method needs BatchNorm, a one-block MoE GPT for load balancing) trains for a few steps twice:

- ``devices=1`` at ``batch_size = 2b``, in this process (:func:`run_one_process`);
- ``devices=2`` at ``batch_size = b``: two worker processes started once for *all* cases (:func:`run_two_processes`;
  a torchrun-like environment, so Fabric joins them instead of spawning, and each ``fit`` reuses the process group),
  which saves the interpreter and process-group start-up of every case.

:func:`compare` reads both checkpoints and reports the largest absolute difference of the parameters, of the buffers
(BatchNorm running statistics), of the methods' saved tensors (EMA and SWA weights) and of the logged metrics.

Each case states what it expects: ``equal`` within ``tol`` (and ``why`` that tolerance), or ``per_device``: the
method is not equivalent by design and its docstring states the semantics under DDP (``doc`` names the phrase the
test looks for). ``python -m tests.distributed.harness worker SPEC OUT`` is the worker's entry point.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.distributed.launch import ROOT, TIMEOUT_S, clean_env, finish, reserved_port, start

#: Per-device batch of the two-process runs; the one-process run trains at twice this.
PER_DEVICE = 16

_FLOAT32 = ("float32 rounding: the two-process gradient is (g_0 + g_1) / 2 of two half-batch means (gloo sum, "
            "then DDP's division), the one-process gradient one mean over 2b samples; after a few SGD steps the "
            "weights differ by a few float32 ulps")


@dataclass(frozen=True)
class Case:
    """One row of the equivalence table."""

    name: str
    methods: list[dict[str, Any]]
    expect: str = "equal"  # or "per_device"
    tol: float = 1e-5
    why: str = _FLOAT32
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # recipe sections merged into the base
    compare: tuple[str, ...] = ("params", "buffers", "methods", "metrics")  # what must agree within tol
    doc: tuple[str, str] | None = None  # (module, phrase): where a per-device method states its DDP semantics


_RESNET = {"model": {"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}}}
_LM = {"task": "language_model",
       "data": {"name": "text", "val_fraction": 0.1, "test_fraction": 0.1, "options": {"seq_len": 16}},
       "model": {"name": "gpt", "options": {"dim": 16, "depth": 1, "heads": 2, "moe_experts": 4, "moe_top_k": 2}},
       "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
       "schedule": {"name": "constant"},
       "train": {"eval_batch_size": 64}}

CASES: list[Case] = [
    Case("no method (MLP)", []),
    Case("no method (ResNet, BatchNorm)", [], expect="per_device", changes=_RESNET,
         why="nn.BatchNorm normalises each device's batch with its own statistics (torch DDP semantics; "
             "SyncBatchNorm is not used), and DDP broadcasts rank 0's running statistics",
         doc=("regimen.train.trainer", "normalises each per-device batch with its own statistics")),
    Case("ghost_bn", [{"name": "ghost_bn", "ghost_batch_size": 8}], changes=_RESNET,
         compare=("params", "methods"),
         why="float32 rounding (as above); ghost batches of 8 never straddle the two devices' halves (b = 16 is a "
             "multiple of 8), so "
             "training is the same; the running statistics are rank 0's ghost batches only (buffers, compared in "
             "the table but not asserted)",
         doc=("regimen.batch.ghost_bn", "Under DDP ghost batches are cut from each device's batch")),
    Case("lr_scaling", [{"name": "lr_scaling", "base_batch_size": 16}]),
    Case("adaptive_batch", [{"name": "adaptive_batch", "eta": 0.05, "interval": 1, "max_samples": 64}],
         changes={"train": {"epochs": 3, "max_steps_per_epoch": 3}},
         why="float32 rounding (as above); the norm test uses the first max_samples samples of the global "
             "micro-batch (rank r tests its share of them) and all-reduces Σ∇f_i, Σ‖∇f_i‖² and the count"),
    Case("high_loss_batches", [{"name": "high_loss_batches", "fraction": 0.5, "start_epoch": 0}]),
    Case("load_balance", [{"name": "load_balance", "coef": 0.01}], changes=_LM,
         why="float32 rounding (as above); expert counts all-reduced (global-batch f_i), P_i local: the mean over "
             "ranks is the "
             "one-process loss; AdamW divides by sqrt(v), so a relative tolerance of the same order"),
    Case("local_learning (DGL auxiliaries with BatchNorm)", [{"name": "local_learning", "num_modules": 2,
                                                              "aux": "dgl"}],
         changes={"model": {"name": "mlp", "options": {"hidden": [16, 16]}}}, expect="per_device",
         why="the auxiliary networks' BatchNorm normalises each device's share (documented); the gradient "
             "averaging itself is checked by the next row",
         doc=("regimen.local.method", "normalise each process's share of the batch")),
    Case("local_learning + ghost_bn 8", [{"name": "local_learning", "num_modules": 2, "aux": "dgl"},
                                         {"name": "ghost_bn", "ghost_batch_size": 8}],
         changes={"model": {"name": "mlp", "options": {"hidden": [16, 16]}}}, compare=("params", "methods"),
         why="float32 rounding (as above); ghost batches of 8 make the auxiliaries' BatchNorm statistics the same "
             "slices in both runs; the method's own all-reduce averages the K modules' gradients; running "
             "statistics are per process (not asserted)"),
    Case("nested_width", [{"name": "nested_width", "widths": [0.25, 0.5, 0.75, 1.0], "n_random": 1,
                           "distill": True}],
         why="float32 rounding (as above); the sandwich is drawn from the method's own generator, seeded alike on "
             "every rank (it used ctx.generator, seeded per rank: each process trained other widths)"),
    Case("sam (synchronised ascent)", [{"name": "sam", "rho": 0.1, "local_ascent": False}]),
    Case("sam (local ascent, default)", [{"name": "sam", "rho": 0.1}], expect="per_device",
         why="m-sharpness with m = b by design: each process perturbs the weights by its own gradient; "
             "local_ascent=false is the equivalent setting (row above)",
         doc=("regimen.batch.sam", "m-sharpness with m = b")),
    Case("swa", [{"name": "swa", "start": 0.5, "update": "step"}]),
    Case("ema", [{"name": "ema", "decay": 0.9}]),
    Case("selective_backprop", [{"name": "selective_backprop", "keep": 0.5, "start": 0.0, "end": 1.0,
                                 "interrupt": 0}], expect="per_device",
         why="each process ranks and samples the examples of its own batch with its own generator",
         doc=("regimen.batch.selective_backprop", "Under DDP the selection is per device")),
]

CASE_NAMES = [case.name for case in CASES]


def case_named(name: str) -> Case:
    return next(case for case in CASES if case.name == name)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


VERSES = "".join(f"And the {w} of the {v} was {u}, and it was good in the {i % 7 + 1}th day.\n"
                 for i, (w, v, u) in enumerate([(a, b, c) for a in ("light", "earth", "water", "firmament")
                                                for b in ("LORD", "deep", "heaven") for c in ("night", "day", "seed")]
                                               * 4))


def recipe_for(case: Case, devices: int, folder: Path) -> dict[str, Any]:
    """The case's recipe for ``devices`` processes at per-device batch ``2b / devices``."""
    recipe: dict[str, Any] = {
        "name": slug(case.name), "seed": 0,
        "data": {"name": "digits", "val_fraction": 0.1},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "max_steps_per_epoch": int(os.environ.get("REGIMEN_EQUIVALENCE_STEPS", "4")),
                  "threads": 1, "dist_timeout_s": 120.0},
        "methods": case.methods,
    }
    for section, values in case.changes.items():
        recipe[section] = {**recipe.get(section, {}), **values} if isinstance(values, dict) else values
    if recipe.get("task") == "language_model":
        corpus = folder / "verses.txt"
        if not corpus.exists():
            corpus.write_text(VERSES, encoding="utf-8")
        recipe["data"] = dict(recipe["data"], root=str(corpus))
    recipe["train"] = dict(recipe["train"], devices=devices, batch_size=2 * PER_DEVICE // devices)
    return recipe


# ----------------------------------------------------------------------------------------------------- running
def _fit_cases(cases: list[Case], devices: int, folder: Path, tag: str) -> dict[str, float]:
    """Train every case into ``folder/<slug>/<tag>``; a case that fails leaves ``error.txt`` there. Seconds per
    case."""
    from regimen.train import fit

    seconds = {}
    for case in cases:
        out = folder / slug(case.name) / tag
        started = time.perf_counter()
        try:
            fit(recipe_for(case, devices, folder), out_dir=out, overwrite=True)
            rank = os.environ.get("RANK", "0")  # the seed of this rank's global stream (dropout), for the tests
            (out / f"torch_seed_rank{rank}.txt").write_text(str(torch.initial_seed()))
        except Exception:  # noqa: BLE001 - recorded for the test to report, the next case still runs
            out.mkdir(parents=True, exist_ok=True)
            (out / "error.txt").write_text(traceback.format_exc())
        seconds[case.name] = time.perf_counter() - started
    return seconds


def run_one_process(cases: list[Case], folder: Path) -> dict[str, float]:
    """Every case with ``devices=1`` at ``2b``, in this process."""
    threads = torch.get_num_threads()
    try:
        return _fit_cases(cases, 1, folder, "one")
    finally:
        torch.set_num_threads(threads)


def start_two_processes(cases: list[Case], folder: Path) -> tuple[list, Any]:
    """Start the two worker processes (ranks 0 and 1) on a reserved port; returns them and the port's holder (close
    it after :func:`finish_two_processes`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:  # the corpus (LM cases) exists before either rank reads it
        recipe_for(case, 2, folder)
    spec = folder / "spec.json"
    spec.write_text(json.dumps([case.name for case in cases]))
    holder = reserved_port()
    port = holder.__enter__()
    workers = []
    for rank in (0, 1):
        env = clean_env(port, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0")
        workers.append(start([sys.executable, "-m", "tests.distributed.harness", "worker", str(spec), str(folder)],
                             env))
    return workers, holder


def finish_two_processes(workers: list, holder: Any, timeout: float = TIMEOUT_S) -> dict[str, float]:
    """Wait for both workers (a timeout kills both and fails with a message); rank 0's seconds per case."""
    try:
        deadline = time.monotonic() + timeout
        outputs = [finish(w, max(1.0, deadline - time.monotonic()), what=f"equivalence worker rank {r}")
                   for r, w in enumerate(workers)]
    finally:
        holder.__exit__(None, None, None)
    line = next((x for x in outputs[0].splitlines() if x.startswith("SECONDS ")), "SECONDS {}")
    return json.loads(line[len("SECONDS "):])


def _worker(spec: str, folder: str) -> None:
    names = json.loads(Path(spec).read_text())
    seconds = _fit_cases([case_named(n) for n in names], 2, Path(folder), "two")
    print("SECONDS " + json.dumps(seconds), flush=True)


# --------------------------------------------------------------------------------------------------- comparing
def _max_diff(a: dict[str, Any], b: dict[str, Any], keys: list[str] | None = None) -> float:
    worst = 0.0
    for key in keys if keys is not None else a:
        x, y = a[key], b[key]
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            worst = max(worst, (x.double() - y.double()).abs().max().item() if x.numel() else 0.0)
    return worst


def _flat_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return {}
    out: dict[str, torch.Tensor] = {}
    for key, item in items:
        out.update(_flat_tensors(item, f"{prefix}/{key}"))
    return out


#: Logged values that are per process by nature (timings, memory) or per device (a method's local diagnostics).
_PER_PROCESS_KEYS = ("time", "samples_per_s", "memory", "wall", "aux_loss", "loss_w", "/kept")


def compare(case: Case, folder: Path) -> dict[str, Any]:
    """Largest absolute differences between the case's one- and two-process checkpoints."""
    from regimen.train import load_checkpoint

    runs = folder / slug(case.name)
    for tag in ("one", "two"):
        error = runs / tag / "error.txt"
        if error.exists():
            return {"error": f"{tag}: {error.read_text()[-2000:]}"}
    one, two = (load_checkpoint(runs / tag / "checkpoint.pt") for tag in ("one", "two"))
    model_one, model_two = one["model"], two["model"]
    params = [k for k in model_one if not _is_buffer(k, model_one[k])]
    buffers = [k for k in model_one if _is_buffer(k, model_one[k])]
    methods_one, methods_two = _flat_tensors(one["methods"]), _flat_tensors(two["methods"])
    metric_diff = 0.0
    for row_one, row_two in zip(one["history"], two["history"]):
        for key, value in row_one.items():
            if (isinstance(value, float) and key in row_two and math.isfinite(value)
                    and not any(part in key for part in _PER_PROCESS_KEYS)):
                metric_diff = max(metric_diff, abs(value - row_two[key]) / max(1.0, abs(value)))
    return {"steps": (one["step"], two["step"]), "params": _max_diff(model_one, model_two, params),
            "buffers": _max_diff(model_one, model_two, buffers),
            "methods": _max_diff(methods_one, methods_two) if methods_one else 0.0, "metrics": metric_diff,
            "error": None}


def _is_buffer(key: str, value: torch.Tensor) -> bool:
    return any(part in key for part in ("running_mean", "running_var", "num_batches_tracked")) \
        or not value.is_floating_point()


def worst(result: dict[str, Any], case: Case) -> float:
    """The largest of the differences the case asserts."""
    return max(result[k] for k in case.compare)


if __name__ == "__main__":  # python -m tests.distributed.harness worker SPEC OUT
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        raise SystemExit("usage: python -m tests.distributed.harness worker SPEC OUT")
    sys.path.insert(0, os.environ.get("REGIMEN_TEST_SRC", str(ROOT / "src")))
    _worker(sys.argv[2], sys.argv[3])
    # Leave like the regimen command does after a multi-process run (regimen.cli.run): end the process group, flush,
    # os._exit. Interpreter shutdown would destroy gloo's joinable threads and abort now and then (exit code -6,
    # "terminate called without an active exception"), failing a test whose results were all written.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
