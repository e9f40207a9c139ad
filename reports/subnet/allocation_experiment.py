"""Layer-wise sparsity allocations compared (issue 17, arXiv 2308.10438's claim): the DP over rate-distortion curves
(``layer_dp``) against uniform, global magnitude, LAMP and ERK allocations at the same global sparsities of the
conv/linear weights, on the shared setting's trained dense SmallCNN (``setting.py``).

Usage (worktree root; one process per seed)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/allocation_experiment.py --seeds 0 --sparsities 0.5 0.7 0.9

For each seed the RD curves are measured once (21 amounts in [0, 0.95], worst case over the first 1,024 training
images, the ``layer_dp`` entry's settings) and the DP allocates parameters (``cost="params"``, budget
``⌊(1 − s)·N⌋`` surviving weights, as ``apply_layer_dp``). Every allocation prunes the smallest ``|w|`` inside each
layer (``apply_allocation``); all five layers (classifier included) are prunable for every rule. Per arm:

* ``one_shot_test_accuracy``: the pruned model with the dense BN statistics, no training;
* ``one_shot_bn_test_accuracy``: the same masks after re-estimating the BN running statistics on the 8,000 training
  images (no gradient step);
* ``test_accuracy``: after ``--finetune-epochs`` epochs of masked fine-tuning (lr 0.01, cosine; masks re-applied
  after every step) from the one-shot model, at the sparsities of ``--finetune-sparsities`` only (CPU budget; the
  paper's claim is about high sparsity); ``None`` elsewhere;
* ``predicted_distortion``: Σ_l D_l(a_l), the curves linearly interpolated at each layer's amount (the DP's
  objective; additivity assumed), and ``measured_distortion``: the same worst-case output distortion measured with
  all layers pruned together (the additivity check).

Writes ``reports/subnet/results_allocation/<rule>__sparsity<s>__seed<seed>.json`` (skips existing files) and the
seed's curves to ``curves__seed<seed>.pt`` (reused when present); test accuracy on the first 5,000 official test
images (the shared setting's test split).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import effective_macs  # noqa: E402
from setting import build_setting, evaluate, train_model  # noqa: E402

from regimen.subnet import allocate_sparsity, apply_allocation, dp_allocate, rd_curves  # noqa: E402
from regimen.subnet._sparse import apply_masks, prunable_layers  # noqa: E402

OUT = HERE / "results_allocation"
RULES = ("uniform", "global", "lamp", "erk", "dp")
CALIB = 1024
FINETUNE_LR = 0.01


def _worst_case_distortion(model, reference, x) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x) - reference).pow(2).mean(1).max())


def _interpolated(curves: torch.Tensor, grid: torch.Tensor, names: list[str], amounts: dict[str, float]) -> float:
    total = 0.0
    for i, name in enumerate(names):
        a = min(float(amounts[name]), float(grid[-1]))
        j = min(int(torch.searchsorted(grid, torch.tensor(a, dtype=grid.dtype), right=True)) - 1, len(grid) - 2)
        t = (a - float(grid[j])) / float(grid[j + 1] - grid[j])
        total += float(curves[i, j]) * (1 - t) + float(curves[i, j + 1]) * t
    return total


def _recalibrate_bn(model, x, batch: int = 500) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
    model.eval()


def run_seed(seed: int, sparsities: list[float], finetune_epochs: int, finetune_sparsities: list[float]) -> None:
    todo = [(s, rule) for s in sparsities for rule in RULES
            if not (OUT / f"{rule}__sparsity{s:g}__seed{seed}.json").exists()]
    if not todo:
        return
    setting = build_setting(seed, 0.5)
    dense = setting.dense
    test = setting.test
    calib = setting.train[0][:CALIB]
    names = [n for n, _ in prunable_layers(dense)]
    cached = OUT / f"curves__seed{seed}.pt"
    if cached.exists():
        saved = torch.load(cached, weights_only=True)
        curves, grid, names, curve_s = saved["curves"], saved["grid"], saved["names"], saved["seconds"]
    else:
        start = time.process_time()
        curves, grid, names = rd_curves(dense, calib, names, grid=21, max_amount=0.95, worst_case=True)
        curve_s = time.process_time() - start
        torch.save({"curves": curves, "grid": grid, "names": names, "seconds": curve_s}, cached)
    sizes = [dense.get_submodule(n).weight.numel() for n in names]
    survivors = torch.tensor([[n - math.floor(a * n + 1e-9) for a in grid.tolist()] for n in sizes])
    total = sum(sizes)
    dense.eval()
    with torch.no_grad():
        reference = dense(calib)
    dense_test = evaluate(dense, *test)
    dense_macs = effective_macs(dense, setting.example_input)
    for sparsity, rule in todo:
        path = OUT / f"{rule}__sparsity{sparsity:g}__seed{seed}.json"
        begin, cpu = time.perf_counter(), time.process_time()
        model = copy.deepcopy(dense)
        if rule == "dp":
            picks = dp_allocate(curves, survivors, int(math.floor((1 - sparsity) * total + 1e-9)), resolution=4096)
            amounts = {n: float(grid[d]) for n, d in zip(names, picks)}
        else:
            amounts = allocate_sparsity(model, sparsity, rule)
        masks = apply_allocation(model, amounts)
        kept = sum(int(m.sum()) for m in masks.values())
        one_shot = evaluate(model, *test)
        measured = _worst_case_distortion(model, reference, calib)
        recal = copy.deepcopy(model)
        _recalibrate_bn(recal, setting.train[0])
        one_shot_bn = evaluate(recal, *test)
        epochs = finetune_epochs if any(abs(sparsity - f) < 1e-9 for f in finetune_sparsities) else 0
        if epochs > 0:
            train_model(model, setting, epochs, lr=FINETUNE_LR, salt=99,
                        after_step=lambda m, masks=masks: apply_masks(m, masks))
        result = {
            "entry": f"alloc_{rule}", "rule": rule, "sparsity": sparsity, "seed": seed,
            "test_accuracy": evaluate(model, *test) if epochs else None,
            "val_accuracy": evaluate(model, *setting.val) if epochs else None,
            "one_shot_test_accuracy": one_shot, "one_shot_bn_test_accuracy": one_shot_bn,
            "dense_test_accuracy": dense_test, "finetune_epochs": epochs,
            "amounts": amounts, "weight_density": kept / total, "prunable_weights": total,
            "effective_macs": effective_macs(model, setting.example_input), "dense_macs": dense_macs,
            "predicted_distortion": _interpolated(curves, grid, names, amounts),
            "measured_distortion": measured,
            "curves_cpu_s": curve_s, "wall_s": time.perf_counter() - begin, "cpu_s": time.process_time() - cpu,
            "load_average": os.getloadavg()[0],
        }
        path.write_text(json.dumps(result, indent=1, sort_keys=True))
        print(json.dumps({k: v for k, v in result.items() if k != "amounts"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.7, 0.9])
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-sparsities", nargs="*", type=float, default=[0.9])
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    for seed in args.seeds:
        run_seed(seed, args.sparsities, args.finetune_epochs, args.finetune_sparsities)


if __name__ == "__main__":
    main()
