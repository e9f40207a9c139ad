"""Learning rate as a function of batch size: linear scaling for SGD, square-root scaling for Adam-family.

Paper: Granziol, Zohren & Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix Theory Approach to
Neural Network Training", JMLR 23 (2022), arXiv 2006.09092. The largest stable learning rate is proportional to
1 / λ_max of the batch Hessian, which gives, below a critical batch size and relative to a reference (B₀, lr₀)::

    linear (SGD family):   lr = lr₀ · B / B₀
    sqrt   (Adam family):  lr = lr₀ · sqrt(B / B₀)

(linear scaling for SGD is also Goyal et al. 2017, arXiv 1706.02677, who pair it with warm-up.)

Pitfalls handled:
  * ``B`` is the **effective global batch** of one optimizer step: per-device batch × world size × gradient
    accumulation (``ctx.run.global_batch``), not the per-device batch.
  * Every param group is scaled (groups may have different base LRs, e.g. no-decay groups or layer-wise LRs), and
    ``initial_lr`` too when a scheduler already recorded it (LambdaLR-style schedules multiply ``initial_lr``).
  * ``rule="auto"`` refuses to guess for an optimizer it does not know; pass ``rule`` explicitly then.
  * The rules only hold below the critical batch size and with warm-up: combine with ``schedule.warmup_epochs``.
"""


import math
from typing import Literal

import torch

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["LRScalingMethod", "infer_scaling_rule", "scale_lr", "scale_optimizer_lr"]

Rule = Literal["auto", "linear", "sqrt"]

#: Optimizer class names (lower case) whose steps are SGD-like: linear scaling.
SGD_FAMILY = frozenset({"sgd", "lars", "sgdw", "sgdp", "nesterov", "momentum", "heavyball"})
#: Optimizer class names (lower case) with adaptive per-coordinate steps: square-root scaling.
ADAM_FAMILY = frozenset(
    {"adam", "adamw", "nadam", "radam", "adamax", "lamb", "adagrad", "rmsprop", "adadelta", "adafactor",
     "sparseadam", "adabelief", "nadamw", "adamp"}
)


@checked_arguments
def infer_scaling_rule(optimizer: torch.optim.Optimizer | type | str) -> str:
    """``"linear"`` for SGD-family optimizers, ``"sqrt"`` for Adam-family ones (by class name).

    Args:
        optimizer: an optimizer instance, class, or class name.

    Raises:
        ValueError: the optimizer is in neither family.
    """
    if isinstance(optimizer, str):
        name = optimizer
    elif isinstance(optimizer, type):
        name = optimizer.__name__
    else:
        name = type(optimizer).__name__
    key = name.lower()
    if key in SGD_FAMILY:
        return "linear"
    if key in ADAM_FAMILY:
        return "sqrt"
    raise ValueError(
        f"rule='auto' does not know optimizer {name!r}; pass rule='linear' (SGD-like) or rule='sqrt' (adaptive)"
    )


