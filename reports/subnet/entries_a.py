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
from regimen.subnet.class_dependent import class_false_negatives, class_weighted_loss, layer_prune_masks
from regimen.subnet.pq_index import apply_masks, pq_index, prunable_weights, sap_prune
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
RS_CANDIDATES = 6
RS_STEPS = 30


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
    """arXiv 2403.08265 protocol: 6 random node masks of the fresh initialisation at the MAC budget (random layer
    widths), each trained 30 steps and scored on validation accuracy; the best mask is trained from the same
    initialisation for ``scratch_epochs`` (dense + fine-tune budget)."""
    return _random_search(setting, from_dense=False)


def random_search_dense(setting: PruneSetting) -> nn.Module:
    """The same search on the trained dense model: 6 random channel masks, each fine-tuned 30 steps and scored on
    validation accuracy; the best is fine-tuned ``setting.epochs`` epochs from the dense weights (random pruning
    as the control of magnitude pruning)."""
    return _random_search(setting, from_dense=True)


#: polarization (one-pass, from scratch): λ, t, weight μ of the keep-fraction term
POL_LAM, POL_T, POL_MU = 5e-3, 1.2, 1.0


def polarization(setting: PruneSetting, lam: float = POL_LAM) -> nn.Module:
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
        return lam * polarization_penalty(factors, POL_T) + POL_MU * (flat.mean() - kappa) ** 2

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
    model.report_extra = {"lam": lam, "fraction_low": low, "fraction_high": high, "threshold": threshold,
                          "fraction_below_threshold": below, "val_before_prune": before_val,
                          "val_after_prune_no_finetune": pruned_val}
    return model


# ---------------------------------------------------------------------------------------------- unstructured entries
def _positions(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Output positions per sample of every prunable weight's layer (MACs = nonzero weights × positions)."""
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, int] = {}

    def hook(module, inputs, output):
        found[names[id(module)] + ".weight"] = output[0].numel() // output.shape[1] if output.dim() > 2 else 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()
        model(example[:1])
        model.train()
    for h in handles:
        h.remove()
    return found


def _masked_macs(masks: dict[str, torch.Tensor], positions: dict[str, int]) -> int:
    return sum(int(m.sum()) * positions[name] for name, m in masks.items())


def _to_budget(propose, masks_macs, target: float, iterations: int = 25):
    """The proposal ``propose(scale)`` with the smallest scale in [0, 1] that fits ``masks_macs(...) <= target``
    (``propose(1.0)`` is assumed to fit: the least pruning that meets the budget)."""
    low, high = 0.0, 1.0
    best = propose(1.0)
    for _ in range(iterations):
        mid = (low + high) / 2
        masks = propose(mid)
        if masks_macs(masks) <= target:
            high, best = mid, masks
        else:
            low = mid
    return best


def _budget_steps(setting: PruneSetting) -> int:
    return setting.epochs * math.ceil(len(setting.train[0]) / setting.batch_size)


def _finish(model, setting, masks, spent_steps, loss_fn=None):
    per_epoch = math.ceil(len(setting.train[0]) / setting.batch_size)
    remaining = max(per_epoch, _budget_steps(setting) - spent_steps)
    epochs = max(1, round(remaining / per_epoch))
    train_model(model, setting, epochs, lr=FINETUNE_LR, after_step=lambda m: apply_masks(m, masks), loss_fn=loss_fn,
                salt=99)
    return model


#: SAP: PQI norms, η, γ, β (reference defaults), optimizer steps of retraining between rounds, round cap
SAP_P, SAP_Q, SAP_ETA, SAP_GAMMA, SAP_BETA = 0.5, 1.0, 0.0, 1.0, 0.9
SAP_ROUND_STEPS, SAP_MAX_ROUNDS = 8, 24


def sap(setting: PruneSetting) -> nn.Module:
    """PQ-Index SAP (layer scope, p=0.5, q=1, η=0, γ=1, β=0.9) from the trained dense model: rounds of SAP pruning,
    each followed by 8 steps of masked retraining (lr 0.01), until the next round would pass the MAC budget; that
    round is scaled down to land on it; the rest of the ``setting.epochs`` budget fine-tunes with masks fixed. No
    rewinding (the reference rewinds to init and retrains 200 epochs per round)."""
    model = copy.deepcopy(setting.dense)
    positions = _positions(model, setting.example_input)
    target = setting.keep * dense_macs(setting)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    history, spent = [], 0
    for round_ in range(SAP_MAX_ROUNDS):
        flat = torch.cat([w.detach().reshape(-1) for w in prunable_weights(model).values()])
        flat_mask = torch.cat([m.reshape(-1) for m in masks.values()])
        history.append({"round": round_, "pq_index": float(pq_index(flat, SAP_P, SAP_Q, flat_mask)),
                        "density": float(flat_mask.float().mean())})

        def propose(scale, masks=masks):
            return sap_prune(model, masks, "layer", SAP_P, SAP_Q, SAP_ETA, SAP_GAMMA, SAP_BETA, scale=scale)

        full = propose(1.0)
        final = _masked_macs(full, positions) <= target
        masks = _to_budget(propose, lambda m: _masked_macs(m, positions), target) if final else full
        apply_masks(model, masks)
        if final:
            break
        train_model(model, setting, 1, lr=FINETUNE_LR, after_step=lambda m, masks=masks: apply_masks(m, masks),
                    steps=SAP_ROUND_STEPS, salt=round_)
        spent += SAP_ROUND_STEPS
    else:  # SAP stalled before the budget: layer-uniform magnitude top-up
        masks = _to_budget(lambda f: layer_prune_masks(model, min(0.999, f), masks, score="magnitude"),
                           lambda m: _masked_macs(m, positions), target)
        apply_masks(model, masks)
        history.append({"round": "magnitude top-up"})
    _finish(model, setting, masks, spent)
    model.report_extra = {"rounds": history, "retrain_steps_between_rounds": spent}
    return model


