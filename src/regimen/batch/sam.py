"""Sharpness-aware minimisation (SAM) and its adaptive form (ASAM), as a wrapper around the optimizer step.

Paper: Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving Generalization",
ICLR 2021, arXiv 2010.01412. ASAM: Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML 2021, arXiv 2102.11600.

SAM minimises ``max_{‖ε‖ ≤ ρ} L(w + ε)`` with a first-order step: with ``g = ∇L(w)``

    ε = ρ g / ‖g‖                       (SAM; ‖·‖ over all parameters together)
    ε = ρ T² g / ‖T g‖,  T = |w| + η    (ASAM; element-wise, on parameters named ``*weight``, T = 1 on the others,
                                         as the authors' code does; ρ = 0.5, η = 0.01 there)
    w ← base_optimizer_step(w, ∇L(w + ε))

so every SAM step costs two forward and backward passes.

Here SAM is *not* an optimizer that wraps another one: it is the ``optimizer_step`` middleware of
:class:`SAMMethod` (or :func:`sam_step` in a user's loop) around the one optimizer the run has. Schedules, LR scaling,
LARS/LAMB and checkpoints see that optimizer and its ``param_groups`` only, so Composer's bug #3259 (SAM's own
``param_groups`` and the base optimizer's were different objects; the scheduler changed one, the step read the other;
the LR stayed 0) cannot happen: there is no second set of groups.

Pitfalls handled:
  * Gradient accumulation: the first gradient is the trainer's (the mean over the step's micro-batches); the closure
    recomputes the second over the same micro-batches (already augmented: ``transform_batch`` does not run twice).
  * DDP: ``local_ascent=True`` (default, as Composer and the paper's m-sharpness) leaves the first gradient on each
    process unsynchronised (``ctx.backward`` runs outside DDP's gradient sync for that pass), each process perturbs its
    copy with its own ε, and the second gradient is synchronised as usual, so the step is identical on every process.
    W processes at per-device batch b are then m-sharpness with m = b, not one process at W·b; ``local_ascent=False``
    synchronises the first gradient too and equals one process at W·b (``tests/distributed``). The logged
    ``perturbed_loss`` is the mean over processes.
  * BatchNorm: the second forward pass would update the running statistics again, at perturbed weights; it runs with
    them frozen (``momentum = 0`` and the batch counter restored), as davda54/sam recommends.
  * Mixed precision with a grad scaler: ε is scale-invariant (g / ‖g‖); when the first gradient is not finite no
    ascent is made and the second pass recomputes the gradient at ``w`` (the scaler then skips the step as usual).
  * ``after_backward`` hooks (gradient edits of other methods) see the first gradient only; gradient clipping
    (``train.grad_clip``) applies to the second, in the base step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["SAMMethod", "frozen_bn_statistics", "sam_epsilon", "sam_step"]


def _check_rho(rho: float, name: str = "rho") -> float:
    if isinstance(rho, bool) or not isinstance(rho, int | float):
        raise TypeError(f"{name} must be a float > 0, got {type(rho).__name__}")
    if not rho > 0 or rho != rho or rho == float("inf"):
        raise ValueError(f"{name} must be a finite float > 0 (the radius of the neighbourhood), got {rho}")
    return float(rho)


@checked_arguments
@torch.no_grad()
def sam_epsilon(params: Sequence[torch.Tensor], rho: float = 0.05, *, adaptive: bool | Sequence[bool] = False,
                eta: float = 0.01, eps: float = 1e-12) -> list[torch.Tensor | None]:
    """The ascent ``ε`` of every parameter from its current ``.grad`` (``None`` where there is no gradient).

    ``ε = ρ T² g / (‖T g‖ + eps)`` with ``T = 1`` (SAM) or ``T = |w| + η`` (ASAM) per parameter; the norm is taken
    over all parameters together.

    Args:
        params: the parameters (their ``.grad`` is read).
        rho: radius ρ > 0.
        adaptive: ASAM for every parameter (``True``), none (``False``), or one flag per parameter.
        eta: η >= 0 of ASAM's ``T = |w| + η``.
        eps: added to the norm (a zero gradient gives ε = 0).

    Returns:
        one tensor (or ``None``) per parameter. A non-finite gradient norm gives all-``None`` (no ascent).
    """
    rho = _check_rho(rho)
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (a zero gradient would give 0/0), got {eps}")
    params = list(params)
    flags = [bool(adaptive)] * len(params) if isinstance(adaptive, bool) else [bool(a) for a in adaptive]
    if len(flags) != len(params):
        raise ValueError(f"adaptive has {len(flags)} flags for {len(params)} parameters")
    scaled = []  # T g
    for p, flag in zip(params, flags):
        if p.grad is None:
            scaled.append(None)
        else:
            scaled.append(p.grad * (p.abs() + eta) if flag else p.grad)
    norms = [s.detach().norm(2) if s.dtype in (torch.float32, torch.float64) else s.detach().float().norm(2)
             for s in scaled if s is not None]  # half precision summed in fp32
    if not norms:
        return [None] * len(params)
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    norm = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device, dtype) for n in norms]), 2)
    if not torch.isfinite(norm):
        return [None] * len(params)
    out: list[torch.Tensor | None] = []
    for p, s, flag in zip(params, scaled, flags):
        if s is None:
            out.append(None)
            continue
        e = s * (p.abs() + eta) if flag else s.clone()  # T² g
        out.append(e.mul_((rho / (norm + eps)).to(e.device, e.dtype)))
    return out


@checked_arguments
@contextlib.contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers in training mode normalise with the batch but leave their running statistics
    and batch counters unchanged (``momentum = 0``; the counter restored on exit)."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            count = module.num_batches_tracked.clone() if module.num_batches_tracked is not None else None
            saved.append((module, module.momentum, count))
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum, count in saved:
            module.momentum = momentum
            if count is not None:
                module.num_batches_tracked.copy_(count)


@checked_arguments
def sam_step(closure: Callable[[], Any], step: Callable[[], Any], params: Sequence[torch.Tensor], rho: float = 0.05,
             *, adaptive: bool | Sequence[bool] = False, eta: float = 0.01, model: nn.Module | None = None,
             recompute_unperturbed: bool = False) -> Any:
    """One SAM step in any loop: the ``.grad`` of ``params`` holds ``∇L(w)``; ascend to ``w + ε``, call ``closure()``
    (zero the gradients, forward, backward: ``∇L(w + ε)``), go back to ``w`` exactly, then ``step()`` (e.g.
    ``optimizer.step``).

    Args:
        closure: recomputes this step's loss and gradients; its result is returned.
        step: applies the update with the gradients the closure left.
        params: the trained parameters.
        rho, adaptive, eta: see :func:`sam_epsilon`.
        model: when given, its BatchNorm running statistics are frozen during the closure.
        recompute_unperturbed: when the ascent is skipped (non-finite gradient), still call the closure (needed when
            the first gradient was not synchronised across processes).
    """
    params = list(params)
    epsilons = sam_epsilon(params, rho, adaptive=adaptive, eta=eta)
    ascend = any(e is not None for e in epsilons)
    backups = []
    if ascend:
        with torch.no_grad():
            for p, e in zip(params, epsilons):
                if e is not None:
                    backups.append((p, p.detach().clone()))
                    p.add_(e)
    try:
        if ascend or recompute_unperturbed:
            with frozen_bn_statistics(model) if model is not None else contextlib.nullcontext():
                loss = closure()
        else:
            loss = None
    finally:
        with torch.no_grad():  # back to w exactly (w + ε - ε would round)
            for p, saved in backups:
                p.copy_(saved)
    step()
    return loss


def _adaptive_flags(model: nn.Module, params: Iterable[torch.Tensor]) -> list[bool]:
    """ASAM's T = |w| + η on parameters whose name ends in ``weight`` (the authors' ``'weight' in name``)."""
    weights = {id(p) for name, p in model.named_parameters() if name.rpartition(".")[2].endswith("weight")}
    return [id(p) in weights for p in params]


@register_method
class SAMMethod(Method):
    """Sharpness-aware minimisation (Foret 2021), or ASAM (Kwon 2021) with ``adaptive = true``: the step's update uses
    the gradient at ``w + ε``, ``ε = ρ g/‖g‖``.

    Args:
        rho: neighbourhood radius ρ > 0 (paper: 0.05 for SAM; ASAM's authors: 0.5 with ``adaptive``).
        adaptive: ASAM's element-wise scale ``T = |w| + η`` on weights.
        eta: η of ASAM.
        interval: a SAM step every ``interval`` optimizer steps (Composer's option; the others are plain steps).
        local_ascent: under DDP keep the first gradient per process (m-sharpness; saves an all-reduce).
        freeze_bn: keep BatchNorm running statistics out of the second forward pass.
    """

    name = "sam"
    paper_id = "arXiv:2010.01412"
    claim = ("seeking parameters in neighbourhoods of uniformly low loss improves generalisation on CIFAR-10/100, "
             "ImageNet and fine-tuning tasks over the same models trained with SGD")
    claimed_effect = "better"

    def __init__(self, rho: float = 0.05, adaptive: bool = False, eta: float = 0.01, interval: int = 1,
                 local_ascent: bool = True, freeze_bn: bool = True) -> None:
        self.rho = _check_rho(rho)
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        if isinstance(eta, bool) or not isinstance(eta, int | float) or not eta >= 0:
            raise ValueError(f"eta must be a float >= 0, got {eta!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        self.adaptive, self.eta, self.interval = adaptive, float(eta), interval
        self.local_ascent, self.freeze_bn = bool(local_ascent), bool(freeze_bn)

    def _sam_step_now(self, ctx: Context) -> bool:
        return ctx.step % self.interval == 0

    def local_first_gradient(self, ctx: Context) -> bool:
        """Asked by the trainer before a step's first backward: ``True`` keeps it out of DDP's gradient sync."""
        return self.local_ascent and self._sam_step_now(ctx)

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        if not self._sam_step_now(ctx):
            return next(closure)
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        params = [p for group in ctx.optimizer.param_groups for p in group["params"]]
        adaptive = _adaptive_flags(model, params) if self.adaptive else False
        local = self.local_ascent and ctx.run.world_size > 1
        loss = sam_step(closure, lambda: next(closure), params, self.rho, adaptive=adaptive, eta=self.eta,
                        model=model if self.freeze_bn else None, recompute_unperturbed=local)
        if loss is not None:
            if ctx.run.world_size > 1:  # the global batch's loss, as one process would log it
                loss = ctx.all_reduce(loss.detach().reshape(1).to(ctx.run.device), "mean")[0]
            self.log(ctx, "perturbed_loss", loss)

