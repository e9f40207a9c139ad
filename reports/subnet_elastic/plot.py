"""Plot every "one network, many sizes" point against separately trained models, and render the README's tables.

Reads ``results/<method>__<setting>__seed<seed>.json`` (keys ``method, task, setting, seed, macs, params,
metric_name, metric``), groups them by task (one panel each: accuracy-like metrics against MACs, loss-like metrics
— ``metric_name`` containing "loss" or "perplexity" — against parameters), and draws for every (method, setting)
the median over seeds with a min–max bar. Writes ``plot.png`` and replaces the text between
``<!-- tables:start -->`` and ``<!-- tables:end -->`` in ``README.md`` with one table per task.

The knee runs (``knee/*.json``: separately trained networks at several epoch budgets, one seed, with their
validation curves) go to ``knee.png`` and to the table between ``<!-- knee:start -->`` and ``<!-- knee:end -->``.

Usage: python reports/subnet_elastic/plot.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
KNEE = HERE / "knee"
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
KNEE_START, KNEE_END = "<!-- knee:start -->", "<!-- knee:end -->"
#: drawing order and style: separately trained models first (the reference every method is judged against)
STYLE = {"separate": ("black", "s", "-"), "nested_width": ("tab:blue", "o", "-"), "ofa": ("tab:red", "^", "none"),
         "ofa_all": ("tab:orange", "v", "none"), "maestro": ("tab:green", "D", "-"), "trp": ("tab:purple", "P", "none")}


def load(folder: Path = RESULTS) -> list[dict]:
    points = []
    for path in sorted(folder.glob("*.json")):
        point = json.loads(path.read_text())
        missing = {"method", "task", "setting", "seed", "macs", "params", "metric_name", "metric"} - set(point)
        if missing:
            raise SystemExit(f"{path}: missing keys {sorted(missing)}")
        points.append(point)
    return points


def lower_is_better(metric_name: str) -> bool:
    return any(word in metric_name for word in ("loss", "perplexity", "bits_per_byte", "error"))


def summarise(points: list[dict]) -> dict[str, list[dict]]:
    """``{task: [row, ...]}``: one row per (method, setting) with median/min/max of the metric over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in points:
        groups[(p["task"], p["method"], p["setting"])].append(p)
    tables: dict[str, list[dict]] = defaultdict(list)
    for (task, method, setting), runs in groups.items():
        values = [r["metric"] for r in runs]
        row = {"method": method, "setting": setting, "seeds": len(runs), "metric_name": runs[0]["metric_name"],
               "macs": statistics.median(r["macs"] for r in runs),
               "params": statistics.median(r["params"] for r in runs),
               "median": statistics.median(values), "min": min(values), "max": max(values)}
        extra = [r["accuracy_without_bn_recalibration"] for r in runs if "accuracy_without_bn_recalibration" in r]
        if extra:
            row["no_recal"] = statistics.median(extra)
        tables[task].append(row)
    for rows in tables.values():
        rows.sort(key=lambda r: (list(STYLE).index(r["method"]) if r["method"] in STYLE else 99, r["macs"]))
    return tables


def plot(tables: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted(tables)
    fig, axes = plt.subplots(1, len(tasks), figsize=(7 * len(tasks), 5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = tables[task]
        loss = lower_is_better(rows[0]["metric_name"])
        # parameters where MACs cannot separate the points (a loss panel; LoRA arms of one model differ only in
        # their trainable parameters)
        x_key = "params" if loss or len({r["macs"] for r in rows}) == 1 else "macs"
        by_method: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            by_method[row["method"]].append(row)
        others = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3)
        for method, mrows in by_method.items():
            color, marker, line = STYLE.get(method) or (next(others), "x", "none")
            mrows = sorted(mrows, key=lambda r: r[x_key])
            xs = [r[x_key] for r in mrows]
            ys = [r["median"] for r in mrows]
            errors = [[r["median"] - r["min"] for r in mrows], [r["max"] - r["median"] for r in mrows]]
            seeds = min(r["seeds"] for r in mrows)
            ax.errorbar(xs, ys, yerr=errors, color=color, marker=marker, linestyle=line, capsize=3,
                        label=f"{method} (n={seeds})")
        ax.set_xscale("log")
        ax.set_xlabel("parameters" if x_key == "params" else "MACs per sample")
        ax.set_ylabel(rows[0]["metric_name"])
        ax.set_title(f"{task}: median and min–max over seeds")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def markdown(tables: dict[str, list[dict]]) -> str:
    parts = []
    for task in sorted(tables):
        rows = tables[task]
        no_recal = any("no_recal" in r for r in rows)
        head = "| method | setting | seeds | MACs | params | " + rows[0]["metric_name"] + " median [min, max] |"
        head += " without BN recalibration (median) |" if no_recal else ""
        lines = [f"**{task}**", "", head, "|" + "---|" * (6 + no_recal)]
        for r in rows:
            line = (f"| {r['method']} | {r['setting']} | {r['seeds']} | {r['macs'] / 1e6:.2f} M | {r['params']:,.0f} | "
                    f"{r['median']:.4f} [{r['min']:.4f}, {r['max']:.4f}] |")
            if no_recal:
                line += f" {r['no_recal']:.4f} |" if "no_recal" in r else " |"
            lines.append(line)
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def knee(points: list[dict], out: Path) -> str:
    """``knee.png`` (left: final test accuracy against the epoch budget per width; right: the validation curve of
    every run) and its markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for p in points:
        by_setting[p["setting"]].append(p)
    lines = ["| network | train images | epochs | seed | test accuracy (final) | validation accuracy by epoch |",
             "|---|---|---|---|---|---|"]
    for setting in sorted(by_setting, key=lambda s: float(s.split("_")[0][1:])):
        runs = sorted(by_setting[setting], key=lambda p: (p["epochs"], p["seed"]))
        left.plot([p["epochs"] for p in runs], [p["metric"] for p in runs], marker="o", label=setting)
        for p in runs:
            curve = p.get("val_curve") or []
            right.plot([c[0] for c in curve], [c[1] for c in curve], alpha=0.8,
                       label=f"{setting}, {p['epochs']} epochs")
            shown = " ".join(f"{c[1]:.3f}" for c in curve)
            lines.append(f"| {setting} | {p.get('train_subset', '')} | {p['epochs']} | {p['seed']} | "
                         f"{p['metric']:.4f} | {shown} |")
    left.set_xlabel("epoch budget (cosine schedule to zero over the budget)")
    left.set_ylabel("test accuracy after the budget")
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    left.set_title("separately trained: final accuracy vs budget")
    right.set_title("separately trained: validation curves")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return "\n".join(lines)


def replace_between(text: str, start: str, end: str, body: str, where: Path) -> str:
    if start not in text or end not in text:
        raise SystemExit(f"{where} has no {start} ... {end} markers")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    return f"{before}{start}\n{body}\n{end}{after}"


def main() -> None:
    tables = summarise(load())
    if not tables:
        raise SystemExit(f"no results in {RESULTS}")
    plot(tables, HERE / "plot.png")
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"{START}\n{END}\n"
    text = replace_between(text, START, END, markdown(tables), readme)
    knee_points = load(KNEE) if KNEE.exists() else []
    if knee_points:
        table = knee(knee_points, HERE / "knee.png")
        text = replace_between(text, KNEE_START, KNEE_END, table, readme)
        print(table)
    readme.write_text(text)
    print(markdown(tables))


if __name__ == "__main__":
    main()
