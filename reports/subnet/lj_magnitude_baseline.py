"""The starting point of the Lottery Jackpots entry: the per-layer magnitude mask at the entry's sparsity, no training
(weights and BN statistics of the dense model), and the same mask after re-estimating the BN running statistics on the
8,000 training images (no weight changes): test accuracy per seed and keep. Separates what the mask search buys from
what the BN statistics (which the search updates in train mode, as the reference) buy.

Usage (worktree root): ``OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/lj_magnitude_baseline.py``
Writes ``reports/subnet/results_lj_magnitude.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from entries_b import _uniform_sparsity  # noqa: E402
from setting import build_setting, evaluate  # noqa: E402

from regimen.subnet._sparse import apply_masks, magnitude_mask, prunable_layers  # noqa: E402


def main() -> None:
    out = []
    for seed in (0, 1, 2):
        for keep in (0.5, 0.25):
            setting = build_setting(seed, keep)
            model = copy.deepcopy(setting.dense)
            layers = prunable_layers(model, skip_last=True)
            sparsity = _uniform_sparsity(model, keep, layers)
            apply_masks(model, {n: magnitude_mask(m.weight, sparsity) for n, m in layers})
            before = evaluate(model, *setting.test)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the pass
            model.train()
            with torch.no_grad():
                for i in range(0, len(setting.train[0]), 500):
                    model(setting.train[0][i:i + 500])
            out.append({"seed": seed, "keep": keep, "sparsity": sparsity,
                        "magnitude_no_training_test_accuracy": before,
                        "magnitude_bn_recalibrated_test_accuracy": evaluate(model, *setting.test),
                        "dense_test_accuracy": evaluate(setting.dense, *setting.test)})
            print(out[-1], flush=True)
    (HERE / "results_lj_magnitude.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
