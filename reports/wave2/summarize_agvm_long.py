"""Tables of reports/wave2/agvm_long.json (run_agvm_long.py): per arm the median [min, max] over seeds of class
accuracy and box IoU, the paired gap closed by AGVM, (agvm - large) / (small - large), and the final AGVM factors.

    python reports/wave2/summarize_agvm_long.py [reports/wave2/agvm_long.json]
"""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # this checkout's regimen

from regimen.bench.studies import median_spread  # noqa: E402

rows = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "reports/wave2/agvm_long.json"))
arms = list(dict.fromkeys(r["arm"] for r in rows))
by = {(r["arm"], r["seed"]): r for r in rows}
seeds = sorted({r["seed"] for r in rows})


def spread(values, scale=100.0):
    return median_spread(values, "{:.1f}", scale)


print("| arm | steps | class accuracy % | box IoU x100 | CPU s (median) |")
print("|---|---|---|---|---|")
for arm in arms:
    rs = [by[(arm, s)] for s in seeds if (arm, s) in by]
    print(f"| {arm} | {rs[0]['steps']} | {spread([r['acc'] for r in rs])} | {spread([r['iou'] for r in rs])} | "
          f"{statistics.median(r['cpu_s'] for r in rs):.0f} |")
print()
for large in ("large", "huge"):
    agvm = f"{large}_agvm"
    if agvm not in arms:
        continue
    for metric in ("acc", "iou"):
        gaps, diffs = [], []
        for s in seeds:
            if (agvm, s) in by and (large, s) in by and ("small", s) in by:
                base, ref, new = by[(large, s)][metric], by[("small", s)][metric], by[(agvm, s)][metric]
                diffs.append(100 * (new - base))
                gaps.append((new - base) / (ref - base) if ref > base else float("nan"))  # nan: no gap to close
        if gaps:
            print(f"{agvm} vs {large}, {metric}: paired difference (points) "
                  f"{', '.join(f'{d:+.1f}' for d in diffs)}; gap closed {', '.join(f'{g:+.2f}' for g in gaps)} "
                  f"(median of the defined ones {statistics.median([g for g in gaps if g == g]):+.2f})")
    for s in seeds:
        if (agvm, s) in by:
            r = by[(agvm, s)]
            phis = r["trace"][-1]["phis"] if r.get("trace") else None
            print(f"  seed {s} final factors (backbone, neck, cls, box): "
                  f"{', '.join(f'{x:.2f}' for x in r['final_scales'])}; last phis "
                  f"{', '.join(f'{x:.3f}' for x in phis) if phis else '-'}")
