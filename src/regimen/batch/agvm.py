"""AGVM: adaptive gradient variance modulator for large-batch training of multi-module (dense-prediction) models.

Paper: Zeyue Xue, Jianming Liang, Guanglu Song, Zhuofan Zong, Liang Chen, Yu Liu & Ping Luo, "Large-batch
Optimization for Dense Visual Predictions", NeurIPS 2022, arXiv 2210.11078 (reference code: Sense-X/AGVM,
``agvm/optim/agvm_optimizer_hook.py``).

A detector's modules (backbone, neck, heads) see gradients of very different variance at large batch; AGVM rescales
each module group's learning rate so that its variance proxy matches the reference group's (the backbone)::

    g_i^A, g_i^B   gradients of module group i from two disjoint halves of the batch (concatenated, flattened)
    φ_i = 1 − cos(g_i^A, g_i^B)                                  (the variance proxy)
    μ_i = sqrt(clamp((φ_0 + 1e−6) / (φ_i + 1e−6), 0.5, 10))      (group 0 is the reference)
    s_i ← m · s_i + (1 − m) · μ_i          (m = 0.97; s_i = 1 at the start; every ``interval`` steps after ``start``)
    step with lr_i = s_i · lr_i, then restore lr_i               (schedules never see s_i)

Module groups are given by module-name prefixes (``["backbone", "neck", "cls_head", "box_head"]``): a parameter
belongs to the group of the longest prefix that names one of its enclosing modules; parameters of no group keep
their LR. At set-up every optimizer param group is split into one sub-group per module group (same settings), so an
LR factor acts on exactly that module's parameters whatever the optimizer (a per-tensor trust ratio such as LARS
would cancel a gradient scale, not an LR scale).

Pitfalls handled:
  * One process: the two "worker halves" of the reference are the two halves of the step's batch, each with its own
    forward/backward (BatchNorm running statistics frozen), on update steps only; the step itself uses the trainer's
    full-batch gradient, which is untouched.
  * The factor applies only during ``optimizer.step()``; LR schedules and checkpoints see the plain LRs.
  * AGVM starts after ``start`` steps (the reference starts after warm-up).
  * The cosine is over the whole group's concatenated gradient, not per tensor.
  * Adaptive optimizers (the reference hook's ``use_adam=True``, checked against Sense-X/AGVM
    ``agvm_optimizer_hook.py::_cat_all_param_grads``): each half's gradient is first divided by the square root of the
    second moment the optimizer would hold after this step, ``g̃ = g / (sqrt(β2·v + (1 − β2)·g²) + eps)`` (v the
    optimizer's ``exp_avg_sq``, not bias-corrected, as in the reference; v = 0 before the optimizer's first step), so
    the cosine compares the directions the optimizer actually steps in. ``adam_normalize=None`` (default) does this
    for every parameter whose optimizer group has ``betas`` and ``eps`` (Adam, AdamW, ...), raw gradients otherwise.
    Difference: the reference applies the normalisation to the half's gradient divided by the world size (an
    artefact of its all-reduce scaling); here g is the half batch's mean gradient.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from regimen.batch.sam import frozen_bn_statistics
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["AGVM", "AGVMMethod", "agvm_factors", "gradient_variance_proxy", "module_group_of"]


@checked_arguments
def gradient_variance_proxy(grad_a: Sequence[torch.Tensor], grad_b: Sequence[torch.Tensor]) -> float:
    """``φ = 1 − cos(g^A, g^B)`` of the concatenated, flattened gradients of one module group (0 for identical
    halves, 1 for orthogonal, 2 for opposite). A zero gradient gives φ = 1 (no information)."""
    a = torch.cat([g.reshape(-1).double() for g in grad_a])
    b = torch.cat([g.reshape(-1).double() for g in grad_b])
    if a.shape != b.shape:
        raise ValueError(f"the two halves' gradients differ in size: {a.numel()} vs {b.numel()}")
    norm = a.norm() * b.norm()
    if norm == 0:
        return 1.0
    return float(1.0 - torch.dot(a, b) / norm)


@checked_arguments
def agvm_factors(phis: Sequence[float], reference: int = 0, low: float = 0.5, high: float = 10.0,
                 eps: float = 1e-6) -> list[float]:
    """``μ_i = sqrt(clamp((φ_ref + eps) / (φ_i + eps), low, high))`` for every group (the reference gets 1)."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps (φ_ref + eps) / (φ_i + eps) finite), got {eps}")
    if not 0 <= reference < len(phis):
        raise ValueError(f"reference must index one of the {len(phis)} groups, got {reference}")
    for index, phi in enumerate(phis):
        if isinstance(phi, bool) or not isinstance(phi, int | float) or not (phi + eps > 0 and math.isfinite(phi)):
            # φ = 1 − cos ∈ [0, 2] (a rounding below 0 is fine); NaN (a NaN gradient) would poison the averaged LR
            raise ValueError(f"phis must hold finite gradient variance proxies 1 − cos >= 0, got phis[{index}] = "
                             f"{phi!r}")
    out = []
    for phi in phis:
        ratio = (phis[reference] + eps) / (phi + eps)
        out.append(min(max(ratio, low), high) ** 0.5)
    return out


