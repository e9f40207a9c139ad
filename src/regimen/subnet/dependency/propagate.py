"""Label propagation: for each op the tracer records, compute the output *label tensor* from the input ones.

Next to every tensor of the traced forward runs an integer tensor of the same shape whose entry at a position is the
channel element that position belongs to (-1: none). Layers create fresh elements for their outputs and record which
parameter slices produce (``"out"``) or consume (``"in"``) them; shape ops are replayed on the label tensors (so
concatenation offsets and flatten expansion need no special case); element-wise ops merge the elements they combine.
Elements that cannot be removed (model outputs, mixed channels) are *blocked*; elements whose removal would change
the function even when zeroed are *inexact*. ``grouping.build_graph`` turns the record into groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from regimen.subnet.dependency.group import UntraceableError
from regimen.subnet.dependency.ops import (
    BINARY,
    CHANNEL_KEEP,
    CONV_T,
    CONVS,
    FUNCTIONAL_LAYERS,
    IGNORED,
    MATMULS,
    NONZERO_MODULES,
    NONZERO_POINTWISE,
    NORMS,
    POOL_MODULES,
    REDUCE,
    SAME_SHAPE_MIXING,
    SHAPE,
    SPLITS,
    VIEWS,
    ZERO_MODULES,
    ZERO_PRESERVING,
    is_leaf,
    op_name,
    tree_leaves,
)
from regimen.subnet.dependency.union_find import UnionFind
from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = ["MODULE_RULES", "HeadSite", "ModuleCall", "Propagator", "Touch"]

#: One recorded parameter slice: (module, param, dim, positions, elements, role, is_buffer).
Touch = tuple[str, str, int, torch.Tensor, torch.Tensor, str, bool]


@dataclass
class HeadSite:
    """One ``scaled_dot_product_attention`` call: the element of each query head and of each key/value head, and the
    module whose forward made the call (its head-count attributes follow head pruning)."""

    owner: str
    q_heads: torch.Tensor
    kv_heads: torch.Tensor
    head_dim: int


class Propagator:
    """Computes output label tensors from input label tensors, op by op, and records parameter touches."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uf = UnionFind()
        self.touches: list[Touch] = []
        self.blocked: list[torch.Tensor] = []
        self.inexact: list[torch.Tensor] = []
        self.skipped: list[str] = []
        self.module_names = {id(m): name for name, m in model.named_modules()}
        self.param_owner: dict[int, tuple[str, str]] = {}
        for mname, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                self.param_owner.setdefault(id(p), (mname, pname))
        self.attr_labels: dict[int, tuple[str, str, torch.Tensor]] = {}
        self.grids: list[tuple[torch.Tensor, str]] = []  # channel dims cut into several dims by a view
        self.offset: dict[int, torch.Tensor] = {}  # label tensors whose values are not zero for zeroed units
        self.head_sites: list[HeadSite] = []
        self.selections: list[tuple[torch.Tensor, torch.Tensor, str]] = []  # (labels along the dim, input, where)
        self.owner = ""  # the (non-leaf) module whose forward is running, set by the recorders

    # ---- helpers ----
    def param_labels(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Fresh per-entry labels for a model parameter used directly in the forward (tokens, embeddings)."""
        owner = self.param_owner.get(id(tensor))
        if owner is None:
            return None
        if id(tensor) not in self.attr_labels:
            mname, pname = owner
            module = self.model.get_submodule(mname)
            if is_leaf(module):  # a leaf's own weight used outside the leaf: too unusual to map
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
        """Label of the op's output. Tracks *offset* tensors (``self.offset``): values that are not zero when their
        units are zeroed (``1 + tanh(x)``, ``sigmoid(x)``). Pointwise and shape ops carry the offset on; multiplying
        by a fully labeled tensor without offset cancels it (``x * (1 + tanh(x))``, ``x * sigmoid(fc(x))`` are
        zero when ``x``'s units are); any other use makes those units inexact."""
        result = self._function(target, args, kwargs, out, arg_labels, kwarg_labels, where)
        labs = [lab for lab in tree_leaves((arg_labels, kwarg_labels)) if isinstance(lab, torch.Tensor)]
        offset_in = [lab for lab in labs if id(lab) in self.offset]
        if not offset_in:
            return result
        name = op_name(target)
        clean = [lab for lab in labs if id(lab) not in self.offset and bool((lab >= 0).all())]
        if name == "mul" and clean and isinstance(out, torch.Tensor) and any(
                lab.shape == out.shape or lab.expand(out.shape).shape == out.shape for lab in clean):
            return result
        if name in ZERO_PRESERVING or name in NONZERO_POINTWISE or name in SHAPE or name in BINARY \
                or name in CHANNEL_KEEP:
            for lab in tree_leaves(result):
                if isinstance(lab, torch.Tensor):
                    self.offset[id(lab)] = lab
            return result
        for lab in offset_in:
            self.mark_inexact(lab)
        return result

    def consume_offsets(self, labels: Any) -> None:
        """Offset tensors used by a layer, a reduction or the model output: their units are not removable exactly."""
        for lab in tree_leaves(labels):
            if isinstance(lab, torch.Tensor) and id(lab) in self.offset:
                self.mark_inexact(lab)

    def _function(self, target: Any, args: tuple, kwargs: dict, out: Any, arg_labels: tuple, kwarg_labels: dict,
                  where: str) -> Any:
        name = op_name(target)
        if name in FUNCTIONAL_LAYERS:
            result = self.functional_layer(name, args, kwargs, out, arg_labels, kwarg_labels, where)
            if result is not NotImplemented:
                return result
        labeled = [lab for lab in tree_leaves((arg_labels, kwarg_labels)) if isinstance(lab, torch.Tensor)]
        if not labeled or not any(bool((lab >= 0).any()) for lab in labeled):
            return None
        if name in IGNORED:
            return None
        if name == "scaled_dot_product_attention":
            return self.sdpa(args, kwargs, out, arg_labels, kwarg_labels, where)
        if name in MATMULS:
            return self.matmul(name, args, kwargs, out, arg_labels, kwarg_labels, where)
        if name == "roll":
            self.check_roll(args, kwargs, arg_labels, where)
        if name in SHAPE:
            return self.shape_op(target, name, args, kwargs, arg_labels, kwarg_labels, out, where)
        if not isinstance(out, torch.Tensor):
            if name in ("max", "min") and isinstance(out, tuple):
                values = self.reduce(args, kwargs, arg_labels[0], out[0], where)
                return (values, values)
            raise UntraceableError(f"cannot map op {name!r} ({where}) that returns {type(out).__name__}")
        if name in ZERO_PRESERVING or name in NONZERO_POINTWISE or name in BINARY:
            labs = [lab for lab in tree_leaves((arg_labels, kwarg_labels)) if isinstance(lab, torch.Tensor)]
            result = self.broadcast_union(labs, out.shape)
            if name in NONZERO_POINTWISE and result is not None:
                self.offset[id(result)] = result
            elif name in ("add", "sub", "where", "maximum", "minimum", "truediv", "div", "floordiv", "pow", "addcmul"):
                self.check_binary_exact(name, args, arg_labels, out, result)
            return result
        if name == "glu":  # a * sigmoid(b) over the two halves: position j of both halves is one unit, exact
            lab = arg_labels[0]
            dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
            first, second = lab.chunk(2, dim=dim)
            self.uf.union_pairs(first.reshape(-1), second.reshape(-1))
            return first.clone()
        if name in CHANNEL_KEEP:
            lab = arg_labels[0]
            if lab is None or out.ndim < 2 or out.shape[:2] != args[0].shape[:2]:
                raise UntraceableError(f"cannot map op {name!r} ({where}): unexpected shapes")
            per = self.channel_labels(lab, 1, where)
            return _along_dim1(per, out)
        if name in REDUCE:
            return self.reduce(args, kwargs, arg_labels[0], out, where)
        if name in SAME_SHAPE_MIXING:
            lab = arg_labels[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if lab is not None and dim is not None and out.shape == lab.shape:
                moved = lab.movedim(dim, -1)
                if bool(((moved >= 0) & (moved != moved[..., :1])).any()):
                    self.mark_inexact(lab)
                return lab.clone()
        if name in ("layer_norm", "batch_norm", "instance_norm", "group_norm", "linear", "conv1d", "conv2d",
                    "conv3d", "addmm"):
            raise UntraceableError(
                f"functional {name!r} ({where}) on channel data is not supported unless its weight is a parameter of "
                "the model; use the nn module instead so the pruner can find its parameters"
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
            offset = False
            for value, lab in tensors:
                if lab is None:
                    if isinstance(value, torch.Tensor) and bool((value != 0).any()):
                        offset = True
                    elif isinstance(value, int | float) and value != 0:
                        offset = True
                elif bool((lab < 0).any()):
                    offset = True
            if offset and name in ("add", "sub"):
                self.offset[id(result)] = result  # x + c: inexact unless multiplied back to zero (see function)
            elif offset:
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
        if name in ("channel_shuffle", "native_channel_shuffle"):
            groups = args[1] if len(args) > 1 else kwargs["groups"]
            return self.channel_shuffle(new_args[0], groups, out, where)
        func = target
        if isinstance(target, str):
            func = getattr(torch.Tensor, target)
        try:
            result = func(*new_args, **new_kwargs)
        except Exception as error:  # noqa: BLE001
            raise UntraceableError(f"cannot replay shape op {name!r} ({where}) on labels: {error}") from error
        if name in ("getitem", "narrow", "select", "index_select"):
            self.record_selection(name, args, kwargs, new_args[0], where)
        if name in SPLITS:
            self.split_pieces(name, args, kwargs, new_args[0], result, where)
        elif name in VIEWS and isinstance(result, torch.Tensor):
            self.record_grid(new_args[0], result, where)
        return result

    # ---- functional layers, attention and products ----
    def forget_param(self, tensor: Any) -> None:
        """``tensor`` is a layer weight here, not a parameter used directly: drop its per-entry labels."""
        if isinstance(tensor, torch.Tensor):
            self.attr_labels.pop(id(tensor), None)

    def functional_layer(self, name: str, args: tuple, kwargs: dict, out: Any, arg_labels: tuple, kwarg_labels: dict,
                         where: str) -> Any:
        """``F.linear``/``F.conv*d``/``torch.addmm``/``x @ W`` whose weight is a parameter of the model: pruned like
        the module (rows/filters produce units, columns consume them). NotImplemented when the weight is not one."""
        layout = {"linear": (0, 1, 2, 1), "addmm": (1, 2, 0, 0), "matmul": (0, 1, None, 0), "mm": (0, 1, None, 0)}
        keys = {"linear": ("input", "weight", "bias"), "addmm": ("mat1", "mat2", "input"),
                "matmul": ("input", "other", None), "mm": ("input", "mat2", None)}
        x_i, w_i, b_i, w_in = layout.get(name, (0, 1, 2, None))
        x_key, w_key, b_key = keys.get(name, ("input", "weight", "bias"))

        def arg(i: int | None, key: str | None) -> Any:
            if i is None:
                return None
            return args[i] if len(args) > i else kwargs.get(key)

        def lab(i: int, key: str) -> Any:
            return arg_labels[i] if len(arg_labels) > i else kwarg_labels.get(key)

        weight = arg(w_i, w_key)
        owner = self.param_owner.get(id(weight)) if isinstance(weight, torch.Tensor) else None
        if owner is None or not isinstance(out, torch.Tensor) or (w_in is not None and weight.ndim != 2):
            return NotImplemented
        self.forget_param(weight)
        bias = arg(b_i, b_key)
        bias_owner = None
        if isinstance(bias, torch.Tensor):
            bias_owner = self.param_owner.get(id(bias))
            self.forget_param(bias)
            if bias_owner is None and bool((bias != 0).any()):
                raise UntraceableError(f"functional {name!r} ({where}) adds a bias that is not a model parameter; "
                                       "the pruner could not slice it")
            if bias_owner is not None and bias.ndim != 1:
                raise UntraceableError(f"functional {name!r} ({where}): a bias of {bias.ndim} dims is not supported")
        x_lab = lab(x_i, x_key)
        if w_in is None:  # conv: weight (out, in / groups, *kernel)
            groups = arg(6, "groups") or 1
            spec = SimpleNamespace(groups=groups, in_channels=weight.shape[1] * groups,
                                   out_channels=weight.shape[0], bias=bias if bias_owner is not None else None)
            return self.conv(owner, spec, x_lab, out, where, bias_key=bias_owner, fixed_groups=True)
        if x_lab is not None:
            self.touch(*owner, w_in, self.channel_labels(x_lab, -1, where), "in")
        out_el = self.uf.new(weight.shape[1 - w_in])
        self.touch(*owner, 1 - w_in, out_el, "out")
        if bias_owner is not None:
            self.touch(*bias_owner, 0, out_el, "out")
        return out_el.expand(out.shape).clone()

    def sdpa(self, args: tuple, kwargs: dict, out: Any, arg_labels: tuple, kwarg_labels: dict, where: str
             ) -> torch.Tensor | None:
        """``F.scaled_dot_product_attention(q, k, v)`` on ``(..., heads, length, dim)``: every channel of query head
        ``h`` and of its key/value head (``h // (H / H_kv)`` with grouped-query attention) forms one head unit."""
        names = ("query", "key", "value", "attn_mask")
        values = [args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)]
        labels = [arg_labels[i] if i < len(arg_labels) else kwarg_labels.get(n) for i, n in enumerate(names)]
        q, k, v = values[:3]
        if labels[3] is not None:
            self.block(labels[3], f"{where}: attention mask computed from channel data")
        if not all(isinstance(t, torch.Tensor) and t.ndim >= 3 for t in (q, k, v)) or not isinstance(out, torch.Tensor):
            raise UntraceableError(f"cannot map op 'scaled_dot_product_attention' ({where}): unexpected shapes")
        heads, kv_heads = q.shape[-3], k.shape[-3]
        if heads % kv_heads or v.shape[-3] != kv_heads:
            raise UntraceableError(f"cannot map op 'scaled_dot_product_attention' ({where}): {heads} query heads "
                                   f"and {kv_heads} key/value heads")
        rep = heads // kv_heads

        def per_head(lab: torch.Tensor | None, t: torch.Tensor, n: int) -> torch.Tensor | None:
            if lab is None:
                return None
            return lab.expand(t.shape).movedim(-3, 0).reshape(n, -1)

        qh, kh, vh = per_head(labels[0], q, heads), per_head(labels[1], k, kv_heads), per_head(labels[2], v, kv_heads)
        head_el = torch.full((heads,), -1, dtype=torch.long)
        for h in range(heads):
            parts = [t for t in (None if qh is None else qh[h], None if kh is None else kh[h // rep],
                                 None if vh is None else vh[h // rep]) if t is not None]
            root = self.uf.union_all(torch.cat(parts))
            head_el[h] = -1 if root is None else root
        self.uf.set_kind(head_el, "head")
        if vh is None or bool((vh < 0).any()):
            self.mark_inexact(head_el)  # a zeroed head still outputs its unlabeled values
        self.head_sites.append(HeadSite(self.owner, head_el.clone(), head_el[::rep].clone(), q.shape[-1]))
        out_lab = head_el.view(heads, 1, 1).expand(heads, *out.shape[-2:])
        if labels[2] is not None:  # keep the value channels' own labels (they belong to the same head unit)
            vlab = labels[2].expand(v.shape).movedim(-3, 0).reshape(kv_heads, -1, v.shape[-2], v.shape[-1])[:, 0, 0]
            vlab = vlab.repeat_interleave(rep, dim=0).view(heads, 1, -1).expand(heads, *out.shape[-2:])
            out_lab = torch.where(vlab >= 0, vlab, out_lab)
        return out_lab.expand(out.shape).clone()

    def matmul(self, name: str, args: tuple, kwargs: dict, out: Any, arg_labels: tuple, kwarg_labels: dict,
               where: str) -> torch.Tensor | None:
        """A product of two labeled tensors (hand-written attention ``q @ k.T``, ``p @ v``): everything one batch
        entry (one head) combines is one unit. A product with a non-parameter constant cannot be mapped."""
        a = args[0] if args else kwargs.get("input")
        b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
        la = arg_labels[0] if arg_labels else kwarg_labels.get("input")
        lb = arg_labels[1] if len(arg_labels) > 1 else kwarg_labels.get("other", kwarg_labels.get("mat2"))
        if la is None or lb is None:
            raise UntraceableError(f"op {name!r} ({where}) multiplies channel data by a tensor that is not a model "
                                   "parameter; the pruning tracer cannot map it")
        if a.ndim < 2 or b.ndim < 2 or not isinstance(out, torch.Tensor):
            raise UntraceableError(f"cannot map op {name!r} ({where}): vectors are not supported")
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        fa = la.expand(a.shape).expand(*batch, *a.shape[-2:]).reshape(-1, a.shape[-2] * a.shape[-1])
        fb = lb.expand(b.shape).expand(*batch, *b.shape[-2:]).reshape(-1, b.shape[-2] * b.shape[-1])
        reps = torch.full((fa.shape[0],), -1, dtype=torch.long)
        for i in range(fa.shape[0]):
            root = self.uf.union_all(torch.cat([fa[i], fb[i]]))
            reps[i] = -1 if root is None else root
        if len(batch):
            self.uf.set_kind(reps, "head")
        if bool(((fa < 0).any(dim=1) & (fb < 0).any(dim=1)).any()):
            self.mark_inexact(reps)  # neither operand is zero when the unit is zeroed
        return reps.view(*batch, 1, 1).expand(out.shape).clone()

    def varies(self, labels: torch.Tensor | None, dim: int) -> bool:
        """Whether ``labels`` hold several channel elements along ``dim``."""
        if labels is None or labels.ndim == 0:
            return False
        per = labels.movedim(dim, 0).reshape(labels.shape[dim], -1).amax(dim=1)
        return per[per >= 0].unique().numel() > 1

    def check_roll(self, args: tuple, kwargs: dict, arg_labels: tuple, where: str) -> None:
        dims = args[2] if len(args) > 2 else kwargs.get("dims")
        lab = arg_labels[0] if arg_labels else None
        if lab is None:
            return
        dims = list(range(lab.ndim)) if dims is None or dims == () else [dims] if isinstance(dims, int) else dims
        if any(self.varies(lab, d) for d in dims):
            raise UntraceableError(
                f"op 'roll' ({where}) shifts channels by a fixed amount; after pruning the same shift would move "
                "other channels, so the pruning tracer refuses it (nothing was changed)"
            )

    def split_pieces(self, name: str, args: tuple, kwargs: dict, lab_in: torch.Tensor, pieces: Any, where: str
                     ) -> None:
        """``chunk``/``split``/``unbind``/``tensor_split``: pieces of equal size lose the same positions (their
        elements merge position by position); pieces whose sizes are written in the code cannot follow pruning."""
        if not isinstance(pieces, tuple | list) or len(pieces) < 2:
            return
        dim_pos = 1 if name == "unbind" else 2
        dim = args[dim_pos] if len(args) > dim_pos else kwargs.get("dim", 0)
        sizes = args[1] if len(args) > 1 else kwargs.get("split_size_or_sections", kwargs.get("split_size",
                                                                                                  kwargs.get("sections")))
        explicit = isinstance(sizes, tuple | list) or (isinstance(sizes, torch.Tensor) and sizes.ndim > 0)
        same = len({p.shape for p in pieces}) == 1
        if explicit or not same:
            if self.varies(lab_in, dim):
                self.block(lab_in, f"op {name!r} ({where}) cuts channels into pieces of sizes fixed in the code "
                                   f"({[p.shape[dim] for p in pieces]}); these channels are not pruned")
            return
        first = pieces[0].reshape(-1)
        for piece in pieces[1:]:
            self.uf.union_pairs(first, piece.reshape(-1))

    def record_selection(self, name: str, args: tuple, kwargs: dict, lab_in: torch.Tensor, where: str) -> None:
        """Indexing that keeps only some positions of a dim (``x[:, :3]``, ``x.narrow(1, 0, 3)``): if that dim holds
        several units, the positions are fixed in the code and would select other channels after pruning;
        ``grouping`` then leaves those channels alone (decided at the end, when all merges are known)."""
        shape = tuple(lab_in.shape)
        if name == "getitem":
            dims = _indexed_dims(shape, args[1] if len(args) > 1 else kwargs.get("idx"))
        else:
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            dim = dim % len(shape) if shape else 0
            if name == "narrow":
                length = args[3] if len(args) > 3 else kwargs.get("length")
                dims = [dim] if length != shape[dim] else []
            elif name == "index_select":
                index = args[2] if len(args) > 2 else kwargs.get("index")
                full = isinstance(index, torch.Tensor) and torch.equal(index.reshape(-1).cpu(),
                                                                       torch.arange(shape[dim]))
                dims = [] if full else [dim]
            else:
                dims = [dim] if shape[dim] > 1 else []
        for dim in dims:
            if self.varies(lab_in, dim):
                index = tuple(slice(None) if d == dim else 0 for d in range(lab_in.ndim))
                self.selections.append((lab_in[index].clone(), lab_in, f"op {name!r} ({where})"))

    def record_grid(self, lab_in: torch.Tensor, lab_out: torch.Tensor, where: str) -> None:
        """A view that cuts a channel dim into several dims (heads x head_dim, groups x channels): remember the grid
        of elements; ``grouping`` keeps every unit a union of whole slices of that grid (see ``repair_grids``)."""
        for in_dims, out_dims in _dim_groups(tuple(lab_in.shape), tuple(lab_out.shape)):
            ins = [d for d in in_dims if lab_in.shape[d] > 1]
            outs = [d for d in out_dims if lab_out.shape[d] > 1]
            if len(ins) != 1 or len(outs) < 2 or not self.varies(lab_in, ins[0]):
                continue
            index = tuple(slice(None) if d in outs else 0 for d in range(lab_out.ndim))
            self.grids.append((lab_out[index].clone(), where))

    def channel_shuffle(self, lab: torch.Tensor, groups: int, out: torch.Tensor, where: str) -> torch.Tensor:
        """``channel_shuffle(x, g)`` keeps ``g`` fixed: channel ``j`` of every group goes together."""
        per = self.channel_labels(lab, 1, where)
        if per.numel() % groups:
            raise UntraceableError(f"cannot map channel shuffle ({where}): {per.numel()} channels, {groups} groups")
        grid = per.view(groups, -1)
        for g in range(1, groups):
            self.uf.union_pairs(grid[0], grid[g].clone())
        shuffled = per.view(groups, -1).t().reshape(-1)
        return _along_dim1(shuffled, out)

    # ---- modules ----
    def module(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Any, arg_labels: tuple,
               kwarg_labels: dict) -> Any:
        """Label of a leaf module's output; records the module's parameter slices (see ``MODULE_RULES``)."""
        call = ModuleCall(name, module, args, kwargs, out, arg_labels, kwarg_labels)
        for types, rule, needs_label in MODULE_RULES:
            if isinstance(module, types):
                if needs_label and call.label is None:
                    return None
                result = getattr(self, rule)(call)
                if rule in ("zero_preserving", "nonzero_pointwise", "flatten", "pool", "channel_shuffle_module") and (
                        id(call.label) in self.offset or rule == "nonzero_pointwise"):
                    self.offset[id(result)] = result
                else:
                    self.consume_offsets((arg_labels, kwarg_labels))
                return result
        if call.label is None:
            return None
        raise UntraceableError(f"{call.where} touches channel data and the pruning tracer cannot map it")

    def conv_transpose(self, call: ModuleCall) -> torch.Tensor | None:
        module, name = call.module, call.name
        in_lab = self.channel_labels(call.label, 1, call.where) if call.label is not None else None
        if module.groups != 1:
            self.block(in_lab, f"{call.where}: grouped transposed conv is not pruned")
            return None
        self.touch(name, "weight", 0, in_lab, "in")
        out_el = self.uf.new(module.out_channels)
        self.touch(name, "weight", 1, out_el, "out")
        if module.bias is not None:
            self.touch(name, "bias", 0, out_el, "out")
        return _along_dim1(out_el, call.out)

    def linear(self, call: ModuleCall) -> torch.Tensor:
        module, name = call.module, call.name
        if call.label is not None:
            self.touch(name, "weight", 1, self.channel_labels(call.label, -1, call.where), "in")
        out_el = self.uf.new(module.out_features)
        self.touch(name, "weight", 0, out_el, "out")
        if module.bias is not None:
            self.touch(name, "bias", 0, out_el, "out")
        return out_el.expand(call.out.shape).clone()

    def embedding(self, call: ModuleCall) -> torch.Tensor:
        out_el = self.uf.new(call.module.embedding_dim)
        self.touch(call.name, "weight", 1, out_el, "out")
        return out_el.expand(call.out.shape).clone()

    def norm(self, call: ModuleCall) -> torch.Tensor:
        """BatchNorm / InstanceNorm: per-channel affine parameters and running statistics along dim 1."""
        module, name = call.module, call.name
        per = self.channel_labels(call.label, 1, call.where)
        for pname in ("weight", "bias"):
            if getattr(module, pname, None) is not None:
                self.touch(name, pname, 0, per, "out")
        for bname in ("running_mean", "running_var"):
            if getattr(module, bname, None) is not None:
                self.touch(name, bname, 0, per, "out", is_buffer=True)
        return call.label.clone()

    def layer_norm(self, call: ModuleCall) -> torch.Tensor:
        """LayerNorm over the last dim: prunable with its affine parameters, but never lossless (it normalises)."""
        module, name, lab = call.module, call.name, call.label
        if len(module.normalized_shape) != 1 or module.weight is None:
            self.block(lab, f"{call.where}: LayerNorm without affine weights or over several dims is not pruned")
            return lab.clone()
        per = self.channel_labels(lab, -1, call.where)
        self.touch(name, "weight", 0, per, "out")
        if module.bias is not None:
            self.touch(name, "bias", 0, per, "out")
        self.mark_inexact(per)
        return lab.clone()

    def group_norm(self, call: ModuleCall) -> torch.Tensor:
        self.block(call.label, f"{call.where}: GroupNorm channels are not pruned")
        return call.label.clone()

    def prelu(self, call: ModuleCall) -> torch.Tensor:
        if call.module.num_parameters > 1:
            self.touch(call.name, "weight", 0, self.channel_labels(call.label, 1, call.where), "out")
        return call.label.clone()

    def zero_preserving(self, call: ModuleCall) -> torch.Tensor:
        return call.label.clone()

    def nonzero_pointwise(self, call: ModuleCall) -> torch.Tensor:
        return call.label.clone()  # an offset tensor (see ``function``)

    def softmax(self, call: ModuleCall) -> torch.Tensor:
        lab = call.label
        moved = lab.movedim(call.module.dim if call.module.dim is not None else -1, -1)
        if bool(((moved >= 0) & (moved != moved[..., :1])).any()):
            self.mark_inexact(lab)
        return lab.clone()

    def flatten(self, call: ModuleCall) -> torch.Tensor:
        result = call.module(call.label)
        if isinstance(call.module, nn.Unflatten):
            self.record_grid(call.label, result, call.where)
        return result

    def channel_shuffle_module(self, call: ModuleCall) -> torch.Tensor:
        return self.channel_shuffle(call.label, call.module.groups, call.out, call.where)

    def pool(self, call: ModuleCall) -> torch.Tensor:
        out, x = call.out, call.input
        if out.ndim < 2 or out.shape[:2] != x.shape[:2]:
            raise UntraceableError(f"cannot map {call.where}: unexpected shapes")
        return _along_dim1(self.channel_labels(call.label, 1, call.where), out)

    def conv_module(self, call: ModuleCall) -> torch.Tensor:
        return self.conv(call.name, call.module, call.label, call.out, call.where)

    def attention_module(self, call: ModuleCall) -> Any:
        return self.attention(call.name, call.module, call.args, call.kwargs, call.out, call.arg_labels,
                              call.kwarg_labels)

    def conv(self, weight: str | tuple[str, str], module: Any, lab: torch.Tensor | None, out: torch.Tensor,
             where: str, bias_key: tuple[str, str] | None = None, fixed_groups: bool = False) -> torch.Tensor:
        """A convolution (``module`` gives ``groups``, ``in_channels``, ``out_channels``, ``bias``); ``weight`` is the
        owning module's name (parameters ``weight``/``bias``) or a ``(module, param)`` pair for functional convs."""
        name, wname = (weight, "weight") if isinstance(weight, str) else weight
        if bias_key is None and module.bias is not None:
            bias_key = (name, "bias")
        groups = module.groups
        cin, cout = module.in_channels, module.out_channels
        ipg, opg = cin // groups, cout // groups
        in_lab = self.channel_labels(lab, 1, where) if lab is not None else None
        out_el = self.uf.new(cout)
        if groups == 1:
            self.touch(name, wname, 1, in_lab, "in")
        elif ipg == 1:
            if fixed_groups:  # depthwise with ``groups`` written in the code: it could not follow the pruning
                self.block(in_lab, f"{where}: depthwise functional conv (groups fixed in the code) is not pruned")
                self.block(out_el, f"{where}: depthwise functional conv (groups fixed in the code) is not pruned")
                return _along_dim1(out_el, out)
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
                self.touch(name, wname, 1, per_group[0].clone(), "in")
            per_out = out_el.view(groups, opg)
            for g in range(1, groups):
                self.uf.union_pairs(per_out[0], per_out[g].clone())
        self.touch(name, wname, 0, out_el, "out")
        if bias_key is not None:
            self.touch(*bias_key, 0, out_el, "out")
        return _along_dim1(out_el, out)

    def attention(self, name: str, module: nn.Module, args: tuple, kwargs: dict, out: Any, arg_labels: tuple,
                  kwarg_labels: dict) -> Any:
        where = f"module {name!r} ({type(module).__name__})"
        names = ("query", "key", "value")
        labels = [arg_labels[i] if i < len(arg_labels) else kwarg_labels.get(n) for i, n in enumerate(names)]
        out_el = self.uf.new(module.embed_dim)
        attn_out = out[0] if isinstance(out, tuple) else out
        result = out_el.expand(attn_out.shape).clone()
        packed = isinstance(module, PrunedMultiheadAttention) or (
            module._qkv_same_embed_dim and module.bias_k is None and not module.add_zero_attn
        )
        if not packed:
            for lab in labels:
                self.block(lab, f"{where}: only packed attention (kdim = vdim = embed_dim, no bias_k) is pruned")
            return (result, None) if isinstance(out, tuple) else result
        # query, key and value share the columns of the packed in_proj_weight: cross-attention couples the two
        # streams channel by channel (the shared positions merge their elements)
        for lab in labels:
            if lab is not None:
                self.touch(name, "in_proj_weight", 1, self.channel_labels(lab, -1, where), "in")
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


@dataclass
class ModuleCall:
    """One call of a leaf module as the recorders saw it, with the label of its first input."""

    name: str
    module: nn.Module
    args: tuple
    kwargs: dict
    out: Any
    arg_labels: tuple
    kwarg_labels: dict

    @property
    def input(self) -> Any:
        return self.args[0] if self.args else next(iter(self.kwargs.values()), None)

    @property
    def label(self) -> Any:
        return self.arg_labels[0] if self.arg_labels else next(iter(self.kwarg_labels.values()), None)

    @property
    def where(self) -> str:
        return f"module {self.name!r} ({type(self.module).__name__})"


#: ``(module types, Propagator method, needs a labeled input)``, first match wins. Layers that create channels run
#: without a labeled input (their outputs get fresh elements); the rest pass labels through or reject them.
MODULE_RULES: tuple[tuple[type | tuple[type, ...], str, bool], ...] = (
    ((nn.MultiheadAttention, PrunedMultiheadAttention), "attention_module", False),
    (CONVS, "conv_module", False),
    (CONV_T, "conv_transpose", False),
    (nn.Linear, "linear", False),
    (nn.Embedding, "embedding", False),
    (NORMS, "norm", True),
    (nn.LayerNorm, "layer_norm", True),
    (nn.GroupNorm, "group_norm", True),
    (nn.PReLU, "prelu", True),
    (ZERO_MODULES, "zero_preserving", True),
    (NONZERO_MODULES, "nonzero_pointwise", True),
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin), "softmax", True),
    ((nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle), "flatten", True),
    (nn.ChannelShuffle, "channel_shuffle_module", True),
    (POOL_MODULES, "pool", True),
)


def _along_dim1(per_channel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-channel labels broadcast to ``like``'s shape with channels along dim 1."""
    return per_channel.view(1, -1, *([1] * (like.ndim - 2))).expand(like.shape).clone()


def _dim_groups(before: tuple[int, ...], after: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """How a view maps dims: ``[(input dims, output dims), ...]`` whose sizes have equal products, in order."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(before) or j < len(after):
        ins: list[int] = []
        outs: list[int] = []
        pa = pb = 1
        if i < len(before):
            ins.append(i)
            pa *= before[i]
            i += 1
        if j < len(after):
            outs.append(j)
            pb *= after[j]
            j += 1
        while pa != pb:
            if pa < pb and i < len(before):
                ins.append(i)
                pa *= before[i]
                i += 1
            elif pb < pa and j < len(after):
                outs.append(j)
                pb *= after[j]
                j += 1
            else:
                return []
        groups.append((ins, outs))
    return groups


def _indexed_dims(shape: tuple[int, ...], index: Any) -> list[int]:
    """The dims of a tensor of ``shape`` of which ``tensor[index]`` keeps only some positions."""
    items = index if isinstance(index, tuple) else (index,)

    def width(item: Any) -> int:  # how many input dims an index item consumes
        if item is None or item is Ellipsis:
            return 0
        if isinstance(item, torch.Tensor) and item.dtype == torch.bool:
            return max(item.ndim, 1)
        return 1

    used = sum(width(item) for item in items)
    dims: list[int] = []
    d = 0
    for item in items:
        if item is Ellipsis:
            d += len(shape) - used
            continue
        step = width(item)
        if step == 0 or d >= len(shape):
            continue
        if isinstance(item, slice):
            start, stop, stride = item.indices(shape[d])
            if (start, stop, stride) != (0, shape[d], 1):
                dims.append(d)
        elif not (isinstance(item, int) and shape[d] == 1):
            dims.extend(range(d, d + step))
        d += step
    return dims
