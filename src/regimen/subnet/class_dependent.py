"""Class-dependent compression: iterative pruning that protects one class's false negatives.

Paper: Entezari & Saukh, "Class-dependent Compression of Deep Neural Networks", arXiv 1909.10364 (workshop version
"Class-dependent Pruning of Deep Neural Networks", SenSys-ML 2020; reference code ``rahimentezari/Sensys-ml2020``).

Loss. For the protected class ``c`` with one-vs-rest logit ``s = z_c − logsumexp_{j≠c} z_j`` (the binary logit of the
paper's two-class setting, extended to ``K`` classes), cross-entropy with class weight ``w_c`` on class ``c`` plus a
squared-hinge ranking term pushing every positive above the highest-scoring negative of the batch:

    L = CE_w(z, y) + λ · Σ_{i: y_i = c} min(s_i − max_{j: y_j ≠ c} s_j, 0)² / (n_pos + 1)

(the reference computes the rank term on detached scores and multiplies it by 0, so its runs use weighted BCE only;
here it is differentiable, as the paper describes — its exact weight in the paper is unconfirmed). The term is the
Keras ``binary_crossentropy_with_ranking`` gist's (logit scores, squared hinge, ``/(n_pos + 1)``), added rather than
multiplied (the gist returns ``(rank + 1)·logloss``). Default ``λ = 0.01``: on a trained 10-class Fashion-MNIST CNN
(``reports/subnet``) plain SGD (lr 0.01) with ``λ = 1`` diverged within 4 steps (the max over negatives sends one
sample's large gradient through BatchNorm), ``λ = 0.1`` cost 5 points of validation accuracy, ``λ = 0.01`` none.

Pruning (reference ``Decon_edit.py``): per layer, remove the ``fraction`` (0.5) of the remaining weights with the
lowest score ``|w| − |w_ref|`` ("magnitude increase", Zhou et al. 2019; ``w_ref`` the weights the round started
from), or ``|w|`` (``score="magnitude"``); conv and linear weights only (the reference also prunes biases by the
same rule; regimen does not). Masks are re-applied after every optimizer step (with momentum or weight decay,
zeroing gradients is not enough).

False-negative guard (regimen's reading of "keep the class's false negatives near the dense model's"):
``ClassDependentMethod`` measures the class's false negatives on the validation split before the first round and
after each round's retraining; when they exceed ``(1 + tolerance)`` times the dense count (plus one), the next
round's fraction is halved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet.pq_index import apply_masks, prunable_weights

__all__ = [
    "ClassDependentMethod",
    "class_false_negatives",
    "class_rank_loss",
    "class_weighted_loss",
    "layer_prune_masks",
]

SCORES = ("magnitude_increase", "magnitude")


def _check_class(cls: Any, num_classes: int) -> int:
    if isinstance(cls, bool) or not isinstance(cls, int):
        raise TypeError(f"cls must be an int class index, got {cls!r}")
    if not 0 <= cls < num_classes:
        raise ValueError(f"cls must be a class index in [0, {num_classes}), got {cls}")
    return cls


def _one_vs_rest(logits: torch.Tensor, cls: int) -> torch.Tensor:
    others = torch.cat([logits[:, :cls], logits[:, cls + 1:]], dim=1)
    return logits[:, cls] - torch.logsumexp(others, dim=1)


@checked_arguments
def class_rank_loss(logits: torch.Tensor, targets: torch.Tensor, cls: int) -> torch.Tensor:
    """``Σ_{y_i=c} min(s_i − max_{y_j≠c} s_j, 0)² / (n_pos + 1)`` on the one-vs-rest logits ``s`` of class
    ``cls``; 0 for a batch without positives or without negatives. ``logits`` ``(N, K)``, ``targets`` ``(N,)``."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, K) and targets (N,), got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    cls = _check_class(cls, logits.shape[1])
    s = _one_vs_rest(logits, cls)
    positive = targets == cls
    # no data-dependent branches (the criterion may run under torch.func.vmap): without negatives the hardest one
    # is -inf and every gap clamps to 0; without positives the sum is empty
    hardest_negative = s.masked_fill(positive, -torch.inf).max()
    gap = (s - hardest_negative).clamp(max=0.0).nan_to_num(0.0) * positive
    return gap.pow(2).sum() / (positive.sum() + 1)


