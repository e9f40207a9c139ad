"""Dynamics check of the consensus entry's gated training on the shared data (no dense model, no extraction): the
kept (MAC-weighted) rate, per-layer rates and unpolarised fraction every 30 steps, then the rate histogram.

Usage (worktree root): ``OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/consensus_dynamics.py EPOCHS LAM_S
LAM_P T PER_LAYER`` (PER_LAYER 1 or 0); λ_p rises over 30 % of the entry's 10-epoch run (630 steps), as in the entry.
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import setting as S  # noqa: E402
import torch  # noqa: E402

from regimen.data import load_data  # noqa: E402
from regimen.subnet import apply_consensus_gates, firing_rates, gate_polarization, gate_sparsity_loss  # noqa: E402


def main() -> None:
    epochs, lam_s, lam_p_max, t = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    per_layer = sys.argv[5] == "1"
    torch.set_num_threads(1)
    splits = load_data("auto", val_fraction=S.VAL_SIZE / 60000, train_subset=S.TRAIN_SUBSET, seed=0, test_subset=10)
    mean, std = splits.mean.view(1, -1, 1, 1), splits.std.view(1, -1, 1, 1)

    def tensors(d):
        x, y = d.gather(torch.arange(len(d)))
        return (x - mean) / std, y

    train, val = tensors(splits.train), tensors(splits.val)
    s = S.PruneSetting(dense=None, make_model=lambda: S._make_model(10000), train=train, val=val, keep=0.5, seed=0,
                       epochs=3, batch_size=128, example_input=train[0][:2].clone())
    model = s.make_model()
    gates = [model.get_submodule(n) for n in apply_consensus_gates(model, s.example_input, init_bias=1.0)]
    costs = torch.cat([torch.full((g.out_channels,), float(g.unit_cost)) for g in gates])
    kappa, total, step = math.sqrt(s.keep), 10 * 63, [0]

    def extra(model, x, y, logits):
        rates = [g.rates for g in gates]
        for g in gates:
            g.rates = None
        lam_p = lam_p_max * min(1.0, step[0] / (0.3 * total))
        step[0] += 1
        return lam_s * gate_sparsity_loss(rates, kappa, costs, per_layer) + lam_p * gate_polarization(rates, t)

    def after(model):
        if step[0] % 30 == 0:
            r = torch.cat([g.last_gates.float().mean(0) for g in gates])
            per = [round(float(g.last_gates.float().mean()), 3) for g in gates]
            print(step[0], "kept(weighted)", round(float((costs * r).sum() / costs.sum()), 3), "per layer", per,
                  "unpol", round(float(((r > 0.05) & (r < 0.95)).float().mean()), 3), flush=True)

    start = time.time()
    S.train_model(model, s, epochs, extra, after_step=after)
    print("wall", time.time() - start, "val", S.evaluate(model, *val))
    flat = torch.cat(list(firing_rates(model, train[0][:2000]).values()))
    print("rates hist", torch.histc(flat, 10, 0, 1).tolist())


if __name__ == "__main__":
    main()
