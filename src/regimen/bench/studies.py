"""Reading committed ``regimen study`` folders: where they are, their results, their runs, and a table of any metric.

One reader for the scripts that table studies (``reports/evidence/index.py``, ``reports/tasks/tabulate.py``,
``reports/tasks/study_metrics.py``) and for the method cards (``regimen cards``), which used to each carry a copy.

A study folder holds ``study.json`` (what was trained) and ``results.json`` (``regimen study`` / ``regimen report``
wrote it), and ``runs/<arm>-seed<s>/summary.json`` for every finished run. The run folders are git-ignored in most
reports; :func:`run_summaries` then falls back to the per-run records in ``results.json``, which carry the primary
metric and the training time, so a table of those still works from a fresh checkout.

A per-arm table cell is ``median [min, max]`` over seeds; for an arm other than the base it is followed by the median
of the paired differences ``arm_s − base_s`` over the seeds both have (the study's own ``results.md`` gives the mean
and its 95 % interval for the primary metric).
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regimen.errors import ConfigurationError
from regimen.method import checked_arguments

__all__ = ["EvidenceTask", "find_studies", "format_delta", "load_index", "median_spread", "metric_table",
           "read_results", "resolve_metric", "run_summaries"]

STUDY_FILE = "study.json"
RESULTS_FILE = "results.json"
INDEX_FILE = "index.toml"


@dataclass
class EvidenceTask:
    """One task of the evidence index: its study folders (named, then found under its ``folders``) and its
    hand-written reports ``(path, what it holds)``."""

    name: str
    studies: list[Path] = field(default_factory=list)
    reports: list[tuple[Path, str]] = field(default_factory=list)


def _folder(folder: str | os.PathLike, label: str = "folder") -> Path:
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(f"{label} must be a path (str or os.PathLike), got {type(folder).__name__}")
    return Path(folder)


@checked_arguments
def find_studies(root: str | os.PathLike) -> list[Path]:
    """Every study folder under ``root`` (``root`` itself included): folders holding both ``study.json`` and
    ``results.json``, sorted by path. Run and recipe folders inside a study are not searched."""
    root = _folder(root, "root")
    if not root.is_dir():
        raise ValueError(f"root: {root} is not a folder")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("runs", "recipes") and not d.startswith("."))
        if STUDY_FILE in filenames and RESULTS_FILE in filenames:
            found.append(Path(dirpath))
    return sorted(found)


@checked_arguments
def read_results(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``results.json`` of the study in ``folder``.

    Raises:
        ConfigurationError: ``folder`` holds no study results, or they are not a ``regimen study``'s (a
            ``regimen bench`` folder also writes a results.json, without ``rows``).
    """
    path = _folder(folder) / RESULTS_FILE
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path.parent} holds no study results ({RESULTS_FILE} is missing; "
                                 "`regimen report FOLDER` writes it from the runs)") from None
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{path}: not JSON ({error})") from None
    if not isinstance(results, dict) or not {"rows", "spec", "primary_metric"} <= set(results):
        raise ConfigurationError(f"{path} is not the results of a `regimen study` (no rows/spec/primary_metric)")
    return results


@checked_arguments
def run_summaries(folder: str | os.PathLike) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: summary}}`` of the finished runs of the study (or ``regimen bench`` seeds) in ``folder``.

    Reads ``runs/<arm>-seed<s>/summary.json``; when there is no run folder (git-ignored) it falls back to the runs
    recorded in ``results.json`` (the primary metric, training time, time-to-target and peak memory only). The base
    arm comes first.

    Raises:
        ConfigurationError: neither finished runs nor a results.json with runs.
    """
    folder = _folder(folder)
    table: dict[str, dict[int, dict[str, Any]]] = {}
    for summary in sorted((folder / "runs").glob("*/summary.json")):
        arm, sep, seed = summary.parent.name.rpartition("-seed")
        if not sep or not seed.isdigit():
            continue
        table.setdefault(arm, {})[int(seed)] = json.loads(summary.read_text(encoding="utf-8"))
    if not table and (folder / RESULTS_FILE).exists():
        results = read_results(folder)
        for run in results.get("runs", []):
            if "error" in run or "pending" in run:
                continue
            record = {k: v for k, v in run.items() if k not in ("arm", "seed")}
            table.setdefault(_slug(run["arm"]), {})[int(run["seed"])] = record
    if not table:
        raise ConfigurationError(f"{folder} has no finished runs (runs/*/summary.json) and no results.json with "
                                 "runs; run folders are git-ignored in most reports: rerun the study's command")
    return dict(sorted(table.items(), key=lambda kv: (kv[0] != "base", list(table).index(kv[0]))))


def _slug(label: str) -> str:  # the run folder name of an arm label (regimen.bench.study._slug)
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


@checked_arguments
def resolve_metric(name: str, summaries: Iterable[dict[str, Any]]) -> str:
    """The summary key a metric name means: the name itself when a summary has it, else ``final_test_<name>``
    (so ``acc``, ``final_test_acc``, ``final_val_mae`` and ``process_cpu_time`` all work)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}")
    summaries = list(summaries)
    if any(name in s for s in summaries):
        return name
    prefixed = f"final_test_{name.removeprefix('final_test_')}"
    return prefixed if any(prefixed in s for s in summaries) else name


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]


