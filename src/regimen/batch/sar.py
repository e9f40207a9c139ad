"""SAR: test-time adaptation of norm-layer affine parameters by sharpness-aware, reliable entropy minimisation.

Paper: Shuaicheng Niu, Jiaxiang Wu, Yifan Zhang, Zhiquan Wen, Yaofo Chen, Peilin Zhao, Mingkui Tan, "Towards Stable
Test-Time Adaptation in Dynamic Wild World", ICLR 2023, arXiv 2302.12400 (reference code: github.com/mr-eggplant/SAR,
``sar.py``, ``sam.py``). Tent (Wang et al., "Tent: Fully Test-Time Adaptation by Entropy Minimization", ICLR 2021,
arXiv 2006.10726) is its peer: plain entropy minimisation on every sample.

Formula, on every test batch x (the predictions returned are those of the first forward, before the update):

    E(x) = −Σ_c p_c log p_c                                   (softmax entropy of each sample)
    S1 = {i : E_i < E0},  E0 = 0.4 · ln C                       (reliable samples)
    ε̂ = ρ ∇L1 / ‖∇L1‖,  L1 = mean_{S1} E                        (SAM's ascent, ρ = 0.05)
    S2 = {i ∈ S1 : E_i(θ + ε̂) < E0},  L2 = mean_{S2} E(θ + ε̂)
    θ ← SGD-momentum step with ∇L2 taken at θ + ε̂, applied at θ
    ema ← 0.9 · ema + 0.1 · L2;  ema < 0.2  ⇒  reset θ and the optimizer to the source state (model recovery)

θ are the affine weights and biases of the BatchNorm / GroupNorm / LayerNorm layers; BatchNorm layers use the test
batch's statistics (``track_running_stats=False``), as in Tent and SAR.

API (:func:`adapt` is the documented entry point; the ``sar`` recipe method runs SAR during the trainer's evaluation,
where the evaluation stream is the test set in order)::

    adapter = SAR(model, lr=1e-3)        # works on a copy; `model` is left as it was
    for x, y in stream:
        logits = adapter(x)              # predicts, then adapts
    adapter.reset()                      # back to the source weights

Pitfalls handled:

- No reliable sample in a batch (S1 or S2 empty): the reference back-propagates a NaN mean; here the update is
  skipped (the predictions are still returned).
- The reference ignores its ``reset_constant_em`` argument (0.2 is hard-coded); here ``reset_constant`` is used.
- E0 scales with the class count: 0.4 · ln C (the reference's 0.4 · ln 1000 is for ImageNet).
- A model without norm layers is refused with a ValueError before anything is copied or changed.
- The adapter enables gradients itself (evaluation loops run under ``torch.no_grad``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data
from regimen.models import copy_module

__all__ = ["SAR", "SARMethod", "Tent", "adapt", "norm_affine_parameters", "softmax_entropy"]

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


@checked_arguments
def _check_batch(x: object) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor batch, got {type(x).__name__}")
    require_data(x=x)


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """E = −Σ_c p_c log p_c per row of ``logits`` ``(N, C)``."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(getattr(logits, 'shape', ()))}")
    log_p = logits.float().log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


