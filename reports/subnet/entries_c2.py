"""Entries of the pruning comparison, part C2 (issue 17's remaining evidence): a lottery-ticket-with-rewinding
baseline for SAP, and polarization with a larger λ at keep 0.25. Each is ``entry(setting) -> trained model`` (see
``setting.py``)."""

from __future__ import annotations

import copy
import math

import torch
from entries_a import _masked_macs, _positions, _to_budget, polarization
from setting import DENSE_EPOCHS, PruneSetting, _make_model, dense_macs, evaluate, train_model
from torch import nn

from regimen.subnet.class_dependent import layer_prune_masks
from regimen.subnet.pq_index import apply_masks

#: polarization λ of the strong arm: 5x entries_a's 5e-3 (see ``polarization_strong``)
STRONG_LAM = 2.5e-2


def polarization_strong(setting: PruneSetting) -> nn.Module:
    """``polarization`` with λ = 2.5e-2 (5× the default 5e-3) and everything else equal (same 11-epoch budget). The
    factor makes λ·Σ_steps lr (the total push of the regulariser on one factor) match the reference CIFAR run's
    (λ = 1e-4 over 200 epochs × 391 steps at lr 0.1/0.01/0.001: ≈ 0.41; entries_a: 5e-3 × 630 steps × mean lr
    0.025 ≈ 0.08)."""
    model = polarization(setting, lam=STRONG_LAM)
    return model


def _rewind_state(setting: PruneSetting, step: int) -> dict[str, torch.Tensor]:
    """The dense run's weights (and BN statistics) after ``step`` optimizer steps: the dense model re-trained from
    its seeded initialisation with ``build_setting``'s exact call (``DENSE_EPOCHS``, ``salt=999``, default lr), stopped
    after ``step`` steps — the same trajectory (same data order, same schedule) up to that step."""
    model = _make_model(setting.seed)
    train_model(model, setting, DENSE_EPOCHS, salt=999, steps=step)
    return copy.deepcopy(model.state_dict())


def lottery_rewind(setting: PruneSetting) -> nn.Module:
    """Lottery ticket with weight rewinding (iterative magnitude pruning, Frankle et al.), at SAP's budget: one
    round per fine-tuning epoch (``setting.epochs`` = 3 rounds). Round r removes the smallest-|w| weights, the same
    fraction of each layer's remaining ones (as SAP's layer scope), until the effective MACs reach keep^(r/3) of the
    dense model's (keep 0.5: 20.6 % per round, Frankle's 20 %); then every weight and BN statistic is rewound to the
    dense run's state after its first epoch (step 63 of 504, 12.5 % of training; the run is replayed exactly), the
    mask applied, and the ticket retrained one epoch (63 steps, lr from the dense schedule's value at step 63, 0.048,
    cosine to 0, masks re-applied after every step). Round 1 prunes the trained dense weights; later rounds prune
    the previous round's retrained weights. Total retraining: 3 epochs, SAP's budget (no extra dense training: the
    rewind point is the dense run's own)."""
    model = copy.deepcopy(setting.dense)
    per_epoch = math.ceil(len(setting.train[0]) / setting.batch_size)
    rewind_step = per_epoch
    rewind = _rewind_state(setting, rewind_step)
    total = DENSE_EPOCHS * per_epoch
    lr = setting.lr * 0.5 * (1 + math.cos(math.pi * rewind_step / total))
    positions = _positions(model, setting.example_input)
    dense = dense_macs(setting)
    rounds = max(1, setting.epochs)
    masks = None
    history = []
    for r in range(1, rounds + 1):
        target = setting.keep ** (r / rounds) * dense

        def propose(scale, masks=masks):
            return layer_prune_masks(model, min(0.999, scale), masks, score="magnitude")

        masks = _to_budget(propose, lambda m: _masked_macs(m, positions), target)
        model.load_state_dict(rewind)
        apply_masks(model, masks)
        rewound_val = evaluate(model, *setting.val)
        train_model(model, setting, 1, lr=lr, after_step=lambda m, masks=masks: apply_masks(m, masks), salt=500 + r)
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        history.append({"round": r, "density": kept, "macs_fraction": _masked_macs(masks, positions) / dense,
                        "val_at_rewind": rewound_val, "val_after_retrain": evaluate(model, *setting.val)})
    model.report_extra = {"rewind_step": rewind_step, "retrain_lr": lr, "rounds": history,
                          "retrain_steps": rounds * per_epoch}
    return model


ENTRIES = {
    "lottery_rewind": lottery_rewind,
    "polarization_strong": polarization_strong,
}

PAPERS = {
    "lottery_rewind": "arXiv:1903.01611 (LT + rewinding; SAP's baseline)",
    "polarization_strong": "NeurIPS 2020 polarization, λ 5x",
}

CLAIMS = {
    "lottery_rewind": "baseline of arXiv:2302.05601's claim: SAP beats iterative (lottery-ticket) pruning",
    "polarization_strong": "~50% FLOPs removed at <1% accuracy loss (ResNet-56 CIFAR-10 93.80 -> 93.83)",
}
