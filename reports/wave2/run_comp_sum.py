"""Comp-sum losses on Fashion-MNIST, clean and 40 % symmetric label noise (noisy labels built here, seeded).

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_comp_sum.py > reports/wave2/comp_sum.json
"""

import json
import sys

import torch

from regimen.data import DataSplits, load_data
from regimen.data.datasets import ArrayDataset
from regimen.train import fit

# (tau, lr): every tau at the CE learning rate 0.1, and the tau < 1 losses (unbounded gradients) also at 0.01
ARMS = [(0.0, 0.1), (0.5, 0.1), (1.0, 0.1), (1.5, 0.1), (2.0, 0.1), (0.0, 0.01), (0.5, 0.01)]
SEEDS = [0, 1, 2]
NOISE = [0.0, 0.4]
EPOCHS, SUBSET = 8, 20000


def symmetric_noise(labels: torch.Tensor, rate: float, classes: int, seed: int) -> torch.Tensor:
    """Each label, with probability ``rate``, replaced by a uniformly drawn *other* class (seeded)."""
    g = torch.Generator().manual_seed(10_000 + seed)
    flip = torch.rand(len(labels), generator=g) < rate
    offset = torch.randint(1, classes, (len(labels),), generator=g)
    return torch.where(flip, (labels + offset) % classes, labels)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        base = load_data("fashion_mnist", None, 0.1, SUBSET, seed, None, 0.2)
        for noise in NOISE:
            train = base.train
            if noise > 0:
                noisy = symmetric_noise(train.labels, noise, train.num_classes, seed)
                train = ArrayDataset(train.images, noisy, train.num_classes, train.name + "+noise")
            data = DataSplits(train, base.val, base.test, base.mean, base.std)
            for tau, lr in ARMS:
                recipe = {
                    "name": f"comp_sum_tau{tau}_lr{lr}", "seed": seed,
                    "model": {"name": "mlp", "options": {"hidden": [256, 128]}},
                    "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
                    "train": {"epochs": EPOCHS, "batch_size": 128, "threads": 1},
                    "methods": [{"name": "comp_sum", "tau": tau}],
                }
                result = fit(recipe, data=data)
                row = {"seed": seed, "noise": noise, "tau": tau, "lr": lr,
                       "test_acc": result.summary["final_test_acc"], "best_test_acc": result.summary["best_test_acc"],
                       "train_time": result.summary["train_time"]}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
