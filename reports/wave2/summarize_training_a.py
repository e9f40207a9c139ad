"""Median and spread (min-max) per arm of the JSON results of run_comp_sum / run_batchformer / run_conadv /
run_agvm / run_lanczos, as markdown tables.

Run: cd WORKTREE && python reports/wave2/summarize_training_a.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.resolve().parents[1] / "src"))  # this checkout's regimen

from regimen.bench.studies import median_spread  # noqa: E402


def fmt(values, scale=100.0, digits=1):
    values = list(values)
    return f"{median_spread(values, f'{{:.{digits}f}}', scale)} (n={len(values)})"


def table(rows, key, metrics, scale=100.0):
    arms = []
    for row in rows:
        if row[key] not in arms:
            arms.append(row[key])
    lines = [f"| {key} | " + " | ".join(m for m in metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for arm in arms:
        sel = [r for r in rows if r[key] == arm]
        lines.append(f"| {arm} | " + " | ".join(fmt([r[m] for r in sel], scale) for m in metrics) + " |")
    return "\n".join(lines)


def load(name):
    path = HERE / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def main():
    rows = load("comp_sum")
    if rows:
        for row in rows:
            row["arm"] = f"noise {row['noise']:.0%}, tau {row['tau']}, lr {row['lr']}"
        print("## comp_sum: test accuracy % (final)\n")
        print(table(rows, "arm", ["test_acc"]))
    rows = load("batchformer")
    if rows:
        print("\n## batchformer: balanced test accuracy %, all classes and the 3 rarest\n")
        print(table(rows, "arm", ["test_acc", "rare3_acc"]))
        ce = {r["seed"]: r for r in rows if r["arm"] == "ce"}
        diffs = [r["rare3_acc"] - ce[r["seed"]]["rare3_acc"] for r in rows if r["arm"] == "batchformer"]
        alls = [r["test_acc"] - ce[r["seed"]]["test_acc"] for r in rows if r["arm"] == "batchformer"]
        print(f"\npaired differences (BatchFormer - CE), points: all {fmt(alls)}; rare-3 {fmt(diffs)}")
    rows = load("conadv")
    if rows:
        print("\n## conadv: test accuracy %\n")
        print(table(rows, "arm", ["test_acc"]))
        by = {(r["seed"], r["arm"]): r["test_acc"] for r in rows}
        for arm in ("lars_b2048_fgsm_sync", "lars_b2048_conadv"):
            closed = []
            for seed in sorted({r["seed"] for r in rows}):
                small, lars = by.get((seed, "sgd_b256")), by.get((seed, "lars_b2048"))
                if small is not None and lars is not None and (seed, arm) in by and small != lars:
                    closed.append((by[(seed, arm)] - lars) / (small - lars))
            if closed:
                print(f"\ngap closed by {arm} (fraction of sgd_b256 - lars_b2048): {fmt(closed, 1.0, 2)}")
    rows = load("agvm")
    if rows:
        print("\n## agvm: class accuracy % and mean box IoU (x100)\n")
        print(table(rows, "arm", ["acc", "iou"]))
        for row in rows:
            if row.get("final_scales"):
                print(f"- seed {row['seed']} final AGVM factors (backbone, neck, cls, box): "
                      + ", ".join(f"{s:.2f}" for s in row["final_scales"]))
    data = load("lanczos")
    if data:
        print("\n## lanczos_lr: batch-Hessian lambda_max vs batch size (fixed weights, 5 batches each)\n")
        print("| batch | lambda_max median [min, max] |\n|---|---|")
        for row in data["lambda_vs_batch"]:
            print(f"| {row['batch']} | {fmt(row['lambda_max'], 1.0, 2)} |")
        print("\n### training (batch 128, 5 epochs): test accuracy %\n")
        print(table(data["training"], "arm", ["test_acc"]))
        for row in data["training"]:
            if row.get("last_lr") is not None:
                print(f"- {row['arm']} seed {row['seed']}: last estimate lambda_max {row['last_lambda_max']:.2f}, "
                      f"lr {row['last_lr']:.4f}, momentum {row['last_momentum']}")


if __name__ == "__main__":
    main()
