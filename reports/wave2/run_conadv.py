"""ConAdv on Fashion-MNIST at large batch: LARS at batch 2048 alone, with synchronous targeted FGSM (staleness 0),
with ConAdv (staleness 1), and the small-batch reference (SGD, batch 256). MLP 784-256-128-10, 30000 training images,
10 epochs, paired seeds; the gap closed is (arm - LARS) / (small - LARS) on test accuracy.

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_conadv.py > reports/wave2/conadv.json
"""

import json
import sys

import torch

from regimen.train import fit

SEEDS = [0, 1, 2]
LARS = {"name": "lars", "lr": 8.0, "momentum": 0.9, "weight_decay": 5e-4}
ARMS = {
    "lars_b2048": (2048, LARS, []),
    "lars_b2048_fgsm_sync": (2048, LARS, [{"name": "conadv", "staleness": 0}]),
    "lars_b2048_conadv": (2048, LARS, [{"name": "conadv", "staleness": 1}]),
    "sgd_b256": (256, {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}, []),
}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        for arm, (batch, optim, methods) in ARMS.items():
            recipe = {
                "name": arm, "seed": seed,
                "data": {"name": "fashion_mnist", "val_fraction": 0.1, "train_subset": 30000},
                "model": {"name": "mlp", "options": {"hidden": [256, 128]}},
                "optim": optim, "schedule": {"name": "cosine", "warmup_epochs": 1.0},
                "train": {"epochs": 10, "batch_size": batch, "threads": 1, "eval_every": 10},
                "methods": methods,
            }
            result = fit(recipe)
            row = {"seed": seed, "arm": arm, "test_acc": result.summary["final_test_acc"],
                   "train_time": result.summary["train_time"], "steps": result.summary["steps"],
                   "cpu_time": result.summary["process_cpu_time"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
