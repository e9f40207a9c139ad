"""Median [min, max] over the seeds of a study folder's runs, per arm, for the metrics named on the command line.

    python reports/tasks/tabulate.py STUDY_FOLDER final_test_recall_at_1 final_test_map_at_r ...
"""

import json
import statistics
import sys
from pathlib import Path


def main(folder: str, keys: list[str]) -> None:
    arms: dict[str, list[dict]] = {}
    for summary in sorted(Path(folder, "runs").glob("*/summary.json")):
        arm = summary.parent.name.rsplit("-seed", 1)[0]
        arms.setdefault(arm, []).append(json.loads(summary.read_text()))
    print("| arm | seeds | " + " | ".join(k.replace("final_test_", "") for k in keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for arm, runs in arms.items():
        cells = []
        for key in keys:
            values = [r[key] for r in runs if key in r]
            cells.append(f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]" if values else "–")
        print(f"| {arm} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
