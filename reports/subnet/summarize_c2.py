"""Print the tables of ``methods_b.md``'s part-C2 sections (issue 17's remaining evidence) from ``results/*.json``
(``lottery_rewind``, ``polarization_strong`` and their peers), ``results_tscnc/*.json`` and
``results_allocation/*.json``.

Usage (worktree root): ``python reports/subnet/summarize_c2.py``
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fmt(values, scale=100.0, digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}, {max(values) * scale:.{digits}f}]"


def signed(values, scale=100.0):
    return ", ".join(f"{v * scale:+.1f}" for v in values) if values else "–"


def load(folder: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((HERE / folder).glob("*.json"))]


def paired(runs: dict, entry: str, base: str, keep: float, key: str = "test_accuracy") -> list[float]:
    a, b = runs.get((entry, keep), {}), runs.get((base, keep), {})
    return [a[s][key] - b[s][key] for s in sorted(a) if s in b]


def comparison() -> None:
    rows = load("results")
    runs: dict = {}
    for r in rows:
        runs.setdefault((r["entry"], r["keep"]), {})[r["seed"]] = r
    print("### Lottery ticket with rewinding vs SAP (unstructured, equal effective MACs)\n")
    print("| keep | entry | seeds | test acc % | Δ vs lottery_rewind (pts, per seed 0/1/2) | MACs kept | wall s |")
    print("|---|---|---|---|---|---|---|")
    for keep in (0.5, 0.25):
        for entry in ("lottery_rewind", "sap", "magnitude_unstructured", "layer_dp"):
            rs = runs.get((entry, keep))
            if not rs:
                continue
            rs_list = [rs[s] for s in sorted(rs)]
            delta = "(reference)" if entry == "lottery_rewind" else signed(paired(runs, entry, "lottery_rewind",
                                                                                  keep))
            print(f"| {keep:g} | {entry} | {len(rs)} | {fmt([r['test_accuracy'] for r in rs_list], digits=2)} "
                  f"| {delta} | {fmt([r['effective_macs'] / r['dense_macs'] for r in rs_list], 1, 3)} "
                  f"| {statistics.median(r['wall_s'] for r in rs_list):.0f} |")
    lt = [r for r in rows if r["entry"] == "lottery_rewind"]
    if lt:
        print("\nlottery_rewind rounds (val accuracy % at the rewind point / after the round's retraining; "
              "MAC fraction):\n")
        for r in sorted(lt, key=lambda r: (-r["keep"], r["seed"])):
            rounds = "; ".join(f"r{x['round']}: {100 * x['val_at_rewind']:.1f} → {100 * x['val_after_retrain']:.1f} "
                               f"({x['macs_fraction']:.3f})" for x in r["extra"]["rounds"])
            print(f"- keep {r['keep']:g}, seed {r['seed']}: {rounds}")
    print("\n### Polarization at keep 0.25: λ = 5e-3 (entries_a) vs 2.5e-2 (polarization_strong)\n")
    print("| entry | λ | seeds | test acc % | Δ vs magnitude (pts) | Δ vs polarization (pts) | γ ≤ 0.01 | γ ≥ 0.9 "
          "| val before prune % | val after prune, no fine-tune % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for entry in ("polarization", "polarization_strong"):
        rs = runs.get((entry, 0.25))
        if not rs:
            continue
        rl = [rs[s] for s in sorted(rs)]
        lam = rl[0]["extra"].get("lam", 5e-3)
        print(f"| {entry} | {lam:g} | {len(rl)} | {fmt([r['test_accuracy'] for r in rl], digits=2)} "
              f"| {signed(paired(runs, entry, 'magnitude', 0.25))} "
              f"| {signed(paired(runs, entry, 'polarization', 0.25)) if entry != 'polarization' else '–'} "
              f"| {fmt([r['extra']['fraction_low'] for r in rl], 1, 2)} "
              f"| {fmt([r['extra']['fraction_high'] for r in rl], 1, 2)} "
              f"| {fmt([r['extra']['val_before_prune'] for r in rl])} "
              f"| {fmt([r['extra']['val_after_prune_no_finetune'] for r in rl])} |")


def tscnc() -> None:
    rows = load("results_tscnc")
    if not rows:
        return
    print("\n### TSCNC ablation (per-layer magnitude pruning, 2 epochs of FGSM fine-tuning, first 1,000 test images)\n")
    layers = sorted({k for r in rows for k in r["log10_condition_numbers"]})
    print("| sparsity | λ_c | seeds | clean acc % | PGD-10 acc % | clean Δ vs λ_c=0 (pts, per seed) "
          "| PGD-10 Δ vs λ_c=0 (pts, per seed) | median log10 κ_2 (" + ", ".join(layers) + "; inf = rank-deficient) |")
    print("|---|---|---|---|---|---|---|---|")
    for sparsity in sorted({r["sparsity"] for r in rows}):
        base = {r["seed"]: r for r in rows if r["sparsity"] == sparsity and r["cond_weight"] == 0}
        for cond in sorted({r["cond_weight"] for r in rows if r["sparsity"] == sparsity}):
            rs = sorted((r for r in rows if r["sparsity"] == sparsity and r["cond_weight"] == cond),
                        key=lambda r: r["seed"])
            kappa = []
            for k in layers:
                values = [r["log10_condition_numbers"].get(k) for r in rs]
                finite = [v for v in values if v is not None]
                if len(finite) < len(values):
                    kappa.append(f"inf×{len(values) - len(finite)}" + (f"/{statistics.median(finite):.2f}"
                                                                        if finite else ""))
                else:
                    kappa.append(f"{statistics.median(finite):.2f}")
            clean_d = [r["clean_test_accuracy"] - base[r["seed"]]["clean_test_accuracy"] for r in rs
                       if r["seed"] in base] if cond else []
            pgd_d = [r["pgd10_test_accuracy"] - base[r["seed"]]["pgd10_test_accuracy"] for r in rs
                     if r["seed"] in base] if cond else []
            print(f"| {sparsity:g} | {cond:g} | {len(rs)} | {fmt([r['clean_test_accuracy'] for r in rs])} "
                  f"| {fmt([r['pgd10_test_accuracy'] for r in rs])} | {signed(clean_d) if cond else '(reference)'} "
                  f"| {signed(pgd_d) if cond else '(reference)'} | {', '.join(kappa)} |")
    dense = {r["seed"]: r for r in rows}
    clean = fmt([r["dense_clean_test_accuracy"] for r in dense.values()])
    pgd = fmt([r["dense_pgd10_test_accuracy"] for r in dense.values()])
    print(f"\nDense model (first 1,000 test images): clean {clean} %, PGD-10 {pgd} % (seeds {sorted(dense)}).")


def allocation() -> None:
    rows = load("results_allocation")
    if not rows:
        return
    epochs = sorted({r["finetune_epochs"] for r in rows} - {0})
    print("\n### Layer-wise allocations at equal parameter sparsity (conv/linear weights; first 5,000 test images)\n")
    print(f"Fine-tuning: {epochs} epoch(s), lr 0.01, masks fixed, at 90 % only ('–': not fine-tuned). Δ: paired "
          "(same seed) vs `dp`, points.\n")
    print("| sparsity | rule | seeds | one-shot % | one-shot + BN re-estimation % | fine-tuned % "
          "| fine-tuned Δ vs dp | predicted distortion | measured distortion | effective MACs kept |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    by = {}
    for r in rows:
        by.setdefault((r["sparsity"], r["rule"]), {})[r["seed"]] = r
    for sparsity in sorted({r["sparsity"] for r in rows}):
        base = by.get((sparsity, "dp"), {})
        for rule in ("dp", "uniform", "global", "lamp", "erk"):
            rs = by.get((sparsity, rule))
            if not rs:
                continue
            rl = [rs[s] for s in sorted(rs)]
            delta = "(reference)" if rule == "dp" else signed(
                [rs[s]["test_accuracy"] - base[s]["test_accuracy"] for s in sorted(rs)
                 if s in base and rs[s]["test_accuracy"] is not None and base[s]["test_accuracy"] is not None])
            print(f"| {sparsity:g} | {rule} | {len(rl)} | {fmt([r['one_shot_test_accuracy'] for r in rl])} "
                  f"| {fmt([r['one_shot_bn_test_accuracy'] for r in rl])} | {fmt([r['test_accuracy'] for r in rl])} "
                  f"| {delta} | {fmt([r['predicted_distortion'] for r in rl], 1, 2)} "
                  f"| {fmt([r['measured_distortion'] for r in rl], 1, 2)} "
                  f"| {fmt([r['effective_macs'] / r['dense_macs'] for r in rl], 1, 3)} |")
    print("\nPer-layer amounts removed, seed 0:\n")
    layers = None
    for sparsity in sorted({r["sparsity"] for r in rows}):
        for rule in ("dp", "uniform", "global", "lamp", "erk"):
            r = by.get((sparsity, rule), {}).get(0)
            if r is None:
                continue
            layers = layers or list(r["amounts"])
            print(f"- s = {sparsity:g}, {rule}: " + ", ".join(f"{k} {r['amounts'][k]:.2f}" for k in layers))


def main() -> None:
    comparison()
    tscnc()
    allocation()


if __name__ == "__main__":
    main()
