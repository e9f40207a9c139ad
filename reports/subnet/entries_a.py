"""Entries of the pruning comparison, part A: magnitude (the reference), random search, polarization, PQ-Index/SAP,
class-dependent compression. Each is ``entry(setting) -> trained, pruned model`` (see ``setting.py``)."""

from __future__ import annotations

import copy

from torch import nn

from setting import PruneSetting, dense_macs, prune_to_macs, train_model

#: learning rate of every fine-tuning after pruning (a fifth of the dense run's)
FINETUNE_LR = 0.01


def magnitude(setting: PruneSetting) -> nn.Module:
    """L1 channel magnitude (Li et al. 2017), global ranking over dependency groups (scores normalised by the group
    mean), channels removed until the MAC budget holds, then ``setting.epochs`` epochs of fine-tuning."""
    model = copy.deepcopy(setting.dense)
    prune_to_macs(model, setting.example_input, setting.keep * dense_macs(setting), "l1")
    return train_model(model, setting, setting.epochs, lr=FINETUNE_LR)


ENTRIES = {
    "magnitude": magnitude,
}

PAPERS = {
    "magnitude": "arXiv:1608.08710",
}

CLAIMS = {
    "magnitude": "reference: L1 filter pruning + fine-tuning",
}
