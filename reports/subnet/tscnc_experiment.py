"""TSCNC ablation (issue 17): clean and PGD-10 accuracy of a 90/95/99 %-sparse SmallCNN after FGSM adversarial
fine-tuning, with and without the condition-number penalty (same seeds, same masks, same data).

Usage (worktree root)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/tscnc_experiment.py --seeds 0 1 2 --sparsity 0.9 0.95 0.99

Writes ``reports/subnet/results_tscnc/tscnc_s<sparsity>_c<cond_weight>_seed<seed>.json`` (skips existing files).
The dense model's clean and PGD-10 accuracy depend on the seed only: they are measured once per seed and copied
into the seed's later files (``dense_from`` names the file they came from).
Arms: ``cond_weight`` ∈ {0 (transformed-ℓ1 only), 0.01, 0.1}, all with λ_s = 1e-4, FGSM ε = 0.1 (pixel units), 2 epochs
of fine-tuning (lr 0.01) after one-shot per-layer magnitude pruning of the trained dense model (``setting.py``).
PGD-10: L∞, ε = 0.1 pixel units, α = ε/4, random start, on the first 1,000 test images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from entries_b import robust_accuracy, tscnc_train  # noqa: E402
from setting import build_setting, evaluate  # noqa: E402

from regimen.subnet import condition_numbers  # noqa: E402

OUT = HERE / "results_tscnc"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.9])
    parser.add_argument("--cond", nargs="+", type=float, default=[0.0, 0.01, 0.1])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    for seed in args.seeds:
        for sparsity in args.sparsity:
            for cond in args.cond:
                run(seed, sparsity, cond, args.epochs)


def _dense_numbers(seed: int) -> tuple[dict, str] | None:
    """The dense clean/PGD-10 accuracy of ``seed`` from an earlier file of this ablation, if one exists."""
    for path in sorted(OUT.glob(f"tscnc_*_seed{seed}.json")):
        earlier = json.loads(path.read_text())
        if "dense_pgd10_test_accuracy" in earlier:
            return ({k: earlier[k] for k in ("dense_clean_test_accuracy", "dense_pgd10_test_accuracy")},
                    earlier.get("dense_from", path.name))
    return None


def run(seed: int, sparsity: float, cond: float, epochs: int) -> None:
    path = OUT / f"tscnc_s{sparsity:g}_c{cond:g}_seed{seed}.json"
    if path.exists():
        return
    setting = build_setting(seed, 1 - sparsity)
    test_x, test_y = setting.test[0][:1000], setting.test[1][:1000]
    start = time.perf_counter()
    cpu = time.process_time()
    model = tscnc_train(setting, sparsity, cond_weight=cond, epochs=epochs)
    wall = time.perf_counter() - start
    train_cpu = time.process_time() - cpu
    kappa = condition_numbers(model)
    found = _dense_numbers(seed)
    if found is None:
        dense = {"dense_clean_test_accuracy": evaluate(setting.dense, test_x, test_y),
                 "dense_pgd10_test_accuracy": robust_accuracy(setting.dense, setting, test_x, test_y)}
        source = path.name
    else:
        dense, source = found
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    nonzero = sum(int((m.weight != 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)
    result = {
        "seed": seed, "sparsity": sparsity, "cond_weight": cond, "sparse_weight": 1e-4,
        "epsilon_pixels": 0.1, "epochs": epochs, "weight_density": nonzero,
        "clean_test_accuracy": evaluate(model, test_x, test_y),
        "pgd10_test_accuracy": robust_accuracy(model, setting, test_x, test_y),
        **dense, "dense_from": source,
        "log10_condition_numbers": {k: (math.log10(v) if math.isfinite(v) else None)
                                    for k, v in kappa.items()},
        "wall_s": wall, "train_cpu_s": train_cpu, "load_average": os.getloadavg()[0],
    }
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps({k: v for k, v in result.items() if k != "log10_condition_numbers"}), flush=True)


if __name__ == "__main__":
    main()