@checked_arguments
def module_group_of(name: str, prefixes: Sequence[str]) -> int | None:
    """Index of the longest prefix in ``prefixes`` that names a module enclosing parameter ``name`` (dotted
    boundaries: ``"head"`` matches ``head.fc.weight``, not ``header.weight``), or ``None``."""
    best, length = None, -1
    for index, prefix in enumerate(prefixes):
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > length:
            best, length = index, len(prefix)
    return best


def _check_prefixes(model: nn.Module, prefixes: Sequence[str]) -> list[str]:
    if isinstance(prefixes, str) or not isinstance(prefixes, Sequence):
        raise TypeError(f"groups must be a list of module-name prefixes, got {type(prefixes).__name__}")
    prefixes = list(prefixes)
    if len(prefixes) < 2:
        raise ValueError(f"groups must name at least 2 module groups (the first is the reference), got {prefixes}")
    if len(set(prefixes)) != len(prefixes) or not all(isinstance(p, str) and p for p in prefixes):
        raise ValueError(f"groups must be distinct non-empty module names, got {prefixes}")
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for index, prefix in enumerate(prefixes):
        if not any(module_group_of(n, prefixes) == index for n in names):
            raise ValueError(f"groups[{index}] = {prefix!r} names no trainable parameter of the model (top-level "
                             f"modules: {[n for n, _ in model.named_children()]})")
    return prefixes


