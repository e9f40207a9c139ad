"""The dependency tracer against Torch-Pruning's DependencyGraph on the test zoo (tests/subnet/archs*.py).

For every architecture, both libraries are asked the same three questions:

1. *Groups*: build the dependency groups (regimen ``trace_dependencies``; Torch-Pruning
   ``DependencyGraph().build_dependency`` + ``get_all_groups(root_module_types=[Conv, Linear])``). Wall time: median
   of 3 builds (the first one is not timed), 1 thread.
2. *Exact removal*: zero every other unit of a group (its "out" slices: filters, biases, norm affine parameters),
   remove those units, and compare outputs with the zeroed model (max |difference|; exact means <= 1e-5). regimen:
   all lossless groups at once (``zero_units`` + ``prune_groups``). Torch-Pruning: each root group separately on a
   fresh copy (zero the slices its dependencies name as out-channels, then ``group.prune()``); the worst group is
   reported, and "n/a" when no dependency of a group could be zeroed generically. Groups with a LayerNorm are left
   out for Torch-Pruning (no pruner removes those exactly; regimen flags them lossy and leaves them out too).
3. *Prune 30 %*: ``prune(ratio=0.3, scope="uniform")`` vs ``MetaPruner(GroupMagnitudeImportance(p=2),
   pruning_ratio=0.3)`` with the output layer ignored; does the pruned model run with the same output shape, and
   how many parameters remain.

Torch-Pruning runs in a child process per architecture; one that takes longer than ``--timeout`` seconds is killed and
reported as a timeout (its graph walk hangs inside C code on some models, where no signal gets through).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/subnet_tracer.py [--timeout 60] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from regimen.subnet import prune, prune_groups, trace_dependencies, zero_units  # noqa: E402
from regimen.subnet._common import normalize_inputs  # noqa: E402
from tests.subnet.archs import ARCHS, randomize_norms  # noqa: E402
from tests.subnet.archs_real import REAL_ARCHS, output  # noqa: E402


def run(model: nn.Module, x: Any) -> torch.Tensor:
    args, kwargs = normalize_inputs(x)
    with torch.no_grad():
        return output(model(*args, **kwargs))


def build(name: str) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    model, x = {**ARCHS, **REAL_ARCHS}[name]()
    randomize_norms(model)
    return model.eval(), x


def median_time(fn: Any, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ours(name: str) -> dict[str, Any]:
    model, x = build(name)
    row: dict[str, Any] = {}
    try:
        row["build_s"] = median_time(lambda: trace_dependencies(model, x))
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {str(error)[:120]}"}
    graph = trace_dependencies(model, x)
    row["heads"] = sum(g.kind == "head" for g in graph.groups)
    row["exact_groups"] = sum(g.kind == "channel" and g.lossless and g.size > 1 for g in graph.groups)
    row["lossy_groups"] = sum(not g.lossless for g in graph.groups)
    plan = {}
    for group in graph.groups:
        if group.lossless:
            zero_units(model, group, torch.arange(1, group.size, 2))
            plan[group] = torch.arange(0, group.size, 2)
    before = run(model, x)
    prune_groups(model, plan, example_inputs=x)
    row["zeroed_removed_maxdiff"] = float((run(model, x) - before).abs().max())
    model, x = build(name)
    shape = run(model, x).shape
    params = sum(p.numel() for p in model.parameters())
    try:
        prune(model, x, ratio=0.3, scope="uniform")
        row["prune30_runs"] = run(model, x).shape == shape
        row["prune30_params"] = f"{params} -> {sum(p.numel() for p in model.parameters())}"
    except Exception as error:  # noqa: BLE001
        row["prune30_runs"] = f"{type(error).__name__}: {str(error)[:100]}"
    return row


def _output_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.Conv1d)]
    extra = [m for m in (getattr(getattr(model, "decoder", None), "norm", None),
                         getattr(getattr(model, "encoder", None), "norm", None)) if isinstance(m, nn.Module)]
    return layers[-1:] + (extra if isinstance(model, nn.Transformer) else [])


def _tp_zero(group: Any) -> int:
    """Zero the out-channel slices a Torch-Pruning group names; returns how many dependencies were zeroed."""
    zeroed = 0
    with torch.no_grad():
        for item in group:
            dep, idxs = item.dep, torch.as_tensor(list(item.idxs), dtype=torch.long)
            if "out_channels" not in getattr(dep.handler, "__name__", ""):
                continue
            module = dep.target.module
            if isinstance(module, nn.Parameter):
                dim = getattr(dep.target, "pruning_dim", 0)
                index = [slice(None)] * module.ndim
                index[dim] = idxs
                module[tuple(index)] = 0
                zeroed += 1
            elif isinstance(module, nn.modules.conv._ConvNd) and module.transposed:
                module.weight[:, idxs] = 0
                zeroed += 1
            elif isinstance(module, nn.Embedding):
                module.weight[:, idxs] = 0
                zeroed += 1
            elif isinstance(module, nn.MultiheadAttention):
                module.out_proj.weight[idxs] = 0
                if module.out_proj.bias is not None:
                    module.out_proj.bias[idxs] = 0
                zeroed += 1
            elif isinstance(getattr(module, "weight", None), torch.Tensor):
                module.weight[idxs] = 0
                zeroed += 1
            if isinstance(getattr(module, "bias", None), torch.Tensor) and not isinstance(module, nn.Parameter):
                module.bias[idxs] = 0
    return zeroed


def theirs_in_child(name: str, timeout: int) -> dict[str, Any]:
    """``theirs(name)`` in a child process, killed after ``timeout`` seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, __file__, "--torch-pruning-only", name], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout} s (build_dependency hangs)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"child failed: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def theirs(name: str) -> dict[str, Any]:
    import torch_pruning as tp

    model, x = build(name)
    example = x if isinstance(x, torch.Tensor) else tuple(x) if isinstance(x, tuple) else x
    roots = [nn.Conv1d, nn.Conv2d, nn.Linear]
    row: dict[str, Any] = {}
    try:
        row["build_s"] = median_time(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=example))
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {str(error)[:120]}"}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    ignored = _output_layers(model)
    groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=roots))
    row["groups"] = len(groups)
    worst, skipped, lossy = 0.0, 0, 0
    for i in range(len(groups)):
        trial, _ = build(name)
        g = tp.DependencyGraph().build_dependency(trial, example_inputs=example)
        group = list(g.get_all_groups(ignored_layers=_output_layers(trial), root_module_types=roots))[i]
        n = len(group[0].idxs)
        if n < 2:
            continue
        try:
            pruning = g.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, list(range(1, n, 2)))
            if any(isinstance(item.dep.target.module, nn.LayerNorm) for item in pruning):
                lossy += 1  # normalised over these channels: no pruner removes them exactly (regimen: lossy)
                continue
            if _tp_zero(pruning) == 0:
                skipped += 1
                continue
            before = run(trial, x)
            pruning.prune()
            worst = max(worst, float((run(trial, x) - before).abs().max()))
        except Exception as error:  # noqa: BLE001
            row["zeroed_removed_maxdiff"] = f"{type(error).__name__}: {str(error)[:100]}"
            break
    else:
        row["zeroed_removed_maxdiff"] = worst if skipped + lossy < len(groups) else "n/a"
    row["layernorm_groups"] = lossy
    model, x = build(name)
    shape = run(model, x).shape
    params = sum(p.numel() for p in model.parameters())
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.3, global_pruning=False, ignored_layers=_output_layers(model))
        pruner.step()
        row["prune30_runs"] = run(model, x).shape == shape
        row["prune30_params"] = f"{params} -> {sum(p.numel() for p in model.parameters())}"
    except Exception as error:  # noqa: BLE001
        row["prune30_runs"] = f"{type(error).__name__}: {str(error)[:100]}"
    return row


