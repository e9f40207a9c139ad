"""Print the consensus-gates tables of ``consensus.md`` from ``results/consensus_gates__*.json`` and the polarization
runs of the same seeds (``results/polarization__*.json``): ``python reports/subnet/summarize_consensus.py``; with
``quick``, from the reduced-budget runs of ``consensus_quick.py`` (``results_consensus_quick/``)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

QUICK = len(sys.argv) > 1 and sys.argv[1] == "quick"
RESULTS = Path(__file__).resolve().parent / ("results_consensus_quick" if QUICK else "results")


def _load(entry: str) -> dict[tuple[float, int], dict]:
    runs = {}
    for path in sorted(RESULTS.glob(f"{entry}__keep*__seed*.json")):
        r = json.loads(path.read_text())
        runs[(r["keep"], r["seed"])] = r
    return runs


def _med(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "–"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}, {max(values) * scale:.{digits}f}]"


def main() -> None:
    cg, pol, mag = _load("consensus_gates"), _load("polarization"), _load("magnitude")
    keeps = sorted({k for k, _ in cg}, reverse=True)
    print("| keep | seeds | consensus test % | polarization test % | Δ consensus − polarization (pts, paired) "
          "| Δ consensus − magnitude (pts) | MACs kept (consensus / polarization) | latency vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for keep in keeps:
        seeds = sorted(s for k, s in cg if k == keep)
        acc = [cg[(keep, s)]["test_accuracy"] for s in seeds]
        pacc = [pol[(keep, s)]["test_accuracy"] for s in seeds if (keep, s) in pol]
        diff = [cg[(keep, s)]["test_accuracy"] - pol[(keep, s)]["test_accuracy"] for s in seeds if (keep, s) in pol]
        mdiff = [cg[(keep, s)]["test_accuracy"] - mag[(keep, s)]["test_accuracy"] for s in seeds if (keep, s) in mag]
        macs = [cg[(keep, s)]["macs"] / cg[(keep, s)]["dense_macs"] for s in seeds]
        pmacs = [pol[(keep, s)]["macs"] / pol[(keep, s)]["dense_macs"] for s in seeds if (keep, s) in pol]
        lat = [cg[(keep, s)]["latency_ms"] / cg[(keep, s)]["dense_latency_ms"] for s in seeds
               if "latency_ms" in cg[(keep, s)]]
        print(f"| {keep:g} | {len(seeds)} | {_med(acc)} | {_med(pacc)} | {_med(diff)} | {_med(mdiff)} "
              f"| {_med(macs, 1, 3)} / {_med(pmacs, 1, 3)} | {_med(lat, 1, 2)} |")
    print()
    print("| keep | seed | dynamic val % | dynamic MACs / dense (p10–p90) | consensus (masked) val % "
          "| consensus MACs / dense | unpolarised units | val after extraction (no FT) | after BN re-est. "
          "| final val % | final test % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for keep in keeps:
        for seed in sorted(s for k, s in cg if k == keep):
            r = cg[(keep, seed)]
            e = r["extra"]
            print(f"| {keep:g} | {seed} | {100 * e['dynamic_val_accuracy']:.2f} | {e['dynamic_macs_fraction']:.3f} "
                  f"({e['dynamic_macs_p10']:.3f}–{e['dynamic_macs_p90']:.3f}) "
                  f"| {100 * e['consensus_val_accuracy_masked']:.2f} | {e['consensus_macs_fraction']:.3f} "
                  f"| {e['unpolarized_fraction']:.3f} | {100 * e['val_after_extract_no_finetune']:.2f} "
                  f"| {100 * e['val_after_bn_recalibration']:.2f} | {100 * r['val_accuracy']:.2f} "
                  f"| {100 * r['test_accuracy']:.2f} |")


if __name__ == "__main__":
    main()
