"""Dependency groups of coupled channels (DepGraph-style), found by tracing a model once.

Removing output channel ``c`` of a conv forces removing the matching BatchNorm entries, the matching input columns
of every consumer, and — through residual additions — the matching channels of every tensor added to it. A *group*
collects every parameter slice that must be removed together. This module finds the groups; ``prune.py`` removes
them. Reference: Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023, arXiv 2301.12900.

How it works. The model is run once on ``example_inputs`` (eval mode, no grad, state restored afterwards) under a
recorder: ``torch.fx`` symbolic tracing plus an interpreter when the model is traceable, otherwise an *eager*
recorder (a ``TorchFunctionMode`` plus hooks on leaf modules, which follows data-dependent control flow and sees the
same ops; it replaces the autograd-graph walk of DepGraph because it also sees non-differentiable ops). Next to every
tensor we propagate an integer *label tensor* of the same shape: the label at a position is the channel element that
position belongs to (-1: none). Layers create fresh elements for their outputs; shape ops (view, flatten, permute,
cat, getitem, pad, ...) are applied to the label tensors themselves, so concatenation offsets and flatten expansion
(channel ``c`` -> columns ``c*HW ... (c+1)*HW-1``) fall out without special cases; element-wise ops union the
elements they combine (residual adds). Elements are merged with union-find. A *unit* is one merged element (a channel,
or a whole attention head); units that touch the same set of parameter slices form one ``Group``.

Supported leaves: ``Conv1d/2d/3d`` (dense, grouped: same in-group position in every group; depthwise: in/out/groups
pruned together), ``ConvTranspose*`` (groups=1), ``Linear``, ``BatchNorm*``, ``InstanceNorm*``, ``LayerNorm``
(structurally; not lossless), ``Embedding``, ``PReLU``, ``nn.MultiheadAttention`` (self-attention with packed
``in_proj``: whole heads form their own group; embedding dims couple to the residual stream), pooling, upsampling,
activations, dropout, flatten/unflatten; model parameters used directly (class tokens, position embeddings,
layer-scale vectors). ``GroupNorm`` channels and model outputs are never pruned. Any other op that touches channel
data raises ``UntraceableError`` naming it.

The ``Group`` data structure (stable API, used by ``prune.py``, ``hesso.py`` and ``nested.py``):

* ``group.size`` — number of units ``U`` (channels, or heads for ``kind == "head"``).
* ``group.slices`` — list of ``Slice(module, param, dim, indices, role, is_buffer)``:
  ``model.get_submodule(module)`` owns tensor ``param`` (a parameter or buffer name such as ``"weight"``,
  ``"bias"``, ``"running_mean"``, ``"in_proj_weight"``); ``indices`` is a ``LongTensor (U, k)``: unit ``i`` occupies
  positions ``indices[i]`` (sorted) along dimension ``dim`` of that tensor. Examples:
  conv/linear producing the channels: ``dim=0``, ``k=1``; BatchNorm ``weight/bias/running_*``: ``dim=0, k=1``;
  consumer conv ``weight``: ``dim=1`` (after a concat, the indices carry the offset of the concatenated part);
  Linear after flatten: ``dim=1, k=H*W`` (``indices[c] = c*HW + arange(HW)`` plus any concat offset);
  grouped conv inputs: the unit spans the same in-group position of all ``G`` groups (``k`` values on the producer);
  attention heads: ``in_proj_weight``/``in_proj_bias`` ``dim=0`` with ``k = 3*head_dim`` (q, k and v rows),
  ``out_proj.weight`` ``dim=1`` with ``k = head_dim``.
  ``role`` is ``"out"`` for tensors that *produce* the unit's values (filter rows, biases, norm affine params and
  buffers, q/k/v rows, position embeddings) and ``"in"`` for tensors that *consume* them (columns of the next layer).
  Zeroing the ``"out"`` parameter slices of a unit (see ``zero_units``) makes the unit's output exactly zero when the
  group is ``lossless``; removing such a unit then leaves the function unchanged.
* ``group.lossless`` — False when some op normalises or mixes across these channels (LayerNorm over them, softmax over
  them, a non-zero-preserving activation such as sigmoid, adding an unlabeled tensor): removal then changes outputs
  even for zeroed units.
* ``group.kind`` — ``"channel"`` or ``"head"``; ``group.name`` — the first module producing the units (for reports
  and ``ignore``); ``group.modules`` — every module touched.
* ``group.positions(slice_, units)`` — sorted positions along ``slice_.dim`` of the given units (what to keep or drop).

To keep the first ``k`` units of a group (nested widths), call ``prune.prune_groups(model, {group: keep_units})``,
which slices every ``Slice``, fixes module attributes (``out_channels``, ``groups``, ``num_features``...), replaces
packed attention by ``PrunedMultiheadAttention`` when heads or dims change, and rebinds an optimizer.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

__all__ = [
    "DependencyGraph",
    "Group",
    "Slice",
    "UntraceableError",
    "dependency_groups",
    "normalize_inputs",
    "scale_units",
    "trace_dependencies",
    "zero_units",
]


class UntraceableError(RuntimeError):
    """The tracer met an op that touches channel data and that it cannot map (the message names the op)."""


@dataclass(frozen=True, eq=False)
class Slice:
    """One tensor's share of a group: unit ``i`` occupies ``indices[i]`` along ``dim`` of ``module.param``."""

    module: str
    param: str
    dim: int
    indices: torch.Tensor
    role: str
    is_buffer: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.module, self.param, self.dim)

    def tensor(self, model: nn.Module) -> torch.Tensor:
        """The parameter or buffer this slice lives in."""
        return getattr(model.get_submodule(self.module), self.param)