@checked_arguments
def norm_affine_parameters(model: nn.Module, ignore: Sequence[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the affine weights and biases of the model's norm layers (BatchNorm, GroupNorm,
    LayerNorm), skipping modules whose dotted name starts with an entry of ``ignore``."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, _NORMS) or any(name == i or name.startswith(i + ".") for i in ignore):
            continue
        for pname, p in module.named_parameters(recurse=False):
            if pname in ("weight", "bias"):
                found.append((f"{name}.{pname}" if name else pname, p))
    return found


def _check_positive(name: str, value: object, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value < 0 if allow_zero else value <= 0):
        raise ValueError(f"{name} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


class _Adapter(nn.Module):
    """Shared set-up of Tent and SAR: a configured copy of the model, SGD on its norm parameters, reset."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, ignore: Sequence[str], copy: bool) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        _check_positive("lr", lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if not norm_affine_parameters(model, ignore):
            raise ValueError(f"model: {type(model).__name__} has no BatchNorm/GroupNorm/LayerNorm layer with affine "
                             "parameters to adapt (test-time adaptation updates only those)")
        self.model = copy_module(model) if copy else model
        self.model.train()
        self.model.requires_grad_(False)
        for module in self.model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
                module.track_running_stats = False  # the test batch's statistics, in train and eval mode
                module.running_mean, module.running_var = None, None
        self.names, params = zip(*norm_affine_parameters(self.model, ignore))
        for p in params:
            p.requires_grad_(True)
        self.params = list(params)
        self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        self._source = ([p.detach().clone() for p in self.params], self.optimizer.state_dict())
        self.resets = 0
        self.updates = 0

    def reset(self) -> None:
        """Back to the source parameters and a fresh optimizer state."""
        with torch.no_grad():
            for p, source in zip(self.params, self._source[0]):
                p.copy_(source)
        self.optimizer.load_state_dict(self._source[1])
        self.optimizer.state.clear()

    def train(self, mode: bool = True) -> _Adapter:  # the adapted model always runs in train mode (batch stats)
        super().train(mode)
        self.model.train()
        return self


@checked_arguments
class Tent(_Adapter):
    """Tent: one SGD step of mean entropy on every test batch (norm affine parameters, batch statistics).

    Args:
        model: the source model (copied unless ``copy=False``).
        lr, momentum: SGD on the norm parameters.
        ignore: dotted module names whose norm layers stay frozen.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, momentum: float = 0.9, ignore: Sequence[str] = (),
                 copy: bool = True) -> None:
        super().__init__(model, lr, momentum, ignore, copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            loss = softmax_entropy(outputs).mean()
            loss.backward()
            self.optimizer.step()
            self.updates += 1
        return outputs.detach()


@checked_arguments
class SAR(_Adapter):
    """SAR: reliable (E < E0) sharpness-aware entropy minimisation with model recovery (see the module docstring).

    Args:
        model: the source model (copied unless ``copy=False``); must have norm layers.
        lr, momentum: SGD on the norm parameters (reference: momentum 0.9).
        rho: SAM radius (reference 0.05).
        margin: E0; default 0.4 · ln C, C read from the first batch's logits.
        reset_constant: recovery threshold on the entropy EMA (reference 0.2).
        ema_momentum: of the EMA (reference 0.9).
        ignore: dotted module names whose norm layers stay frozen (the reference skips a ResNet's ``layer4``).
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, momentum: float = 0.9, rho: float = 0.05,
                 margin: float | None = None, reset_constant: float = 0.2, ema_momentum: float = 0.9,
                 ignore: Sequence[str] = (), copy: bool = True) -> None:
        _check_positive("rho", rho)
        if margin is not None:
            _check_positive("margin", margin)
        _check_positive("reset_constant", reset_constant, allow_zero=True)
        if not 0.0 <= ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {ema_momentum!r}")
        super().__init__(model, lr, momentum, ignore, copy)
        self.rho, self.margin, self.reset_constant, self.ema_momentum = rho, margin, reset_constant, ema_momentum
        self.ema: float | None = None

    def reset(self) -> None:
        super().reset()
        self.ema = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_batch(x)
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=True)
            outputs = self.model(x)
            margin = self.margin if self.margin is not None else 0.4 * math.log(outputs.shape[1])
            entropy = softmax_entropy(outputs)
            first = torch.nonzero(entropy < margin).flatten()
            if first.numel() == 0:
                return outputs.detach()
            entropy[first].mean().backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            norm = torch.norm(torch.stack([g.norm(2) for g in grads]), 2)
            steps = [self.rho * g / (norm + 1e-12) for g in grads]
            with torch.no_grad():
                for p, e in zip(self.params, steps):
                    p.add_(e)
            self.optimizer.zero_grad(set_to_none=True)
            entropy2 = softmax_entropy(self.model(x))[first]
            second = entropy2 < margin
            if bool(second.any()):
                loss2 = entropy2[second].mean()
                loss2.backward()
            with torch.no_grad():
                for p, e in zip(self.params, steps):
                    p.sub_(e)
            if bool(second.any()):
                self.optimizer.step()
                self.updates += 1
                value = float(loss2.detach())
                self.ema = value if self.ema is None else (self.ema_momentum * self.ema
                                                           + (1 - self.ema_momentum) * value)
                if self.ema < self.reset_constant:
                    self.reset()
                    self.resets += 1
            self.optimizer.zero_grad(set_to_none=True)
        return outputs.detach()


@checked_arguments
def adapt(model: nn.Module, batches, method: str = "sar", **kwargs: Any) -> tuple[torch.Tensor, nn.Module]:
    """Adapt a copy of ``model`` online on ``batches`` (an iterable of input tensors, or of ``(inputs, ...)``
    tuples) with ``method`` = ``"sar"``, ``"tent"`` or ``"none"``; returns the predictions of every batch,
    concatenated (made before each batch's update), and the adapter (``None`` for ``"none"``)."""
    if method not in ("sar", "tent", "none"):
        raise ValueError(f"method must be 'sar', 'tent' or 'none', got {method!r}")
    adapter = {"sar": SAR, "tent": Tent}[method](model, **kwargs) if method != "none" else None
    was_training = model.training
    if adapter is None:
        model.eval()
    predictions = []
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, tuple | list) else batch
            if adapter is None:
                with torch.no_grad():
                    predictions.append(model(x).argmax(1))
            else:
                predictions.append(adapter(x).argmax(1))
    finally:
        model.train(was_training)
    return torch.cat(predictions), adapter


@register_method
class SARMethod(Method):
    """SAR test-time adaptation (Niu et al. 2023) of the norm layers during evaluation: every evaluation adapts a
    fresh copy of the trained model online on the evaluation stream (the training is unchanged).

    Args:
        lr: SGD learning rate of the norm parameters (reference rule for ViT: 1e-3 · batch / 64).
        rho: SAM radius.
        margin: E0 (default 0.4 · ln C).
        reset_constant: the recovery threshold on the entropy EMA.
    """

    name = "sar"
    targets = ("labels",)
    before = ("co_teaching",)
    conflicts = ("multi_sample_dropout", "batchformer")
    constraint_reason = ("SAR adapts the model's norm layers in train mode (co-teaching's evaluation ensemble exposes "
                         "none; multi-sample dropout returns (K, N, C) logits in train mode; BatchFormer's batch-axis "
                         "layer, active in train mode, doubles the batch SAR scores)")
    paper_id = "arXiv:2302.12400"
    claim = ("sharpness-aware reliable entropy minimisation keeps test-time adaptation stable in the wild (batch 1, "
             "label shift, mixed shifts): ImageNet-C sev. 5 imbalanced stream, ResNet-50-GN 37.2 vs Tent 22.0 vs no "
             "adaptation 30.6")
    claimed_effect = "better"

    def __init__(self, lr: float = 1e-3, rho: float = 0.05, margin: float | None = None,
                 reset_constant: float = 0.2) -> None:
        _check_positive("lr", lr), _check_positive("rho", rho)
        if margin is not None:
            _check_positive("margin", margin)
        _check_positive("reset_constant", reset_constant, allow_zero=True)
        self.lr, self.rho, self.margin, self.reset_constant = lr, rho, margin, reset_constant

    def setup(self, ctx: Context) -> None:
        if not norm_affine_parameters(ctx.model):
            raise ConfigurationError(f"sar: the model ({type(ctx.model).__name__}) has no norm layer to adapt")

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
        return SAR(inner, lr=self.lr, rho=self.rho, margin=self.margin, reset_constant=self.reset_constant)
