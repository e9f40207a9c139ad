"""Entries of the pruning comparison, part A: magnitude (the reference), random search, polarization, PQ-Index/SAP,
class-dependent compression. Each is ``entry(setting) -> trained, pruned model`` (see ``setting.py``)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from regimen.subnet import prune_groups
from regimen.subnet.polarization import polarization_penalty, polarization_plan, polarized_fraction, \
    scaling_factors, search_threshold
from regimen.subnet.random_search import random_search
from setting import PruneSetting, dense_macs, evaluate, prune_to_macs, train_model

#: learning rate of every fine-tuning after pruning (a fifth of the dense run's)
FINETUNE_LR = 0.01


def magnitude(setting: PruneSetting) -> nn.Module:
    """L1 channel magnitude (Li et al. 2017), global ranking over dependency groups (scores normalised by the group
    mean), channels removed until the MAC budget holds, then ``setting.epochs`` epochs of fine-tuning."""
    model = copy.deepcopy(setting.dense)
    prune_to_macs(model, setting.example_input, setting.keep * dense_macs(setting), "l1")
    return train_model(model, setting, setting.epochs, lr=FINETUNE_LR)


#: random search: candidates, and the short training (optimizer steps) each candidate gets before it is scored
RS_CANDIDATES = 8
RS_STEPS = 60


def _random_search(setting: PruneSetting, from_dense: bool) -> nn.Module:
    generator = setting.generator(salt=7)
    target = setting.keep * dense_macs(setting)
    make = (lambda: copy.deepcopy(setting.dense)) if from_dense else setting.make_model
    lr = FINETUNE_LR if from_dense else setting.lr
    budget = setting.epochs if from_dense else setting.scratch_epochs

    def score(model: nn.Module) -> float:  # short training, then validation accuracy
        train_model(model, setting, budget, lr=lr, steps=RS_STEPS, salt=11)
        return evaluate(model, *setting.val)

    result = random_search(make, setting.example_input, score, generator, candidates=RS_CANDIDATES, macs=target)
    # retrain the winning mask from its starting weights with the full budget
    winner = make()
    plan_widths = result.widths[result.best]
    from regimen.subnet import trace_dependencies
    groups = {g.name or str(g.id): g for g in trace_dependencies(winner, setting.example_input).groups}
    prune_groups(winner, {groups[name]: torch.tensor(keep) for name, keep in plan_widths.items()},
                 example_inputs=setting.example_input)
    train_model(winner, setting, budget, lr=lr)
    winner.report_extra = {"search_scores": result.scores, "best": result.best,
                           "search_steps": RS_CANDIDATES * RS_STEPS}
    return winner


def random_search_entry(setting: PruneSetting) -> nn.Module:
    """arXiv 2403.08265 protocol: 8 random node masks of the fresh initialisation at the MAC budget (random layer
    widths), each trained 60 steps and scored on validation accuracy; the best mask is trained from the same
    initialisation for ``scratch_epochs`` (dense + fine-tune budget)."""
    return _random_search(setting, from_dense=False)


def random_search_dense(setting: PruneSetting) -> nn.Module:
    """The same search on the trained dense model: 8 random channel masks, each fine-tuned 60 steps and scored on
    validation accuracy; the best is fine-tuned ``setting.epochs`` epochs from the dense weights (random pruning
    as the control of magnitude pruning)."""
    return _random_search(setting, from_dense=True)


#: polarization (one-pass, from scratch): λ, t, weight μ of the keep-fraction term
POL_LAM, POL_T, POL_MU = 5e-3, 1.2, 1.0


def polarization(setting: PruneSetting) -> nn.Module:
    """One pass from the fresh initialisation: ``scratch_epochs - 1`` epochs of CE + λ·R_s(γ) + μ·(mean γ − κ)² with
    γ (BN scales) initialised to 0.5 and clamped to [0, 1] after every step, κ = sqrt(keep) (the channel fraction
    that keeps about ``keep`` of the MACs of a plain CNN); then the lowest-γ channels are removed until the MAC
    budget holds, and one epoch of fine-tuning at lr 0.01 (BN recalibration)."""
    model = setting.make_model()
    factors = scaling_factors(model)
    with torch.no_grad():
        for f in factors:
            f.fill_(0.5)
    kappa = math.sqrt(setting.keep)

    def extra(model, x, y, logits):
        flat = torch.cat([f.reshape(-1) for f in factors])
        return POL_LAM * polarization_penalty(factors, POL_T) + POL_MU * (flat.mean() - kappa) ** 2

    def clamp(model):
        for f in factors:
            f.clamp_(0.0, 1.0)

    train_model(model, setting, setting.scratch_epochs - 1, extra, after_step=clamp)
    low, high = polarized_fraction(factors)
    threshold = search_threshold(factors)
    below = float((torch.cat([f.detach() for f in factors]) <= threshold).float().mean())
    before_val = evaluate(model, *setting.val)
    plan = polarization_plan(model, setting.example_input, macs=setting.keep * dense_macs(setting))
    prune_groups(model, plan, example_inputs=setting.example_input)
    pruned_val = evaluate(model, *setting.val)
    train_model(model, setting, 1, lr=FINETUNE_LR)
    model.report_extra = {"fraction_low": low, "fraction_high": high, "threshold": threshold,
                          "fraction_below_threshold": below, "val_before_prune": before_val,
                          "val_after_prune_no_finetune": pruned_val}
    return model


ENTRIES = {
    "magnitude": magnitude,
    "random_search": random_search_entry,
    "random_search_dense": random_search_dense,
    "polarization": polarization,
}

PAPERS = {
    "magnitude": "arXiv:1608.08710",
    "random_search": "arXiv:2403.08265",
    "random_search_dense": "arXiv:2403.08265 (search on the trained model)",
    "polarization": "NeurIPS 2020 polarization + arXiv:2302.10798",
}

CLAIMS = {
    "magnitude": "reference: L1 filter pruning + fine-tuning",
    "random_search": "RS-selected sparse nets are no better than random ones (neutral baseline)",
    "random_search_dense": "RS-selected sparse nets are no better than random ones (neutral baseline)",
    "polarization": "~50% FLOPs removed at <1% accuracy loss (ResNet-56 CIFAR-10 93.80 -> 93.83)",
}