@checked_arguments
class AGVM:
    """AGVM's state for a model and its optimizer (usable in any loop).

    ``AGVM(model, optimizer, groups)`` splits the optimizer's param groups by module group (in place). Then, on an
    update step, call :meth:`update` with the two halves' gradients (or :meth:`update_from_halves` with a loss
    function of a half batch), and run the optimizer step inside :meth:`scaled` (LRs × s_i, restored after).

    Args:
        model: the model; ``groups``: module-name prefixes, the first is the reference (backbone).
        optimizer: its optimizer (its param groups are split; their settings are kept).
        momentum: smoothing m of the factors (reference 0.97).
        low, high: clamp of the variance ratio (reference 0.5, 10).
        adam_normalize: divide the halves' gradients by the optimizer's second-moment root before the cosine
            (see the module docstring); ``None``: for parameters in optimizer groups with ``betas`` and ``eps``.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, groups: Sequence[str],
                 momentum: float = 0.97, low: float = 0.5, high: float = 10.0,
                 adam_normalize: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.prefixes = _check_prefixes(model, groups)
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if adam_normalize is not None and not isinstance(adam_normalize, bool):
            raise TypeError(f"adam_normalize must be True, False or None, got {adam_normalize!r}")
        if adam_normalize is True and not all("betas" in g and "eps" in g for g in optimizer.param_groups):
            raise ValueError("adam_normalize=True needs an optimizer whose param groups have 'betas' and 'eps' "
                             f"(Adam, AdamW, ...), got {type(optimizer).__name__}")
        self.momentum, self.low, self.high = float(momentum), float(low), float(high)
        self.adam_normalize = adam_normalize
        group_of = {id(p): module_group_of(n, self.prefixes) for n, p in model.named_parameters()}
        self.params: list[list[torch.Tensor]] = [[] for _ in self.prefixes]
        for p in model.parameters():
            if p.requires_grad and group_of[id(p)] is not None:
                self.params[group_of[id(p)]].append(p)
        split: list[dict[str, Any]] = []
        for group in optimizer.param_groups:
            buckets: dict[int | None, list[torch.Tensor]] = {}
            for p in group["params"]:
                buckets.setdefault(group_of.get(id(p)), []).append(p)
            for index, params in buckets.items():
                split.append({**{k: v for k, v in group.items() if k != "params"}, "params": params,
                              "agvm_group": index})
        optimizer.param_groups[:] = split
        self.optimizer = optimizer
        self.scales = [1.0] * len(self.prefixes)
        self.last_phis: list[float] = []

    def normalized(self, grads: Sequence[Sequence[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Per-group gradients of one half (``self.params`` order) as the cosine sees them: divided by
        ``sqrt(β2·v + (1 − β2)·g²) + eps`` for parameters of adaptive optimizer groups (see ``adam_normalize``),
        unchanged otherwise."""
        if self.adam_normalize is False:
            return [list(g) for g in grads]
        group_of = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        out = []
        for params, group_grads in zip(self.params, grads):
            row = []
            for p, g in zip(params, group_grads):
                group = group_of.get(id(p))
                if group is None or "betas" not in group or "eps" not in group:
                    row.append(g)
                    continue
                beta2, eps = group["betas"][1], group["eps"]
                v = self.optimizer.state.get(p, {}).get("exp_avg_sq")
                second = (1 - beta2) * g * g if v is None else beta2 * v + (1 - beta2) * g * g
                row.append(g / (second.sqrt() + eps))
            out.append(row)
        return out

    def update(self, grads_a: Sequence[Sequence[torch.Tensor]], grads_b: Sequence[Sequence[torch.Tensor]]) -> None:
        """Update the smoothed factors from per-group gradient lists of the two halves (``self.params`` order;
        normalised by :meth:`normalized` first)."""
        grads_a, grads_b = self.normalized(grads_a), self.normalized(grads_b)
        phis = [gradient_variance_proxy(a, b) for a, b in zip(grads_a, grads_b)]
        mus = agvm_factors(phis, 0, self.low, self.high)
        self.scales = [self.momentum * s + (1 - self.momentum) * mu for s, mu in zip(self.scales, mus)]
        self.last_phis = phis

    def half_gradients(self, loss_of_half: Callable[[int], torch.Tensor], model: nn.Module | None = None
                       ) -> list[list[list[torch.Tensor]]]:
        """Per-half, per-group gradients: ``loss_of_half(h)`` (h = 0, 1) is the loss of half h; ``.grad`` is left
        untouched and BatchNorm running statistics of ``model`` (when given) are frozen."""
        flat = [p for params in self.params for p in params]
        halves = []
        with frozen_bn_statistics(model) if model is not None else contextlib.nullcontext():
            for half in (0, 1):
                grads = torch.autograd.grad(loss_of_half(half), flat, allow_unused=True)
                grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, flat)]
                per_group, offset = [], 0
                for params in self.params:
                    per_group.append(grads[offset:offset + len(params)])
                    offset += len(params)
                halves.append(per_group)
        return halves

    @contextlib.contextmanager
    def scaled(self) -> Iterator[None]:
        """Within the block every sub-group's LR is multiplied by its module group's factor s_i."""
        saved = [group["lr"] for group in self.optimizer.param_groups]
        for group in self.optimizer.param_groups:
            index = group.get("agvm_group")
            if index is not None:
                group["lr"] = group["lr"] * self.scales[index]
        try:
            yield
        finally:
            for group, lr in zip(self.optimizer.param_groups, saved):
                group["lr"] = lr


