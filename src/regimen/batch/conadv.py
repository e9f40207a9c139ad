"""ConAdv: concurrent adversarial learning for large-batch training: adversarial examples from *stale* weights join
the batch, so the attack need not run after the current weights are known.

Paper: Yong Liu, Xiangning Chen, Minhao Cheng, Cho-Jui Hsieh & Yang You, "Concurrent Adversarial Learning for
Large-Batch Training", ICLR 2022, arXiv 2106.00221 (reference code: TF1/TPU, ``models/official/resnet/
resnet_main.py``).

With the weights ``w_{t−τ}`` of τ steps ago (τ = 1: the previous step's), for images ``x ∈ [0, 1]`` and labels ``y``::

    y_tgt = (y + U{1..C−1}) mod C                                  (a targeted attack: a random other class)
    x₀ = x + U(−ε, ε)  with probability ``random_start`` (0.8), else x
    x̂ = clip_{[x−ε, x+ε] ∩ [0, 1]}(x₀ − α · sign ∇_x CE(f_{w_{t−τ}}(x₀), y_tgt))       (one step, attack_iter = 1)
    loss = CE(f_{w_t}([x; x̂]), [y; y])                                                  (equal weights)

Reference defaults: ε = α = 9/255 (in [0, 1] units: ``attack_epsilon = attack_step_size = 9`` × 2/255 on [−1, 1]
images), ``prob_start_from_clean = 0.2``, LARS. τ = 0 is synchronous FGSM-style adversarial augmentation (the
attack sees the current weights; what ConAdv avoids computing serially).

Pitfalls handled:
  * On one process the concurrency gives no speed-up; only the staleness is reproduced: a detached copy of the model
    (2× parameter memory) holds ``w_{t−1}``, refreshed from the live model just before each optimizer step; its
    parameters take no gradient (only ∇_x is computed). The attack's forward runs in evaluation mode, so BatchNorm
    uses the copy's own running statistics (the same stale snapshot) and train-only layers are off.
  * The attack runs in pixel space ``[0, 1]`` before the task's normalisation (``transform_batch``), so ε is in image
    units and the clip keeps valid images.
  * The reference also adds a second augmented view ``x_aug``; here the clean half is the batch as the recipe's
    other methods made it.
  * Whether the paper uses auxiliary BatchNorm for the adversarial half is unconfirmed; the reference's ``mixbn``
    runs all parts through one network, as here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["ConAdvMethod", "StaleCopy", "random_other_labels", "targeted_fgsm"]


def _check_nonnegative(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return float(value)


@checked_arguments
def random_other_labels(y: torch.Tensor, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(y + U{1..C−1}) mod C``: a uniformly drawn class other than each label."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    offset = torch.randint(1, num_classes, y.shape, generator=generator,
                           device=generator.device if generator is not None else "cpu").to(y.device)
    return (y + offset) % num_classes


@checked_arguments
def targeted_fgsm(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                  epsilon: float, step_size: float, *, random_start: float = 0.8,
                  generator: torch.Generator | None = None, normalize: Callable | None = None,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """One targeted signed-gradient step towards ``target``: ``clip(x₀ − α sign ∇_x CE(f(x₀), target))`` within
    ``[x − ε, x + ε] ∩ bounds``; ``x₀`` is ``x + U(−ε, ε)`` for a ``random_start`` fraction of the samples.

    Args:
        model: logits of ``normalize(x)``; parameters' gradients are not touched (``torch.autograd.grad`` on x).
        x: images ``(N, ...)`` within ``bounds``; target: class indices ``(N,)``.
        epsilon, step_size: ε >= 0 and α >= 0 in the units of ``x``.
        random_start: probability in [0, 1] that a sample starts from a uniform point of the ε-box.
        generator: random source (start points).
        normalize: applied to the images before the model (the task's normalisation); identity when ``None``.
    """
    epsilon = _check_nonnegative(epsilon, "epsilon")
    step_size = _check_nonnegative(step_size, "step_size")
    random_start = _check_nonnegative(random_start, "random_start")
    if random_start > 1:
        raise ValueError(f"random_start must be a probability in [0, 1], got {random_start}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating tensor of images, got {getattr(x, 'dtype', type(x))}")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        raise TypeError(f"target must be an int64 tensor of class indices, got "
                        f"{getattr(target, 'dtype', type(target).__name__)}")
    if x.dim() == 0 or target.shape != x.shape[:1]:
        raise ValueError(f"target must hold one class index per image of x {tuple(x.shape)}, got shape "
                         f"{tuple(target.shape)}")
    lo, hi = bounds
    x = x.detach()
    device = generator.device if generator is not None else "cpu"
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    start = (torch.rand(shape, generator=generator, device=device) < random_start).to(x.device, x.dtype)
    noise = (torch.rand(x.shape, generator=generator, device=device).to(x.device, x.dtype) * 2 - 1) * epsilon
    x0 = (x + start * noise).clamp(lo, hi).requires_grad_(True)
    with torch.enable_grad():
        logits = model(normalize(x0) if normalize is not None else x0)
        if target.device.type != "meta" and logits.dim() == 2 and target.numel() and (
                int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
            raise ValueError(f"target holds class indices outside [0, {logits.shape[1]}) (the model's classes), "
                             f"got [{int(target.min())}, {int(target.max())}]")
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, target), x0)
    stepped = x0.detach() - step_size * grad.sign()
    return torch.minimum(torch.maximum(stepped, x - epsilon), x + epsilon).clamp(lo, hi)


@checked_arguments
class StaleCopy:
    """A frozen copy of a model whose weights and buffers lag the live model: :meth:`refresh` copies the live values
    in (call it just before the optimizer step, so the copy holds the weights the step started from)."""

    def __init__(self, model: nn.Module) -> None:
        self.live = model
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def refresh(self) -> None:
        for stale, live in zip(self.model.parameters(), self.live.parameters()):
            stale.copy_(live)
        for stale, live in zip(self.model.buffers(), self.live.buffers()):
            stale.copy_(live)


@register_method
class ConAdvMethod(Method):
    """ConAdv (Liu et al. 2022): targeted one-step adversarial examples computed with the previous step's weights
    are added to the batch (``[x; x̂]``, labels ``[y; y]``) for large-batch training (with LARS).

    Args:
        epsilon: L∞ radius ε in [0, 1] image units (reference 9/255).
        step_size: signed-gradient step α (reference 9/255).
        random_start: probability of a uniform start in the ε-box (reference 0.8 = 1 − prob_start_from_clean).
        staleness: τ = 1 (ConAdv: the previous step's weights) or 0 (synchronous: the current weights).

    The batch doubles, so a step costs about three forward/backward passes of the clean batch (attack + 2×).
    """

    name = "conadv"
    paper_id = "arXiv:2106.00221"
    claim = ("adversarial examples from stale weights added to the batch (concurrent adversarial learning) let "
             "ResNet-50 train at batch 96K to 75.3% ImageNet top-1 with LARS, closing the large-batch gap")
    claimed_effect = "better"
    inputs = ("image",)
    targets = ("labels",)
    conflicts = ("selective_backprop",)
    constraint_reason = ("ConAdv doubles the batch ([x; x_adv]), so per-sample selections keyed to the loader's "
                         "indices no longer match the rows")

    def __init__(self, epsilon: float = 9 / 255, step_size: float = 9 / 255, random_start: float = 0.8,
                 staleness: int = 1) -> None:
        self.epsilon = _check_nonnegative(epsilon, "epsilon")
        self.step_size = _check_nonnegative(step_size, "step_size")
        self.random_start = _check_nonnegative(random_start, "random_start")
        if self.random_start > 1:
            raise ValueError(f"random_start must be a probability in [0, 1], got {random_start}")
        if staleness not in (0, 1) or isinstance(staleness, bool):
            raise ValueError(f"staleness must be 0 (synchronous) or 1 (the previous step's weights), got {staleness!r}")
        self.staleness = staleness
        self.stale: StaleCopy | None = None

    def setup(self, ctx: Context) -> None:
        if not ctx.run.num_classes or ctx.run.num_classes < 2:
            raise ValueError("conadv needs a classification task with at least 2 classes")

    def _raw(self, ctx: Context) -> nn.Module:
        return ctx.model.module if hasattr(ctx.model, "module") else ctx.model

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        labels = y.argmax(dim=1) if y.dim() == 2 and y.is_floating_point() else y
        if self.staleness == 0:
            attacker = self._raw(ctx)
        else:
            if self.stale is None:  # first step: the copy starts at the current weights
                self.stale = StaleCopy(self._raw(ctx))
            attacker = self.stale.model
        target = random_other_labels(labels, ctx.run.num_classes, ctx.generator)
        # the attack runs in evaluation mode: BatchNorm normalises with the attacking weights' own running statistics
        # (the stale copy's, refreshed with its weights), dropout is off, and train-only heads (BatchFormer,
        # multi-sample dropout) give one row of logits per image
        was_training = attacker.training
        attacker.eval()
        try:
            adversarial = targeted_fgsm(attacker, x, target, self.epsilon, self.step_size,
                                        random_start=self.random_start, generator=ctx.generator,
                                        normalize=ctx.normalize)
        finally:
            attacker.train(was_training)
        return torch.cat([x, adversarial.to(x.dtype)], dim=0), torch.cat([y, y], dim=0)

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        if self.stale is not None:
            self.stale.refresh()  # w_t, the weights this step starts from: the next step's attack uses them
        return next(closure)
