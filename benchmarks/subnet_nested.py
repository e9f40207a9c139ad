"""Nested widths vs separately trained models: Fashion-MNIST accuracy and CPU latency at every width.

Setup: one ``nested_width`` run (sandwich rule, in-place distillation, per-width BN) against one ordinary run per
width of the same architecture (the reference model with every channel count scaled by the width, built exactly as
``extract(w)`` builds it), all with the same recipe, seed, data subset and number of epochs. Accuracy is top-1 on the
Fashion-MNIST test set (10k). For the nested run each width is measured twice: with its running per-width BN
statistics, and after ``recalibrate_bn`` on 20 training batches. Latency: ``torch.set_num_threads(1)``, median of
repeated forwards (batch 1 and 256) of the extracted model and of the separately trained model of the same width,
interleaved in one process; the machine is shared (~7 processes on 2 cores), so absolute times are noisy and the
ratio to the peer measured in the same run is the number to read.

Run:  .venv/bin/python benchmarks/subnet_nested.py --model resnet --epochs 3 --subset 10000
      .venv/bin/python benchmarks/subnet_nested.py --model mlp --epochs 5 --subset 10000
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from pathlib import Path

import torch

from regimen.data import load_data
from regimen.subnet.nested import NestedWidth, units_at_width
from regimen.train import evaluate, fit

WIDTHS = (0.25, 0.5, 0.75, 1.0)
MODELS = {
    "resnet": {"name": "resnet", "options": {"widths": [16, 32, 64], "depths": [1, 1, 1]}},
    "mlp": {"name": "mlp", "options": {"hidden": [256, 128]}},
}


def fashion_mnist_subset(subset: int):
    """Fashion-MNIST with ``subset`` training images (10 % validation, seed 0) and its normalising function."""
    data = load_data("fashion_mnist", None, 0.1, subset, 0)
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x - mean) / std

    return data, normalize


def base_recipe(model: str, epochs: int, subset: int) -> dict:
    return {
        "name": f"nested-{model}", "seed": 0,
        "data": {"name": "fashion_mnist", "val_fraction": 0.1, "train_subset": subset},
        "model": copy.deepcopy(MODELS[model]),
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.3},
        "train": {"epochs": epochs, "batch_size": 128, "eval_batch_size": 1000},
    }


def scaled(model: str, width: float) -> dict:
    spec = copy.deepcopy(MODELS[model])
    key = "widths" if model == "resnet" else "hidden"
    spec["options"][key] = [units_at_width(c, width) for c in spec["options"][key]]
    return spec


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    model.eval()
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="reports/subnet_nested")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data, normalize = fashion_mnist_subset(args.subset)
    rows = {w: {"width": w} for w in WIDTHS}
    recipe = base_recipe(args.model, args.epochs, args.subset)
    recipe["methods"] = [{"name": "nested_width", "widths": list(WIDTHS), "sort_by": "l2", "n_random": 2}]
    nested_run = fit(recipe, data=data)
    nested: NestedWidth = nested_run.model
    nested_time = nested_run.summary["train_time"]
    extracted = {w: nested.extract(w) for w in WIDTHS}
    for w in WIDTHS:
        rows[w]["nested_acc"] = evaluate(extracted[w], data.test, normalize)["acc"]
    calibration = [normalize(data.train.images[i * 128:(i + 1) * 128].float() / 255.0) for i in range(20)]
    recalibrated = copy.deepcopy(nested)
    recalibrated.recalibrate_bn(calibration)
    for w in WIDTHS:
        rows[w]["nested_recal_acc"] = evaluate(recalibrated.extract(w), data.test, normalize)["acc"]
        rows[w]["params"] = nested.width_params(w)

    separate = {}
    separate_time = 0.0
    for w in WIDTHS:
        single = base_recipe(args.model, args.epochs, args.subset)
        single["model"] = scaled(args.model, w)
        run = fit(single, data=data)
        separate[w] = run.model
        separate_time += run.summary["train_time"]
        rows[w]["separate_acc"] = run.summary["final_test_acc"]
        rows[w]["separate_train_s"] = run.summary["train_time"]
        assert sum(p.numel() for p in run.model.parameters()) == rows[w]["params"], "architectures differ"

    for batch in (1, 256):
        x = normalize(data.test.images[:batch].float() / 255.0)
        for w in WIDTHS:
            a, b = [], []
            for _ in range(3):  # interleave the two models to share the machine's noise
                a.append(latency_ms(extracted[w], x, args.repeats))
                b.append(latency_ms(separate[w], x, args.repeats))
            rows[w][f"extract_ms_b{batch}"] = statistics.median(a)
            rows[w][f"separate_ms_b{batch}"] = statistics.median(b)
            rows[w][f"nested_forward_ms_b{batch}"] = latency_ms(
                _AtWidth(nested, w), x, max(5, args.repeats // 3))
    full = rows[1.0]
    for w in WIDTHS:
        rows[w]["latency_vs_full_b256"] = rows[w]["extract_ms_b256"] / full["extract_ms_b256"]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"setup": {"model": MODELS[args.model], "epochs": args.epochs, "subset": args.subset,
                        "widths": WIDTHS, "threads": 1, "latency_repeats": args.repeats},
              "nested_train_s": nested_time, "separate_train_s_total": separate_time,
              "rows": [rows[w] for w in WIDTHS]}
    (out / f"{args.model}.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"### {args.model}: one nested run vs separately trained models ({args.epochs} epochs each, "
        f"{args.subset} Fashion-MNIST training images, test set 10k)",
        "",
        f"Training time: nested {nested_time:.0f} s (all widths at once) vs separate {separate_time:.0f} s "
        f"(sum of {len(WIDTHS)} runs); shared 2-core machine, so times are indicative.",
        "",
        "| width | params | nested acc | nested acc (BN recalibrated) | separate acc | extract ms (b=1) | "
        "separate ms (b=1) | extract ms (b=256) | separate ms (b=256) | extract/separate (b=256) | "
        "nested-forward ms (b=256) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in WIDTHS:
        r = rows[w]
        lines.append(
            f"| {w:g} | {r['params']:,} | {r['nested_acc']:.4f} | {r['nested_recal_acc']:.4f} | "
            f"{r['separate_acc']:.4f} | {r['extract_ms_b1']:.2f} | {r['separate_ms_b1']:.2f} | "
            f"{r['extract_ms_b256']:.1f} | {r['separate_ms_b256']:.1f} | "
            f"{r['extract_ms_b256'] / r['separate_ms_b256']:.2f} | {r['nested_forward_ms_b256']:.1f} |")
    text = "\n".join(lines) + "\n"
    (out / f"{args.model}.md").write_text(text)
    print(text)
    if any(math.isnan(r["separate_acc"]) for r in rows.values()):
        raise SystemExit("a separate run produced no accuracy")


class _AtWidth(torch.nn.Module):
    def __init__(self, nested: NestedWidth, width: float) -> None:
        super().__init__()
        self.nested, self.width = nested, width

    def forward(self, x):
        return self.nested(x, width=self.width)


if __name__ == "__main__":
    main()
