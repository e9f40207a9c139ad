"""Nested widths: one network whose channel prefixes are smaller networks (SortedNet / slimmable networks).

Every dependency group of coupled channels (``dependency_groups``) is ordered so that width ``w`` keeps the
first ``⌈w · n⌉`` units of each group. One training run then yields a model per width: each step trains the *sandwich*
of widths (the largest, the smallest and ``n_random`` random ones from the list), the largest with the task loss and
the others by *in-place distillation* from the largest width's detached output. BatchNorm keeps separate running
statistics per width (switchable BN), and ``recalibrate_bn`` re-estimates them on data after training.
``extract(w)`` returns a standalone, physically sliced copy that computes exactly what the nested model computes at
width ``w``.

Papers:
    * Yu, Yang, Xu, Yang, Huang — "Slimmable Neural Networks", 2018, arXiv 1812.08928 (switchable BN).
    * Yu & Huang — "Universally Slimmable Networks and Improved Training Techniques", 2019, arXiv 1903.05134
      (sandwich rule, in-place distillation, post-training BN calibration).
    * Valipour, Rezagholizadeh, Rajabzadeh, Kurtz, Passban, Ghodsi — "SortedNet, a Place for Every Network and
      Every Network in its Place", 2023, arXiv 2309.00255 (sorted nested sub-networks sharing parameters).

Formulas (``W`` = widths, ``f_w`` = the network restricted to the first ``⌈w·n_g⌉`` units of every group ``g``)::

    S_t          = {max W, min W} ∪ sample(W \\ {max W, min W}, n_random)          the sandwich of step t
    L_t          = ℓ(f_max(x), y) + Σ_{w ∈ S_t, w ≠ max} T² · ℓ(f_w(x) / T, softmax(sg[f_max(x)] / T))
    BN at width w: μ_w, σ²_w running statistics of its own (the largest width uses the model's own buffers)

``ℓ`` is the training criterion (cross-entropy, which accepts the soft targets of the distillation term; see
``NestedWidthMethod`` for how it composes with other methods); ``inplace_distillation_loss`` is the term with plain
soft-target cross-entropy, for users' own loops.

Pitfalls handled:
    * Coupled channels come from the traced dependency groups: residual additions, concatenation offsets and the
      flatten expansion (channel ``c`` ↔ columns ``c·HW … (c+1)·HW − 1``) all shrink together, so every width is a
      valid network. Groups that cannot be sliced functionally (attention heads, grouped/depthwise convs,
      LayerNorm/GroupNorm channels) stay at full width and are listed in ``NestedWidth.fixed``.
    * Sorting by importance permutes every coupled tensor with the same permutation (function preserving), before
      training; do it before the optimizer has state.
    * The narrow forward slices the shared parameters (gradients reach only the kept entries); running statistics
      are per width, so small widths do not pollute the large width's statistics (the shared-BN failure of naive
      weight sharing); ``recalibrate_bn`` recomputes them exactly (cumulative average) when asked.
    * The distillation target is detached, so the small widths do not pull the teacher towards themselves.
    * ``extract`` uses the part-1 physical pruning (``prune.prune_groups``) on a copy and installs the width's BN
      statistics, so it equals the nested forward to float rounding (tested to ≤ 1e-5 in eval mode).
    * Widths must be sorted, unique and in (0, 1]; a group keeps at least one unit.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from regimen.errors import ConfigurationError
from regimen.losses import soft_target_cross_entropy
from regimen.method import Context, Method, checked_arguments, register_method, require_same_device
from regimen.models import copy_module
from regimen.subnet.dependency import Group, UntraceableError, dependency_groups
from regimen.subnet.importance import IMPORTANCES, group_scores
from regimen.subnet.prune import prune_groups

__all__ = [
    "NestedWidth",
    "NestedWidthMethod",
    "check_widths",
    "inplace_distillation_loss",
    "sandwich_widths",
    "units_at_width",
]

#: How ``NestedWidth`` orders each group's units before training: an importance, or ``"none"`` (keep the order).
SORT_BY = (*IMPORTANCES, "none")

_SLICEABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, _BatchNorm)


# ----------------------------------------------------------------------------------------------------------- functional
@checked_arguments
def check_widths(widths: Sequence[float]) -> tuple[float, ...]:
    """Validate widths: a non-empty, strictly increasing sequence of numbers in (0, 1]."""
    if isinstance(widths, str | bytes) or not isinstance(widths, Iterable):
        raise TypeError(f"widths must be a sequence of floats, got {type(widths).__name__}")
    values = tuple(widths)
    if not values:
        raise ValueError("widths must not be empty")
    for w in values:
        if isinstance(w, bool) or not isinstance(w, int | float):
            raise TypeError(f"widths must be numbers, got {w!r}")
        if not 0.0 < w <= 1.0:
            raise ValueError(f"widths must be in (0, 1], got {w}")
    if len(set(values)) != len(values):
        raise ValueError(f"widths must not repeat, got {list(values)}")
    if list(values) != sorted(values):
        raise ValueError(f"widths must be sorted in increasing order, got {list(values)}")
    return tuple(float(w) for w in values)


@checked_arguments
def units_at_width(size: int, width: float) -> int:
    """Units a group of ``size`` keeps at ``width``: ``max(1, ⌈width · size⌉)`` (exact products are not rounded up)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must be in (0, 1], got {width}")
    return max(1, min(size, math.ceil(width * size - 1e-9)))


