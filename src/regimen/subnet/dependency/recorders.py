"""The two recorders that run a model once and feed every op to a ``Propagator``.

* ``trace_fx``: ``torch.fx`` symbolic tracing (leaves: ``ops.is_leaf``) replayed by an interpreter on real inputs.
* ``trace_eager``: a ``TorchFunctionMode`` plus hooks on leaf modules. It follows data-dependent control flow that
  fx cannot trace, and sees the same ops; it replaces the autograd-graph walk of DepGraph because it also sees
  non-differentiable ops.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

from regimen.subnet.dependency.group import DependencyGraph
from regimen.subnet.dependency.grouping import build_graph
from regimen.subnet.dependency.ops import IGNORED, is_leaf, op_name, tree_map
from regimen.subnet.dependency.propagate import Propagator

__all__ = ["EagerRecorder", "LabelInterpreter", "trace_eager", "trace_fx"]


class LabelInterpreter(fx.Interpreter):
    """Runs a traced graph on real inputs and propagates labels node by node."""

    def __init__(self, gm: fx.GraphModule, prop: Propagator) -> None:
        super().__init__(gm)
        self.prop = prop
        self.labels: dict[fx.Node, Any] = {}
        self.output_labels: Any = None

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
            stack = n.meta.get("nn_module_stack") or {}
            prop.owner = _module_path(next(reversed(stack.values()))) if stack else ""
            if n.op == "call_function" and n.target is operator.getitem and not isinstance(args[0], torch.Tensor):
                container = arg_labels[0]  # indexing a tuple/list of tensors: pick that element's label
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


class EagerRecorder(TorchFunctionMode):
    """Records ops as they run: torch functions via this mode, leaf modules via hooks (ops inside leaves hidden)."""

    def __init__(self, prop: Propagator) -> None:
        super().__init__()
        self.prop = prop
        self.labels: dict[int, Any] = {}
        self.keep: list[Any] = []  # keeps labeled tensors alive so their ids are not reused
        self.depth = 0
        self.owners: list[str] = []  # the non-leaf modules whose forward is running

    def label_of(self, value: Any) -> Any:
        def one(v: Any) -> Any:
            if isinstance(v, torch.Tensor):
                if id(v) in self.labels:
                    return self.labels[id(v)]
                return self.prop.param_labels(v)
            return None

        return tree_map(one, value)

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
            name = op_name(func)
            if name in ("get", "set") or name.startswith("__get") or name in IGNORED:
                return out
            label = self.prop.function(func, args, kwargs, out, self.label_of(args), self.label_of(kwargs),
                                       f"call {name!r}")
            self.store(out, label)
        return out

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.depth += 1

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.owners.append(self.prop.module_names.get(id(module), ""))
        self.prop.owner = self.owners[-1]

    def leave(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        if self.owners:
            self.owners.pop()
        self.prop.owner = self.owners[-1] if self.owners else ""

    def post_hook(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        try:
            if self.depth == 1:  # ops on label tensors run while depth > 0, so the mode ignores them
                name = self.prop.module_names.get(id(module), "?")
                label = self.prop.module(name, module, args, kwargs, out, self.label_of(args), self.label_of(kwargs))
                self.store(out, label)
        finally:
            self.depth -= 1


def _module_path(entry: Any) -> str:
    """The module path in an ``nn_module_stack`` entry (``(path, type)`` in recent torch)."""
    return entry[0] if isinstance(entry, tuple) else str(entry)


def trace_fx(model: nn.Module, graph: fx.Graph, args: tuple, kwargs: dict) -> DependencyGraph:
    """Replay ``graph`` (``model`` traced symbolically by ``ops.LeafTracer``) on ``args``/``kwargs``."""
    gm = fx.GraphModule(model, graph)
    prop = Propagator(model)
    interp = LabelInterpreter(gm, prop)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    inputs = list(args)
    for node in placeholders[len(args):]:
        if node.name in kwargs or node.target in kwargs:
            inputs.append(kwargs.get(node.target, kwargs.get(node.name)))
        elif node.args:
            inputs.append(node.args[0])  # the forward's default value
        else:
            raise ValueError(f"example_inputs is missing the model input {node.target!r}")
    interp.run(*inputs)
    result = build_graph(prop, interp.output_labels)
    result.tracer = "fx"
    return result


def trace_eager(model: nn.Module, args: tuple, kwargs: dict) -> DependencyGraph:
    """Run ``model`` eagerly under an ``EagerRecorder``."""
    prop = Propagator(model)
    recorder = EagerRecorder(prop)
    handles = []
    for module in model.modules():
        if is_leaf(module):
            handles.append(module.register_forward_pre_hook(recorder.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(recorder.post_hook, with_kwargs=True))
        else:
            handles.append(module.register_forward_pre_hook(recorder.enter, with_kwargs=True))
            handles.append(module.register_forward_hook(recorder.leave, with_kwargs=True, always_call=True))
    try:
        with recorder:
            out = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    result = build_graph(prop, recorder.label_of(out))
    result.tracer = "eager"
    return result
