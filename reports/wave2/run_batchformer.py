"""BatchFormer on long-tailed Fashion-MNIST: class c keeps n_max * 100^(-c/9) training images (imbalance 100);
MLP 784-256-128-10 (the machine is shared: a CNN did not fit the time); balanced test set; accuracy overall and
on the 3 rarest classes (7, 8, 9). CE vs CE + BatchFormer, paired seeds.

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_batchformer.py \
    > reports/wave2/batchformer.json
"""

import json
import sys

import torch

from regimen.data import DataSplits, load_data
from regimen.data.datasets import ArrayDataset
from regimen.train import fit

SEEDS = [0, 1, 2]
N_MAX, EPOCHS = 2000, 10


def long_tail(train: ArrayDataset, seed: int) -> ArrayDataset:
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in range(train.num_classes):
        index = (train.labels == c).nonzero().squeeze(1)
        count = max(1, int(N_MAX * 100 ** (-c / 9)))
        keep.append(index[torch.randperm(len(index), generator=g)[:count]])
    keep = torch.cat(keep)
    return ArrayDataset(train.images[keep], train.labels[keep], train.num_classes, train.name + "-LT")


@torch.no_grad()
def per_class_accuracy(model, data: DataSplits) -> list[float]:
    model.eval()
    x, y = data.test.gather(torch.arange(len(data.test)), torch.device("cpu"))
    x = (x.float() - data.mean.view(1, -1, 1, 1)) / data.std.view(1, -1, 1, 1)
    pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return [float((pred[y == c] == c).float().mean()) for c in range(10)]


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        base = load_data("fashion_mnist", None, 0.0, None, seed, None, 0.2)
        train = long_tail(base.train, seed)
        data = DataSplits(train, None, base.test, base.mean, base.std)
        for arm, methods in (("ce", []), ("batchformer", [{"name": "batchformer"}])):
            recipe = {
                "name": f"lt_{arm}", "seed": seed,
                "model": {"name": "mlp", "options": {"hidden": [256, 128]}},
                "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                "schedule": {"name": "cosine", "warmup_epochs": 0.5},
                "train": {"epochs": EPOCHS, "batch_size": 128, "threads": 1, "eval_every": EPOCHS},
                "methods": methods,
            }
            result = fit(recipe, data=data)
            accs = per_class_accuracy(result.model, data)
            row = {"seed": seed, "arm": arm, "train_size": len(train), "test_acc": sum(accs) / 10,
                   "rare3_acc": sum(accs[7:]) / 3, "per_class": accs, "train_time": result.summary["train_time"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