@checked_arguments
def sandwich_widths(widths: Sequence[float], n_random: int = 2, generator: torch.Generator | None = None
                    ) -> list[float]:
    """The sandwich rule: ``[max, min]`` plus ``n_random`` distinct widths drawn from the ones in between.

    With fewer than ``n_random`` in-between widths all of them are used. Returns the largest width first.
    """
    widths = check_widths(widths)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
    chosen = [widths[-1]] if len(widths) == 1 else [widths[-1], widths[0]]
    middle = list(widths[1:-1])
    if middle and n_random:
        order = torch.randperm(len(middle), generator=generator)[: min(n_random, len(middle))]
        chosen += [middle[i] for i in sorted(order.tolist(), reverse=True)]
    return chosen


@checked_arguments
def inplace_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
                              ) -> torch.Tensor:
    """``T² · CE(softmax(sg[teacher] / T), log_softmax(student / T))`` with the teacher detached."""
    require_same_device(student_logits=student_logits, teacher_logits=teacher_logits)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"student_logits and teacher_logits must both be (N, C), got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target = F.softmax(teacher_logits.detach().float() / temperature, dim=1)
    return soft_target_cross_entropy(student_logits / temperature, target) * temperature**2


# --------------------------------------------------------------------------------------------------------------- module
def _full_name(module: str, param: str) -> str:
    return f"{module}.{param}" if module else param