@dataclass(eq=False)
class Group:
    """Coupled units that are pruned together; see the module docstring for the exact layout."""

    id: int
    size: int
    slices: list[Slice]
    kind: str = "channel"
    lossless: bool = True
    name: str = ""
    modules: tuple[str, ...] = ()

    def positions(self, slice_: Slice, units: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Sorted positions along ``slice_.dim`` occupied by ``units``."""
        units = torch.as_tensor(units, dtype=torch.long)
        return slice_.indices[units].reshape(-1).sort().values

    def out_slices(self) -> list[Slice]:
        return [s for s in self.slices if s.role == "out"]

    def __repr__(self) -> str:
        members = ", ".join(f"{s.module or '<root>'}.{s.param}[d{s.dim},k{s.indices.shape[1]},{s.role}]"
                            for s in self.slices)
        flag = "" if self.lossless else ", lossy"
        return f"Group(id={self.id}, {self.kind} x{self.size}, name={self.name!r}{flag}: {members})"


@dataclass
class DependencyGraph:
    """Result of a trace: the groups, what could not be grouped and why, and which recorder ran."""

    groups: list[Group]
    skipped: list[str] = field(default_factory=list)
    tracer: str = "fx"


def normalize_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``example_inputs`` as ``(args, kwargs)``: a Tensor, a tuple/list of positional inputs, or a dict of kwargs."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, tuple | list):
        if not example_inputs:
            raise ValueError("example_inputs must not be empty")
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    raise TypeError(
        f"example_inputs must be a Tensor, a tuple/list of inputs or a dict of keyword inputs, "
        f"got {type(example_inputs).__name__}"
    )


def _run_model(model: nn.Module, example_inputs: Any) -> Any:
    args, kwargs = normalize_inputs(example_inputs)
    try:
        return model(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure means the inputs do not fit the model
        raise ValueError(f"example_inputs do not run the model: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients inside the block; every module's own train/eval flag is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.training = mode


# --------------------------------------------------------------------------------------------------------------------
# union-find over channel elements


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.kind: list[str] = []

    def new(self, count: int, kind: str = "channel") -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.kind.extend([kind] * count)
        return torch.arange(start, start + count, dtype=torch.long)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        mask = (a >= 0) & (b >= 0) & (a != b)
        if not bool(mask.any()):
            return
        base = len(self.parent) + 1
        codes = torch.unique(a[mask] * base + b[mask])  # one int64 per pair: much faster than unique(dim=0)
        for x, y in zip((codes // base).tolist(), (codes % base).tolist(), strict=True):
            self.union(x, y)

    def roots(self, labels: torch.Tensor) -> torch.Tensor:
        flat = labels.reshape(-1).tolist()
        return torch.tensor([self.find(v) if v >= 0 else -1 for v in flat], dtype=torch.long).reshape(labels.shape)


# --------------------------------------------------------------------------------------------------------------------
# op tables

_ZERO_PRESERVING = {
    "relu", "relu6", "hardtanh", "gelu", "silu", "tanh", "hardswish", "leaky_relu", "elu", "selu", "celu", "mish",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "detach", "abs", "neg", "sin", "square", "sqrt",
    "clamp", "clip", "hardshrink", "softshrink", "tanhshrink", "identity",
}
_NONZERO_POINTWISE = {"sigmoid", "hardsigmoid", "exp", "cos", "softplus", "log", "reciprocal", "rsqrt", "logsigmoid",
                      "erf", "erfc", "log1p", "expm1", "sign"}
_BINARY = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv", "maximum", "minimum", "where",
           "floordiv", "pow", "iadd", "isub", "imul", "itruediv", "addcmul"}
_SHAPE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
          "expand_as", "repeat", "cat", "concat", "concatenate", "stack", "split", "chunk", "getitem", "narrow",
          "select", "unbind", "movedim", "moveaxis", "flip", "roll", "view_as", "reshape_as", "tile", "pad",
          "swapaxes", "swapdims", "hstack", "vstack"}
_CHANNEL_KEEP = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                 "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                 "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
                 "upsample_bilinear", "lp_pool2d", "max_pool2d_with_indices"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "nansum",
           "nanmean"}
_SAME_SHAPE_MIXING = {"softmax", "log_softmax", "softmin", "cumsum", "normalize"}
_FACTORY = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros_like", "ones_like", "empty_like",
            "full_like", "rand_like", "randn_like", "randint_like", "bernoulli"}
_IGNORED = _FACTORY | {"size", "dim", "numel", "getattr", "eq", "ne", "lt", "le", "gt", "ge", "argmax", "argmin",
                       "isnan", "isinf", "isfinite", "all", "any", "item", "tolist", "len",
                       # questions about a tensor's type or layout, not its values (e.g. in DropPath, WS convs)
                       "is_floating_point", "is_complex", "is_contiguous", "is_signed"}

_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                 nn.UpsamplingBilinear2d, nn.LPPool2d)
_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                 nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
                 nn.Hardtanh, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
          nn.SyncBatchNorm)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _op_name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", None) or str(target)
    name = name.strip("_")
    if name.endswith("_") and name not in ("_",):
        name = name.rstrip("_")
    return {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv", "radd": "add", "rmul": "mul",
            "rsub": "sub", "rtruediv": "truediv", "concat": "cat", "concatenate": "cat", "clip": "clamp",
            "moveaxis": "movedim", "swapaxes": "transpose", "swapdims": "transpose"}.get(name, name)


def _is_leaf(module: nn.Module) -> bool:
    from regimen.subnet.prune import PrunedMultiheadAttention  # local import: prune imports this module

    if isinstance(module, PrunedMultiheadAttention | nn.MultiheadAttention):
        return True
    if isinstance(module, nn.Sequential | nn.ModuleList | nn.ModuleDict):
        return False
    if isinstance(module, _NORMS) and not parametrize.is_parametrized(module):
        # norm subclasses (e.g. ghost batch norm) keep the per-channel structure: mapped as the base layer. Conv
        # subclasses are traced inside instead: weight standardization, for one, normalises each filter over its
        # input channels, so removing even all-zero input channels would change the output.
        return True
    return type(module).__module__.startswith("torch.nn")


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return _is_leaf(m)


def _tree_map(fn: Callable[[Any], Any], value: Any) -> Any:
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_tree_map(fn, v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: _tree_map(fn, v) for k, v in value.items()}
    return fn(value)


def _tree_leaves(value: Any) -> list[Any]:
    out: list[Any] = []
    _tree_map(lambda v: out.append(v), value)
    return out


# --------------------------------------------------------------------------------------------------------------------
# label propagation


class _Propagator:
    """Computes output label tensors from input label tensors, op by op, and records parameter touches."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uf = _UnionFind()
        self.touches: list[tuple[str, str, int, torch.Tensor, torch.Tensor, str, bool]] = []
        self.blocked: list[torch.Tensor] = []
        self.inexact: list[torch.Tensor] = []
        self.skipped: list[str] = []
        self.module_names = {id(m): name for name, m in model.named_modules()}
        self.param_owner: dict[int, tuple[str, str]] = {}
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                self.param_owner.setdefault(id(p), (mname, pname))
        self.attr_labels: dict[int, tuple[str, str, torch.Tensor]] = {}

    # ---- helpers ----
    def param_labels(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Fresh per-entry labels for a model parameter used directly in the forward (tokens, embeddings)."""
        owner = self.param_owner.get(id(tensor))
        if owner is None:
            return None
        if id(tensor) not in self.attr_labels:
            mname, pname = owner
            module = self.model.get_submodule(mname)
            if _is_leaf(module):  # a leaf's own weight used outside the leaf: too unusual to map
                return None
            labels = self.uf.new(tensor.numel()).reshape(tensor.shape)
            self.attr_labels[id(tensor)] = (mname, pname, labels)
        return self.attr_labels[id(tensor)][2]

    def block(self, labels: torch.Tensor | None, reason: str) -> None:
        if labels is not None and isinstance(labels, torch.Tensor) and bool((labels >= 0).any()):
            self.blocked.append(labels[labels >= 0].unique())
            self.skipped.append(reason)

    def mark_inexact(self, labels: torch.Tensor | None) -> None:
        if labels is not None and bool((labels >= 0).any()):
            self.inexact.append(labels[labels >= 0].unique())

    def channel_labels(self, labels: torch.Tensor | None, dim: int, where: str) -> torch.Tensor | None:
        """Per-index labels along ``dim`` (length ``shape[dim]``), -1 where unlabeled; mixed indices are blocked."""
        if labels is None:
            return None
        moved = labels.movedim(dim, 0).reshape(labels.shape[dim], -1)
        big = torch.iinfo(torch.long).max
        high = moved.amax(dim=1)
        low = torch.where(moved >= 0, moved, torch.full_like(moved, big)).amin(dim=1)
        mixed = (high >= 0) & (low != high)
        if bool(mixed.any()):
            # one consumer column reads several elements (e.g. a class token concatenated to patch tokens):
            # they can only be removed together
            rows = moved[mixed]
            self.uf.union_pairs(rows.reshape(-1), high[mixed].unsqueeze(1).expand_as(rows).reshape(-1))
        return high

    def touch(self, module: str, param: str, dim: int, elements: torch.Tensor | None, role: str,
              is_buffer: bool = False, positions: torch.Tensor | None = None) -> None:
        if elements is None:
            return
        if positions is None:
            positions = torch.arange(elements.numel())
        keep = elements >= 0
        if bool(keep.any()):
            self.touches.append((module, param, dim, positions[keep], elements[keep], role, is_buffer))

    def broadcast_union(self, labels: list[torch.Tensor | None], shape: torch.Size) -> torch.Tensor | None:
        present = [lab for lab in labels if lab is not None]
        if not present:
            return None
        expanded = [lab.expand(shape) if lab.shape != shape else lab for lab in present]
        out = expanded[0]
        for other in expanded[1:]:
            self.uf.union_pairs(out.reshape(-1), other.reshape(-1))
            out = torch.where(out >= 0, out, other)
        return out.clone()

    # ---- functions ----
    def function(self, target: Any, args: tuple, kwargs: dict, out: Any, arg_labels: tuple, kwarg_labels: dict,
                 where: str) -> Any:
        labeled = [lab for lab in _tree_leaves((arg_labels, kwarg_labels)) if isinstance(lab, torch.Tensor)]
        if not labeled or not any(bool((lab >= 0).any()) for lab in labeled):
            return None
        name = _op_name(target)
        if name in _IGNORED:
            return None
        if name in _SHAPE:
            return self.shape_op(target, name, args, kwargs, arg_labels, kwarg_labels, out, where)
        if not isinstance(out, torch.Tensor):
            if name in ("max", "min") and isinstance(out, tuple):
                values = self.reduce(args, kwargs, arg_labels[0], out[0], where)
                return (values, values)
            raise UntraceableError(f"cannot map op {name!r} ({where}) that returns {type(out).__name__}")
        if name in _ZERO_PRESERVING or name in _NONZERO_POINTWISE or name in _BINARY:
            labs = [lab for lab in _tree_leaves((arg_labels, kwarg_labels)) if isinstance(lab, torch.Tensor)]
            result = self.broadcast_union(labs, out.shape)
            if name in _NONZERO_POINTWISE:
                self.mark_inexact(result)
            elif name in ("add", "sub", "where", "maximum", "minimum", "truediv", "div", "floordiv", "pow", "addcmul"):
                self.check_binary_exact(name, args, arg_labels, out, result)
            return result
        if name in _CHANNEL_KEEP:
            lab = arg_labels[0]
            if lab is None or out.ndim < 2 or out.shape[:2] != args[0].shape[:2]:
                raise UntraceableError(f"cannot map op {name!r} ({where}): unexpected shapes")
            per = self.channel_labels(lab, 1, where)
            return per.view(1, -1, *([1] * (out.ndim - 2))).expand(out.shape).clone()
        if name in _REDUCE:
            return self.reduce(args, kwargs, arg_labels[0], out, where)
        if name in _SAME_SHAPE_MIXING:
            lab = arg_labels[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if lab is not None and dim is not None and out.shape == lab.shape:
                moved = lab.movedim(dim, -1)
                if bool(((moved >= 0) & (moved != moved[..., :1])).any()):
                    self.mark_inexact(lab)
                return lab.clone()
        if name in ("layer_norm", "batch_norm", "instance_norm", "group_norm", "linear", "conv1d", "conv2d",
                    "conv3d"):
            raise UntraceableError(
                f"functional {name!r} ({where}) on channel data is not supported; use the nn module instead so the "
                "pruner can find its parameters"
            )
        raise UntraceableError(f"op {name!r} ({where}) touches channel data and the pruning tracer cannot map it")

    def check_binary_exact(self, name: str, args: tuple, arg_labels: tuple, out: torch.Tensor,
                           result: torch.Tensor | None) -> None:
        """Mark elements inexact when zeroing them would not zero the output (x + c, x / y with labeled y, ...)."""
        if result is None:
            return
        tensors = [(a, lab) for a, lab in zip(args, arg_labels, strict=False)]
        if name in ("truediv", "div", "floordiv", "pow") and len(tensors) > 1 and tensors[1][1] is not None:
            self.mark_inexact(result)
            return
        if name in ("add", "sub", "maximum", "minimum", "where"):
            for value, lab in tensors:
                if lab is None:
                    if isinstance(value, torch.Tensor) and bool((value != 0).any()):
                        self.mark_inexact(result)
                    elif isinstance(value, int | float) and value != 0:
                        self.mark_inexact(result)
                elif bool((lab < 0).any()):
                    self.mark_inexact(result)

    def reduce(self, args: tuple, kwargs: dict, lab: torch.Tensor | None, out: torch.Tensor, where: str
               ) -> torch.Tensor | None:
        if lab is None:
            return None
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
        if dim is None or (isinstance(dim, tuple | list) and len(dim) == 0):
            if bool((lab >= 0).any()) and lab[lab >= 0].unique().numel() > 1:
                self.mark_inexact(lab)
            return None
        dims = [dim] if isinstance(dim, int) else list(dim)
        big = torch.iinfo(torch.long).max
        high = lab.amax(dim=dims, keepdim=keepdim)
        low = torch.where(lab >= 0, lab, torch.full_like(lab, big)).amin(dim=dims, keepdim=keepdim)
        mixed = (high >= 0) & (low != high)
        if bool(mixed.any()):
            self.mark_inexact(lab)
        result = torch.where(mixed, torch.full_like(high, -1), high)
        if result.shape != out.shape:
            raise UntraceableError(f"cannot map reduction ({where}): unexpected output shape")
        return result

    def shape_op(self, target: Any, name: str, args: tuple, kwargs: dict, arg_labels: tuple, kwarg_labels: dict,
                 out: Any, where: str) -> Any:
        def as_label(value: Any, lab: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return lab if isinstance(lab, torch.Tensor) else torch.full(value.shape, -1, dtype=torch.long)
            return value

        if name in ("cat", "stack", "hstack", "vstack"):
            seq = args[0] if args else kwargs["tensors"]
            seq_lab = arg_labels[0] if args else kwarg_labels["tensors"]
            new_seq = [as_label(v, lab) for v, lab in zip(seq, seq_lab, strict=True)]
            new_args = (new_seq, *args[1:]) if args else args
            new_kwargs = dict(kwargs)
            if not args:
                new_kwargs["tensors"] = new_seq
        else:
            new_args = (as_label(args[0], arg_labels[0]), *args[1:])
            new_kwargs = dict(kwargs)
        if name == "pad":
            new_kwargs["value"] = -1
            if len(new_args) > 3:
                new_args = (*new_args[:3], -1.0)
            mode = new_kwargs.get("mode", new_args[2] if len(new_args) > 2 else "constant")
            if mode != "constant":
                new_kwargs.pop("value")
        func = target
        if isinstance(target, str):
            func = getattr(torch.Tensor, target)
        try:
            result = func(*new_args, **new_kwargs)
        except Exception as error:  # noqa: BLE001
            raise UntraceableError(f"cannot replay shape op {name!r} ({where}) on labels: {error}") from error
        return result

    # ---- modules ----
    def module(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Any, arg_labels: tuple,
               kwarg_labels: dict) -> Any:
        from regimen.subnet.prune import PrunedMultiheadAttention

        x = args[0] if args else next(iter(kwargs.values()), None)
        lab = arg_labels[0] if arg_labels else next(iter(kwarg_labels.values()), None)
        where = f"module {name!r} ({type(module).__name__})"
        if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
            return self.attention(name, module, args, kwargs, out, arg_labels, kwarg_labels)
        if isinstance(module, _CONVS):
            return self.conv(name, module, lab, out, where)
        if isinstance(module, _CONV_T):
            in_lab = self.channel_labels(lab, 1, where) if lab is not None else None
            if module.groups != 1:
                self.block(in_lab, f"{where}: grouped transposed conv is not pruned")
                return None
            self.touch(name, "weight", 0, in_lab, "in")
            out_el = self.uf.new(module.out_channels)
            self.touch(name, "weight", 1, out_el, "out")
            if module.bias is not None:
                self.touch(name, "bias", 0, out_el, "out")
            return out_el.view(1, -1, *([1] * (out.ndim - 2))).expand(out.shape).clone()
        if isinstance(module, nn.Linear):
            if lab is not None:
                in_lab = self.channel_labels(lab, -1, where)
                self.touch(name, "weight", 1, in_lab, "in")
            out_el = self.uf.new(module.out_features)
            self.touch(name, "weight", 0, out_el, "out")
            if module.bias is not None:
                self.touch(name, "bias", 0, out_el, "out")
            return out_el.expand(out.shape).clone()
        if isinstance(module, nn.Embedding):
            out_el = self.uf.new(module.embedding_dim)
            self.touch(name, "weight", 1, out_el, "out")
            return out_el.expand(out.shape).clone()
        if lab is None:
            return None
        if isinstance(module, _NORMS):
            per = self.channel_labels(lab, 1, where)
            for pname in ("weight", "bias"):
                if getattr(module, pname, None) is not None:
                    self.touch(name, pname, 0, per, "out")
            for bname in ("running_mean", "running_var"):
                if getattr(module, bname, None) is not None:
                    self.touch(name, bname, 0, per, "out", is_buffer=True)
            return lab.clone()
        if isinstance(module, nn.LayerNorm):
            if len(module.normalized_shape) != 1 or module.weight is None:
                self.block(lab, f"{where}: LayerNorm without affine weights or over several dims is not pruned")
                return lab.clone()
            per = self.channel_labels(lab, -1, where)
            self.touch(name, "weight", 0, per, "out")
            if module.bias is not None:
                self.touch(name, "bias", 0, per, "out")
            self.mark_inexact(per)
            return lab.clone()
        if isinstance(module, nn.GroupNorm):
            self.block(lab, f"{where}: GroupNorm channels are not pruned")
            return lab.clone()
        if isinstance(module, nn.PReLU):
            if module.num_parameters > 1:
                per = self.channel_labels(lab, 1, where)
                self.touch(name, "weight", 0, per, "out")
            return lab.clone()
        if isinstance(module, _ZERO_MODULES):
            return lab.clone()
        if isinstance(module, _NONZERO_MODULES):
            self.mark_inexact(lab)
            return lab.clone()
        if isinstance(module, nn.Softmax | nn.LogSoftmax | nn.Softmin):
            moved = lab.movedim(module.dim if module.dim is not None else -1, -1)
            if bool(((moved >= 0) & (moved != moved[..., :1])).any()):
                self.mark_inexact(lab)
            return lab.clone()
        if isinstance(module, nn.Flatten | nn.Unflatten):
            return module(lab)
        if isinstance(module, _POOL_MODULES):
            if out.ndim < 2 or out.shape[:2] != x.shape[:2]:
                raise UntraceableError(f"cannot map {where}: unexpected shapes")
            per = self.channel_labels(lab, 1, where)
            return per.view(1, -1, *([1] * (out.ndim - 2))).expand(out.shape).clone()
        raise UntraceableError(f"{where} touches channel data and the pruning tracer cannot map it")

    def conv(self, name: str, module: nn.Module, lab: torch.Tensor | None, out: torch.Tensor, where: str
             ) -> torch.Tensor:
        groups = module.groups
        cin, cout = module.in_channels, module.out_channels
        ipg, opg = cin // groups, cout // groups
        in_lab = self.channel_labels(lab, 1, where) if lab is not None else None
        out_el = self.uf.new(cout)
        if groups == 1:
            self.touch(name, "weight", 1, in_lab, "in")
        elif ipg == 1:
            # depthwise(-multiplier): group g = input channel g = outputs g*opg ... (g+1)*opg-1, pruned together
            for g in range(groups):
                for j in range(1, opg):
                    self.uf.union(int(out_el[g * opg]), int(out_el[g * opg + j]))
            if in_lab is not None:
                self.uf.union_pairs(in_lab, out_el[::opg].clone())
        else:
            # grouped: the same in-group position of every group goes together (input and output separately)
            if in_lab is not None:
                per_group = in_lab.view(groups, ipg)
                for g in range(1, groups):
                    self.uf.union_pairs(per_group[0], per_group[g].clone())
                self.touch(name, "weight", 1, per_group[0].clone(), "in")
            per_out = out_el.view(groups, opg)
            for g in range(1, groups):
                self.uf.union_pairs(per_out[0], per_out[g].clone())
        self.touch(name, "weight", 0, out_el, "out")
        if module.bias is not None:
            self.touch(name, "bias", 0, out_el, "out")
        return out_el.view(1, -1, *([1] * (out.ndim - 2))).expand(out.shape).clone()

    def attention(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Any, arg_labels: tuple,
                  kwarg_labels: dict) -> Any:
        from regimen.subnet.prune import PrunedMultiheadAttention

        where = f"module {name!r} ({type(module).__name__})"
        names = ("query", "key", "value")
        values = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
        labels = [arg_labels[i] if i < len(arg_labels) else kwarg_labels.get(n) for i, n in enumerate(names)]
        out_el = self.uf.new(module.embed_dim)
        attn_out = out[0] if isinstance(out, tuple) else out
        result = out_el.expand(attn_out.shape).clone()
        packed = isinstance(module, PrunedMultiheadAttention) or (
            module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        )
        same = values[0] is values[1] and values[1] is values[2]
        if not (packed and same):
            for lab in labels:
                self.block(lab, f"{where}: only packed self-attention is pruned")
            return (result, None) if isinstance(out, tuple) else result
        in_lab = self.channel_labels(labels[0], -1, where) if labels[0] is not None else None
        self.touch(name, "in_proj_weight", 1, in_lab, "in")
        self.touch(name + ".out_proj" if name else "out_proj", "weight", 0, out_el, "out")
        if module.out_proj.bias is not None:
            self.touch(name + ".out_proj" if name else "out_proj", "bias", 0, out_el, "out")
        heads = module.num_heads
        head_dim = module.head_dim
        inner = heads * head_dim
        head_el = self.uf.new(heads, kind="head")
        rows = torch.arange(3 * inner)
        row_heads = head_el[(rows % inner) // head_dim]
        self.touch(name, "in_proj_weight", 0, row_heads, "out", positions=rows)
        if module.in_proj_bias is not None:
            self.touch(name, "in_proj_bias", 0, row_heads, "out", positions=rows)
        cols = torch.arange(inner)
        self.touch(name + ".out_proj" if name else "out_proj", "weight", 1, head_el[cols // head_dim], "in",
                   positions=cols)
        return (result, None) if isinstance(out, tuple) else result

    # ---- groups ----
    def finish(self, outputs: Any) -> DependencyGraph:
        for lab in _tree_leaves(outputs):
            if isinstance(lab, torch.Tensor):
                self.block(lab, "model output")
        # parameters used directly: find the dim along which their entries follow channels
        sizes: dict[int, int] = {}
        if self.attr_labels:
            for element in range(len(self.uf.parent)):
                root = self.uf.find(element)
                sizes[root] = sizes.get(root, 0) + 1
        for mname, pname, labels in self.attr_labels.values():
            roots = self.uf.roots(labels)
            if all(sizes[r] == 1 for r in roots.reshape(-1).tolist()):
                continue  # never combined with channel data
            found = None
            for dim in range(labels.ndim):
                if labels.shape[dim] < 2:
                    continue
                moved = roots.movedim(dim, 0).reshape(labels.shape[dim], -1)
                if bool((moved == moved[:, :1]).all()):
                    found = dim
                    break
            if found is None:
                self.block(roots, f"parameter {mname}.{pname}: entries do not follow one channel dim")
                continue
            per = roots.movedim(found, 0).reshape(labels.shape[found], -1)[:, 0]
            self.touch(mname, pname, found, per, "out")
        # a tensor position belongs to one unit: merge every element recorded at the same position (shared modules)
        seen: dict[tuple[str, str, int, int], int] = {}
        for mname, pname, dim, positions, elements, _, _ in self.touches:
            for pos, el in zip(positions.tolist(), elements.tolist(), strict=True):
                key4 = (mname, pname, dim, pos)
                if key4 in seen:
                    self.uf.union(seen[key4], el)
                else:
                    seen[key4] = el
        blocked = {self.uf.find(int(v)) for t in self.blocked for v in t.tolist()}
        inexact = {self.uf.find(int(v)) for t in self.inexact for v in t.tolist()}
        units: dict[int, dict[tuple[str, str, int], set[int]]] = {}
        meta: dict[tuple[str, str, int], tuple[str, bool]] = {}
        order: dict[tuple, int] = {}
        find = self.uf.find
        for mname, pname, dim, positions, elements, role, is_buffer in self.touches:
            key = (mname, pname, dim)
            meta.setdefault(key, (role, is_buffer))
            order.setdefault(key, len(order))
            for pos, el in zip(positions.tolist(), elements.tolist(), strict=True):
                units.setdefault(find(el), {}).setdefault(key, set()).add(pos)
        signatures: dict[tuple, list[int]] = {}
        for root, slices in units.items():
            if root in blocked:
                continue
            signature = tuple(sorted(slices, key=lambda k: order[k]))
            signatures.setdefault(signature, []).append(root)
        groups: list[Group] = []
        skipped = list(dict.fromkeys(self.skipped))
        for signature, roots in sorted(signatures.items(), key=lambda item: order[item[0][0]]):
            first = signature[0]
            per_unit = {root: {key: sorted(units[root][key]) for key in signature} for root in roots}
            roots = sorted(roots, key=lambda r: per_unit[r][first][0])
            slices = []
            regular = True
            for key in signature:
                lengths = {len(per_unit[r][key]) for r in roots}
                if len(lengths) != 1:
                    regular = False
                    break
                role, is_buffer = meta[key]
                indices = torch.tensor([per_unit[r][key] for r in roots], dtype=torch.long)
                slices.append(Slice(key[0], key[1], key[2], indices, role, is_buffer))
            name = next((s.module for s in slices if s.role == "out"), slices[0].module if slices else "")
            if not regular:
                skipped.append(f"group at {name!r}: units occupy different numbers of positions")
                continue
            if not any(s.role == "out" for s in slices):
                continue
            kind = self.uf.kind[roots[0]]
            modules = tuple(dict.fromkeys(s.module for s in slices))
            groups.append(Group(id=len(groups), size=len(roots), slices=slices, kind=kind,
                                lossless=not any(r in inexact for r in roots), name=name, modules=modules))
        return DependencyGraph(groups=groups, skipped=skipped)


# --------------------------------------------------------------------------------------------------------------------
# recorders


class _LabelInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, prop: _Propagator) -> None:
        super().__init__(gm)
        self.prop = prop
        self.labels: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        prop = self.prop
        arg_labels = fx.node.map_arg(n.args, lambda a: self.labels.get(a))
        kwarg_labels = fx.node.map_arg(n.kwargs, lambda a: self.labels.get(a))
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        where = f"node {n.name!r}"
        if n.op == "placeholder":
            label = None
        elif n.op == "get_attr":
            label = prop.param_labels(out) if isinstance(out, torch.Tensor) else None
        elif n.op == "call_module":
            module = self.module.get_submodule(n.target)
            label = prop.module(n.target, module, args, kwargs, out, arg_labels, kwarg_labels)
        elif n.op in ("call_function", "call_method"):
            if n.op == "call_function" and n.target is operator.getitem and not isinstance(args[0], torch.Tensor):
                container = arg_labels[0]
                label = container[args[1]] if isinstance(container, tuple | list) else None
            else:
                label = prop.function(n.target, args, kwargs, out, arg_labels, kwarg_labels, where)
        elif n.op == "output":
            label = arg_labels[0] if arg_labels else None
            self.output_labels = label
        else:
            label = None
        self.labels[n] = label
        return out


class _EagerRecorder(TorchFunctionMode):
    """Records ops as they run: torch functions via this mode, leaf modules via hooks (ops inside leaves hidden)."""

    def __init__(self, prop: _Propagator) -> None:
        super().__init__()
        self.prop = prop
        self.labels: dict[int, Any] = {}
        self.keep: list[Any] = []
        self.depth = 0

    def label_of(self, value: Any) -> Any:
        def one(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                if id(v) in self.labels:
                    return self.labels[id(v)]
                return self.prop.param_labels(v)
            return None

        return _tree_map(one, value)

    def store(self, value: Any, label: Any) -> None:
        if isinstance(value, torch.Tensor):
            if isinstance(label, torch.Tensor) and label.shape == value.shape:
                self.labels[id(value)] = label
                self.keep.append(value)
            else:
                self.labels.pop(id(value), None)
        elif isinstance(value, tuple | list):
            labels = label if isinstance(label, tuple | list) and len(label) == len(value) else [None] * len(value)
            for v, lab in zip(value, labels, strict=True):
                self.store(v, lab)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            name = _op_name(func)
            if name in ("get", "set") or name.startswith("__get") or name in _IGNORED:
                return out
            label = self.prop.function(func, args, kwargs, out, self.label_of(args), self.label_of(kwargs),
                                       f"call {name!r}")
            self.store(out, label)
        return out

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.depth += 1

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        try:
            if self.depth == 1:  # ops on label tensors run while depth > 0, so the mode ignores them
                name = self.prop.module_names.get(id(module), "?")
                label = self.prop.module(name, module, args, kwargs, out, self.label_of(args), self.label_of(kwargs))
                self.store(out, label)
        finally:
            self.depth -= 1


def _trace_fx(model: nn.Module, args: tuple, kwargs: dict) -> DependencyGraph:
    graph = _LeafTracer().trace(model, concrete_args=None)
    gm = fx.GraphModule(model, graph)
    prop = _Propagator(model)
    interp = _LabelInterpreter(gm, prop)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    inputs = list(args)
    for node in placeholders[len(args):]:
        if node.name in kwargs or node.target in kwargs:
            inputs.append(kwargs.get(node.target, kwargs.get(node.name)))
        elif node.args:
            inputs.append(node.args[0])
        else:
            raise ValueError(f"example_inputs is missing the model input {node.target!r}")
    interp.output_labels = None
    interp.run(*inputs)
    result = prop.finish(interp.output_labels)
    result.tracer = "fx"
    return result


def _trace_eager(model: nn.Module, args: tuple, kwargs: dict) -> DependencyGraph:
    prop = _Propagator(model)
    recorder = _EagerRecorder(prop)
    handles = []
    for module in model.modules():
        if _is_leaf(module):
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(recorder.post_hook, with_kwargs=True))
    try:
        with recorder:
            out = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    result = prop.finish(recorder.label_of(out))
    result.tracer = "eager"
    return result


def trace_dependencies(model: nn.Module, example_inputs: Any, tracer: str = "auto") -> DependencyGraph:
    """Trace ``model`` once and return its ``DependencyGraph`` (groups plus what was skipped and why).

    Args:
        model: the model; left unchanged (train/eval flags and BatchNorm statistics are restored).
        example_inputs: a Tensor, a tuple of positional inputs or a dict of keyword inputs the model accepts.
        tracer: ``"fx"``, ``"eager"`` or ``"auto"`` (fx, falling back to eager when symbolic tracing fails).

    Raises:
        ValueError: ``example_inputs`` do not run the model, or ``tracer`` is unknown.
        UntraceableError: an op touching channel data cannot be mapped (named in the message).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if tracer not in ("auto", "fx", "eager"):
        raise ValueError(f"tracer must be 'auto', 'fx' or 'eager', got {tracer!r}")
    args, kwargs = normalize_inputs(example_inputs)
    with evaluating(model):
        _run_model(model, example_inputs)
        if tracer in ("auto", "fx"):
            try:
                graph = _LeafTracer().trace(model)
                del graph
            except Exception:  # noqa: BLE001 - any symbolic-tracing failure falls back to eager recording
                if tracer == "fx":
                    raise
                return _trace_eager(model, args, kwargs)
            return _trace_fx(model, args, kwargs)
        return _trace_eager(model, args, kwargs)


def dependency_groups(model: nn.Module, example_inputs: Any, tracer: str = "auto") -> list[Group]:
    """The groups of coupled channels of ``model`` (see the module docstring for the ``Group`` layout)."""
    return trace_dependencies(model, example_inputs, tracer).groups


def _unit_positions(group: Group, units: torch.Tensor | Sequence[int]) -> list[tuple[Slice, torch.Tensor]]:
    return [(s, group.positions(s, units)) for s in group.slices]


@torch.no_grad()
def scale_units(model: nn.Module, group: Group, units: torch.Tensor | Sequence[int], factor: float,
                roles: tuple[str, ...] = ("out",)) -> None:
    """Multiply, in place, the parameter slices of ``units`` with the given roles by ``factor`` (buffers untouched)."""
    for slice_, positions in _unit_positions(group, units):
        if slice_.role not in roles or slice_.is_buffer:
            continue
        tensor = slice_.tensor(model)
        index = [slice(None)] * tensor.ndim
        index[slice_.dim] = positions
        tensor[tuple(index)] *= factor


def zero_units(model: nn.Module, group: Group, units: torch.Tensor | Sequence[int],
               roles: tuple[str, ...] = ("out",)) -> None:
    """Set the ``"out"`` parameter slices (filters, biases, norm weight and bias) of ``units`` to exactly zero."""
    scale_units(model, group, units, 0.0, roles)
