"""Concrete (learned-rate) temporal dropout: the drop rate of whole time steps is a trained parameter.

Paper: Yarin Gal, Jiri Hron, Alex Kendall, "Concrete Dropout", 2017, arXiv 1705.07832; applied to whole time steps
as concrete temporal dropout (ConcTD / MC-ConcTD) by Miranda, Mena, Dengel, "An Analysis of Temporal Dropout in Earth
Observation Time Series for Regression Tasks", 2025, arXiv 2504.06915.

Formula: p = sigmoid(θ) is learned. For u ~ U(0, 1) per (sample, time step) the relaxed drop indicator is
z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / t) with temperature t (0.1 in the paper) and the output is
y = x (1 - z) / (1 - p), differentiable in p. The objective adds
R = weight_regularizer · Σ||W||² / (1 - p) + dropout_regularizer · K · (p log p + (1 - p) log(1 - p)),
K = the number of independently dropped units per sample (here the number of time steps), the negative Bernoulli
entropy term pushing p up; the paper's choices are weight_regularizer = l²/(τ N_data) and
dropout_regularizer = 2/(τ N_data).

Pitfalls handled:

- The rate lives in logit space (always in (0, 1)); ``eps`` guards every log.
- The regulariser must be added to the loss by the caller (``loss + layer.regularization(weights)``); without it
  p drifts to 0 (no dropout is always the lowest training loss).
- Identity in eval; keep it on at inference with :func:`regimen.dropout.mc_predict` for uncertainty.
- The learned rate must be in the optimizer: :func:`apply_concrete_temporal_dropout` adds it as its own parameter
  group without weight decay (weight decay would pull θ to 0, i.e. p to 0.5).

Surgery (:func:`apply_concrete_temporal_dropout`) fills the time-dropout slots (see
:mod:`regimen.dropout.temporal`). Trainer method: ``concrete_temporal_dropout``
(:class:`ConcreteTemporalDropoutMethod`), whose criterion link adds R, with the paper's
dropout_regularizer = 2 / N_train (τ = 1) by default, the weights W being the other parameters of the slot's module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

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
from regimen.dropout.temporal import TIME_DROPOUT_SLOT, time_dropout_slots, time_step_mask_shape
from regimen.method import Context, Method, checked_arguments, register_method, require_same_device

__all__ = ["ConcreteTemporalDropout", "ConcreteTemporalDropoutMethod", "apply_concrete_temporal_dropout",
           "concrete_dropout_mask"]


@checked_arguments
def concrete_dropout_mask(
    p: torch.Tensor, noise: torch.Tensor, temperature: float = 0.1, eps: float = 1e-7
) -> torch.Tensor:
    """Relaxed *keep* mask ``(1 - z) / (1 - p)`` for uniform ``noise``; differentiable in ``p``."""
    if not isinstance(p, torch.Tensor) or not isinstance(noise, torch.Tensor):
        raise TypeError(f"p and noise must be tensors, got {type(p).__name__} and {type(noise).__name__}")
    if not (p.is_floating_point() and noise.is_floating_point()):
        raise TypeError(f"p and noise must be floating point, got {p.dtype} and {noise.dtype}")
    if p.device != noise.device:
        raise ValueError(f"p and noise must be on one device, got {p.device} and {noise.device}")
    if not temperature > 0 or not eps >= 0:
        raise ValueError(f"temperature must be > 0 and eps >= 0, got {temperature} and {eps}")
    drop = torch.sigmoid(
        (torch.log(p + eps) - torch.log1p(-p + eps) + torch.log(noise + eps) - torch.log1p(-noise + eps))
        / temperature
    )
    return (1.0 - drop) / (1.0 - p)


@checked_arguments
class ConcreteTemporalDropout(StochasticLayer):
    """Temporal dropout with a learned drop rate (concrete relaxation).

    Args:
        init_p: initial drop rate in (0, 1).
        dim: the time dimension of ``(N, T, ...)`` inputs (default 1).
        temperature: relaxation temperature t > 0 (paper: 0.1).
        weight_regularizer: coefficient of Σ||W||² / (1 - p) in :meth:`regularization`.
        dropout_regularizer: coefficient of the entropy term in :meth:`regularization`.
        generator: random source.

    Attributes:
        p_logit: the trained parameter θ; ``p`` = sigmoid(θ).
    """

    def __init__(
        self,
        init_p: float = 0.1,
        dim: int = 1,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        eps: float = 1e-7,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        init_p = check_probability(init_p, "init_p")
        if init_p == 0.0:
            raise ValueError("init_p must be in (0, 1), got 0.0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if weight_regularizer < 0 or dropout_regularizer < 0:
            raise ValueError("weight_regularizer and dropout_regularizer must be >= 0")
        check_feature_dim(dim)
        self.p_logit = nn.Parameter(torch.tensor(math.log(init_p) - math.log1p(-init_p)))
        self.dim = dim
        self.temperature = float(temperature)
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.eps = float(eps)
        self.num_units = 0  # time steps of the last training input (the entropy term's K)

    @property
    def p(self) -> torch.Tensor:
        """The current drop rate sigmoid(θ) (a differentiable scalar tensor)."""
        return torch.sigmoid(self.p_logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", min_dim=2)
        dim = check_dim_of(x, self.dim)
        if not self.training:
            return x
        require_same_device(p_logit=self.p_logit, x=x)  # the error names x, not the mask's p and noise
        self.num_units = x.shape[dim]
        noise = rand(time_step_mask_shape(x, dim), x, self.generator)
        p = self.p.to(x.dtype)
        return x * concrete_dropout_mask(p, noise, self.temperature, self.eps)

    def regularization(self, weights: Iterable[torch.Tensor] = (), num_units: int | None = None) -> torch.Tensor:
        """R = wr · Σ||W||² / (1 - p) + dr · K · (p log p + (1 - p) log(1 - p)); add it to the loss.

        Args:
            weights: parameters of the layer that consumes this dropout's output (the paper's W).
            num_units: K, the number of independently dropped units; default the last input's time steps.
        """
        units = self.num_units if num_units is None else num_units
        if units < 0:
            raise ValueError(f"num_units must be >= 0, got {units}")
        p = self.p
        square = sum((w.pow(2).sum() for w in weights), torch.zeros((), device=p.device, dtype=p.dtype))
        weight_term = self.weight_regularizer * square / (1.0 - p)
        entropy = p * torch.log(p + self.eps) + (1.0 - p) * torch.log1p(-p + self.eps)
        return weight_term + self.dropout_regularizer * units * entropy

    def extra_repr(self) -> str:
        return f"p={self.p.item():.4f}, dim={self.dim}, temperature={self.temperature}"


@checked_arguments
def apply_concrete_temporal_dropout(
    model: nn.Module,
    init_p: float = 0.1,
    *,
    temperature: float = 0.1,
    weight_regularizer: float = 1e-6,
    dropout_regularizer: float = 1e-5,
    slot: str = TIME_DROPOUT_SLOT,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Put a :class:`ConcreteTemporalDropout` (time dimension 1) into every time-dropout slot of ``model``.

    With ``optimizer``, the layers' rate logits join it as one parameter group without weight decay (the first
    group's other settings). Returns the dotted names of the new layers; the model is unchanged when an argument is
    refused.
    """
    names = time_dropout_slots(model, slot)
    layers = [ConcreteTemporalDropout(init_p, dim=1, temperature=temperature, weight_regularizer=weight_regularizer,
                                      dropout_regularizer=dropout_regularizer, generator=generator) for _ in names]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, layer in zip(names, layers):
        layer.to(device)
        setattr(model.get_submodule(name) if name else model, slot, layer)
    if optimizer is not None:
        settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.add_param_group({**settings, "params": [layer.p_logit for layer in layers], "weight_decay": 0.0})
    return [f"{name}.{slot}" if name else slot for name in names]


