"""Entries of the pruning comparison, part C: the consensus sub-network of dynamic gates (arXiv 2302.10798).
Each is ``entry(setting) -> trained, pruned model`` (see ``setting.py``).

The entry trains one pass from the fresh initialisation, like ``polarization`` (``entries_a.py``) with which it is
compared at equal MACs: same epochs (``scratch_epochs - 1`` of regularised training, then extraction to the MAC budget,
then one epoch of fine-tuning at lr 0.01). What the gated (dynamic) network did before extraction is in ``extra``:
its validation accuracy and mean executed MACs per input, the firing rates, the static consensus's own MACs and
accuracy, and the accuracy right after extraction (no fine-tuning).
"""

from __future__ import annotations

import math

import torch
from setting import PruneSetting, dense_macs, evaluate, train_model
from torch import nn

from regimen.subnet import (
    apply_consensus_gates,
    consensus_dynamic_macs,
    consensus_masks,
    count_macs,
    extract_consensus,
    firing_rates,
    gate_polarization,
    gate_sparsity_loss,
)
from regimen.subnet.ofa import recalibrate_batch_norm

#: learning rate of the fine-tuning after extraction (as entries_a / entries_b)
FINETUNE_LR = 0.01
#: λ_s (sparsity), final λ_p (polarization), fraction of the run over which λ_p rises from 0, predictor bias at start
CG_LAM_S, CG_LAM_P, CG_ANNEAL, CG_INIT_BIAS = 20.0, 5.0, 0.3, 1.0
#: polarization strength (0: symmetric around the mean rate; the level is set by L_s), one target per layer
CG_T, CG_PER_LAYER = 0.0, True
#: training images the firing rates and the BN re-estimation use
CALIBRATION = 2000


def _chunks(x: torch.Tensor, size: int = 500) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def consensus_gates(setting: PruneSetting) -> nn.Module:
    """One pass from the fresh initialisation: a ConsensusGate (linear predictor on the pooled layer input, hard gate,
    straight-through gradient) on each of the four conv-BN groups; ``scratch_epochs - 1`` epochs of CE + 20·L_s +
    λ_p·L_p on the batch firing rates (L_s per layer: each layer's MAC-weighted rate → κ = sqrt(keep); t = 0; λ_p
    rising 0 → 5 over the first 30 %); then firing rates on 2,000 training images, gates removed and the channels
    ranked by firing rate removed until the MAC budget holds, BN statistics re-estimated on those images, one epoch
    of fine-tuning at lr 0.01."""
    model = setting.make_model()
    example = setting.example_input
    names = apply_consensus_gates(model, example, init_bias=CG_INIT_BIAS)
    gates = [model.get_submodule(n) for n in names]
    costs = torch.cat([torch.full((g.out_channels,), float(g.unit_cost)) for g in gates])
    kappa = math.sqrt(setting.keep)
    t = CG_T
    epochs = setting.scratch_epochs - 1
    total = epochs * math.ceil(len(setting.train[0]) / setting.batch_size)
    step = [0]

    def extra(model, x, y, logits):
        rates = [g.rates for g in gates]
        for g in gates:
            g.rates = None
        lam_p = CG_LAM_P * min(1.0, step[0] / max(1.0, CG_ANNEAL * total))
        step[0] += 1
        return CG_LAM_S * gate_sparsity_loss(rates, kappa, costs, CG_PER_LAYER) + lam_p * gate_polarization(rates, t)

    train_model(model, setting, epochs, extra)
    dense = dense_macs(setting)
    val_x, val_y = setting.val
    dynamic_val = evaluate(model, val_x, val_y)
    dynamic_macs = torch.cat([consensus_dynamic_macs(model, c) for c in _chunks(val_x)])
    calib = setting.train[0][:CALIBRATION]
    rates = firing_rates(model, calib)
    flat = torch.cat(list(rates.values()))
    consensus_masks(model, rates)
    static_val = evaluate(model, val_x, val_y)
    static_macs = float(torch.cat([consensus_dynamic_macs(model, c) for c in _chunks(val_x[:500])]).mean())
    predictor_macs = sum(g.predictor.in_features * g.predictor.out_features for g in gates)
    for g in gates:
        g.force(None)
    summary = extract_consensus(model, example, rates=rates, macs=setting.keep * dense)
    after_extract = evaluate(model, val_x, val_y)
    recalibrate_batch_norm(model, _chunks(calib))
    after_recalibration = evaluate(model, val_x, val_y)
    train_model(model, setting, 1, lr=FINETUNE_LR)
    model.report_extra = {
        "dynamic_val_accuracy": dynamic_val,
        "dynamic_macs_fraction": float(dynamic_macs.mean()) / dense,
        "dynamic_macs_p10": float(dynamic_macs.quantile(0.1)) / dense,
        "dynamic_macs_p90": float(dynamic_macs.quantile(0.9)) / dense,
        "consensus_val_accuracy_masked": static_val,
        "consensus_macs_fraction": (static_macs - predictor_macs) / dense,
        "unpolarized_fraction": float(((flat > 0.05) & (flat < 0.95)).float().mean()),
        "rate_mean": float(flat.mean()),
        "units_kept_after_budget": summary["units"][0], "units_total": summary["units"][1],
        "val_after_extract_no_finetune": after_extract,
        "val_after_bn_recalibration": after_recalibration,
        "static_macs_fraction": count_macs(model, example) / dense,
        "kappa": kappa, "t": t,
        "rates": {k: [round(v, 4) for v in r.tolist()] for k, r in rates.items()},
    }
    return model


ENTRIES = {"consensus_gates": consensus_gates}

PAPERS = {"consensus_gates": "arXiv:2302.10798"}

CLAIMS = {"consensus_gates": "one-pass binary gates + polarizing loss: 50% of connections removed at <1% accuracy "
                             "loss (CIFAR-10/100, Tiny-ImageNet); the gated network's MACs are per input"}
