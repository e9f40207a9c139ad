"""Train one arm of the "one network, many sizes" comparison and write one JSON per (setting, seed) point.

Usage (from the worktree root; OMP_NUM_THREADS=1):
    PYTHONPATH=src python reports/subnet_elastic/run.py [--epochs E] [--subset N] [--eval-every K] [--out DIR] \
        ARM SEED [ARM SEED ...]

``--epochs``/``--subset`` set the budget (defaults: the report's, see ``EPOCHS`` and ``TRAIN_SUBSET``); the task name
of the points says it (``fashion_mnist_<N>_<E>ep``). ``--eval-every 1`` records the validation accuracy after every
epoch in ``val_curve`` (the knee runs); ``--out`` writes the points elsewhere than ``results/`` (the knee runs go to
``knee/``).

Arms: dense_w0.25, dense_w0.5, dense_w1 (separately trained ResNets), nested_width, ofa, ofa_all (OFA's
"all at once" ablation), maestro, trp. Every arm trains the same small ResNet family on the same Fashion-MNIST
subset for the same number of epochs; every point is scored on the same test images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from regimen.data.select import load_data
from regimen.subnet import count_macs, count_params, recalibrate_batch_norm
from regimen.train.trainer import fit

RESULTS = OUT = Path(__file__).parent / "results"
TRAIN_SUBSET, TEST_SUBSET, EPOCHS, BATCH, VAL_FRACTION = 1000, 2000, 18, 64, 0.02
BASE = {"widths": [8, 16, 32], "depths": [2, 2, 2]}
EVAL_EVERY = 0  # 0: evaluate at the end only
_CPU_START = 0.0


#: the OFA sub-networks scored: the corners and the middle of (depth, width, kernel)
OFA_SETTINGS = [(1, 0.25, 3), (1, 0.5, 3), (2, 0.5, 3), (1, 1.0, 3), (2, 0.5, 5), (2, 0.75, 5), (2, 1.0, 3),
                (1, 1.0, 5), (2, 1.0, 5)]


def task_name() -> str:
    return f"fashion_mnist_{TRAIN_SUBSET}_{EPOCHS}ep"


def ofa_phases(arm: str) -> list[int]:
    """OFA's phase epochs at this budget: a third full, a sixth kernel, a sixth depth, the rest width (6 epochs:
    2/1/1/2); the all-at-once ablation: the same full phase, then everything at once."""
    full = max(1, round(EPOCHS / 3))
    if arm == "ofa_all":
        return [full, 0, 0, EPOCHS - full]
    kernel = depth = max(1, round(EPOCHS / 6))
    return [full, kernel, depth, EPOCHS - full - kernel - depth]


def recipe(seed: int, model_options: dict, methods: list[dict], lr: float = 0.05) -> dict:
    return {
        "name": "subnet_elastic", "seed": seed,
        "data": {"name": "auto", "val_fraction": VAL_FRACTION, "train_subset": TRAIN_SUBSET,
                 "test_subset": TEST_SUBSET},
        "model": {"name": "resnet", "options": model_options},
        "optim": {"name": "sgd", "lr": lr, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.3},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "threads": 1, "eval_every": EVAL_EVERY or EPOCHS},
        "methods": methods,
    }


def splits(seed: int):
    return load_data("auto", val_fraction=VAL_FRACTION, train_subset=TRAIN_SUBSET, seed=seed, test_subset=TEST_SUBSET)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data, which: str = "test") -> float:
    split = getattr(data, which)
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    model.eval()
    correct = 0
    for start in range(0, len(split), 500):
        x, y = split.gather(torch.arange(start, min(start + 500, len(split))))
        correct += int((model((x - mean) / std).argmax(1) == y).sum())
    return correct / len(split)


def calibration_batches(data, seed: int, n: int = 2000, batch: int = 200) -> list[torch.Tensor]:
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n]
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    return [(data.train.gather(order[i:i + batch])[0] - mean) / std for i in range(0, n, batch)]


def macs(model: torch.nn.Module, example: torch.Tensor) -> int:
    """``count_macs`` (convolutions, linear layers) plus Maestro's low-rank layers, which it does not see: a
    truncated ``OrderedLowRankConv2d`` costs ``H·W·(|V| + |U|)`` per sample, a linear one ``|V| + |U|``."""
    from regimen.subnet import low_rank_layers

    extra = [0]

    def hook(module, inputs, output):
        spatial = output[0, 0].numel() if output.dim() == 4 else 1
        extra[0] += spatial * (module.v.numel() + module.u.numel())

    handles = [m.register_forward_hook(hook) for _, m in low_rank_layers(model)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return int(count_macs(model, example)) + extra[0]


def write(method: str, setting: str, seed: int, model: torch.nn.Module, data, **extra) -> None:
    example = torch.zeros(1, 1, 28, 28)
    point = {"method": method, "task": task_name(), "setting": setting, "seed": seed, "epochs": EPOCHS,
             "train_subset": TRAIN_SUBSET,
             "macs": macs(model, example), "params": int(count_params(model)),
             "metric_name": "test_accuracy", "metric": accuracy(model, data), **extra}
    point["cpu_seconds"] = time.process_time() - _CPU_START  # this arm's process CPU time so far (one thread)
    OUT.mkdir(parents=True, exist_ok=True)
    budget = "" if OUT.resolve() == RESULTS.resolve() else f"__{EPOCHS}ep"  # knee runs: one file per budget
    name = f"{method}__{setting}{budget}__seed{seed}.json"
    (OUT / name).write_text(json.dumps(point, indent=1) + "\n")
    print(json.dumps(point), flush=True)


def run(arm: str, seed: int) -> None:
    data = splits(seed)
    start = time.time()
    cpu_start = time.process_time()
    global _CPU_START
    _CPU_START = cpu_start
    if arm.startswith("dense_w"):
        scale = float(arm[len("dense_w"):])
        widths = [max(1, round(w * scale)) for w in BASE["widths"]]
        result = fit(recipe(seed, {**BASE, "widths": widths}, []))
        curve = [[h["epoch"], h["val_acc"]] for h in result.history if "val_acc" in h and "epoch" in h]
        write("separate", f"w{scale:g}_d2_k3", seed, result.model, data, train_seconds=time.time() - start,
              val_curve=curve)
    elif arm == "nested_width":
        widths = [0.25, 0.5, 0.75, 1.0]
        result = fit(recipe(seed, BASE, [{"name": "nested_width", "widths": widths, "n_random": 1,
                                          "recalibrate_batches": 10}]))
        for w in widths:
            write("nested_width", f"w{w:g}_d2_k3", seed, result.model.extract(w), data,
                  train_seconds=time.time() - start)
    elif arm == "maestro":
        from regimen.models import copy_module
        from regimen.subnet import set_rank_fraction, truncate_model
        result = fit(recipe(seed, BASE, [{"name": "maestro", "layers": "conv", "sampler": "all_layers",
                                          "truncate_at_end": False,
                                          "group_lasso": 0.0, "shrink_threshold": 0.0}]))
        batches = calibration_batches(data, seed)
        for fraction in (0.25, 0.5, 0.75, 1.0):
            model = copy_module(result.model)
            set_rank_fraction(model, fraction)
            plain = truncate_model(model, dense_when_cheaper=True)
            # shared BN statistics across ranks: re-estimated per rank, as for OFA's sub-networks
            write("maestro", f"r{fraction:g}", seed, recalibrate_batch_norm(plain, batches), data,
                  train_seconds=time.time() - start)
    elif arm == "trp":
        result = fit(recipe(seed, BASE, [{"name": "trp", "energy": 0.95, "period": 20, "factorize_at_end": True,
                                          "rule": "macs"}]))
        write("trp", "e0.95", seed, result.model, data, train_seconds=time.time() - start)
    elif arm in ("ofa", "ofa_all"):
        methods = [{"name": "ofa", "kernels": [3, 5], "depths": [1, 2], "widths": [0.25, 0.5, 0.75, 1.0],
                    "phase_epochs": ofa_phases(arm)}]
        result = fit(recipe(seed, {**BASE, "kernel_size": 5}, methods))
        supernet = result.model
        batches = calibration_batches(data, seed)
        for depth, width, kernel in OFA_SETTINGS:
            setting = f"w{width:g}_d{depth}_k{kernel}"
            model = supernet.extract(depth=depth, width=width, kernel=kernel, calibration=batches)
            # (the accuracy with the shared BN statistics, pitfall 2, was measured at the 6-epoch budget: not redone)
            write(arm, setting, seed, model, data, train_seconds=time.time() - start,
                  phase_epochs=ofa_phases(arm))
    else:
        raise SystemExit(f"unknown arm {arm!r}")


def main() -> None:
    global EPOCHS, TRAIN_SUBSET, EVAL_EVERY, OUT
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--subset", type=int, default=TRAIN_SUBSET)
    parser.add_argument("--eval-every", type=int, default=EVAL_EVERY)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("pairs", nargs="+", metavar="ARM SEED")
    args = parser.parse_args()
    if len(args.pairs) % 2:
        raise SystemExit("give ARM SEED pairs")
    EPOCHS, TRAIN_SUBSET, EVAL_EVERY, OUT = args.epochs, args.subset, args.eval_every, args.out
    torch.set_num_threads(1)
    for arm, seed in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        run(arm, int(seed))


if __name__ == "__main__":
    main()
