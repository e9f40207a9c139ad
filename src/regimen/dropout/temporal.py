"""Temporal dropout: drop whole time steps of a sequence (every feature of a step together).

Paper: Miro Miranda, Francisco Mena, Andreas Dengel, "An Analysis of Temporal Dropout in Earth Observation Time
Series for Regression Tasks", 2025, arXiv 2504.06915 (temporal dropout, TD, and MC-TD: keep it on at inference and
average Monte-Carlo passes). Related: Yarin Gal, Zoubin Ghahramani, "A Theoretically Grounded Application of Dropout
in Recurrent Neural Networks", 2016, arXiv 1512.05287 (word / time-step dropout); the learned-rate variant is
:class:`~regimen.dropout.ConcreteTemporalDropout`.

Formula: for ``x`` of shape (N, T, ...), m_{n,t} ~ Bernoulli(1 - p) and y_{n,t,...} = x_{n,t,...} m_{n,t} / (1 - p)
(``scale_by_keep``); E[y] = x.

Pitfalls handled:

- One mask value per (sample, time step), broadcast over the remaining dimensions, so a dropped step is all zeros.
- ``dim`` names the time dimension (1 for batch-first sequences); the batch dimension 0 is rejected.
- Identity in eval; keep it active at inference for Monte-Carlo uncertainty with :func:`regimen.dropout.mc_predict`
  (recipe: ``mc_inference`` after ``temporal_dropout``).
- The paper masks without rescaling (x ⊙ (1 − m)); ``scale_by_keep=False`` is that form. The default rescales, so a
  deterministic evaluation sees inputs of the training scale.

Surgery (:func:`apply_temporal_dropout`) fills a model's *time-dropout slots*: children named ``time_dropout``
(``nn.Identity()`` placeholders, applied to a batch-first ``(N, T, ...)`` sequence), the convention of
:class:`regimen.models.SequenceRNN`'s step embedding. Trainer method: ``temporal_dropout``
(:class:`TemporalDropoutMethod`).
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.dropout._common import (
    StochasticLayer,
    check_dim_of,
    check_feature_dim,
    check_probability,
    check_tensor,
    rand,
)
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["TemporalDropout", "TemporalDropoutMethod", "apply_temporal_dropout", "temporal_dropout",
           "time_dropout_slots", "time_step_mask_shape"]

#: The child name surgery looks for: an ``nn.Identity()`` applied to a batch-first sequence.
TIME_DROPOUT_SLOT = "time_dropout"


@checked_arguments
def time_step_mask_shape(x: torch.Tensor, dim: int) -> list[int]:
    """Shape of a per-(sample, step) mask broadcastable against ``x``: N and T kept, 1 elsewhere."""
    shape = [1] * x.dim()
    shape[0] = x.shape[0]
    shape[dim] = x.shape[dim]
    return shape


@checked_arguments
def temporal_dropout(
    x: torch.Tensor,
    p: float = 0.1,
    dim: int = 1,
    *,
    training: bool = True,
    scale_by_keep: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Zero whole time steps of ``x (N, T, ...)`` with probability ``p`` each (per sample), scaled by 1/(1-p).

    Args:
        x: floating tensor with a batch dimension 0 and the time dimension ``dim``.
        p: drop probability in [0, 1). dim: the time dimension (default 1).
        training: identity when False. scale_by_keep: divide kept steps by 1 - p.
        generator: random source.
    """
    check_tensor(x, "x", min_dim=2)
    dim = check_dim_of(x, dim)
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = (rand(time_step_mask_shape(x, dim), x, generator) < keep).to(x.dtype)
    if scale_by_keep:
        mask = mask / keep
    return x * mask


