"""``regimen bench``: run recipes with fixed seeds, each in a fresh process, and collect what they measured.

A fresh process per run keeps the peak-memory reading (the process's max RSS on CPU) honest and isolates runs
from each other's allocator state. Every recipe is validated before anything runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from regimen.bench.report import write_report
from regimen.errors import ConfigurationError, RegimenError
from regimen.recipes import find_recipe
from regimen.train.recipe import apply_overrides, parse_recipe, read_recipe_file

__all__ = ["BenchError", "run_bench"]


class BenchError(RegimenError, RuntimeError):
    """Some of a bench's runs failed; ``results.json`` holds each failed run's last error line."""


def _unique_names(names: list[str]) -> list[str]:
    """Recipe names, with ``#2``, ``#3`` ... appended to repeats so every recipe keeps its own row."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def run_bench(
    recipes: list[str | os.PathLike],
    out: str | os.PathLike,
    repeats: int = 1,
    overrides: list[str] | None = None,
    target: float | None = None,
    title: str | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run every recipe ``repeats`` times (seeds ``seed, seed+1, ...``); write results.json/.md and the plot.

    The first recipe is the baseline the report compares against. Returns the results dict.
    """
    if repeats < 1:
        raise ConfigurationError(f"repeats must be >= 1, got {repeats}")
    if not recipes:
        raise ConfigurationError("recipes must name at least one recipe file")
    overrides = list(overrides or [])
    if target is not None:
        overrides.append(f"train.target={target}")
    paths = [find_recipe(p) for p in recipes]  # names of shipped recipes become files the subprocess can read
    parsed = [parse_recipe(apply_overrides(read_recipe_file(p), overrides)) for p in paths]  # fail before running
    names = _unique_names([r.name for r in parsed])
    out = Path(out)
    runs_dir = out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for path, recipe, name in zip(paths, parsed, names):
        for repeat in range(repeats):
            seed = recipe.seed + repeat
            run_dir = runs_dir / f"{name.replace('#', '-')}-seed{seed}"
            command = [sys.executable, "-m", "regimen", "train", "--recipe", str(path), "--out", str(run_dir),
                       "--overwrite", "--quiet", "--set", f"seed={seed}"]
            for override in overrides:
                command += ["--set", override]
            if not quiet:
                print(f"bench: {name} seed {seed} ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True)
            run: dict[str, Any] = {"recipe": name, "path": str(path), "seed": seed,
                                   "process_time": time.perf_counter() - started}
            if completed.returncode != 0:
                run["error"] = (completed.stderr.strip().splitlines() or ["failed"])[-1]
                if not quiet:
                    print(f"bench: {name} seed {seed} failed: {run['error']}", file=sys.stderr)
            else:
                run["summary"] = json.loads((run_dir / "summary.json").read_text())
                run["history"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                                  if line.strip()]
                if not quiet:
                    s = run["summary"]
                    key = s["primary_metric"]
                    print(f"bench: {name} seed {seed}: {key.replace('_', ' ')} {s[f'final_{key}']:.4f}, "
                          f"{s['train_time']:.1f} s", file=sys.stderr)
            runs.append(run)
    results = {"title": title or "regimen bench", "recipes": names, "repeats": repeats, "overrides": overrides,
               "target": target, "runs": runs, "machine": _machine()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out)
    if any("error" in run for run in runs):
        failed = sorted({run["recipe"] for run in runs if "error" in run})
        raise BenchError(f"bench runs failed for {', '.join(failed)}; see {out / 'results.json'}")
    return results


def _machine() -> dict[str, Any]:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}
