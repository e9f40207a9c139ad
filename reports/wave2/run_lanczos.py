"""Lanczos LR estimator on Fashion-MNIST (MLP 784-256-128-10, 20000 training images).

Part 1 (the paper's premise): λ_max of the batch Hessian (20 Lanczos steps) at fixed weights (after one epoch of SGD)
for batch sizes 32 ... 2048, 5 batches each: the batch Hessian's top eigenvalue falls as the batch grows.
Part 2: training 5 epochs at batch 128 with the recipe's SGD (lr 0.1, momentum 0.9) vs lanczos_lr (polyak and
inverse rules, re-estimated every 25 steps), 3 seeds.

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_lanczos.py > reports/wave2/lanczos.json
"""

import json
import sys

import torch
import torch.nn.functional as F

from regimen.batch import top_hessian_eigenvalues
from regimen.train import fit

BASE = {
    "data": {"name": "fashion_mnist", "val_fraction": 0.1, "train_subset": 20000},
    "model": {"name": "mlp", "options": {"hidden": [256, 128]}},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
}


def part1():
    result = fit({**BASE, "name": "warm", "seed": 0, "train": {"epochs": 1, "batch_size": 128, "threads": 1}})
    model = result.model.train()
    from regimen.data import load_data

    data = load_data("fashion_mnist", None, 0.1, 20000, 0, None, 0.2)
    x, y = data.train.gather(torch.arange(len(data.train)), torch.device("cpu"))
    x = (x - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in (32, 128, 512, 2048):
        tops = []
        for _ in range(5):
            idx = torch.randperm(len(x), generator=g)[:batch]
            top, _ = top_hessian_eigenvalues(model, lambda m, idx=idx: F.cross_entropy(m(x[idx]), y[idx]), 20,
                                             generator=g)
            tops.append(top)
        rows.append({"batch": batch, "lambda_max": tops})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def part2():
    arms = {"sgd": [], "lanczos_polyak": [{"name": "lanczos_lr", "interval": 25, "rule": "polyak"}],
            "lanczos_inverse": [{"name": "lanczos_lr", "interval": 25, "rule": "inverse"}]}
    rows = []
    for seed in (0, 1, 2):
        for arm, methods in arms.items():
            result = fit({**BASE, "name": arm, "seed": seed, "methods": methods,
                          "train": {"epochs": 5, "batch_size": 128, "threads": 1, "eval_every": 5}})
            logs = [h for h in result.history]
            row = {"seed": seed, "arm": arm, "test_acc": result.summary["final_test_acc"],
                   "train_time": result.summary["train_time"],
                   "last_lr": logs[-1].get("lanczos_lr/lr"), "last_momentum": logs[-1].get("lanczos_lr/momentum"),
                   "last_lambda_max": logs[-1].get("lanczos_lr/lambda_max")}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def main():
    torch.set_num_threads(1)
    json.dump({"lambda_vs_batch": part1(), "training": part2()}, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