@checked_arguments
class TemporalDropout(StochasticLayer):
    """Module form of :func:`temporal_dropout` (identity in eval)."""

    def __init__(
        self, p: float = 0.1, dim: int = 1, scale_by_keep: bool = True, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(generator)
        self.p = check_probability(p)
        self.dim = check_feature_dim(dim)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return temporal_dropout(
            x, self.p, self.dim, training=self.training, scale_by_keep=self.scale_by_keep, generator=self.generator
        )

    def extra_repr(self) -> str:
        return f"p={self.p}, dim={self.dim}"


@checked_arguments
def time_dropout_slots(model: nn.Module, slot: str = TIME_DROPOUT_SLOT) -> list[str]:
    """Dotted names of the modules of ``model`` that have a child named ``slot`` (the time-dropout slots).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: there is no slot, or a slot is not an empty ``nn.Identity()`` placeholder.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(slot, str) or not slot or "." in slot:
        raise ValueError(f"slot must be a child name (no dots), got {slot!r}")
    names = [name for name, module in model.named_modules() if slot in dict(module.named_children())]
    if not names:
        raise ValueError(f"model has no time-dropout slot: no module has a child named {slot!r} (an nn.Identity() "
                         "applied to the (N, T, ...) sequence, as regimen.models.SequenceRNN's stages[0] has)")
    for name in names:
        child = model.get_submodule(f"{name}.{slot}" if name else slot)
        if type(child) is not nn.Identity:
            raise ValueError(f"the time-dropout slot {(name + '.' if name else '') + slot!r} already holds "
                             f"{type(child).__name__}; one temporal dropout per slot")
    return names


@checked_arguments
def apply_temporal_dropout(model: nn.Module, p: float = 0.1, *, slot: str = TIME_DROPOUT_SLOT,
                           scale_by_keep: bool = True, generator: torch.Generator | None = None) -> list[str]:
    """Put a :class:`TemporalDropout` (time dimension 1) into every time-dropout slot of ``model``, in place.

    Args:
        model: a model with children named ``slot`` (``nn.Identity()`` placeholders before which the input is a
            batch-first sequence), e.g. :class:`regimen.models.SequenceRNN`.
        p: drop probability of a time step. slot: the child name. scale_by_keep: divide kept steps by 1 - p.
        generator: random source of the masks.

    Returns:
        The dotted names of the filled slots. The model is unchanged when an argument is refused.
    """
    p = check_probability(p)
    names = time_dropout_slots(model, slot)
    for name in names:
        parent = model.get_submodule(name) if name else model
        setattr(parent, slot, TemporalDropout(p, dim=1, scale_by_keep=scale_by_keep, generator=generator))
    return [f"{name}.{slot}" if name else slot for name in names]


@register_method
class TemporalDropoutMethod(Method):
    """Drop whole time steps of the input sequence during training (temporal dropout, TD).

    Fills the model's time-dropout slots (:func:`apply_temporal_dropout`) with one mask value per (sample, step)
    drawn from ``ctx.generator``; identity at evaluation unless ``mc_inference`` keeps it on (MC-TD).

    Args:
        p: probability of dropping a time step (the paper tunes it; 0.1 here).
        scale_by_keep: divide kept steps by 1 - p (False: the paper's unscaled mask).
        slot: the child name of the slots.
    """

    name = "temporal_dropout"
    paper_id = "arXiv:2504.06915"
    claim = ("randomly dropping whole time steps in training (temporal dropout) makes sequence models robust to "
             "missing steps and improves predictive performance")
    claimed_effect = "better"
    inputs = ("sequence",)
    conflicts = ("concrete_temporal_dropout",)
    constraint_reason = "both fill the model's time-dropout slot"

    def __init__(self, p: float = 0.1, scale_by_keep: bool = True, slot: str = TIME_DROPOUT_SLOT) -> None:
        self.p = check_probability(p)
        self.scale_by_keep = bool(scale_by_keep)
        self.slot = slot

    def setup(self, ctx: Context) -> None:
        names = apply_temporal_dropout(ctx.model, self.p, slot=self.slot, scale_by_keep=self.scale_by_keep,
                                       generator=ctx.generator)
        self.log(ctx, "slots", len(names))
