"""Train recipe arms over paired seeds (one fresh `regimen train` process per run, one thread) and tabulate them.

    PYTHONPATH=src python reports/wave2/run_arms.py --out reports/wave2/noisy --seeds 0 1 2 \
        --arm ce=noisy/ce --arm nested=noisy/nested [--set train.epochs=15] \
        [--arm short=noisy/ce@train.epochs=7;optim.lr=0.1]
    PYTHONPATH=src python reports/wave2/run_arms.py --out reports/wave2/noisy --table   # only the table

A finished run (its summary.json exists) is not redone. The table gives, per arm, the median and the range (min-max)
over seeds of the final test accuracy, the best test accuracy over epochs, the samples trained on, the training
time and the method logs of the last epoch, and writes table.md in --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def run(out: Path, arms: dict[str, str], seeds: list[int], overrides: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="src")
    for seed in seeds:
        for arm, spec in arms.items():
            recipe, _, extra = spec.partition("@")  # label=recipe@key=value;key=value: arm-specific overrides
            folder = out / f"{arm}-seed{seed}"
            if (folder / "summary.json").exists():
                continue
            command = [sys.executable, "-m", "regimen", "train", "--recipe", recipe, "--out", str(folder),
                       "--overwrite", "--quiet", "--set", f"seed={seed}", "--set", "train.threads=1"]
            for item in overrides + [e for e in extra.split(";") if e]:
                command += ["--set", item]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True, env=env)


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def table(out: Path) -> str:
    rows: dict[str, list[dict]] = {}
    metric_name = "test_acc"
    for summary_path in sorted(out.glob("*-seed*/summary.json")):
        arm = summary_path.parent.name.rsplit("-seed", 1)[0]
        summary = json.loads(summary_path.read_text())
        history = [json.loads(line) for line in (summary_path.parent / "metrics.jsonl").read_text().splitlines()]
        samples = sum(h.get("samples_per_s", 0) * h.get("epoch_time", 0) for h in history)
        logs = {k: v for k, v in history[-1].items() if "/" in k}
        key = summary["primary_metric"]  # test_acc, test_bits_per_byte, ...
        metric_name = key
        rows.setdefault(arm, []).append({"final": summary[f"final_{key}"], "best": summary[f"best_{key}"],
                                         "time": summary["train_time"], "samples": samples, "logs": logs})
    metric = metric_name.replace("_", " ") if rows else "test acc"
    lines = [f"| arm | seeds | final {metric}, median [min, max] | best-epoch {metric} | samples trained | "
             "train time s (median) | last-epoch method logs (seed 0) |", "|---|---|---|---|---|---|---|"]
    for arm, runs in rows.items():
        logs = ", ".join(f"{k}={v:.4g}" for k, v in runs[0]["logs"].items())
        lines.append(f"| {arm} | {len(runs)} | {_spread([r['final'] for r in runs])} | "
                     f"{_spread([r['best'] for r in runs])} | {statistics.median(r['samples'] for r in runs):,.0f} | "
                     f"{statistics.median(r['time'] for r in runs):.0f} | {logs} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arm", action="append", default=[], help="label=recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--table", action="store_true", help="only write the table")
    args = parser.parse_args()
    if not args.table:
        run(args.out, dict(a.split("=", 1) for a in args.arm), args.seeds, args.overrides)
    print(table(args.out))


if __name__ == "__main__":
    main()
