"""Lottery Jackpots: search a sparse mask inside a *trained* network without changing any weight.

Paper: Zhang, Lin, Zhong, Chao, Ji, "Lottery Jackpots Exist in Pre-trained Models", TPAMI 2023, arXiv 2104.08700
(reference code: zyxxmu/lottery-jackpots, ``utils/conv_type.py``).

Formula. Every prunable weight ``W`` (conv / linear; the classifier stays dense) gets a real score ``s`` of the same
shape and a binary mask ``b``; the forward uses ``b ⊙ W`` with ``W`` frozen, and the straight-through backward passes
``∂L/∂s = ∂L/∂(b ⊙ W) ⊙ W`` to the scores. Scores start from the magnitude mask: ``s = 1`` for kept weights and
``0.99`` for the ``prune_num`` smallest ``|W|`` (one global magnitude threshold sets each layer's rate), so the search
starts at magnitude pruning; random scores turn it into edge-popup (3x slower in the paper).

Short restriction (the reference code's ``final_pop_up``). After every optimizer step, per layer: ``θ`` = the
``prune_num``-th smallest score; *revive* = pruned weights with ``s > θ``, *drop* = kept weights with ``s ≤ θ``; only
when both sets are non-empty and **of equal size** are the top ``ceil(n · rate)`` of each swapped (``rate = 1`` in the
released schedule). The sparsity never changes and a mask flip happens only when the scores agree on a swap.

Pitfalls handled: weights *and* BN affine parameters are frozen (BN running statistics still update in train mode, as in
the reference); the STE gradient is the masked-product gradient times ``W``; ties at ``θ`` make the sets unequal and
leave the mask unchanged (documented, as in the reference). Bad input (sparsity outside [0, 1), a model without
prunable layers, layers already masked) raises before any change to the model or the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, check_scope
from regimen.subnet._sparse import check_sparsity, global_magnitude_masks, magnitude_mask, prunable_layers

__all__ = ["JackpotMask", "LotteryJackpotsMethod", "apply_lottery_jackpots", "export_lottery_jackpots",
           "jackpot_init_scores", "jackpot_mask_update"]


class _JackpotSTE(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(weight: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        weight, _, mask = inputs
        ctx.save_for_backward(weight, mask)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, None]:
        weight, mask = ctx.saved_tensors
        return grad * mask, grad * weight, None


@checked_arguments
def jackpot_init_scores(mask: torch.Tensor, pruned_score: float = 0.99) -> torch.Tensor:
    """Scores from a mask: ``1.0`` where ``mask`` keeps a weight, ``pruned_score`` (0.99) where it prunes one."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if not 0.0 <= pruned_score < 1.0:
        raise ValueError(f"pruned_score must be in [0, 1), got {pruned_score}")
    return torch.where(mask, torch.ones((), dtype=torch.float32), torch.full((), pruned_score))


