"""A reduced-budget run of the consensus entry against the polarization entry (both one pass from scratch), for when
the full comparison (``compare.py one consensus_gates 0.5 <seed>``, ~10 CPU-minutes per run) does not fit.

Same model, data source, training loop and entries as ``compare.py``; smaller: a 2,000-image training subset (seeded
as ``build_setting``), ``dense_epochs=4`` and ``epochs=1`` (so each entry trains 4 regularised epochs, is pruned to
``keep`` of the MACs, and fine-tunes 1 epoch). No dense model is trained (both entries start from the fresh
initialisation; the untrained ``SmallCNN`` only gives the dense MAC count). One JSON per run in
``results_consensus_quick/<entry>__keep<keep>__seed<seed>.json``.

Usage (worktree root): ``OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/consensus_quick.py ENTRY KEEP SEED``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from setting import TEST_SIZE, VAL_SIZE, PruneSetting, _make_model, evaluate  # noqa: E402

from regimen.data import load_data  # noqa: E402
from regimen.subnet import count_macs, count_params  # noqa: E402

TRAIN = 2000
OUT = HERE / "results_consensus_quick"


def main() -> None:
    entry, keep, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    import entries_a
    import entries_c
    fn = {"consensus_gates": entries_c.consensus_gates, "polarization": entries_a.polarization}[entry]
    splits = load_data("auto", val_fraction=VAL_SIZE / 60000, train_subset=TRAIN, seed=seed, test_subset=TEST_SIZE)
    mean, std = splits.mean.view(1, -1, 1, 1), splits.std.view(1, -1, 1, 1)

    def tensors(dataset):
        x, y = dataset.gather(torch.arange(len(dataset)))
        return (x - mean) / std, y

    train, val, test = tensors(splits.train), tensors(splits.val), tensors(splits.test)
    setting = PruneSetting(dense=_make_model(seed), make_model=lambda: _make_model(seed + 10_000), train=train,
                           val=val, keep=keep, seed=seed, epochs=1, batch_size=128,
                           example_input=train[0][:2].clone(), dense_epochs=4)
    dense_macs, dense_params = count_macs(setting.dense, setting.example_input), count_params(setting.dense)
    start = time.perf_counter()
    model = fn(setting)
    wall = time.perf_counter() - start
    result = {"entry": entry, "keep": keep, "seed": seed, "train_subset": TRAIN, "dense_epochs": 4, "epochs": 1,
              "test_accuracy": evaluate(model, *test), "val_accuracy": evaluate(model, *val),
              "macs": count_macs(model, setting.example_input), "dense_macs": dense_macs,
              "params": count_params(model), "dense_params": dense_params, "wall_s": wall,
              "extra": getattr(model, "report_extra", {}), "load_average": os.getloadavg()[0]}
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{entry}__keep{keep:g}__seed{seed}.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(json.dumps({k: v for k, v in result.items() if k != "extra"}), flush=True)


if __name__ == "__main__":
    main()
