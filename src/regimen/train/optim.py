"""Optimizers from a recipe, with weight decay excluded from norm and bias parameters; and SGDW.

SGDW (``optim.name = "sgdw"``): SGD with weight decay decoupled from the gradient step. Paper: Loshchilov & Hutter,
"Decoupled Weight Decay Regularization", ICLR 2019, arXiv 1711.05101; in Composer's form (``DecoupledSGDW``), where
the decay follows the LR *schedule* but is not multiplied by the LR itself. Per step t, for each parameter θ with
gradient g (momentum μ, dampening τ, LR η_t, the group's initial LR η_0, decay λ):

    b_t = g                              (first step)
    b_t = μ b_{t−1} + (1 − τ) g          (later steps)
    d   = g + μ b_t  (Nesterov)  or  b_t
    θ  <- θ · (1 − λ η_t/η_0) − η_t d

The decay never enters the momentum buffer (coupled SGD adds λθ to g, so momentum carries it and it is scaled by η):
``λ`` here is the fraction of each weight removed per step at the peak LR, so it is about ``η · λ_sgd`` of a coupled
SGD recipe (lr 0.1, weight_decay 5e-4 → about 5e-5). ``η_0`` is the group's LR when the optimizer is made; regimen's
trainer sets it again to the LR the schedule scales (after methods' set-up, e.g. LR scaling), so a warm-up or a
cosine decays the weight decay alike.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SGDW", "build_optimizer", "param_groups"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool = False) -> list[dict]:
    """Two groups: weights with decay; biases, norm parameters and other 1-d parameters without.

    The no-decay group is marked ``exclude_from_trust_ratio=True`` (read by LARS/LAMB).
    """
    no_decay_ids = set()
    if not decay_norm_and_bias:
        for module in model.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, _NORMS) or name == "bias" or param.ndim <= 1:
                    no_decay_ids.add(id(param))
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if id(param) in no_decay_ids else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "exclude_from_trust_ratio": True})
    return groups


class SGDW(torch.optim.Optimizer):
    """SGD with decoupled weight decay scaled by ``lr / initial_lr`` (Loshchilov & Hutter 2019; Composer's
    ``DecoupledSGDW``): see the module docstring for the update.

    Args:
        params: parameters or param groups (a group may set its own ``initial_lr``; default: its ``lr``).
        lr: the LR η. momentum: μ in [0, 1). dampening: τ in [0, 1]. weight_decay: λ in [0, 1), per step at η_0.
        nesterov: Nesterov momentum (needs μ > 0 and τ = 0).
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        for name, value, low, high in (("lr", lr, 0.0, float("inf")), ("momentum", momentum, 0.0, 1.0),
                                       ("dampening", dampening, 0.0, 1.0), ("weight_decay", weight_decay, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise ValueError(f"SGDW: {name} must be a number in [{low}, {high}], got {value!r}")
        if not lr > 0:
            raise ValueError(f"SGDW: lr must be > 0, got {lr!r}")
        if not weight_decay < 1:
            raise ValueError(f"SGDW: weight_decay is the fraction of each weight removed per step, in [0, 1); got "
                             f"{weight_decay!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGDW: nesterov needs momentum > 0 and dampening = 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, initial = group["lr"], group["initial_lr"]
            momentum, dampening, nesterov = group["momentum"], group["dampening"], group["nesterov"]
            keep = 1.0 - group["weight_decay"] * (lr / initial if initial else 1.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = grad.detach().clone()
                    else:
                        buf.mul_(momentum).add_(grad, alpha=1.0 - dampening)
                    grad = grad.add(buf, alpha=momentum) if nesterov else buf
                if keep != 1.0:
                    p.mul_(keep)
                p.add_(grad, alpha=-lr)
        return loss


def build_optimizer(model: nn.Module, config) -> torch.optim.Optimizer:
    """``config`` is the recipe's ``optim`` table (``regimen.train.recipe.OptimConfig``)."""
    groups = param_groups(model, config.weight_decay, config.decay_norm_and_bias)
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    if config.name == "sgdw":
        return SGDW(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                    weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if config.name in ("lars", "lamb"):
        from regimen import batch  # optimizers of the batch pillar, reached lazily

        if config.name == "lars":
            return batch.LARS(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
        return batch.LAMB(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    raise ValueError(f"optim.name must be sgd, sgdw, adamw, lars or lamb, got {config.name!r}")