@checked_arguments
def jackpot_mask_update(scores: torch.Tensor, mask: torch.Tensor, rate: float = 1.0) -> torch.Tensor:
    """The short-restriction swap: the new mask (same number of kept entries as ``mask``).

    ``θ`` = the ``prune_num``-th smallest score (``prune_num`` = entries ``mask`` prunes); revive = pruned with
    ``s > θ``, drop = kept with ``s ≤ θ``; if both are non-empty and equally many, the ``ceil(n · rate)`` best revive
    candidates (highest scores) and worst drop candidates (lowest scores) swap; otherwise ``mask`` is returned.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} must have the same shape")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    flat_s, flat_m = scores.detach().reshape(-1), mask.reshape(-1)
    prune_num = int((~flat_m).sum())
    if prune_num == 0 or prune_num == flat_m.numel():
        return mask.clone()
    theta = torch.kthvalue(flat_s.float().cpu(), prune_num).values.to(flat_s.device)
    revive = (~flat_m) & (flat_s > theta)
    drop = flat_m & (flat_s <= theta)
    n_revive, n_drop = int(revive.sum()), int(drop.sum())
    new = flat_m.clone()
    if n_revive == 0 or n_revive != n_drop:
        return new.reshape(mask.shape)
    n = math.ceil(n_revive * rate)
    revive_idx = revive.nonzero().reshape(-1)
    drop_idx = drop.nonzero().reshape(-1)
    revive_idx = revive_idx[torch.argsort(flat_s[revive_idx], descending=True, stable=True)[:n]]
    drop_idx = drop_idx[torch.argsort(flat_s[drop_idx], stable=True)[:n]]
    new[revive_idx] = True
    new[drop_idx] = False
    return new.reshape(mask.shape)


@checked_arguments
class JackpotMask(nn.Module):
    """Parametrization ``W -> b ⊙ W`` with trainable scores ``s`` (STE: ``∂L/∂s = ∂L/∂(b ⊙ W) ⊙ W``).

    Args:
        mask: the initial binary mask (bool, the weight's shape).
        scores: initial scores (default ``jackpot_init_scores(mask)``).
    """

    def __init__(self, mask: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor")
        if scores is None:
            scores = jackpot_init_scores(mask)
        if scores.shape != mask.shape:
            raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)} must have the same shape")
        self.scores = nn.Parameter(scores.detach().clone().float())
        self.register_buffer("mask", mask.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _JackpotSTE.apply(weight, self.scores.to(weight.dtype), self.mask.to(weight.dtype))

    @torch.no_grad()
    def update(self, rate: float = 1.0) -> int:
        """Apply the short-restriction swap to ``mask``; returns the number of entries that flipped."""
        new = jackpot_mask_update(self.scores, self.mask, rate)
        flipped = int((new != self.mask).sum())
        self.mask.copy_(new)
        return flipped

    def extra_repr(self) -> str:
        return f"shape={tuple(self.mask.shape)}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def _jackpot_masks(model: nn.Module) -> list[tuple[str, JackpotMask]]:
    found = []
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, JackpotMask):
                    found.append((name, p))
    return found


@checked_arguments
def apply_lottery_jackpots(model: nn.Module, sparsity: float = 0.9, ignore: Iterable[str] = (),
                           keep_classifier: bool = True, random_scores: bool = False,
                           generator: torch.Generator | None = None, scope: str = "global",
                           optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Freeze ``model`` and mask its conv/linear weights for a jackpot search, in place; returns the layer names.

    One global magnitude threshold over the layers gives each layer's pruned count; scores start at 1 / 0.99
    (``jackpot_init_scores``) or, with ``random_scores``, Kaiming-uniform from ``generator`` with the mask set to each
    layer's top scores (the edge-popup baseline). Every parameter of ``model`` gets ``requires_grad=False``; the scores
    are the only trainable tensors. With ``optimizer`` the scores are added to it as a new param group.

    Args:
        model: a trained model.
        sparsity: fraction of the masked layers' weights to remove, in [0, 1).
        ignore: module names left dense.
        keep_classifier: leave the last conv/linear layer dense (the reference does).
        random_scores: edge-popup initialisation instead of the magnitude one.
        generator: randomness of ``random_scores``.
        scope: ``"global"`` (one magnitude threshold sets each layer's rate: the reference) or ``"uniform"`` (every
            layer at ``sparsity``; the swap keeps per-layer counts, so the MAC fraction stays ``1 - sparsity``).
        optimizer: receives the scores as a new param group.
    """
    sparsity = check_sparsity(sparsity)
    check_scope(scope)
    ignore = check_ignore(model, ignore)
    layers = prunable_layers(model, ignore, skip_last=keep_classifier)
    if not layers:
        raise ValueError("apply_lottery_jackpots found no conv/linear layer to mask (outside ignore and the "
                         "classifier)")
    if any(parametrize.is_parametrized(m, "weight") for _, m in layers):
        raise ValueError("apply_lottery_jackpots: some layers already have a weight parametrization; export or "
                         "remove it first")
    if scope == "global":
        masks = global_magnitude_masks({name: m.weight for name, m in layers}, sparsity)
    else:
        masks = {name: magnitude_mask(m.weight, sparsity) for name, m in layers}
    plans = []
    for name, module in layers:
        mask = masks[name].cpu()
        if random_scores:
            scores = torch.empty(mask.shape)
            bound = 1.0 / math.sqrt(max(1, mask[0].numel()))
            scores.uniform_(-bound, bound, generator=generator)
            keep = int(mask.sum())
            order = torch.argsort(scores.reshape(-1), descending=True, stable=True)
            mask = torch.zeros(mask.numel(), dtype=torch.bool)
            mask[order[:keep]] = True
            mask = mask.reshape(scores.shape)
        else:
            scores = jackpot_init_scores(mask)
        plans.append((name, module, mask.to(module.weight.device), scores.to(module.weight.device)))
    for p in model.parameters():
        p.requires_grad_(False)
    created = []
    for _name, module, mask, scores in plans:
        parametrize.register_parametrization(module, "weight", JackpotMask(mask, scores))
        created.append(module.parametrizations.weight[0].scores)
    if optimizer is not None:
        optimizer.add_param_group({"params": created})
    return [name for name, *_ in plans]


@checked_arguments
def export_lottery_jackpots(model: nn.Module, unfreeze: bool = True) -> nn.Module:
    """Bake the masks into plain weights (``b ⊙ W``), remove the parametrizations, in place; ``unfreeze`` makes every
    parameter trainable again."""
    for name, _ in _jackpot_masks(model):
        module = model.get_submodule(name)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    if unfreeze:
        for p in model.parameters():
            p.requires_grad_(True)
    return model


@register_method
class LotteryJackpotsMethod(Method):
    """Lottery Jackpots: search a mask on the frozen (pre-trained) weights; magnitude-initialised scores, swap-only
    mask updates after every step, masks baked at the end.

    Start from trained weights (``train.resume``/``model.checkpoint`` or a user's loop). The scores get their own param
    group (``score_lr``, ``score_weight_decay``); the recipe's optimizer type is used. Logs ``lottery_jackpots/layers``,
    ``lottery_jackpots/flips`` (mask entries changed in the step) and ``lottery_jackpots/overlap`` (Jaccard overlap of
    the current mask with the initial magnitude mask).

    Args:
        sparsity: fraction of the masked layers' weights removed.
        score_lr: learning rate of the scores (0.1 in the reference).
        score_weight_decay: weight decay of the scores (5e-4 in the reference).
        random_scores: edge-popup initialisation (the paper's slower baseline).
        rate: fraction of the swap candidates swapped per step (1 in the released schedule).
        ignore: module names left dense.
        keep_classifier: keep the last layer dense.
        scope: ``"global"`` magnitude rates (the reference) or ``"uniform"`` per-layer sparsity.
    """

    name = "lottery_jackpots"
    paper_id = "arXiv:2104.08700"
    claim = ("a mask searched on frozen pre-trained weights (magnitude-initialised scores, a few epochs) matches the "
             "dense accuracy at 90% sparsity")
    claimed_effect = "no_worse"
    # found by training pairs: AGVM needs trainable parameters in every stage (all frozen here), and SWA's averaged
    # state (with the mask parametrization's keys) must be loaded before the masks are baked at the end
    before = ("swa",)
    # found by training pairs: layers are masked by module name, so methods that replace layers go first
    after = ("batchformer", "blurpool", "squeeze_excite", "multi_sample_dropout")
    conflicts = ("weight_std", "nm_sparsity", "hesso", "maestro", "trp", "layer_dp", "tscnc", "nested_width", "agvm")
    constraint_reason = ("lottery jackpots parametrizes every conv/linear weight with a searched mask and freezes the "
                         "weights: another weight parametrization, weight pruning, slicing or factorisation cannot "
                         "share them, AGVM finds no trainable weights, and averaged weights must be loaded before "
                         "the masks are baked")

    def __init__(self, sparsity: float = 0.9, score_lr: float = 0.1, score_weight_decay: float = 5e-4,
                 random_scores: bool = False, rate: float = 1.0, ignore: list[str] | None = None,
                 keep_classifier: bool = True, scope: str = "global") -> None:
        check_sparsity(sparsity)
        if score_lr <= 0:
            raise ValueError(f"score_lr must be > 0, got {score_lr}")
        if score_weight_decay < 0:
            raise ValueError(f"score_weight_decay must be >= 0, got {score_weight_decay}")
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        self.sparsity, self.score_lr, self.score_weight_decay = sparsity, score_lr, score_weight_decay
        self.random_scores, self.rate, self.ignore = random_scores, rate, list(ignore or [])
        self.keep_classifier, self.scope = keep_classifier, check_scope(scope)
        self._masks: list[JackpotMask] = []
        self._initial: list[torch.Tensor] = []
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        try:
            layers = apply_lottery_jackpots(ctx.model, self.sparsity, self.ignore, self.keep_classifier,
                                            self.random_scores, ctx.generator, self.scope)
        except ValueError as error:
            raise ConfigurationError(f"lottery_jackpots: {error}") from error
        self._model = ctx.model
        self._masks = [m for _, m in _jackpot_masks(ctx.model)]
        self._initial = [m.mask.clone() for m in self._masks]
        if ctx.optimizer is not None:
            ctx.optimizer.add_param_group({"params": [m.scores for m in self._masks], "lr": self.score_lr,
                                           "weight_decay": self.score_weight_decay})
        self.log(ctx, "layers", len(layers))

    def after_step(self, ctx: Context) -> None:
        flipped = sum(m.update(self.rate) for m in self._masks)
        self.log(ctx, "flips", flipped)

    def on_epoch_end(self, ctx: Context) -> None:
        if self._masks:
            inter = sum(int((m.mask & i).sum()) for m, i in zip(self._masks, self._initial))
            union = sum(int((m.mask | i).sum()) for m, i in zip(self._masks, self._initial))
            self.log(ctx, "overlap", inter / max(union, 1))

    def on_train_end(self, ctx: Context) -> None:
        if self._model is not None and self._masks:
            export_lottery_jackpots(self._model)
            self._masks = []

    def state_dict(self) -> dict[str, Any]:
        return {"initial": [i.clone() for i in self._initial]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("initial"):
            self._initial = [torch.as_tensor(i) for i in state["initial"]]