def _diff(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e} " + ("exact" if value <= 1e-5 else "CHANGED")
    return str(value)[:70]


def _pruned(row: dict[str, Any]) -> str:
    value = row.get("prune30_runs")
    if value is True:
        return "runs, params " + row.get("prune30_params", "")
    return "output shape changed" if value is False else str(value)[:70]


def markdown(data: dict[str, Any]) -> str:
    """The report table of a results file."""
    lines = ["| architecture | regimen groups: heads / exact channel / lossy | regimen: zeroed units removed, max abs "
             "diff | regimen: prune 30 % | TP groups | TP: zeroed units removed, worst group | TP: prune 30 % | "
             "build time regimen / TP (s) |", "|---|---|---|---|---|---|---|---|"]
    for name, row in data["rows"].items():
        ours_row, tp_row = row["regimen"], row["torch_pruning"]
        if "error" in ours_row:
            ours_cells = ["error: " + ours_row["error"][:60], "", ""]
        else:
            ours_cells = [f"{ours_row['heads']} / {ours_row['exact_groups']} / {ours_row['lossy_groups']}",
                          _diff(ours_row["zeroed_removed_maxdiff"]), _pruned(ours_row)]
        if "error" in tp_row:
            tp_cells, tp_time = [tp_row["error"][:70], "", ""], "—"
        else:
            tp_cells = [f"{tp_row['groups']} ({tp_row.get('layernorm_groups', 0)} with LayerNorm)",
                        _diff(tp_row.get("zeroed_removed_maxdiff")), _pruned(tp_row)]
            tp_time = f"{tp_row['build_s']:.3f}"
        ours_time = f"{ours_row['build_s']:.3f}" if "build_s" in ours_row else "—"
        lines.append(f"| {name} | " + " | ".join(ours_cells + tp_cells) + f" | {ours_time} / {tp_time} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed for Torch-Pruning on one model")
    parser.add_argument("--torch-pruning-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--table", help="print the markdown table of a results file and stop")
    parser.add_argument("--out", default=str(ROOT / "reports" / "subnet" / "tracer.json"))
    parser.add_argument("archs", nargs="*", help="architectures (default: every one in the zoo)")
    options = parser.parse_args()
    if options.table:
        print(markdown(json.loads(Path(options.table).read_text())))
        return 0
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if options.torch_pruning_only:
        print(json.dumps(theirs(options.archs[0])))
        return 0
    import torch_pruning
    import transformers

    names = options.archs or [*ARCHS, *REAL_ARCHS]
    rows = {}
    for name in names:
        rows[name] = {"regimen": ours(name), "torch_pruning": theirs_in_child(name, options.timeout)}
        print(name, json.dumps(rows[name]), flush=True)
    setup = {"torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
             "transformers": transformers.__version__, "threads": 1, "loadavg": os.getloadavg()}
    Path(options.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    print(json.dumps(setup))
    print(markdown({"rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
