"""Layer freezing: progressively stop training the early layers of a model, front to back, towards the end of training.

Paper: Brock, Lim, Ritchie & Weston, "FreezeOut: Accelerate Training by Progressively Freezing Layers", 2017,
arXiv 1706.04983 (Composer's ``LayerFreezing`` uses its linear schedule).

With ``L`` freezable layers (every layer but the head), after each epoch, at progress ``t = (epoch + 1)/epochs``:

    frozen(t) = ⌊L · freeze_level · (t − freeze_start)/(1 − freeze_start)⌋   for t ≥ freeze_start, else 0

the first ``frozen(t)`` layers are frozen: their parameters get no gradient (``requires_grad = False`` on one
process) and are skipped by the optimizer (their ``.grad`` is ``None`` at the step, so no update, no weight decay,
no momentum drift; their optimizer state is dropped), and, with ``freeze_bn = true``, their BatchNorm running
statistics and dropout are in eval mode. The optimizer keeps its param groups, so the LR schedule (which sets each
group's LR) and checkpoints are unaffected; a resumed run re-freezes from the saved count before its first step.

Layers are ``model.stages`` when the model has that ModuleList (regimen's models: stem, blocks, head), else the
top-level children with parameters, in order; the last one is the head and is never frozen: a schedule that would
freeze it (``freeze_level > 1``) is refused. Under DDP the frozen parameters keep ``requires_grad`` (DDP's reducer
expects every parameter it was built with), so they still cost a backward pass, but are not updated.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["LayerFreezingMethod", "freezable_layers", "frozen_layer_count"]


@checked_arguments
def frozen_layer_count(progress: float, num_layers: int, freeze_start: float = 0.5, freeze_level: float = 1.0
                       ) -> int:
    """``⌊L · level · (t − start)/(1 − start)⌋`` clipped to ``[0, L]`` (0 before ``freeze_start``)."""
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1], got {progress!r}")
    if not 0.0 <= freeze_start < 1.0:
        raise ValueError(f"freeze_start must be in [0, 1), got {freeze_start!r}")
    if not 0.0 < freeze_level <= 1.0:
        raise ValueError(f"freeze_level must be in (0, 1] (a level above 1 would freeze the head), got "
                         f"{freeze_level!r}")
    if progress < freeze_start:
        return 0
    fraction = freeze_level * (progress - freeze_start) / (1.0 - freeze_start)
    return max(0, min(num_layers, math.floor(num_layers * fraction + 1e-9)))


@checked_arguments
def freezable_layers(model: nn.Module) -> list[nn.Module]:
    """The layers in order, the head excluded: ``model.stages[:-1]`` or the top-level children with parameters but
    the last."""
    stages = getattr(model, "stages", None)
    if isinstance(stages, nn.ModuleList) and len(stages) > 0:
        layers = list(stages)
    else:
        layers = [child for child in model.children() if any(True for _ in child.parameters())]
    if len(layers) < 2:
        raise ValueError(f"model has {len(layers)} layer(s) with parameters; layer freezing needs at least one "
                         "before the head (give the model a `stages` ModuleList or several children)")
    return layers[:-1]


@register_method
class LayerFreezingMethod(Method):
    """Freeze the early layers progressively (FreezeOut, Brock 2017; Composer's schedule), front to back.

    Args:
        freeze_start: fraction of training after which freezing starts (Composer: 0.5).
        freeze_level: fraction of the layers before the head frozen at the end of training, in (0, 1].
        freeze_bn: keep BatchNorm statistics and dropout of frozen layers in eval mode.
    """

    name = "layer_freezing"
    paper_id = "arXiv:1706.04983"
    claim = "progressively freezing early layers saves training time at a small or no loss of accuracy"
    claimed_effect = "no_worse"

    def __init__(self, freeze_start: float = 0.5, freeze_level: float = 1.0, freeze_bn: bool = True) -> None:
        frozen_layer_count(0.0, 1, freeze_start, freeze_level)  # validates both
        self.freeze_start, self.freeze_level, self.freeze_bn = float(freeze_start), float(freeze_level), freeze_bn
        self.frozen = 0
        self._applied = -1
        self._layers: list[nn.Module] | None = None

    @staticmethod
    def _unwrapped(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def setup(self, ctx: Context) -> None:
        self._layers = freezable_layers(ctx.model)

    def _frozen_params(self) -> list[torch.Tensor]:
        return [p for layer in (self._layers or [])[:self.frozen] for p in layer.parameters()]

    def _apply(self, ctx: Context) -> None:
        if self._layers is None:
            self._layers = freezable_layers(self._unwrapped(ctx.model))
        if self._applied == self.frozen:
            return
        params = self._frozen_params()
        if ctx.run.world_size == 1:
            for p in params:
                p.requires_grad_(False)
        if ctx.optimizer is not None:
            for p in params:
                ctx.optimizer.state.pop(p, None)
        self._applied = self.frozen

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        self._apply(ctx)
        if self.freeze_bn:
            for layer in self._layers[:self.frozen]:
                layer.eval()

    def after_backward(self, ctx: Context) -> None:
        for p in self._frozen_params():
            p.grad = None

    def optimizer_step(self, closure, next, ctx: Context) -> None:
        def cleared() -> torch.Tensor:  # a re-run of the step (SAM) must not give frozen layers a gradient either
            loss = closure()
            self.after_backward(ctx)
            return loss

        self.after_backward(ctx)  # gradients a closure earlier in the chain computed (DDP keeps requires_grad)
        return next(cleared)

    def on_epoch_end(self, ctx: Context) -> None:
        progress = (ctx.epoch + 1) / ctx.run.epochs
        count = frozen_layer_count(progress, len(self._layers or []), self.freeze_start, self.freeze_level)
        self.frozen = max(self.frozen, count)
        self.log(ctx, "frozen_layers", self.frozen)

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": self.frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.frozen = state["frozen"]
