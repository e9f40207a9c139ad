"""Maximal-update parametrisation (muP) of regimen's GPT, for Adam-type optimizers, so that the best learning rate
found at a narrow base width stays the best one as the width grows.

Paper: Yang, Hu, Babuschkin, Sidor, Liu, Farhi, Ryder, Pachocki, Chen, Gao, "Tensor Programs V: Tuning Large Neural
Networks via Zero-Shot Hyperparameter Transfer", 2022, arXiv 2203.03466 (rules as in microsoft/mup: ``MuAdam``,
``MuReadout``, the Transformer example). With width multiplier ``m = dim / base_width``:

* hidden (matrix-like) weights — q/k/v, attention output, feed-forward and expert matrices: Adam LR ``η / m``,
  AdamW weight decay ``wd · m`` (so the decoupled decay ``η·wd`` is unchanged), init std ``σ / √m``;
* vector-like weights (token and position embeddings, norms, the router) keep ``η`` and their init;
* the read-out's input is multiplied by ``output_mult / m`` (``MuReadout``; with tied embeddings the shared matrix
  is the embedding, ``MuSharedReadout``);
* attention logits are scaled by ``√base_head_dim / head_dim`` instead of ``1/√head_dim`` (``1/d`` attention, equal
  to the standard scale at the base width), and the query weights start at zero.

At ``dim = base_width`` the model is the standard one (up to the zero query init). Pitfalls handled: the LR groups
are split before the trainer builds the schedule, whose changes are relative (``lr = initial_lr · factor``), so the
per-group ratios survive; the method refuses models that are not regimen's GPT and optimizers that are not Adam-like
(SGD needs other rules). Validate with a coordinate check: activation scales stay flat across widths
(``benchmarks/lm_mup.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["MuPMethod", "apply_mup", "mup_hidden_parameters"]


@checked_arguments
def mup_hidden_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The matrix-like weights of a GPT: attention q/k/v and output, feed-forward and expert matrices."""
    from regimen.models.transformer import CausalSelfAttention, FeedForward, MoEFeedForward

    found = []
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            found += [module.qkv.weight, module.proj.weight]
        elif isinstance(module, FeedForward):
            found += [module.fc1.weight, module.fc2.weight]
        elif isinstance(module, MoEFeedForward):
            found += [module.w1, module.w2]
    return found


@checked_arguments
@torch.no_grad()
def apply_mup(model: nn.Module, base_width: int, output_mult: float = 1.0,
              optimizer: torch.optim.Optimizer | None = None) -> float:
    """Re-initialise and re-scale a freshly built GPT for muP (see the module docstring); split ``optimizer``'s
    groups so hidden weights get ``lr / m`` (and AdamW ``weight_decay · m``). Returns the width multiplier ``m``."""
    from regimen.models import GPT
    from regimen.models.transformer import CausalSelfAttention

    if not isinstance(model, GPT):
        raise ValueError(f"mup needs regimen's GPT (its read-out, attention and hidden matrices), got "
                         f"{type(model).__name__}")
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width < 1:
        raise ValueError(f"base_width must be an int >= 1, got {base_width!r}")
    if not output_mult > 0:
        raise ValueError(f"output_mult must be > 0, got {output_mult}")
    dim, heads = model.config["dim"], model.config["heads"]
    if base_width % heads:
        raise ValueError(f"base_width = {base_width} must be divisible by heads = {heads}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(f"mup's learning-rate rules here are Adam's; got {type(optimizer).__name__} (set optim.name "
                         "= 'adamw')")
    width_mult = dim / base_width
    hidden = mup_hidden_parameters(model)
    for weight in hidden:
        weight.mul_(1.0 / math.sqrt(width_mult))  # std sigma -> sigma / sqrt(m): variance 1/fan_in
    base_head_dim = base_width // heads
    for module in model.modules():
        if isinstance(module, CausalSelfAttention):
            module.scale = math.sqrt(base_head_dim) / module.head_dim
            module.qkv.weight[: module.dim].zero_()  # the query rows
    model.head.logit_scale = output_mult / width_mult
    if optimizer is not None:
        hidden_ids = {id(p) for p in hidden}
        added = []
        for group in optimizer.param_groups:
            moving = [p for p in group["params"] if id(p) in hidden_ids]
            if not moving:
                continue
            group["params"] = [p for p in group["params"] if id(p) not in hidden_ids]
            settings = {k: v for k, v in group.items() if k != "params"}
            settings["lr"] = group["lr"] / width_mult
            if isinstance(optimizer, torch.optim.AdamW):
                settings["weight_decay"] = group.get("weight_decay", 0.0) * width_mult
            added.append({**settings, "params": moving, "mup_hidden": True})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        for group in added:
            optimizer.add_param_group(group)
    return width_mult


@register_method
class MuPMethod(Method):
    """Maximal-update parametrisation of the GPT (Adam LR / width for hidden matrices, 1/d attention, read-out / width).

    Args:
        base_width: the width at which muP equals the standard parametrisation (tune the LR there).
        output_mult: the read-out multiplier (tuned at the base width; 1 by default).
    """

    name = "mup"
    inputs = ("tokens",)
    paper_id = "arXiv:2203.03466"
    claim = ("under the maximal-update parametrisation the optimal hyperparameters stay stable as width grows, so "
             "they can be tuned on a small proxy and transferred zero-shot to the large model")
    claimed_effect = "no_worse"

    def __init__(self, base_width: int = 64, output_mult: float = 1.0) -> None:
        if base_width < 1:
            raise ValueError(f"mup: base_width must be >= 1, got {base_width}")
        if not output_mult > 0:
            raise ValueError(f"mup: output_mult must be > 0, got {output_mult}")
        self.base_width, self.output_mult = base_width, float(output_mult)

    def setup(self, ctx: Context) -> None:
        width_mult = apply_mup(ctx.model, self.base_width, self.output_mult, ctx.optimizer)
        self.log(ctx, "width_mult", width_mult)
