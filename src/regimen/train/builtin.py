"""Methods that ship with the trainer: exponential moving average of weights.

EMA (Polyak & Juditsky 1992; as used by e.g. Tan & Le 2019, arXiv 1905.11946): after every optimizer step
    theta_ema <- d * theta_ema + (1 - d) * theta,  d = min(decay, (1 + t) / (10 + t)) with warmup, else decay;
buffers (BN running statistics) are copied. Evaluation uses the EMA weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, register_method
from regimen.models import copy_module

__all__ = ["EMAMethod", "ModelEMA", "ema_update"]


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` on floating parameters; buffers copied."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


class ModelEMA(nn.Module):
    """A frozen copy of a model that tracks its exponential moving average."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.module = copy_module(model).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, model: nn.Module) -> None:
        ema_update(self.module, model, self.current_decay())
        self.updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


@register_method
class EMAMethod(Method):
    """Exponential moving average of the weights; evaluation uses the averaged model."""

    name = "ema"
    paper_id = "Polyak & Juditsky 1992"
    claim = "an exponential moving average of the weights generalises better than the last iterate"
    claimed_effect = "better"

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.ema: ModelEMA | None = None
        self._pending: dict[str, Any] | None = None

    def on_epoch_start(self, ctx: Context) -> None:
        self._ensure(ctx)

    def _ensure(self, ctx: Context) -> ModelEMA:
        """The averaged copy, made at the start of training rather than in ``setup``: every method's surgery (which
        may come after this one in the recipe) and device placement are done by then."""
        if self.ema is None:
            self.ema = ModelEMA(self._unwrapped(ctx.model), self.decay, self.warmup)
            if self._pending is not None:  # resumed: the saved EMA weights replace the fresh copy
                self.load_state_dict(self._pending)
        return self.ema

    def _unwrapped(self, model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def after_step(self, ctx: Context) -> None:
        self._ensure(ctx).update(self._unwrapped(ctx.model))

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        return self._ensure(ctx).module.to(ctx.run.device)

    def state_dict(self) -> dict[str, Any]:
        if self.ema is None:
            return {} if self._pending is None else self._pending
        return {"module": self.ema.module.state_dict(), "updates": self.ema.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.ema is None:
            self._pending = state
            return
        self.ema.module.load_state_dict(state["module"])
        self.ema.updates = state["updates"]
        self._pending = None


__getattr__ = deprecated_aliases(__name__, {"EMA": "EMAMethod"}, globals())
