"""Package-internal helpers of the subnet pillar: example inputs, running a model for inspection, argument checks and
choosing modules by name (the ``ignore=`` argument shared by pruning, HESSO, N:M sparsity, TRP and Maestro).

Nothing here is public API; the names carry no underscore because several modules of the package import them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from regimen.method import checked_arguments

__all__ = [
    "SCOPES",
    "check_float_tensor",
    "check_ignore",
    "check_ratio",
    "check_scope",
    "evaluating",
    "is_ignored",
    "normalize_inputs",
    "run_model",
    "unignored_modules",
]

#: How units are chosen across dependency groups: the lowest-ranked over all groups, or the same fraction per group.
SCOPES = ("global", "uniform")


@checked_arguments
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


def run_model(model: nn.Module, example_inputs: Any, failure: str = "example_inputs do not run the model") -> Any:
    """``model(*args, **kwargs)`` on ``example_inputs``; any failure becomes a ``ValueError`` starting with
    ``failure`` and naming the original error."""
    args, kwargs = normalize_inputs(example_inputs)
    try:
        return model(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - any failure means the inputs do not fit the model
        raise ValueError(f"{failure}: {type(error).__name__}: {error}") from error


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


def check_ratio(ratio: Any) -> float:
    """``ratio`` (a fraction of units to remove) as a float in [0, 1); anything else is a ``ValueError``."""
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def check_scope(scope: Any) -> str:
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'global' or 'uniform', got {scope!r}")
    return scope


def check_ignore(model: nn.Module, ignore: Iterable[str] | str) -> tuple[str, ...]:
    """``ignore`` as a tuple of module names of ``model``; names that do not exist raise ``ValueError``."""
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    names = {name for name, _ in model.named_modules()}
    unknown = [name for name in ignore if not isinstance(name, str) or name not in names]
    if unknown:
        raise ValueError(f"ignore names modules that do not exist: {unknown}")
    return ignore


def is_ignored(modules: Iterable[str], ignore: Iterable[str]) -> bool:
    """True when one of ``modules`` is named in ``ignore`` or lies inside a module named there (``""``: the root)."""
    ignore = tuple(ignore)
    return any(m == name or m.startswith(name + ".") or name == "" for m in modules for name in ignore)


def unignored_modules(model: nn.Module, ignore: Iterable[str] | str) -> list[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the modules named in ``ignore`` and everything inside them."""
    ignore = check_ignore(model, ignore)
    return [(name, module) for name, module in model.named_modules() if not is_ignored((name,), ignore)]


def check_float_tensor(name: str, value: object, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """``value`` as a floating-point tensor holding data (not on the meta device), with one of ``dims`` dimensions
    when given; else a TypeError/ValueError naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    if value.is_meta:
        raise ValueError(f"{name} must hold data; got a tensor on the meta device")
    if dims is not None and value.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(value.shape)}")
    return value