def _check_batch(value: int, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{label} must be > 0, got {value}")


@checked_arguments
def scale_lr(
    base_lr: float,
    batch_size: int,
    base_batch_size: int,
    rule: Rule = "auto",
    optimizer: torch.optim.Optimizer | type | str | None = None,
) -> float:
    """The learning rate for ``batch_size`` given ``base_lr`` tuned at ``base_batch_size``.

    Args:
        base_lr: learning rate at the reference batch (finite, > 0).
        batch_size: the effective global batch to scale to.
        base_batch_size: the reference batch ``B₀``.
        rule: ``"linear"`` (``lr₀·B/B₀``), ``"sqrt"`` (``lr₀·sqrt(B/B₀)``) or ``"auto"`` (from ``optimizer``).
        optimizer: optimizer instance, class or class name; needed for ``rule="auto"``.

    Returns:
        The scaled learning rate.
    """
    if isinstance(base_lr, bool) or not isinstance(base_lr, int | float):
        raise TypeError(f"base_lr must be a float, got {type(base_lr).__name__}")
    if not math.isfinite(base_lr) or base_lr <= 0:
        raise ValueError(f"base_lr must be a finite number > 0, got {base_lr}")
    _check_batch(batch_size, "batch_size")
    _check_batch(base_batch_size, "base_batch_size")
    if rule == "auto":
        if optimizer is None:
            raise ValueError("rule='auto' needs optimizer= (an optimizer, its class or its name)")
        rule = infer_scaling_rule(optimizer)  # type: ignore[assignment]
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return float(base_lr) * ratio
    if rule == "sqrt":
        return float(base_lr) * math.sqrt(ratio)
    raise ValueError(f"rule must be 'auto', 'linear' or 'sqrt', got {rule!r}")


@checked_arguments
def scale_optimizer_lr(
    optimizer: torch.optim.Optimizer, batch_size: int, base_batch_size: int, rule: Rule = "auto"
) -> list[float]:
    """Scale ``lr`` (and ``initial_lr`` if present) of **every** param group of ``optimizer`` in place.

    Args:
        optimizer: the optimizer whose groups' current ``lr`` are the reference LRs at ``base_batch_size``.
        batch_size: effective global batch.
        base_batch_size: reference batch.
        rule: ``"auto"``, ``"linear"`` or ``"sqrt"``.

    Returns:
        The new learning rate of each group.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if rule == "auto":
        rule = infer_scaling_rule(optimizer)  # type: ignore[assignment]
    new = []
    for group in optimizer.param_groups:
        lr = scale_lr(float(group["lr"]), batch_size, base_batch_size, rule)
        group["lr"] = lr
        if "initial_lr" in group:
            group["initial_lr"] = scale_lr(float(group["initial_lr"]), batch_size, base_batch_size, rule)
        new.append(lr)
    return new


@register_method
class LRScalingMethod(Method):
    """Scale every param group's LR from a reference batch to the effective global batch (Granziol et al. 2022).

    The recipe's ``optim.lr`` is the LR tuned at ``base_batch_size``; in ``setup`` every group's LR becomes
    ``scale_lr(lr, ctx.run.global_batch, base_batch_size, rule, optimizer)``. Warm-up comes from the schedule
    (``schedule.warmup_epochs``), which multiplies the scaled LR. Logs ``lr_scaling/lr`` (group 0's scaled LR) and
    ``lr_scaling/factor``.

    Args:
        base_batch_size: the global batch at which ``optim.lr`` was tuned.
        rule: ``"auto"`` (linear for SGD/LARS, sqrt for Adam-family/LAMB), ``"linear"`` or ``"sqrt"``.
    """

    name = "lr_scaling"
    paper_id = "arXiv:2006.09092"
    claim = (
        "scaling the LR with the batch (linear for SGD, square root for adaptive optimisers) keeps "
        "large-batch accuracy"
    )
    claimed_effect = "better"

    def __init__(self, base_batch_size: int = 128, rule: Rule = "auto") -> None:
        _check_batch(base_batch_size, "base_batch_size")
        if rule not in ("auto", "linear", "sqrt"):
            raise ValueError(f"rule must be 'auto', 'linear' or 'sqrt', got {rule!r}")
        self.base_batch_size = base_batch_size
        self.rule = rule
        self.factor = 1.0
        self.lrs: list[float] = []

    def setup(self, ctx: Context) -> None:
        rule = infer_scaling_rule(ctx.optimizer) if self.rule == "auto" else self.rule
        before = float(ctx.optimizer.param_groups[0]["lr"])
        self.lrs = scale_optimizer_lr(ctx.optimizer, ctx.run.global_batch, self.base_batch_size, rule)  # type: ignore
        self.factor = self.lrs[0] / before
        self.log(ctx, "lr", self.lrs[0])
        self.log(ctx, "factor", self.factor)


__getattr__ = deprecated_aliases(__name__, {"LRScaling": "LRScalingMethod"}, globals())