@register_method
class ConcreteTemporalDropoutMethod(Method):
    """Temporal dropout whose rate is learned (concrete relaxation), with the Concrete Dropout regulariser.

    Fills the time-dropout slots with :class:`ConcreteTemporalDropout` layers (their rate in the optimizer, no weight
    decay) and, as a ``criterion`` link, adds each layer's R = wr · Σ‖W‖² / (1 − p) + dr · T · (p log p + (1 − p)
    log(1 − p)) to the loss (W: the other parameters of the slot's module; T: time steps). Logs the learned rate
    ``concrete_temporal_dropout/p`` (in each epoch's metrics row).

    Args:
        init_p: initial drop rate in (0, 1).
        temperature: relaxation temperature (paper: 0.1).
        weight_regularizer: wr (paper: l² / (τ N)); 1e-6 here.
        dropout_regularizer: dr; ``None`` is the paper's 2 / (τ N) with τ = 1 and N the training samples.
        slot: the child name of the slots.
    """

    name = "concrete_temporal_dropout"
    paper_id = "arXiv:2504.06915"
    claim = ("learning the temporal dropout rate with a concrete relaxation (ConcTD) improves predictive performance "
             "and calibration over hand-picked rates, without searching the rate")
    claimed_effect = "better"
    inputs = ("sequence",)
    conflicts = ("temporal_dropout",)
    constraint_reason = "both fill the model's time-dropout slot"

    def __init__(self, init_p: float = 0.1, temperature: float = 0.1, weight_regularizer: float = 1e-6,
                 dropout_regularizer: float | None = None, slot: str = TIME_DROPOUT_SLOT) -> None:
        init_p = check_probability(init_p, "init_p")
        if init_p == 0.0:
            raise ValueError("init_p must be in (0, 1), got 0.0")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not weight_regularizer >= 0 or (dropout_regularizer is not None and not dropout_regularizer >= 0):
            raise ValueError("weight_regularizer and dropout_regularizer must be >= 0")
        self.init_p, self.temperature, self.slot = init_p, float(temperature), slot
        self.weight_regularizer, self.dropout_regularizer = float(weight_regularizer), dropout_regularizer
        self.layers: list[ConcreteTemporalDropout] = []
        self.weights: list[list[torch.Tensor]] = []

    def setup(self, ctx: Context) -> None:
        regularizer = self.dropout_regularizer
        if regularizer is None:
            samples = len(ctx.train_data) if ctx.train_data is not None else 0
            regularizer = 2.0 / samples if samples else 1e-5
        names = apply_concrete_temporal_dropout(
            ctx.model, self.init_p, temperature=self.temperature, weight_regularizer=self.weight_regularizer,
            dropout_regularizer=regularizer, slot=self.slot, optimizer=ctx.optimizer, generator=ctx.generator)
        self.layers = [ctx.model.get_submodule(name) for name in names]
        self.weights = []
        for name, layer in zip(names, self.layers):
            parent = ctx.model.get_submodule(name.rpartition(".")[0]) if "." in name else ctx.model
            own = {id(p) for p in layer.parameters()}
            self.weights.append([p for p in parent.parameters() if id(p) not in own])
        self.log(ctx, "dropout_regularizer", regularizer)

    def criterion(self, output, target, next, ctx: Context, reduction: str = "mean"):
        base = next(output, target, reduction=reduction)
        if not self.layers:
            return base
        reg = sum(layer.regularization(weights) for layer, weights in zip(self.layers, self.weights))
        with contextlib.suppress(RuntimeError):  # no value to log inside a torch.func transform
            self.log(ctx, "p", self.layers[0].p.detach())
        if reduction == "sum":
            reg = reg * output.shape[0]
        return base + reg
