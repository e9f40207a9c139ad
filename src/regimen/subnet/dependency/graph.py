"""The public entry points: ``trace_dependencies`` / ``dependency_groups`` find the groups of a model; ``zero_units``
and ``scale_units`` edit a group's parameter slices in place (HESSO's progressive zeroing, lossless-removal checks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from regimen.method import checked_arguments
from regimen.subnet._common import evaluating, normalize_inputs, run_model
from regimen.subnet.dependency.group import DependencyGraph, Group, Slice
from regimen.subnet.dependency.ops import LeafTracer
from regimen.subnet.dependency.recorders import trace_eager, trace_fx

__all__ = ["TRACERS", "dependency_groups", "scale_units", "trace_dependencies", "zero_units"]

TRACERS = ("auto", "fx", "eager")


@checked_arguments
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
    if tracer not in TRACERS:
        raise ValueError(f"tracer must be 'auto', 'fx' or 'eager', got {tracer!r}")
    args, kwargs = normalize_inputs(example_inputs)
    with evaluating(model):
        run_model(model, example_inputs)  # a clear error when the inputs do not fit, before any tracing
        if tracer == "eager":
            return trace_eager(model, args, kwargs)
        try:
            graph = LeafTracer().trace(model)
        except Exception:  # noqa: BLE001 - any symbolic-tracing failure falls back to eager recording
            if tracer == "fx":
                raise
            return trace_eager(model, args, kwargs)
        return trace_fx(model, graph, args, kwargs)


@checked_arguments
def dependency_groups(model: nn.Module, example_inputs: Any, tracer: str = "auto") -> list[Group]:
    """The groups of coupled channels of ``model`` (see ``regimen.subnet.dependency`` for the ``Group`` layout)."""
    return trace_dependencies(model, example_inputs, tracer).groups


def _unit_positions(group: Group, units: torch.Tensor | Sequence[int]) -> list[tuple[Slice, torch.Tensor]]:
    return [(s, group.positions(s, units)) for s in group.slices]


@checked_arguments
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


@checked_arguments
def zero_units(model: nn.Module, group: Group, units: torch.Tensor | Sequence[int],
               roles: tuple[str, ...] = ("out",)) -> None:
    """Set the ``"out"`` parameter slices (filters, biases, norm weight and bias) of ``units`` to exactly zero."""
    scale_units(model, group, units, 0.0, roles)