@checked_arguments
class NestedWidth(nn.Module):
    """A model whose widths are prefixes of its channel groups; ``forward(x, width=w)`` runs the width-``w`` network.

    Args:
        model: the network (taken over: channels are permuted in place when ``sort_by`` is set, which preserves its
            function).
        example_inputs: inputs that run ``model`` once (traced for the dependency groups).
        widths: the trained widths, sorted, unique, in (0, 1].
        sort_by: importance used to order each group's units before training (``"l2"``, ``"l1"``, ``"bn_scale"``,
            ``"taylor"``) or ``"none"`` to keep the current order (``None`` is accepted for ``"none"`` but
            deprecated).
        groups: dependency groups of ``model`` (default: traced from ``example_inputs``).

    Surgery on ``model`` after construction may *wrap* modules (multi-sample dropout wrapping the head): the traced
    modules are found again by identity, so ``groups`` keep the names they had when traced. A module replaced under
    its own name is used by that name; a traced module that disappeared is an error. ``stages`` is the wrapped
    model's ``stages``, so methods that look for a staged model's head find it through the wrapper.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        widths: Sequence[float] = (0.25, 0.5, 0.75, 1.0),
        sort_by: str | None = "l2",
        groups: Sequence[Group] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.widths = check_widths(widths)
        if sort_by is None:
            warnings.warn("NestedWidth: sort_by=None is deprecated; use sort_by='none'", DeprecationWarning,
                          stacklevel=2)
            sort_by = "none"
        if sort_by not in SORT_BY:
            raise ValueError(f"sort_by must be one of {SORT_BY}, got {sort_by!r}")
        self.model = model
        all_groups = list(groups) if groups is not None else dependency_groups(model, example_inputs)
        # the traced modules themselves (not registered: they are already inside ``model``), to find them by identity
        self._traced_modules = {s.module: model.get_submodule(s.module) for g in all_groups for s in g.slices}
        self.groups: list[Group] = []
        self.fixed: list[Group] = []
        for group in all_groups:
            (self.groups if self._sliceable(group) else self.fixed).append(group)
        if not self.groups:
            raise ValueError("the model has no channel group that nested widths can slice")
        if sort_by != "none":
            self.sort_channels(sort_by)
        self.active_width = self.widths[-1]
        self._bn_names = sorted({s.module for g in self.groups for s in g.slices
                                 if isinstance(model.get_submodule(s.module), _BatchNorm)
                                 and model.get_submodule(s.module).track_running_stats})
        self._plans: dict[float, dict[str, list[tuple[int, torch.Tensor]]]] = {}
        self.bn_stats = nn.ModuleDict()
        for index, width in enumerate(self.widths):
            self._plan(width)  # every plan now, while the traced names still hold
            if width < 1.0:
                self.bn_stats[str(index)] = self._make_bn_stats(width)

    @property
    def stages(self) -> nn.Module:
        """The wrapped model's ``stages`` (regimen's staged models)."""
        stages = getattr(self.model, "stages", None)
        if not isinstance(stages, nn.Module):
            raise AttributeError("the model inside NestedWidth has no 'stages'")
        return stages

    # ---------------------------------------------------------------------------------------------------- structure
    def _current_names(self) -> dict[str, str]:
        """Each traced module's name in the model now: where the module object is (later surgery may wrap it, e.g.
        multi-sample dropout's head), else its traced name when that still names a module (surgery that replaced it
        in place, e.g. weight standardization)."""
        modules = dict(self.model.named_modules(remove_duplicate=False))
        now = {id(m): name for name, m in modules.items()}
        names = {}
        for traced, module in self._traced_modules.items():
            if id(module) in now:
                names[traced] = now[id(module)]
            elif traced in modules:
                names[traced] = traced
            else:
                raise RuntimeError(f"NestedWidth: module {traced!r} traced at construction is no longer in the model; "
                                   "surgery after NestedWidth may wrap or replace traced modules, not move them away")
        return names

    @staticmethod
    def _rename(full_name: str, names: dict[str, str]) -> str:
        """A traced ``module.tensor`` name as it is now."""
        module, _, attr = full_name.rpartition(".")
        return _full_name(names[module], attr)

    def _groups_now(self, names: dict[str, str]) -> list[Group]:
        """``self.groups`` with their slices' module names as they are now."""
        if all(traced == now for traced, now in names.items()):
            return self.groups
        return [dataclasses.replace(g, slices=[dataclasses.replace(s, module=names[s.module]) for s in g.slices],
                                    modules=tuple(names[m] for m in g.modules), name=names.get(g.name, g.name))
                for g in self.groups]

    def _sliceable(self, group: Group) -> bool:
        if group.kind != "channel" or not group.lossless:
            return False
        for s in group.slices:
            module = self.model.get_submodule(s.module)
            if not isinstance(module, _SLICEABLE):
                return False
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d) and module.groups != 1:
                return False
        return True

    def units(self, group: Group, width: float) -> int:
        """Units of ``group`` kept at ``width``."""
        return units_at_width(group.size, width)

    def width_plan(self, width: float) -> dict[str, list[tuple[int, torch.Tensor]]]:
        """The tensors that shrink at ``width``, by their names in the model *now* (after any wrapping surgery):
        ``{name: [(dim, kept positions), ...]}``, positions sorted and counted on the full tensor. BatchNorm running
        statistics are included (as the shared buffers; this width's own statistics are in ``bn_stats``)."""
        width = self._check_width(width)
        names = self._current_names()
        return {self._rename(name, names): list(cuts) for name, cuts in self._plan(width).items()}

    def groups_now(self, groups: Sequence[Group] | None = None) -> list[Group]:
        """``groups`` (default: the sliceable ``self.groups``; also ``self.fixed`` or any of them) with their slices'
        module names as they are in the model now (after any wrapping surgery)."""
        names = self._current_names()
        if groups is None:
            return self._groups_now(names)
        return [dataclasses.replace(g, slices=[dataclasses.replace(s, module=names[s.module]) for s in g.slices],
                                    modules=tuple(names.get(m, m) for m in g.modules), name=names.get(g.name, g.name))
                for g in groups]

    def _plan(self, width: float) -> dict[str, list[tuple[int, torch.Tensor]]]:
        """``{tensor name: [(dim, kept positions), ...]}`` for ``width`` (only tensors that shrink)."""
        if width in self._plans:
            return self._plans[width]
        dropped: dict[tuple[str, int], set[int]] = {}
        sizes: dict[tuple[str, int], int] = {}
        for group in self.groups:
            keep = self.units(group, width)
            if keep == group.size:
                continue
            for s in group.slices:
                key = (_full_name(s.module, s.param), s.dim)
                sizes[key] = s.tensor(self.model).shape[s.dim]
                dropped.setdefault(key, set()).update(group.positions(s, torch.arange(keep, group.size)).tolist())
        plan: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for (name, dim), gone in sorted(dropped.items()):
            mask = torch.ones(sizes[(name, dim)], dtype=torch.bool)
            mask[list(gone)] = False
            plan.setdefault(name, []).append((dim, mask.nonzero().reshape(-1)))
        self._plans[width] = plan
        return plan

    def _make_bn_stats(self, width: float) -> nn.Module:
        holder = nn.Module()
        plan = self._plan(width)
        for index, name in enumerate(self._bn_names):
            bn = self.model.get_submodule(name)
            mean, var = bn.running_mean.detach(), bn.running_var.detach()
            for dim, kept in plan.get(_full_name(name, "running_mean"), []):
                mean = mean.index_select(dim, kept.to(mean.device))
            for dim, kept in plan.get(_full_name(name, "running_var"), []):
                var = var.index_select(dim, kept.to(var.device))
            holder.register_buffer(f"bn{index}_running_mean", mean.clone())
            holder.register_buffer(f"bn{index}_running_var", var.clone())
            holder.register_buffer(f"bn{index}_num_batches_tracked", torch.zeros((), dtype=torch.long))
        return holder

    def _bn_override(self, width: float, names: dict[str, str]) -> dict[str, torch.Tensor]:
        """``{current buffer name: this width's statistic}`` (empty for the largest width: the model's own)."""
        index = self.widths.index(width)
        key = str(index)
        if key not in self.bn_stats:
            return {}
        holder = self.bn_stats[key]
        out = {}
        for j, name in enumerate(self._bn_names):
            for stat in ("running_mean", "running_var", "num_batches_tracked"):
                out[_full_name(names[name], stat)] = getattr(holder, f"bn{j}_{stat}")
        return out

    @torch.no_grad()
    def sort_channels(self, importance: str = "l2") -> None:
        """Permute every sliceable group's units by decreasing importance (in place; the function is unchanged)."""
        for group in self._groups_now(self._current_names()):
            scores = group_scores(self.model, group, importance)
            order = torch.sort(scores, descending=True, stable=True).indices
            if torch.equal(order, torch.arange(group.size)):
                continue
            for s in group.slices:
                tensor = s.tensor(self.model)
                destination = s.indices.reshape(-1).to(tensor.device)
                source = s.indices[order].reshape(-1).to(tensor.device)
                tensor.index_copy_(s.dim, destination, tensor.index_select(s.dim, source))

    # ------------------------------------------------------------------------------------------------------ forward
    def _param_or_buffer(self, name: str) -> torch.Tensor:
        try:
            return self.model.get_parameter(name)
        except AttributeError:  # not a parameter: a buffer (e.g. running statistics of a norm without its own)
            return self.model.get_buffer(name)

    def _check_width(self, width: float | None) -> float:
        width = self.active_width if width is None else float(width)
        if width not in self.widths:
            raise ValueError(f"width must be one of the trained widths {list(self.widths)}, got {width}")
        return width

    def set_width(self, width: float) -> None:
        """The width ``forward`` uses when none is given (the trainer's evaluation width)."""
        self.active_width = self._check_width(width)

    def forward(self, *args: Any, width: float | None = None, **kwargs: Any) -> Any:
        width = self._check_width(width)
        plan = self._plan(width)
        if not plan:
            return self.model(*args, **kwargs)
        names = self._current_names()
        overrides: dict[str, torch.Tensor] = {}
        for name, cuts in plan.items():
            if name.rpartition(".")[0] in self._bn_names and name.endswith(("running_mean", "running_var")):
                continue  # per-width statistics below
            name = self._rename(name, names)
            tensor = self._param_or_buffer(name)
            for dim, kept in cuts:
                if int(kept[-1]) + 1 == kept.numel():  # a prefix: a view, no copy
                    tensor = tensor.narrow(dim, 0, kept.numel())
                else:
                    tensor = tensor.index_select(dim, kept.to(tensor.device))
            overrides[name] = tensor
        overrides.update(self._bn_override(width, names))
        return functional_call(self.model, overrides, args, kwargs, strict=False)

    # ------------------------------------------------------------------------------------------------------- export
    @torch.no_grad()
    def extract(self, width: float) -> nn.Module:
        """A standalone copy of the model physically sliced to ``width`` (with that width's BN statistics)."""
        width = self._check_width(width)
        names = self._current_names()
        model = copy_module(self.model)  # the same structure: the current names hold in the copy
        groups = self._groups_now(names)
        plan = {g: torch.arange(self.units(g, width)) for g in groups if self.units(g, width) < g.size}
        if plan:
            prune_groups(model, plan)
        for name, tensor in self._bn_override(width, names).items():
            module_name, _, stat = name.rpartition(".")
            target = getattr(model.get_submodule(module_name), stat)
            target.copy_(tensor)
        return model

    def width_params(self, width: float) -> int:
        """Parameters of the width-``width`` network."""
        width = self._check_width(width)
        names = self._current_names()
        plan = {self._rename(name, names): cuts for name, cuts in self._plan(width).items()}
        total = 0
        for name, param in self.model.named_parameters():
            shape = list(param.shape)
            for dim, kept in plan.get(name, []):
                shape[dim] = kept.numel()
            total += math.prod(shape)
        return total

    @torch.no_grad()
    def recalibrate_bn(self, batches: Iterable[Any], widths: Sequence[float] | None = None) -> None:
        """Recompute each width's BN running statistics on ``batches`` (cumulative average; weights untouched).

        ``batches`` is re-iterated for every width, so pass a list (or a re-iterable loader) of model inputs.
        """
        batches = list(batches)
        if not batches:
            raise ValueError("recalibrate_bn needs at least one batch")
        was_training = self.training
        names = self._current_names()
        norms = [self.model.get_submodule(names[name]) for name in self._bn_names]
        for width in widths or self.widths:
            width = self._check_width(width)
            saved_momentum = [bn.momentum for bn in norms]
            for bn in norms:
                bn.momentum = None  # cumulative moving average over the calibration batches
            for name, tensor in self._bn_override(width, names).items():
                if name.endswith("running_mean") or name.endswith("num_batches_tracked"):
                    tensor.zero_()
                else:
                    tensor.fill_(1.0)
            if width == 1.0 or str(self.widths.index(width)) not in self.bn_stats:
                for bn in norms:
                    bn.reset_running_stats()
            self.train()
            for batch in batches:
                inputs = batch if isinstance(batch, tuple | list) else (batch,)
                self(*inputs, width=width)
            for bn, momentum in zip(norms, saved_momentum, strict=True):
                bn.momentum = momentum
        self.train(was_training)