def magnitude_unstructured(setting: PruneSetting) -> nn.Module:
    """Unstructured control: one shot, the same fraction of the smallest-|w| weights of every conv/linear layer
    (scaled to the MAC budget), then ``setting.epochs`` epochs of masked fine-tuning (lr 0.01)."""
    model = copy.deepcopy(setting.dense)
    positions = _positions(model, setting.example_input)
    masks = _to_budget(lambda f: layer_prune_masks(model, min(0.999, f), score="magnitude"),
                       lambda m: _masked_macs(m, positions), setting.keep * dense_macs(setting))
    apply_masks(model, masks)
    return _finish(model, setting, masks, 0)


#: class-dependent: the protected class (Fashion-MNIST 6 = Shirt, the most confused one), its CE weight, rank weight,
#: per-layer fraction per round, relative false-negative tolerance
CD_CLASS, CD_WEIGHT, CD_RANK, CD_FRACTION, CD_TOLERANCE = 6, 2.0, 0.01, 0.5, 0.1


def class_dependent(setting: PruneSetting) -> nn.Module:
    """Class-dependent compression from the trained dense model: rounds removing 50 % of each layer's remaining
    weights (lowest |w|; the last round scaled to the MAC budget), each followed by retraining with class-weighted
    CE (weight 2 on class 6) + 0.01 × the squared-hinge ranking term (λ = 1 diverged within 4 steps, 0.1 cost 5 points); when the class's validation false negatives exceed
    1.1 × the dense model's + 1, the next round's fraction is halved. Steps: the ``setting.epochs`` budget, split
    evenly over the rounds (at least 20 steps each)."""
    model = copy.deepcopy(setting.dense)
    positions = _positions(model, setting.example_input)
    target = setting.keep * dense_macs(setting)
    dense_fn = class_false_negatives(model, *setting.val, CD_CLASS)

    def loss_fn(logits, y):
        return class_weighted_loss(logits, y, CD_CLASS, CD_WEIGHT, CD_RANK)

    masks, fraction, history = None, CD_FRACTION, []
    per_round = max(20, _budget_steps(setting) // 4)
    spent = 0
    for round_ in range(8):
        def propose(scale, masks=masks, fraction=fraction):
            return layer_prune_masks(model, min(0.999, fraction * scale), masks, score="magnitude")

        full = propose(1.0)
        final = _masked_macs(full, positions) <= target
        masks = _to_budget(propose, lambda m: _masked_macs(m, positions), target) if final else full
        apply_masks(model, masks)
        if final:
            break
        train_model(model, setting, 1, lr=FINETUNE_LR, after_step=lambda m, masks=masks: apply_masks(m, masks),
                    loss_fn=loss_fn, steps=per_round, salt=round_)
        spent += per_round
        fn = class_false_negatives(model, *setting.val, CD_CLASS)
        history.append({"round": round_, "val_false_negatives": fn, "fraction": fraction})
        if fn > (1 + CD_TOLERANCE) * dense_fn + 1:
            fraction /= 2
    _finish(model, setting, masks, spent, loss_fn=loss_fn)
    model.report_extra = {"dense_val_false_negatives": dense_fn, "rounds": history,
                          "final_val_false_negatives": class_false_negatives(model, *setting.val, CD_CLASS)}
    return model


ENTRIES = {
    "magnitude": magnitude,
    "random_search": random_search_entry,
    "random_search_dense": random_search_dense,
    "polarization": polarization,
    "sap": sap,
    "magnitude_unstructured": magnitude_unstructured,
    "class_dependent": class_dependent,
}

PAPERS = {
    "magnitude": "arXiv:1608.08710",
    "random_search": "arXiv:2403.08265",
    "random_search_dense": "arXiv:2403.08265 (search on the trained model)",
    "polarization": "NeurIPS 2020 polarization + arXiv:2302.10798",
    "sap": "arXiv:2302.05601",
    "magnitude_unstructured": "unstructured control",
    "class_dependent": "arXiv:1909.10364",
}

CLAIMS = {
    "magnitude": "reference: L1 filter pruning + fine-tuning",
    "random_search": "RS-selected sparse nets are no better than random ones (neutral baseline)",
    "random_search_dense": "RS-selected sparse nets are no better than random ones (neutral baseline)",
    "polarization": "~50% FLOPs removed at <1% accuracy loss (ResNet-56 CIFAR-10 93.80 -> 93.83)",
    "sap": "SAP beats iterative (lottery-ticket) pruning in compression efficiency and robustness",
    "magnitude_unstructured": "reference for the unstructured entries (layer-uniform |w|, one shot)",
    "class_dependent": "up to 35% fewer false negatives on the protected class than class-blind compression",
}