@checked_arguments
def class_weighted_loss(logits: torch.Tensor, targets: torch.Tensor, cls: int, class_weight: float = 1.0,
                        rank_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy with weight ``class_weight`` on class ``cls`` (1 on the others) + ``rank_weight`` ×
    ``class_rank_loss``."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(logits.shape)}")
    cls = _check_class(cls, logits.shape[1])
    if not class_weight > 0:
        raise ValueError(f"class_weight must be > 0, got {class_weight!r}")
    if not rank_weight >= 0:
        raise ValueError(f"rank_weight must be >= 0, got {rank_weight!r}")
    weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
    weight[cls] = class_weight
    loss = F.cross_entropy(logits, targets, weight=weight)
    if rank_weight > 0:
        loss = loss + rank_weight * class_rank_loss(logits, targets, cls)
    return loss


@checked_arguments
def class_false_negatives(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, cls: int,
                          batch_size: int = 1000) -> int:
    """How many samples of class ``cls`` ``model`` (eval mode, restored after) does not predict as ``cls``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    was = model.training
    model.eval()
    missed = 0
    try:
        with torch.no_grad():
            for i in range(0, len(inputs), batch_size):
                logits = model(inputs[i:i + batch_size])
                if i == 0:
                    _check_class(cls, logits.shape[1])
                y = targets[i:i + batch_size]
                missed += int(((y == cls) & (logits.argmax(1) != cls)).sum())
    finally:
        model.train(was)
    return missed


@checked_arguments
def layer_prune_masks(model: nn.Module, fraction: float = 0.5, masks: Mapping[str, torch.Tensor] | None = None,
                      reference: Mapping[str, torch.Tensor] | None = None, score: str = "magnitude_increase",
                      ignore: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """New masks removing, in every conv/linear weight, the ``fraction`` of its remaining entries with the lowest
    score (``|w| − |reference|`` or ``|w|``), at least one entry kept per weight; the model is not changed."""
    if isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be a number in [0, 1), got {fraction!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    weights = {n: w.detach() for n, w in prunable_weights(model, ignore).items()}
    if score == "magnitude_increase" and reference is None:
        raise ValueError("score='magnitude_increase' needs reference weights (e.g. the weights the round started from)")
    new = {}
    for n, w in weights.items():
        current = masks[n].to(torch.bool) if masks is not None and n in masks else torch.ones_like(w, dtype=torch.bool)
        if current.shape != w.shape:
            raise ValueError(f"masks[{n!r}] has shape {tuple(current.shape)}, weight has {tuple(w.shape)}")
        values = w.abs()
        if score == "magnitude_increase":
            if n not in reference or reference[n].shape != w.shape:
                raise ValueError(f"reference has no weight {n!r} of shape {tuple(w.shape)}")
            values = values - reference[n].detach().abs()
        remaining = int(current.sum())
        count = min(int(fraction * remaining), max(0, remaining - 1))
        keyed = torch.where(current, values, torch.full_like(values, float("inf"))).reshape(-1)
        drop = torch.argsort(keyed, stable=True)[:count]
        mask = current.reshape(-1).clone()
        mask[drop] = False
        new[n] = mask.reshape(w.shape)
    return new


@register_method
class ClassDependentMethod(Method):
    """Class-dependent compression: class-weighted CE + ranking loss for one class, iterative per-layer pruning at
    evenly spaced epochs, the class's validation false negatives guarded against the dense model's.

    Logs ``class_dependent/false_negatives`` (validation, each epoch), ``class_dependent/dense_false_negatives``,
    ``class_dependent/density`` and ``class_dependent/fraction`` (the fraction used by the last round).

    Args:
        cls: the protected class index.
        class_weight: weight of the class in the cross-entropy (the paper's ``pos_weight``).
        rank_weight: weight λ of the ranking term.
        rounds: pruning rounds in the run.
        fraction: fraction of each layer's remaining weights removed per round (reference 0.5).
        score: "magnitude_increase" (reference) or "magnitude".
        tolerance: allowed relative rise of the class's false negatives over the dense model's before the next
            round's fraction is halved.
        ignore: module names never pruned.
    """

    name = "class_dependent"
    paper_id = "arXiv:1909.10364"
    claim = ("class-optimised compressed sub-networks have up to 35% fewer false negatives on the important class "
             "than compression without class optimisation, with up to 99% fewer parameters")
    claimed_effect = "no_worse"
    targets = ("labels",)
    before = ("weight_std", "nm_sparsity")
    after = ("trp", "multi_sample_dropout")
    conflicts = ("maestro", "nm_sparsity", "sap")
    constraint_reason = ("class_dependent keeps masks over the model's weights by parameter name (as sap does): "
                         "parametrized (N:M), low-rank or standardized weights are not the weights it masks")

    def __init__(self, cls: int = 0, class_weight: float = 2.0, rank_weight: float = 0.01, rounds: int = 2,
                 fraction: float = 0.5, score: str = "magnitude_increase", tolerance: float = 0.1,
                 ignore: list[str] | None = None) -> None:
        if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
            raise ValueError(f"cls must be a class index >= 0, got {cls!r}")
        if not class_weight > 0 or not rank_weight >= 0:
            raise ValueError(f"need class_weight > 0 and rank_weight >= 0, got {class_weight}, {rank_weight}")
        if rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {rounds!r}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
        self.cls, self.class_weight, self.rank_weight = cls, class_weight, rank_weight
        self.rounds, self.fraction, self.score, self.tolerance = rounds, fraction, score, tolerance
        self.ignore = list(ignore or [])
        self.masks: dict[str, torch.Tensor] = {}
        self.reference: dict[str, torch.Tensor] = {}
        self.done = 0
        self.dense_fn: int | None = None
        self.next_fraction = fraction

    def _model(self, ctx: Context) -> nn.Module:
        return ctx.model.module if hasattr(ctx.model, "module") else ctx.model

    def setup(self, ctx: Context) -> None:
        classes = ctx.run.num_classes
        if classes is None:
            raise ConfigurationError("class_dependent needs a classification task (run.num_classes is unknown)")
        try:
            _check_class(self.cls, classes)
            prunable_weights(ctx.model, self.ignore)
        except ValueError as error:
            raise ConfigurationError(f"class_dependent: {error}") from error
        self.reference = {}  # taken at the first epoch start, after every method's surgery (names may change)

    def on_epoch_start(self, ctx: Context) -> None:
        if not self.reference:
            self.reference = {n: w.detach().clone() for n, w in prunable_weights(self._model(ctx), self.ignore).items()}

    def criterion(self, output, target, next, ctx: Context, reduction: str = "mean"):
        loss = next(output, target, reduction=reduction)
        if reduction != "mean" or not isinstance(output, torch.Tensor) or output.dim() != 2:
            return loss
        weight = torch.ones(output.shape[1], dtype=output.dtype, device=output.device)
        weight[self.cls] = self.class_weight
        extra = F.cross_entropy(output, target, weight=weight) - F.cross_entropy(output, target)
        return loss + extra + self.rank_weight * class_rank_loss(output, target, self.cls)

    def _val_false_negatives(self, ctx: Context) -> int | None:
        data = ctx.val_data
        if data is None or not len(data):
            return None
        x, y = data.gather(torch.arange(len(data)), ctx.run.device)
        return class_false_negatives(self._model(ctx), ctx.normalize(x), y, self.cls)

    def on_epoch_end(self, ctx: Context) -> None:
        fn = self._val_false_negatives(ctx)
        if fn is not None:
            self.log(ctx, "false_negatives", fn)
            if self.dense_fn is None:
                self.dense_fn = fn
                self.log(ctx, "dense_false_negatives", fn)
            elif self.done and fn > (1 + self.tolerance) * self.dense_fn + 1:
                self.next_fraction = self.next_fraction / 2
        epochs = ctx.run.epochs
        due = [int(k * epochs / (self.rounds + 1)) for k in range(1, self.rounds + 1)]
        if self.done >= self.rounds or ctx.epoch + 1 < max(1, due[self.done]):
            return
        model = self._model(ctx)
        self.masks = layer_prune_masks(model, self.next_fraction, self.masks or None, self.reference, self.score,
                                       self.ignore)
        apply_masks(model, self.masks)
        self.reference = {n: w.detach().clone() for n, w in prunable_weights(model, self.ignore).items()}
        self.done += 1
        total = sum(m.numel() for m in self.masks.values())
        self.log(ctx, "density", sum(int(m.sum()) for m in self.masks.values()) / max(1, total))
        self.log(ctx, "fraction", self.next_fraction)

    def after_step(self, ctx: Context) -> None:
        if self.masks:
            apply_masks(self._model(ctx), self.masks)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}, "done": self.done,
                "reference": {k: v.clone() for k, v in self.reference.items()},
                "dense_fn": self.dense_fn, "next_fraction": self.next_fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.masks = dict(state.get("masks", {}))
            self.reference = dict(state.get("reference", {}))
            self.done = int(state.get("done", 0))
            self.dense_fn = state.get("dense_fn")
            self.next_fraction = float(state.get("next_fraction", self.fraction))
