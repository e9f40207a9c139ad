"""The method report: a markdown table (medians over seeds, deltas against the first recipe) and a PNG plot of
the task's primary metric against training wall time, one line per recipe."""

from __future__ import annotations

import json
import math
import os
import statistics
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["aggregate", "primary_metric", "write_report"]

_COLUMNS = (
    ("train_time", "train time (s)", "{:.1f}"),
    ("samples_per_s", "samples/s", "{:.0f}"),
    ("time_to_target", "time to target (s)", "{:.1f}"),
    ("peak_memory_mb", "peak memory (MB)", "{:.0f}"),
)


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def primary_metric(results: dict[str, Any]) -> str:
    """The summary key of the task's primary metric (``test_acc``, ``val_loss`` ...) the runs report."""
    return next((r["summary"]["primary_metric"] for r in results["runs"] if "primary_metric" in r.get("summary", {})),
                "test_acc")


def _columns(results: dict[str, Any]) -> tuple[tuple[str, str, str], ...]:
    metric = primary_metric(results)
    return ((f"final_{metric}", f"final {metric.replace('_', ' ')}", "{:.4f}"),
            (f"best_{metric}", f"best {metric.replace('_', ' ')}", "{:.4f}"), *_COLUMNS)


def aggregate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per recipe: medians over successful seeds of every summary column, spread of the primary metric, failures."""
    rows = []
    final = f"final_{primary_metric(results)}"
    for name in results["recipes"]:
        runs = [r for r in results["runs"] if r["recipe"] == name]
        ok = [r["summary"] for r in runs if "summary" in r]
        row: dict[str, Any] = {"recipe": name, "seeds": len(ok), "failed": len(runs) - len(ok)}
        for key, _, _ in _columns(results):
            row[key] = _median([s.get(key) for s in ok])
        values = [s[final] for s in ok if final in s]
        row["final_min"], row["final_max"] = (min(values), max(values)) if values else (math.nan, math.nan)
        row["reached_target"] = sum(s.get("time_to_target") is not None for s in ok)
        rows.append(row)
    return rows


def _fmt(template: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return template.format(value)


def _table(results: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    base = rows[0]
    columns = _columns(results)
    final = columns[0][0]
    header = ["recipe", "seeds"] + [title for _, title, _ in columns] + ["Δ vs " + base["recipe"], "time ratio"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["recipe"], str(row["seeds"]) + (f" ({row['failed']} failed)" if row["failed"] else "")]
        for key, _, template in columns:
            cell = _fmt(template, row[key])
            if key == final and row["seeds"] > 1:
                cell += f" [{row['final_min']:.4f}–{row['final_max']:.4f}]"
            if key == "time_to_target" and results.get("target"):
                cell += f" ({row['reached_target']}/{row['seeds']})"
            cells.append(cell)
        cells.append(_fmt("{:+.4f}", row[final] - base[final]))
        ratio = row["train_time"] / base["train_time"] if base["train_time"] else math.nan
        cells.append(_fmt("{:.2f}×", ratio))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = primary_metric(results)
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=110)
    for index, name in enumerate(results["recipes"]):
        histories = [r["history"] for r in results["runs"] if r["recipe"] == name and "history" in r]
        if not histories:
            continue
        length = min(len(h) for h in histories)
        evaluated = [e for e in range(length) if all(metric in h[e] for h in histories)]
        times = [statistics.median(h[e]["wall_time"] for h in histories) for e in evaluated]
        accs = [statistics.median(h[e][metric] for h in histories) for e in evaluated]
        axis.plot(times, accs, marker="o", markersize=3, label=name, color=f"C{index % 10}")
    if results.get("target"):
        axis.axhline(results["target"], color="grey", linestyle="--", linewidth=0.8, label="target")
    axis.set_xlabel("training wall time (s), median over seeds")
    axis.set_ylabel(f"{metric.replace('_', ' ')} (median over seeds)")
    axis.set_title("\n".join(textwrap.wrap(results.get("title", "regimen bench"), 70)), fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_report(folder: str | os.PathLike) -> Path:
    """(Re)write ``results.md`` and ``accuracy_vs_time.png`` from ``folder/results.json``."""
    folder = Path(folder)
    source = folder / "results.json"
    if not source.is_file():
        raise FileNotFoundError(f"{source} not found: run `regimen bench --out {folder}` first")
    results = json.loads(source.read_text())
    rows = aggregate(results)
    machine = results.get("machine", {})
    run_threads = sorted({r["summary"].get("threads") for r in results["runs"] if "summary" in r} - {None})
    threads = "/".join(str(t) for t in run_threads) or machine.get("threads")
    lines = [f"# {results.get('title', 'regimen bench')}", "",
             f"Medians over {results['repeats']} seed(s) per recipe; each run in a fresh process. "
             f"Training wall time excludes evaluation. Machine: {machine.get('cpus')} CPUs, torch "
             f"{machine.get('torch')}, {threads} torch thread(s) in the runs. Overrides: "
             f"{', '.join(results.get('overrides') or []) or 'none'}.", "", _table(results, rows), "",
             "![primary metric vs wall time](accuracy_vs_time.png)", ""]
    errors = [r for r in results["runs"] if "error" in r]
    if errors:
        lines += ["## Failed runs", ""] + [f"- {r['recipe']} seed {r['seed']}: {r['error']}" for r in errors] + [""]
    (folder / "results.md").write_text("\n".join(lines))
    _plot(results, folder / "accuracy_vs_time.png")
    return folder / "results.md"