@checked_arguments
def median_spread(values: Iterable[Any], template: str = "{:.3f}", scale: float = 1.0) -> str:
    """``median [min, max]`` of the finite numbers in ``values`` (times ``scale``), ``–`` when there is none."""
    if not isinstance(template, str) or "{" not in template:
        raise TypeError(f"template must be a format string such as '{{:.3f}}', got {template!r}")
    kept = [scale * v for v in _finite(values)]
    if not kept:
        return "–"
    return f"{template.format(statistics.median(kept))} [{template.format(min(kept))}, {template.format(max(kept))}]"


@checked_arguments
def metric_table(folder: str | os.PathLike, metrics: list[str] | None = None, digits: int = 3,
                 time_column: bool = True) -> str:
    """A markdown table of the study (or bench) in ``folder``: per arm the number of seeds and, per metric,
    ``median [min, max]`` over seeds followed (arms other than the base) by ``(Δ median ±x)``, the median paired
    difference against the base at the same seed; and the median training time.

    Args:
        folder: a study folder (``runs/`` or ``results.json``).
        metrics: metric names (see :func:`resolve_metric`); default every ``final_test_*`` key of the base's runs.
        digits: decimals of every number.
        time_column: add the median training wall time (s).
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be an int >= 0, got {digits!r}")
    table = run_summaries(folder)
    every = [s for seeds in table.values() for s in seeds.values()]
    base = table.get("base", {})
    if metrics is None:
        first = next(iter(base.values()), every[0])
        metrics = sorted(k for k in first if k.startswith("final_test_"))
    keys = [resolve_metric(name, every) for name in metrics]
    number = f"{{:.{digits}f}}"
    header = ["arm", "seeds", *metrics] + (["train s (median)"] if time_column else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arm, seeds in table.items():
        cells = [f"`{arm}`", str(len(seeds))]
        for key in keys:
            cell = median_spread((s.get(key) for s in seeds.values()), number)
            if arm != "base" and cell != "–":
                diffs = []
                for seed, summary in seeds.items():
                    pair = _finite([summary.get(key), base.get(seed, {}).get(key)])
                    if len(pair) == 2:
                        diffs.append(pair[0] - pair[1])
                if diffs:
                    cell += f" (Δ median {statistics.median(diffs):+.{digits}f})"
            cells.append(cell)
        if time_column:
            times = _finite(s.get("train_time") for s in seeds.values())
            cells.append(f"{statistics.median(times):.0f}" if times else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@checked_arguments
def load_index(path: str | os.PathLike) -> list[EvidenceTask]:
    """The tasks of an evidence index (``reports/evidence/index.toml``; a folder means its ``index.toml``)::

        [[tasks]]
        name = "regression"
        studies = ["../tasks/regression/study-conr"]                    # relative to the index file
        folders = ["../tasks/regression"]          # and every study found under these folders, after those
        reports = [["../tasks/regression/README.md", "the task report"]]  # hand-written, with what each holds

    Raises:
        ConfigurationError: invalid TOML, an unknown key, or a study folder without results / a report that is
            missing (named, with its task).
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = _folder(path, "path")
    if path.is_dir():
        path = path / INDEX_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no evidence index there") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: invalid TOML: {error}") from None
    if set(raw) - {"tasks"}:
        raise ConfigurationError(f"{path}: unknown key {sorted(set(raw) - {'tasks'})[0]!r}; an index has [[tasks]]")
    tasks = []
    for index, entry in enumerate(raw.get("tasks", [])):
        where = f"{path}: tasks.{index}"
        unknown = sorted(set(entry) - {"name", "studies", "folders", "reports"})
        if unknown or not isinstance(entry.get("name"), str):
            raise ConfigurationError(f"{where}: a task has name (a string), studies, folders and reports"
                                     + (f"; unknown key {unknown[0]!r}" if unknown else ""))
        task = EvidenceTask(entry["name"])
        for study in entry.get("studies", []):
            folder = path.parent / study
            if not (folder / RESULTS_FILE).is_file():
                raise ConfigurationError(f"{where} ({entry['name']}): study {study!r} has no {RESULTS_FILE}")
            task.studies.append(folder)
        for name in entry.get("folders", []):
            if not (path.parent / name).is_dir():
                raise ConfigurationError(f"{where} ({entry['name']}): folder {name!r} does not exist")
            known = {study.resolve() for study in task.studies}
            task.studies += [study for study in find_studies(path.parent / name) if study.resolve() not in known]
        for report in entry.get("reports", []):
            if not (isinstance(report, list) and len(report) == 2 and all(isinstance(r, str) for r in report)):
                raise ConfigurationError(f"{where} ({entry['name']}): a report is [path, what it holds], got "
                                         f"{report!r}")
            if not (path.parent / report[0]).is_file():
                raise ConfigurationError(f"{where} ({entry['name']}): report {report[0]!r} does not exist")
            task.reports.append((path.parent / report[0], report[1]))
        tasks.append(task)
    return tasks


def _percent(results: dict[str, Any]) -> bool:  # accuracy-like metrics read as percentage points
    return str(results.get("primary_metric") or "").endswith(("acc", "accuracy"))


@checked_arguments
def format_delta(row: dict[str, Any], results: dict[str, Any]) -> str:
    """A study row's mean paired difference and 95 % interval as text: ``+0.96 pp [+0.07, +1.85]`` for an accuracy
    (percentage points), ``-0.012 [-0.020, -0.004]`` otherwise; ``–`` for a missing number."""
    scale, unit, number = (100.0, " pp", "{:+.2f}") if _percent(results) else (1.0, "", "{:+.4g}")

    def shown(value: Any) -> str:
        return number.format(scale * value) if _finite([value]) else "–"

    return f"{shown(row.get('mean_difference'))}{unit} [{shown(row.get('ci_low'))}, {shown(row.get('ci_high'))}]"
