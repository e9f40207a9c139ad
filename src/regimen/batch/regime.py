"""Regime adaptation: train a large batch for as many *updates* as the small-batch regime it replaces.

Paper: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the generalization gap in large batch
training of neural networks", NeurIPS 2017, arXiv 1705.08741 (Section 5, "regime adaptation"). The generalization
gap of large batches comes from too few updates; with ``k = B / B_small``::

    epochs' = ceil(k · epochs)          LR-drop milestones (in epochs)' = k · milestone

so the number of optimizer steps and the step index of every LR drop match the small-batch regime.

Pitfalls handled:
  * ``B`` is the effective global batch (per-device × world size × accumulation).
  * The trainer's schedules read milestones as **fractions of training** (``schedule.milestones``), which are
    scale-free: multiplying the epochs moves every LR drop to the same fraction of the longer run, i.e. to ``k``
    times the epoch, so milestones need no rescaling. Only milestones counted in epochs (``adapt_regime`` on a number
    of epochs with ``milestone_unit="epochs"``, for a user's own loop) are multiplied by ``k``.
  * The ``regime_adaptation`` Method multiplies the run's epochs in ``setup``; :func:`adapt_regime` does the same to
    a recipe dict before training.
  * ``max_factor`` caps the cost: regime adaptation multiplies training time by ``k``.
"""


import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["Regime", "RegimeAdaptationMethod", "adapt_regime", "regime_factor"]

MilestoneUnit = Literal["auto", "epochs", "fraction"]


class Regime(NamedTuple):
    """An adapted training regime: epochs and LR-drop milestones."""

    epochs: int
    milestones: list[float]
    factor: float


def _check_positive_int(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{label} must be > 0, got {value}")


@checked_arguments
def regime_factor(batch_size: int, base_batch_size: int, max_factor: float | None = None) -> float:
    """``B / B_small``, capped at ``max_factor`` when given."""
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(base_batch_size, "base_batch_size")
    if max_factor is not None and not max_factor > 0:
        raise ValueError(f"max_factor must be > 0 or None, got {max_factor}")
    factor = batch_size / base_batch_size
    return min(factor, max_factor) if max_factor is not None else factor


def _scale(epochs: int, milestones: Sequence[float], factor: float, unit: MilestoneUnit) -> Regime:
    _check_positive_int(epochs, "epochs")
    values = [float(m) for m in milestones]
    if any(not math.isfinite(m) or m < 0 for m in values):
        raise ValueError(f"milestones must be finite and >= 0, got {list(milestones)}")
    if unit == "auto":
        unit = "fraction" if values and all(0 < m <= 1 for m in values) and epochs > 1 else "epochs"
    if unit not in ("epochs", "fraction"):
        raise ValueError(f"milestone_unit must be 'auto', 'epochs' or 'fraction', got {unit!r}")
    new_epochs = max(1, math.ceil(epochs * factor - 1e-9))
    new_milestones = values if unit == "fraction" else [m * factor for m in values]
    return Regime(new_epochs, new_milestones, factor)


@checked_arguments
def adapt_regime(
    regime: Mapping[str, Any] | int,
    batch_size: int | None = None,
    base_batch_size: int = 128,
    milestones: Sequence[float] = (),
    milestone_unit: MilestoneUnit = "auto",
    max_factor: float | None = None,
) -> dict[str, Any] | Regime:
    """Scale epochs and LR-drop milestones by ``B / B_small``.

    Args:
        regime: a recipe dict (as read from TOML: ``train.epochs``, ``train.batch_size``, ``train.devices``,
            ``train.accumulation``) or the number of epochs.
        batch_size: effective global batch ``B``; for a recipe dict it defaults to batch_size × devices ×
            accumulation read from the recipe.
        base_batch_size: the small batch ``B_small`` whose regime is matched.
        milestones: LR-drop milestones when ``regime`` is a number of epochs.
        milestone_unit: for a number of epochs: ``"epochs"`` (scaled), ``"fraction"`` (left alone) or ``"auto"``
            (fractions if all in (0, 1]). A recipe's ``schedule.milestones`` are always fractions of training.
        max_factor: optional cap on the factor.

    Returns:
        For a recipe dict, a new dict (the input is not modified) with ``train.epochs`` adapted (its schedule's
        milestones are fractions and stay as they are); for a number of epochs, a :class:`Regime`.
    """
    if not isinstance(regime, Mapping) and (isinstance(regime, bool) or not isinstance(regime, int)):
        raise TypeError(f"regime must be a mapping or an int (epochs), got {type(regime).__name__}")
    if isinstance(regime, Mapping):
        if milestones or milestone_unit == "epochs":
            raise ValueError("adapt_regime on a recipe dict: the recipe's schedule.milestones are fractions of "
                             "training and need no rescaling; pass neither milestones nor milestone_unit='epochs'")
        recipe = copy.deepcopy(dict(regime))
        train = dict(recipe.get("train", {}))
        if batch_size is None:
            batch_size = int(train.get("batch_size", 128)) * int(train.get("devices", 1)) * int(
                train.get("accumulation", 1))
        factor = regime_factor(batch_size, base_batch_size, max_factor)
        train["epochs"] = _scale(int(train.get("epochs", 5)), [], factor, "fraction").epochs
        recipe["train"] = train
        return recipe
    if batch_size is None:
        raise ValueError("batch_size is required when regime is a number of epochs")
    factor = regime_factor(batch_size, base_batch_size, max_factor)
    return _scale(regime, milestones, factor, milestone_unit)  # type: ignore[arg-type]


@register_method
class RegimeAdaptationMethod(Method):
    """Regime adaptation (Hoffer et al. 2017): multiply the epochs by B / B_small to match the small batch's updates.

    In ``setup`` it sets the run's epochs to ``ceil(epochs · B / B_small)`` (``ctx.set_epochs``) with ``B`` the
    global batch. The LR schedule's milestones are fractions of training, so they follow the longer run by
    themselves. Logs ``regime_adaptation/factor`` and ``regime_adaptation/epochs``.

    Args:
        base_batch_size: the small batch ``B_small`` whose number of updates is matched.
        max_factor: optional cap on ``B / B_small``.
    """

    name = "regime_adaptation"
    paper_id = "arXiv:1705.08741"
    claim = "training a large batch for as many updates as the small batch closes the generalisation gap"
    claimed_effect = "better"

    def __init__(self, base_batch_size: int = 128, max_factor: float | None = None) -> None:
        _check_positive_int(base_batch_size, "base_batch_size")
        if max_factor is not None and not max_factor > 0:
            raise ValueError(f"max_factor must be > 0 or None, got {max_factor}")
        self.base_batch_size = base_batch_size
        self.max_factor = max_factor

    def setup(self, ctx: Context) -> None:
        factor = regime_factor(ctx.run.global_batch, self.base_batch_size, self.max_factor)
        epochs = _scale(ctx.run.epochs, [], factor, "fraction").epochs
        ctx.set_epochs(epochs)
        self.log(ctx, "factor", factor)
        self.log(ctx, "epochs", epochs)


__getattr__ = deprecated_aliases(__name__, {"RegimeAdaptation": "RegimeAdaptationMethod"}, globals())
