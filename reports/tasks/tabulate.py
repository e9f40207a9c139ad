"""Per-arm median and spread (min-max) over seeds of every final test metric of a `regimen study` folder, and the
median paired difference against the base arm: `python reports/tasks/tabulate.py STUDY_DIR [metric ...]`."""

import json
import statistics
import sys
from pathlib import Path

folder = Path(sys.argv[1])
runs = {}
for summary in sorted(folder.glob("runs/*/summary.json")):
    arm, _, seed = summary.parent.name.rpartition("-seed")
    runs.setdefault(arm, {})[int(seed)] = json.loads(summary.read_text())
first_base = next(iter(runs["base"].values()))
wanted = ([name.removeprefix("final_test_") for name in sys.argv[2:]]
          or sorted(k[len("final_test_"):] for k in first_base if k.startswith("final_test_")))
print("| arm | seeds | " + " | ".join(wanted) + " | train s (median) |")
print("|---|---|" + "---|" * len(wanted) + "---|")
for arm, seeds in sorted(runs.items(), key=lambda kv: (kv[0] != "base", kv[0])):
    cells = []
    for metric in wanted:
        values = [s[f"final_test_{metric}"] for s in seeds.values()]
        values = [v for v in values if v is not None and v == v]
        if not values:
            cells.append("–")
            continue
        cell = f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        if arm != "base":
            diffs = [s[f"final_test_{metric}"] - runs["base"][seed][f"final_test_{metric}"]
                     for seed, s in seeds.items() if seed in runs["base"]]
            cell += f" (Δ {statistics.median(diffs):+.3f})"
        cells.append(cell)
    time = statistics.median(s["train_time"] for s in seeds.values())
    print(f"| `{arm}` | {len(seeds)} | " + " | ".join(cells) + f" | {time:.0f} |")
