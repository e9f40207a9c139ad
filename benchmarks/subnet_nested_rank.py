"""Maestro (ordered low rank): Fashion-MNIST accuracy vs the rank kept, against SVD truncation of a dense model.

Setup: the same recipe (MLP 784-512-256-10 unless ``--model resnet``, SGD + Nesterov, cosine, ``--epochs`` epochs on
``--subset`` Fashion-MNIST training images, seed 0) trained four ways: dense (then every layer SVD-factorised after
training, ``apply_maestro``), Maestro without ordered dropout (``sampler="none"``: factorised training only),
Maestro with the paper's single-layer ordered dropout, and Maestro with one shared rank fraction for all layers
(``sampler="all_layers"``). Every model is then evaluated on the 10k test set with each layer truncated to the same
fraction of its full rank (``set_rank_fraction``); the classifier stays dense. Params counts the truncated factors
(a factorised layer at full rank has *more* parameters than the dense one). Training times are from a shared 2-core
machine: indicative only.

Run:  .venv/bin/python benchmarks/subnet_nested_rank.py --epochs 5 --subset 10000
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from regimen.subnet.maestro import apply_maestro, set_rank_fraction, truncate_model
from regimen.train import evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from subnet_nested import fashion_mnist_subset  # noqa: E402  (benchmarks/ is not a package)

FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
MODELS = {
    "mlp": {"name": "mlp", "options": {"hidden": [512, 256]}},
    "resnet": {"name": "resnet", "options": {"widths": [16, 32, 64], "depths": [1, 1, 1]}},
}


def recipe(model: str, epochs: int, subset: int, methods: list[dict]) -> dict:
    return {
        "name": "maestro-bench", "seed": 0,
        "data": {"name": "fashion_mnist", "val_fraction": 0.1, "train_subset": subset},
        "model": copy.deepcopy(MODELS[model]),
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.3},
        "train": {"epochs": epochs, "batch_size": 128},
        "methods": methods,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--out", default="reports/subnet_nested")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, normalize = fashion_mnist_subset(args.subset)
    # the classifier (rank <= 10) stays dense in every run; the ResNet's 1-channel stem too (rank <= 9 anyway)
    head = "stages.2.fc" if args.model == "mlp" else "stages.4.fc"
    ignore = [head] + (["stages.0.0"] if args.model == "resnet" else [])
    runs = {
        "dense + SVD after training": [],
        "maestro, no ordered dropout": [{"name": "maestro", "sampler": "none", "ignore": ignore}],
        "maestro, single-layer OD (paper)": [{"name": "maestro", "sampler": "single_layer", "ignore": ignore}],
        "maestro, all-layers OD": [{"name": "maestro", "sampler": "all_layers", "ignore": ignore}],
    }
    table: dict[str, dict] = {}
    for label, methods in runs.items():
        result = fit(recipe(args.model, args.epochs, args.subset, methods), data=data)
        model = result.model
        if not methods:
            dense_params = sum(p.numel() for p in model.parameters())
            model = apply_maestro(copy.deepcopy(model), ignore=ignore)
        row = {"train_s": result.summary["train_time"], "full_model_acc": result.summary["final_test_acc"],
               "acc": {}, "params": {}}
        for fraction in FRACTIONS:
            truncated = copy.deepcopy(model)
            set_rank_fraction(truncated, fraction)
            truncate_model(truncated)  # physically smaller: params are what a deployment would hold
            row["acc"][fraction] = evaluate(truncated, data.test, normalize)["acc"]
            row["params"][fraction] = sum(p.numel() for p in truncated.parameters())
        table[label] = row
        print(label, {f"{k:g}": round(v, 4) for k, v in row["acc"].items()}, flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"maestro_{args.model}.json").write_text(json.dumps(
        {"setup": {"model": MODELS[args.model], "epochs": args.epochs, "subset": args.subset,
                   "dense_params": dense_params}, "runs": {k: {**v, "acc": {f"{f:g}": a for f, a in v["acc"].items()},
                                                              "params": {f"{f:g}": p for f, p in v["params"].items()}}
                                                           for k, v in table.items()}}, indent=2))
    first = next(iter(table.values()))
    header = " | ".join(f"rank {f:g}" for f in FRACTIONS)
    lines = [
        f"### Maestro accuracy vs rank ({args.model}, {args.epochs} epochs, {args.subset} Fashion-MNIST images, "
        "test set 10k)",
        "",
        f"Dense model: {dense_params:,} params. Factorised params at each rank fraction: "
        + ", ".join(f"{f:g} → {first['params'][f]:,}" for f in FRACTIONS) + ".",
        "",
        f"| training | train s | {header} |",
        "|---|---|" + "---|" * len(FRACTIONS),
    ]
    for label, row in table.items():
        accs = " | ".join(f"{row['acc'][f]:.4f}" for f in FRACTIONS)
        lines.append(f"| {label} | {row['train_s']:.0f} | {accs} |")
    text = "\n".join(lines) + "\n"
    (out / f"maestro_{args.model}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
