"""Gyro dropout: train a fixed pool of σ dropout masks (sub-networks), τ of them at a time, each on its share of the
batch, switching the active τ at fixed intervals.

Paper: Lee, Kim, Oh, Kim, Jeung, Noh & Seo, "Gyro Dropout: Maximizing Ensemble Effect in Neural Network Training",
MLSys 2022 (Composer's ``GyroDropout`` follows the authors' layer).

Ordinary dropout draws a fresh mask per example and step, so no sub-network is trained for long. Gyro dropout draws
σ masks over the features once (``keep ~ Bernoulli(1 − p)``), and for training step ``t``:

    every  I = ⌊steps · epochs / σ⌋ · τ  steps:  pick τ of the σ masks (uniformly, with replacement, as the authors)
    example i of the batch uses active mask ⌊i τ / N⌋  (τ equal groups in batch order)
    y = x ⊙ mask / (1 − p)

so each mask is trained for about ``steps·epochs/σ`` steps in total. Identity in eval mode.

:func:`apply_gyro_dropout` replaces every ``nn.Dropout`` of any model by :class:`GyroDropout` with its ``p`` (a model
without one is refused and left unchanged: regimen's models get one with ``model.options.head_dropout``). Masks act
on dim 1 (features or channels) and broadcast over the rest. The masks, the active selection and the step count are
in the Method's ``state_dict``, so a resumed run continues with the same sub-networks. Differences from the authors'
layer: a batch size not divisible by τ is split into groups of sizes differing by at most one (theirs needs N
divisible by τ); randomness comes from the run's generator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regimen.dropout._common import StochasticLayer, check_tensor
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["GyroDropout", "GyroDropoutMethod", "apply_gyro_dropout", "gyro_group_index"]


def _check(p: float, sigma: int, tau: int) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a drop probability in [0, 1), got {p!r}")
    if isinstance(sigma, bool) or not isinstance(sigma, int) or sigma < 1:
        raise ValueError(f"sigma must be an int >= 1 (the number of pre-selected masks), got {sigma!r}")
    if isinstance(tau, bool) or not isinstance(tau, int) or not 1 <= tau <= sigma:
        raise ValueError(f"tau must be an int in [1, sigma={sigma}] (masks trained at once), got {tau!r}")


@checked_arguments
def gyro_group_index(n: int, tau: int) -> torch.Tensor:
    """Which of the τ active masks each of ``n`` examples uses: ``⌊i τ / n⌋``."""
    if n < 0 or tau < 1:
        raise ValueError(f"n must be >= 0 and tau >= 1, got n={n}, tau={tau}")
    return torch.arange(n) * tau // max(n, 1)


@checked_arguments
class GyroDropout(StochasticLayer):
    """Dropout over a pool of σ fixed masks, τ active at once (see the module docstring).

    Args:
        p: drop probability. sigma: masks in the pool. tau: masks active at once.
        interval: steps between re-selections of the active masks (the method computes ``⌊steps/σ⌋ · τ``).
        generator: random source of the masks and selections.
    """

    def __init__(self, p: float = 0.5, sigma: int = 256, tau: int = 16, interval: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        _check(p, sigma, tau)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        self.p, self.sigma, self.tau, self.interval = float(p), sigma, tau, interval
        self.masks: torch.Tensor | None = None  # (sigma, features) of 0/1
        self.active: torch.Tensor | None = None  # (tau,) indices into masks
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x")
        if not self.training or self.p == 0.0:
            return x
        if x.dim() < 2:
            raise ValueError(f"GyroDropout needs (N, features, ...) inputs x, got shape {tuple(x.shape)}")
        features = x.shape[1]
        if self.masks is None:
            self.masks = (torch.rand(self.sigma, features, generator=self.generator) >= self.p).float()
        elif self.masks.shape[1] != features:
            raise ValueError(f"GyroDropout built its masks for {self.masks.shape[1]} features, got {features}")
        if self.active is None or self.step % self.interval == 0:
            self.active = torch.randint(0, self.sigma, (self.tau,), generator=self.generator)
        self.step += 1
        mask = self.masks[self.active][gyro_group_index(x.shape[0], self.tau)].to(x.device, x.dtype)
        return x * mask.view(*mask.shape, *([1] * (x.dim() - 2))) / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, sigma={self.sigma}, tau={self.tau}, interval={self.interval}"

    def get_state(self) -> dict[str, Any]:
        return {"masks": self.masks, "active": self.active, "step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.masks, self.active, self.step = state["masks"], state["active"], state["step"]


@checked_arguments
def apply_gyro_dropout(model: nn.Module, sigma: int = 256, tau: int = 16, interval: int = 1,
                       optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
                       p: float | None = None) -> list[str]:
    """Replace every ``nn.Dropout`` of ``model`` by :class:`GyroDropout` (its ``p``, or ``p`` when given), in place.

    Returns:
        The qualified names of the replaced layers.

    Raises:
        ValueError: the model has no ``nn.Dropout`` (it is unchanged), or a bad argument.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check(0.5 if p is None else p, sigma, tau)
    found = [(name, m) for name, m in model.named_modules() if name and type(m) is nn.Dropout]
    if not found:
        raise ValueError("model has no nn.Dropout layer to turn into gyro dropout (regimen's models get one with "
                         "model.options.head_dropout > 0)")
    for name, layer in found:
        model.set_submodule(name, GyroDropout(layer.p if p is None else p, sigma, tau, interval, generator))
    return [name for name, _ in found]


@register_method
class GyroDropoutMethod(Method):
    """Gyro dropout (Lee 2022): every ``nn.Dropout`` trains σ fixed masks, τ at a time (Composer's defaults).

    Args:
        p: drop probability (``None``: each layer keeps its own).
        sigma: masks in the pool (Composer: 256). tau: masks active at once (Composer: 16).
    """

    name = "gyro_dropout"
    paper_id = "Lee et al., Gyro Dropout, MLSys 2022"
    claim = "training a fixed set of dropout sub-networks increases the ensemble effect and test accuracy over dropout"
    claimed_effect = "better"

    def __init__(self, p: float | None = None, sigma: int = 256, tau: int = 16) -> None:
        _check(0.5 if p is None else p, sigma, tau)
        self.p, self.sigma, self.tau = p, sigma, tau
        self.layers: list[GyroDropout] = []
        self._pending: list[dict[str, Any]] | None = None

    def setup(self, ctx: Context) -> None:
        steps = ctx.run.steps_per_epoch * ctx.run.epochs
        interval = max(1, steps // self.sigma) * self.tau
        names = apply_gyro_dropout(ctx.model, self.sigma, self.tau, interval, ctx.optimizer, ctx.generator, self.p)
        self.layers = [ctx.model.get_submodule(name) for name in names]
        self.log(ctx, "layers", len(names))
        self.log(ctx, "interval", interval)

    def on_epoch_start(self, ctx: Context) -> None:
        self._restore()

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._pending is not None:
            for layer, state in zip(self.layers, self._pending, strict=True):
                layer.set_state(state)
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"layers": [layer.get_state() for layer in self.layers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._pending = state["layers"]
            if self.layers:
                self._restore()