@register_method
class AGVMMethod(Method):
    """AGVM (Xue et al. 2022): per-module-group LR factors that align each group's gradient-variance proxy
    (1 − cos of two half-batch gradients) with the reference group's, applied only during the optimizer step.

    Args:
        groups: module-name prefixes, the first the reference (e.g. ``["backbone", "neck", "cls_head"]``);
            ``None``: each stage of a staged model (``stages.0`` — the stem, the reference — ... ``stages.<k>``, the
            head), else the model's top-level children with trainable parameters.
        interval: optimizer steps between factor updates (reference 5-10).
        start: first step that updates the factors (reference: after warm-up).
        momentum: smoothing of the factors (reference 0.97).

    Update steps cost one extra forward/backward of the batch (in two halves); logs ``agvm/scale_<i>`` and
    ``agvm/phi_<i>``.
    """

    name = "agvm"
    paper_id = "arXiv:2210.11078"
    claim = ("aligning the gradient variance of a dense-prediction model's modules lets detectors train at very large "
             "batch (e.g. Faster R-CNN bs512: 36.8 vs 36.2 box mAP) without loss of accuracy")
    claimed_effect = "better"

    def __init__(self, groups: list[str] | None = None, interval: int = 5, start: int = 0,
                 momentum: float = 0.97) -> None:
        if groups is not None and (isinstance(groups, str) or len(groups) < 2):
            raise ValueError(f"groups must be a list of at least 2 module-name prefixes or None, got {groups!r}")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be an int >= 1, got {interval!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        if isinstance(momentum, bool) or not isinstance(momentum, int | float) or not 0 <= momentum < 1:
            raise ValueError(f"momentum must be a float in [0, 1), got {momentum!r}")
        self.groups, self.interval, self.start, self.momentum = groups, interval, start, float(momentum)
        self.agvm: AGVM | None = None
        self._batch: tuple[Any, Any] | None = None

    def _default_groups(self, model: nn.Module) -> list[str]:
        stages = model._modules.get("stages")
        if isinstance(stages, nn.ModuleList) and len(stages) > 1:
            return [f"stages.{i}" for i in range(len(stages))]
        return [n for n, child in model.named_children() if any(p.requires_grad for p in child.parameters())]

    def setup(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("agvm needs the run's optimizer")
        groups = self.groups if self.groups is not None else self._default_groups(ctx.model)
        self.agvm = AGVM(ctx.model, ctx.optimizer, groups, self.momentum)

    def _update_now(self, ctx: Context) -> bool:
        return ctx.step >= self.start and (ctx.step - self.start) % self.interval == 0

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        if self._update_now(ctx):
            self._batch = (x, y)  # the step's (last) micro-batch, already transformed and normalised

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        agvm = self.agvm
        if agvm is None:
            return next(closure)
        if self._batch is not None and self._update_now(ctx):
            x, y = self._batch
            n = y.shape[0] // 2
            if n > 0:
                model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
                halves = (slice(0, n), slice(n, 2 * n))
                grads = agvm.half_gradients(lambda h: ctx.criterion(ctx.model(x[halves[h]]), y[halves[h]]), model)
                agvm.update(grads[0], grads[1])
                for i, (scale, phi) in enumerate(zip(agvm.scales, agvm.last_phis)):
                    self.log(ctx, f"scale_{i}", scale)
                    self.log(ctx, f"phi_{i}", phi)
        self._batch = None
        with agvm.scaled():
            return next(closure)

    def state_dict(self) -> dict[str, Any]:
        return {"scales": list(self.agvm.scales) if self.agvm is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.agvm is not None and state.get("scales") is not None:
            self.agvm.scales = list(state["scales"])
