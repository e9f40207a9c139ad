"""Every metric of a `regimen study` folder, per arm: median [min, max] over seeds, and the paired differences.

`regimen study` tables the primary metric only; the task reports (neural_field: SSIM; sequence_classification: ECE,
MC-dropout variance, NLL) need the others too. Usage:

    python reports/tasks/study_metrics.py STUDY_FOLDER final_test_psnr final_test_ssim ...
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(folder: str, keys: list[str]) -> None:
    runs = Path(folder) / "runs"
    table: dict[str, dict[int, dict]] = {}
    for summary in sorted(runs.glob("*/summary.json")):
        arm, _, seed = summary.parent.name.rpartition("-seed")
        table.setdefault(arm, {})[int(seed)] = json.loads(summary.read_text())
    base = table.get("base", {})
    print(f"| arm | seeds | {' | '.join(keys)} |")
    print("|---|---|" + "---|" * len(keys))
    for arm, seeds in table.items():
        cells = []
        for key in keys:
            values = [s[key] for s in seeds.values() if s.get(key) is not None]
            cell = f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]" if values else "–"
            if arm != "base":
                diffs = [s[key] - base[seed][key] for seed, s in seeds.items() if seed in base and key in s]
                if diffs:
                    cell += f"; Δ median {statistics.median(diffs):+.4f}"
            cells.append(cell)
        print(f"| {arm} | {len(seeds)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