# --------------------------------------------------------------------------------------------------------------- method
class _AtWidth:
    """``model`` restricted to one width, as the callable the ``forward_loss`` chain passes on."""

    def __init__(self, model: Callable[..., Any], width: float, temperature: float = 1.0) -> None:
        self.model, self.width, self.temperature = model, width, temperature

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.model(*args, width=self.width, **kwargs)
        return output if self.temperature == 1.0 else output / self.temperature


@register_method
class NestedWidthMethod(Method):
    """Nested widths (SortedNet / slimmable): sandwich rule with in-place distillation; extract any width after.

    A ``forward_loss`` middleware. Per micro-batch, ``before_forward`` draws the sandwich ``S`` (largest width
    first); ``forward_loss`` then calls the rest of the chain once per width, ``next(model at width w, x, target)``,
    and returns ``(Σ_w loss_w, output of the largest width)``. What the methods after it (multi-sample dropout, ...)
    and the criterion chain (z-loss, logit z-loss, label smoothing ...) see:

    * the largest width: the batch's own targets, so ``loss_max`` is the task loss of the full network;
    * with ``distill=False``: every width gets the batch's own targets (``L = Σ_{w ∈ S} loss(f_w(x), y)``);
    * with ``distill=True`` (in-place distillation): each smaller width gets the *soft targets*
      ``softmax(sg[o_max] / T)`` with ``o_max`` the output the chain returned for the largest width (with
      multi-sample dropout inside: the mean logits over its K samples), its logits divided by ``T``, and the loss
      scaled by ``T²``: ``L = loss(f_max(x), y) + Σ_{w ≠ max} T² · loss(f_w(x) / T, softmax(sg[o_max] / T))``. The
      criterion chain must accept soft targets (cross-entropy does and applies the task's label smoothing to them;
      the z-loss does not), and the task must have class logits.

    Under DDP every process draws the sandwich from the method's own generator, seeded from the recipe's seed alike
    on every rank (not the per-rank ``ctx.generator``), so all processes train the same widths on their shares of the
    batch and the run equals one process at the same global batch (``tests/distributed``); ``recalibrate_batches``
    counts global batches, drawn alike on every rank.

    Args:
        widths: trained widths, sorted, unique, in (0, 1].
        sort_by: importance to sort each group's channels by at setup (``"l1"``, ``"l2"``, ``"bn_scale"``) or
            ``"none"``.
        n_random: random in-between widths per step (besides the largest and the smallest).
        distill: train the smaller widths on the largest width's detached soft predictions (else on the targets).
        temperature: distillation temperature ``T``.
        eval_width: width the trainer evaluates (default: the largest).
        recalibrate_batches: at the end of training, re-estimate each width's BN statistics on this many training
            batches (0: keep the running statistics).
    """

    name = "nested_width"
    paper_id = "arXiv:1903.05134"
    claim = (
        "one network trained at nested widths (sandwich rule, in-place distillation) serves every width with "
        "accuracy close to individually trained ones"
    )
    claimed_effect = "no_worse"
    # found by training every pair of methods (tests/integration)
    before = ("weight_std",)
    conflicts = ("nm_sparsity", "maestro")
    constraint_reason = ("nested_width traces the model's channel groups in setup and slices the traced layers' "
                         "weights; it cannot trace weight-standardized convs, nor slice N:M-parametrized or low-rank "
                         "layers")

    def __init__(
        self,
        widths: list[float] | None = None,
        sort_by: Literal["l1", "l2", "bn_scale", "none"] = "l2",
        n_random: int = 2,
        distill: bool = True,
        temperature: float = 1.0,
        eval_width: float | None = None,
        recalibrate_batches: int = 0,
    ) -> None:
        self.widths = check_widths(widths if widths is not None else (0.25, 0.5, 0.75, 1.0))
        if sort_by not in ("l1", "l2", "bn_scale", "none"):
            raise ValueError(f"sort_by must be 'l1', 'l2', 'bn_scale' or 'none', got {sort_by!r}")
        if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
            raise ValueError(f"n_random must be an int >= 0, got {n_random!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if eval_width is not None and eval_width not in self.widths:
            raise ValueError(f"eval_width must be one of widths {list(self.widths)}, got {eval_width}")
        if recalibrate_batches < 0:
            raise ValueError(f"recalibrate_batches must be >= 0, got {recalibrate_batches}")
        self.sort_by, self.n_random, self.distill, self.temperature = sort_by, n_random, distill, temperature
        self.eval_width, self.recalibrate_batches = eval_width, recalibrate_batches
        if distill:  # a declaration that depends on the parameters: the recipe check reads the instance's
            self.conflicts = (*type(self).conflicts, "z_loss")
            self.constraint_reason = (f"{type(self).constraint_reason}; with distill = true the smaller widths train "
                                      "on soft targets, which z_loss cannot take (set distill = false to combine them)")
        self.nested: NestedWidth | None = None
        #: the sandwich of the current micro-batch (drawn in ``before_forward``), largest width first
        self.last_widths: list[float] = []
        #: draws the sandwich (and the recalibration batches): seeded from the recipe's seed alike on every rank,
        #: so under DDP every process trains the same widths (ctx.generator differs per rank)
        self.generator: torch.Generator | None = None

    def setup(self, ctx: Context) -> None:
        if self.distill and ctx.run.target_kind != "labels":
            raise ConfigurationError(
                f"nested_width's in-place distillation trains the smaller widths on the largest width's class "
                f"probabilities, so it needs a classification task; task {ctx.run.task!r} has "
                f"{ctx.run.target_kind!r} targets: set distill = false")
        example, _ = ctx.example_batch()
        try:
            self.nested = NestedWidth(ctx.model, example, self.widths, sort_by=self.sort_by)
        except (UntraceableError, ValueError) as error:
            raise ConfigurationError(
                f"nested_width needs a model whose channels it can trace and slice (convolutions, linear layers and "
                f"BatchNorm coupled through residual additions, concatenations, flattening): {error}") from error
        self.nested.set_width(self.eval_width or self.widths[-1])
        ctx.model = self.nested
        self._generator(ctx)
        self.log(ctx, "groups", len(self.nested.groups))

    def _generator(self, ctx: Context) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(ctx.run.seed * 7919)
        return self.generator

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        self.last_widths = sandwich_widths(self.widths, self.n_random, self._generator(ctx))

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        widths = self.last_widths or sandwich_widths(self.widths, self.n_random, self._generator(ctx))
        loss, output = next(_AtWidth(model, widths[0]), x, y)
        self.log(ctx, f"loss_w{widths[0]:g}", loss)
        if self.distill and len(widths) > 1:
            soft = F.softmax(output.detach().float() / self.temperature, dim=-1)
        for width in widths[1:]:
            if self.distill:
                part, _ = next(_AtWidth(model, width, self.temperature), x, soft)
                part = part * self.temperature**2
            else:
                part, _ = next(_AtWidth(model, width), x, y)
            self.log(ctx, f"loss_w{width:g}", part)
            loss = loss + part
        return loss, output

    def on_train_end(self, ctx: Context) -> None:
        if self.recalibrate_batches <= 0 or self.nested is None or ctx.train_data is None:
            return
        data, batch = ctx.train_data, ctx.run.per_device_batch * ctx.run.world_size  # global: alike on every rank
        order = torch.randperm(len(data), generator=self._generator(ctx))[: self.recalibrate_batches * batch]
        batches = []
        for start in range(0, order.numel(), batch):
            x, _ = data.gather(order[start:start + batch], ctx.run.device)
            batches.append(ctx.normalize(x))
        self.nested.recalibrate_bn(batches)

    def state_dict(self) -> dict[str, Any]:
        # per-width BN statistics are buffers of the NestedWidth module (saved with the model)
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
