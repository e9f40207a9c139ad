"""The temporal-dropout papers' setting: time steps missing at test time.

Trains `sequence/baseline` and `sequence/temporal_dropout` for each seed (in this process), then scores each model on
the test split with a fraction of every sequence's steps (image rows) missing — zeroed after standardisation, as
temporal dropout zeroes them — with the same seeded masks for every model. The temporal-dropout model is scored with
its deterministic pass and with MC inference (10 passes, MC-TD). Prints one JSON line per (seed, model, missing
fraction) and a median table.

    PYTHONPATH=src python reports/tasks/sequence_classification/missing_steps.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from regimen.dropout import MCDropoutClassifier
from regimen.tasks import SequenceClassificationTask, expected_calibration_error
from regimen.train import fit
from regimen.train.recipe import load_recipe

MISSING = (0.0, 0.2, 0.4)


def score(model, x, y) -> dict[str, float]:
    with torch.no_grad():
        log_probs = torch.cat([F.log_softmax(model(part).float(), dim=1) for part in x.split(1000)])
    return {"acc": (log_probs.argmax(1) == y).double().mean().item(), "nll": F.nll_loss(log_probs, y).item(),
            "ece": expected_calibration_error(log_probs.exp(), y, 15)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["baseline", "temporal_dropout"],
                        help="shipped sequence/ recipes to train and score (+ MC inference for those with dropout)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        models = {}
        for name in args.models:
            recipe = load_recipe(f"sequence/{name}", [f"seed={seed}"])
            models[name] = fit(recipe).model.eval()
        task = SequenceClassificationTask(recipe)
        data = task.load_data()
        x, y = data.test.gather(torch.arange(len(data.test)))
        x = task.normalizer(data, torch.device("cpu"))(x)
        for missing in MISSING:
            generator = torch.Generator().manual_seed(1000 + seed)
            keep = (torch.rand(x.shape[0], x.shape[1], 1, generator=generator) >= missing).float()
            masked = x * keep
            arms = dict(models)
            for name, model in models.items():
                if name != "baseline":
                    arms[f"{name}+mc"] = MCDropoutClassifier(model, 10, seed=seed)
            for arm, model in arms.items():
                row = {"seed": seed, "arm": arm, "missing": missing, **score(model, masked, y)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("| arm | missing | acc | NLL | ECE |\n|---|---|---|---|---|")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        for missing in MISSING:
            chosen = [r for r in rows if r["arm"] == arm and r["missing"] == missing]
            cells = []
            for key in ("acc", "nll", "ece"):
                values = [r[key] for r in chosen]
                cells.append(f"{statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}]")
            print(f"| {arm} | {missing:g} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
