"""Shared helpers of the dropout pillar (package-internal): argument validation, reproducible random draws, the
state_dict-transparent wrapper that surgery uses, and how modules are found by name or by convention.

Conventions (documented for users in the surgery functions):

- A *residual block* is a module with a child named ``drop_path`` (or ``drop_path1``, ``drop_path2``, ...: timm's
  ViT blocks have one per branch), applied to its residual branch before the addition. ``nn.Identity()`` is the
  placeholder (timm builds blocks this way with ``drop_path_rate=0``; regimen's ``BasicBlock`` has one too).
- Dotted module names are those of the plain model: a :class:`TransparentWrapper` that surgery put in between does
  not add a component (``"stages.2.conv1"`` still names the conv after ``stages.2`` was wrapped), exactly as the
  state_dict keys do not change.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "StochasticLayer",
    "TransparentWrapper",
    "check_dim_of",
    "check_feature_dim",
    "check_generator",
    "check_module_names",
    "check_probabilities",
    "check_probability",
    "check_tensor",
    "drop_path_slots",
    "locate_submodule",
    "rand",
    "replace_submodule",
    "residual_blocks",
    "unwrap",
]


def check_probability(p: object, name: str = "p") -> float:
    """``p`` as a float in [0, 1); raises TypeError / ValueError naming ``name`` otherwise."""
    if isinstance(p, bool) or not isinstance(p, int | float):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(p).__name__}")
    p = float(p)
    if not (0.0 <= p < 1.0) or math.isnan(p):
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def check_feature_dim(dim: object, name: str = "dim") -> int:
    """A module's ``dim`` argument: an int that is not the batch dimension 0."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim == 0:
        raise ValueError(f"{name} must be a non-batch dimension index, got {dim!r}")
    return dim


def check_dim_of(x: torch.Tensor, dim: object) -> int:
    """``dim`` as a non-negative index of a non-batch dimension of ``x``."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be in [{-x.dim()}, {x.dim()}) for x of shape {tuple(x.shape)}, got {dim}")
    dim = dim % x.dim()
    if dim == 0:
        raise ValueError("dim must not be the batch dimension 0")
    return dim


def check_probabilities(p: float | Sequence[float], name: str = "p") -> list[float]:
    """A probability or a non-empty sequence of them, each in [0, 1)."""
    if isinstance(p, Sequence) and not isinstance(p, str):
        if len(p) == 0:
            raise ValueError(f"{name} must be a probability or a non-empty list of probabilities, got []")
        return [check_probability(value, f"{name}[{index}]") for index, value in enumerate(p)]
    return [check_probability(p, name)]


def check_tensor(x: object, name: str = "x", min_dim: int = 1, exact_dim: int | None = None) -> torch.Tensor:
    """``x`` must be a floating tensor with at least ``min_dim`` (or exactly ``exact_dim``) dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if exact_dim is not None and x.dim() != exact_dim:
        raise ValueError(f"{name} must have {exact_dim} dimensions, got shape {tuple(x.shape)}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def rand(shape: Sequence[int], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape`` in ``like``'s dtype and device, drawn from ``generator`` when given.

    The draw happens on the generator's device (a CPU generator for a CUDA tensor draws on CPU and copies), so a
    seeded run gives the same masks on every device.
    """
    check_generator(generator)
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    if generator is None:
        noise = torch.rand(tuple(shape), dtype=dtype, device=like.device)
    else:
        noise = torch.rand(tuple(shape), dtype=dtype, device=generator.device, generator=generator)
    return noise.to(device=like.device)


class StochasticLayer(nn.Module):
    """Base of this pillar's random layers: a ``generator`` attribute (None = the global RNG), identity in eval.

    ``mc_dropout`` marks layers that :func:`regimen.dropout.mc_predict` keeps active at inference.
    """

    mc_dropout: bool = True

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.generator = check_generator(generator)


def check_module_names(names: object, argument: str) -> list[str]:
    """A non-empty list of dotted module names (a single string is refused: it is almost always a missing list)."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{argument} must be a list of dotted module names, got {type(names).__name__}")
    names = list(names)
    if not names:
        raise ValueError(f"{argument} must not be empty")
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"{argument} must hold non-empty strings (dotted module names), got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{argument} names a module twice: {names}")
    return names


# ----------------------------------------------------------------------------------------------------------------
# surgery: a wrapper that is invisible in state_dict keys, and name resolution through it


def _state_dict_post_hook(module: TransparentWrapper, state_dict: dict[str, Any], prefix: str, local: Any) -> None:
    inner = prefix + module.wrapped_name + "."
    for key in [k for k in state_dict if k.startswith(inner)]:
        state_dict[prefix + key[len(inner):]] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # per-module versions (BatchNorm's) move with their keys
        inner = inner[:-1]
        for key in [k for k in metadata if k == inner or k.startswith(inner + ".")]:
            metadata[prefix + key[len(inner) + 1:] if key != inner else prefix[:-1]] = metadata.pop(key)


