"""Print the tables of ``methods_b.md`` from ``results/*.json`` (part B entries, with the magnitude baseline where
present) and ``results_tscnc/*.json``.

Usage (worktree root): ``python reports/subnet/summarize_b.py``
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENTRIES = ("magnitude", "lottery_jackpots", "ftwt", "layer_dp", "tscnc")


def fmt(values, scale=100.0, digits=1):
    if not values:
        return "–"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}, {max(values) * scale:.{digits}f}]"


def main() -> None:
    rows = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("*.json"))]
    print("| entry | keep | seeds | test acc % | dense acc % | MACs kept (effective; FTWT: mean executed) "
          "| nonzero params kept | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for keep in (0.5, 0.25):
        for entry in ENTRIES:
            rs = [r for r in rows if r["entry"] == entry and r["keep"] == keep]
            if not rs:
                continue
            if entry == "ftwt":
                macs = [r["extra"]["dynamic_macs_fraction"] for r in rs]
            else:
                macs = [r["effective_macs"] / r["dense_macs"] for r in rs]
            print(f"| {entry} | {keep:g} | {len(rs)} | {fmt([r['test_accuracy'] for r in rs])} "
                  f"| {fmt([r['dense_test_accuracy'] for r in rs])} | {fmt(macs, 1, 3)} "
                  f"| {fmt([r['nonzero_params'] / r['dense_params'] for r in rs], 1, 3)} "
                  f"| {statistics.median(r['wall_s'] for r in rs):.0f} |")
    ftwt = [r for r in rows if r["entry"] == "ftwt"]
    if ftwt:
        print("\nFTWT executed MACs per input (fraction of dense, validation images):\n")
        print("| keep | seed | mean | p10 | p90 | kept fraction per gate | mask std over inputs per gate |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(ftwt, key=lambda r: (-r["keep"], r["seed"])):
            e = r["extra"]
            print(f"| {r['keep']:g} | {r['seed']} | {e['dynamic_macs_fraction']:.3f} | {e['dynamic_macs_p10']:.3f} "
                  f"| {e['dynamic_macs_p90']:.3f} | {', '.join(f'{v:.2f}' for v in e['kept_fraction_per_gate'])} "
                  f"| {', '.join(f'{v:.2f}' for v in e.get('mask_std_over_inputs_per_gate', []))} |")
    tscnc = [json.loads(p.read_text()) for p in sorted((HERE / "results_tscnc").glob("*.json"))]
    tscnc = [r for r in tscnc if r["sparsity"] == 0.9]  # 95 / 99 %: summarize_c2.py
    if tscnc:
        print("\nTSCNC ablation (90 % sparsity, FGSM fine-tuning, first 1,000 test images):\n")
        layers = sorted({k for r in tscnc for k in r["log10_condition_numbers"]})
        print("| cond_weight λ_c | seeds | clean acc % | PGD-10 acc % | log10 κ_2 per layer (" + ", ".join(layers)
              + "; inf = rank-deficient), per seed | dense clean % | dense PGD-10 % |")
        print("|---|---|---|---|---|---|---|")
        for cond in sorted({r["cond_weight"] for r in tscnc}):
            rs = [r for r in tscnc if r["cond_weight"] == cond]
            kappa = " / ".join(", ".join("inf" if r["log10_condition_numbers"].get(k) is None
                                         else f"{r['log10_condition_numbers'][k]:.2f}" for k in layers)
                               for r in sorted(rs, key=lambda r: r["seed"]))
            print(f"| {cond:g} | {len(rs)} | {fmt([r['clean_test_accuracy'] for r in rs])} "
                  f"| {fmt([r['pgd10_test_accuracy'] for r in rs])} | {kappa} "
                  f"| {fmt([r['dense_clean_test_accuracy'] for r in rs])} "
                  f"| {fmt([r['dense_pgd10_test_accuracy'] for r in rs])} |")
        seeds = sorted({r["seed"] for r in tscnc})
        base = {r["seed"]: r for r in tscnc if r["cond_weight"] == 0}
        for cond in sorted({r["cond_weight"] for r in tscnc} - {0.0}):
            diffs = [(r["pgd10_test_accuracy"] - base[r["seed"]]["pgd10_test_accuracy"],
                      r["clean_test_accuracy"] - base[r["seed"]]["clean_test_accuracy"])
                     for r in tscnc if r["cond_weight"] == cond and r["seed"] in base]
            if diffs:
                print(f"\nλ_c = {cond:g} vs 0, paired over seeds {seeds}: PGD-10 Δ = "
                      f"{', '.join(f'{100 * d[0]:+.1f}' for d in diffs)} pts; clean Δ = "
                      f"{', '.join(f'{100 * d[1]:+.1f}' for d in diffs)} pts")


if __name__ == "__main__":
    main()