def _load_pre_hook(module: TransparentWrapper, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    inner = prefix + module.wrapped_name + "."
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]:
        state_dict[inner + key[len(prefix):]] = state_dict.pop(key)


class TransparentWrapper(nn.Module):
    """Base of the modules surgery puts around an existing module, invisible to names.

    The wrapped module is the child ``wrapped_name``. The state_dict keys are those of the wrapped module alone
    (renamed on save and load), so a checkpoint of the changed model loads into the plain model and vice versa; and
    attributes the wrapper does not have itself are looked up (and assigned) on the wrapped module, so names that
    other methods recorded before the surgery (``model.get_submodule("stages.2.conv1")``, ``get_parameter``,
    ``set_submodule``) still resolve. The wrapper's other children must hold no parameters or buffers. Subclasses
    assign the wrapped module after ``super().__init__()``.
    """

    wrapped_name: str = "module"

    def __init__(self) -> None:
        super().__init__()
        self.register_state_dict_post_hook(_state_dict_post_hook)
        self.register_load_state_dict_pre_hook(_load_pre_hook)

    @property
    def wrapped(self) -> nn.Module:
        return self._modules[self.wrapped_name]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")  # not self._modules: this may run before __init__ (deepcopy)
            wrapped = modules.get(type(self).wrapped_name) if modules is not None else None
            if wrapped is None or name.startswith("__"):
                raise
            return getattr(wrapped, name)

    def __setattr__(self, name: str, value: Any) -> None:
        modules = self.__dict__.get("_modules")
        wrapped = modules.get(type(self).wrapped_name) if modules is not None else None
        if wrapped is not None and not self._owns(name) and _has_member(wrapped, name):
            setattr(wrapped, name, value)  # e.g. set_submodule("stages.2.conv1", ...) replacing a wrapped child
            return
        super().__setattr__(name, value)

    def _owns(self, name: str) -> bool:
        return (name in self.__dict__ or name in self._modules or name in self._parameters or name in self._buffers
                or hasattr(type(self), name))


def _has_member(module: nn.Module, name: str) -> bool:
    return name in module._modules or name in module._parameters or name in module._buffers


def locate_submodule(model: nn.Module, name: str, argument: str) -> tuple[nn.Module, str, nn.Module]:
    """``(holder, key, module)`` with ``holder._modules[key] is module`` for the dotted ``name`` of the plain model
    (wrappers are looked through, see the module docstring). Raises ValueError naming ``argument``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{argument} must be a non-empty dotted module name, got {name!r}")
    holder, key, module = model, "", model
    for part in name.split("."):
        holder = module
        while part not in holder._modules and isinstance(holder, TransparentWrapper):
            holder = holder.wrapped
        if holder._modules.get(part) is None:
            raise ValueError(f"{argument}: {name!r} does not name a submodule of the model")
        key, module = part, holder._modules[part]
    return holder, key, module


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside any :class:`TransparentWrapper` s around it."""
    while isinstance(module, TransparentWrapper):
        module = module.wrapped
    return module


def replace_submodule(model: nn.Module, name: str, build: Callable[[nn.Module], nn.Module],
                      argument: str = "module") -> nn.Module:
    """Replace the submodule ``name`` by ``build(old)`` in place (its position among its siblings is kept); returns
    the new module."""
    holder, key, old = locate_submodule(model, name, argument)
    new = build(old)
    setattr(holder, key, new)
    return new


_DROP_PATH_SLOT = re.compile(r"drop_path\d*")


def drop_path_slots(module: nn.Module) -> list[str]:
    """Names of ``module``'s children that are drop-path slots (``drop_path``, ``drop_path1``, ...)."""
    return [name for name, child in module._modules.items() if child is not None and _DROP_PATH_SLOT.fullmatch(name)]


def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of the modules that follow the residual-block convention, in registration order (forward
    order for a model built front to back), names as in the plain model."""
    found, seen = [], set()
    for name, module in model.named_modules():
        if drop_path_slots(module) and id(module) not in seen:
            seen.add(id(module))
            found.append((_plain_name(model, name), module))
    return found


def _plain_name(model: nn.Module, name: str) -> str:
    """``name`` (from ``named_modules``) without the components that step into a wrapper's wrapped module."""
    parts, module = [], model
    for part in name.split(".") if name else []:
        if not (isinstance(module, TransparentWrapper) and part == module.wrapped_name):
            parts.append(part)
        module = module._modules[part]
    return ".".join(parts)
