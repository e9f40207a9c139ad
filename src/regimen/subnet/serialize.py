"""Save and load pruned (or factorised) models with their architecture, loadable with ``weights_only=True``.

A pruned model differs from its constructor's model only in tensor shapes (and packed attention replaced by
``PrunedMultiheadAttention``, TRP's factorised layers by ``FactorizedConv2d``/``FactorizedLinear``), so the file
holds the state dict plus a description of the architecture: the class (``module.QualName``), every submodule's
type, and for regimen's reference models the constructor config. ``restore_pruned`` re-shapes a freshly built,
unpruned model to the state dict's shapes, fixes the size attributes (``out_channels``, ``in_features``, ``groups``,
``num_features``...) and loads the weights. No pickled code, so loading is safe.

Any model saves without a ``spec``::

    prune(model, example, ratio=0.5)
    save_pruned(model, "pruned.pt")
    model = load_pruned("pruned.pt", model=YourNet())   # your class, built as before pruning

Reference models (``regimen.models``) load without ``model=``. Before anything is changed, ``load_pruned`` checks
that ``model`` is the saved class with the same submodules and parameter names, and that no saved tensor is larger
than the model's (pruning only shrinks); otherwise it raises ``ConfigurationError`` naming what differs and leaves
``model`` as it was.
"""

from __future__ import annotations

import copy
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regimen._archive import verify_torch_archive
from regimen.errors import ConfigurationError
from regimen.method import checked_arguments
from regimen.subnet._surgery import HEAD_COUNT_ATTRIBUTES, module_info, size_attributes, to_pruned_attention
from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = ["architecture_spec", "build_from_spec", "load_pruned", "restore_pruned", "save_pruned"]

FORMAT = "regimen-pruned-v1"


@checked_arguments
def architecture_spec(model: nn.Module) -> dict[str, Any] | None:
    """``{"class": "ResNet"|"MLP", "config": {...}}`` for regimen reference models (``model.config``), else None."""
    from regimen import models

    name = type(model).__name__
    config = getattr(model, "config", None)
    if isinstance(config, dict) and getattr(models, name, None) is type(model):
        return {"class": name, "config": dict(config)}
    return None


@checked_arguments
def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a regimen reference model from ``architecture_spec`` output (only classes of ``regimen.models``)."""
    from regimen import models

    name = spec.get("class")
    cls = getattr(models, str(name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"unknown model class {name!r} in the saved architecture")
    return cls(**spec.get("config", {}))


@checked_arguments
def _head_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{module: {attribute: value}}`` of the head-count attributes attention modules keep (``num_heads``,
    ``split_size``...; see ``_surgery.HEAD_COUNT_ATTRIBUTES``), which head pruning changes."""
    names = [name for names, _ in HEAD_COUNT_ATTRIBUTES for name in names]
    counts: dict[str, dict[str, int]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
            continue  # rebuilt from their tensors
        found = {a: v for a in names if isinstance(v := getattr(module, a, None), int) and not isinstance(v, bool)}
        if found:
            counts[module_name] = found
    return counts


def restore_pruned(model: nn.Module, state_dict: dict[str, torch.Tensor],
                   counts: dict[str, dict[str, int]] | None = None) -> nn.Module:
    """Re-shape ``model`` (the unpruned architecture) to ``state_dict``'s shapes, then load it (strict); ``counts``
    (from ``_head_counts`` of the pruned model) restores attention modules' head-count attributes."""
    from regimen.subnet.lowrank import restore_lowrank

    restore_lowrank(model, state_dict)
    touched: dict[str, nn.Module] = {}
    infos: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue
        current = getattr(module, attr, None)
        if not isinstance(current, torch.Tensor) or current.shape == value.shape:
            continue
        if module_name not in infos:
            infos[module_name] = module_info(module)
        empty = torch.empty_like(value, dtype=current.dtype)  # the right shape; load_state_dict fills it
        if isinstance(current, nn.Parameter):
            empty = nn.Parameter(empty, requires_grad=current.requires_grad)
        setattr(module, attr, empty)
        touched[module_name] = module
        if module_name.endswith("out_proj"):
            parent = module_name.rpartition(".")[0]
            owner = model.get_submodule(parent) if parent else model
            if isinstance(owner, nn.MultiheadAttention | PrunedMultiheadAttention):
                infos.setdefault(parent, module_info(owner))
                touched[parent] = owner
    for name, module in touched.items():
        for attr, value in size_attributes(module, infos[name]).items():
            setattr(module, attr, value)
    for name, module in touched.items():
        if isinstance(module, nn.MultiheadAttention):
            model.set_submodule(name, to_pruned_attention(module, infos[name]["head_dim"]))
    for name, values in (counts or {}).items():
        module = model.get_submodule(name)
        for attr, value in values.items():
            if not isinstance(getattr(module, attr, None), int) or not isinstance(value, int):
                raise ValueError(f"module {name!r} has no integer attribute {attr!r} to restore")
            setattr(module, attr, value)
    model.load_state_dict(state_dict, strict=True)
    return model


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# Constructor arguments that pruning never changes: a model built with other values is not the one that was pruned
# (its tensors could still be large enough to hold the saved ones, e.g. a 3x3 kernel inside a 5x5 one).
FIXED_ATTRIBUTES = ("kernel_size", "stride", "padding", "dilation", "padding_mode", "output_padding", "transposed",
                    "num_embeddings", "padding_idx", "eps", "affine", "track_running_stats", "batch_first")


def _module_record(module: nn.Module) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(module).__name__}
    for attr in FIXED_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, bool | int | float | str | tuple):
            record[attr] = value
    return record


def _describe(model: nn.Module, spec: dict[str, Any] | None) -> dict[str, Any]:
    """The saved architecture: ``spec`` (if any), the class's qualified name, every submodule's type and fixed
    constructor arguments (kernel size, stride...); sizes are the state dict's shapes."""
    arch = dict(spec or {})
    arch.setdefault("class", type(model).__name__)
    arch["qualname"] = _qualname(type(model))
    arch["modules"] = {name: _module_record(module) for name, module in model.named_modules() if name}
    arch["head_counts"] = _head_counts(model)
    return arch


@checked_arguments
def save_pruned(model: nn.Module, path: str | os.PathLike, spec: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "architecture", "model", "extra"}`` atomically; works for any model.

    Args:
        model: the pruned (or factorised) model.
        path: the file to write (parent directories are created).
        spec: optional ``{"class", "config"}`` so that ``load_pruned(path)`` can build the model without
            ``model=``; defaults to ``architecture_spec(model)`` (regimen's reference models). For your own
            model leave it out and load with ``load_pruned(path, model=YourNet())``.
        extra: anything else to store (plain Python values and tensors only).
    """
    spec = spec if spec is not None else architecture_spec(model)
    payload = {"format": FORMAT, "architecture": _describe(model, spec), "model": model.state_dict(),
               "extra": extra or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _listed(names: Any, limit: int = 5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _check_class(arch: dict[str, Any], model: nn.Module, path: Any) -> None:
    saved = arch.get("qualname")
    if saved is not None and saved != _qualname(type(model)):
        raise ConfigurationError(f"load_pruned: {path} holds a {saved}, but model= is a {_qualname(type(model))}")


def _check_modules(arch: dict[str, Any], trial: nn.Module, path: Any) -> None:
    """Same submodule names and types (pruned attention may stand where the model has nn.MultiheadAttention)."""
    saved = arch.get("modules")
    if not isinstance(saved, dict):
        return
    have = {name: _module_record(module) for name, module in trial.named_modules() if name}
    if saved.keys() != have.keys():
        raise ConfigurationError(
            f"load_pruned: the submodules of model= differ from those saved in {path}: "
            f"missing in model= {_listed(saved.keys() - have.keys()) or 'none'}; "
            f"not in the file {_listed(have.keys() - saved.keys()) or 'none'}"
        )
    for name, record in saved.items():
        kind, other = record["type"], have[name]["type"]
        if kind != other and not (kind == "PrunedMultiheadAttention" and other == "MultiheadAttention"):
            raise ConfigurationError(f"load_pruned: module {name!r} is a {kind} in {path} but a {other} in model=")
        for attr, value in record.items():
            if attr != "type" and have[name].get(attr) != value:
                raise ConfigurationError(f"load_pruned: module {name!r} has {attr}={value!r} in {path} but "
                                         f"{attr}={have[name].get(attr)!r} in model=")


def _check_tensors(state_dict: dict[str, torch.Tensor], trial: nn.Module, path: Any) -> None:
    """Same tensor names and ranks; pruning only removes units, so no saved size may exceed the model's."""
    have = trial.state_dict()
    if state_dict.keys() != have.keys():
        raise ConfigurationError(
            f"load_pruned: the parameters and buffers of model= differ from those saved in {path}: "
            f"missing in model= {_listed(state_dict.keys() - have.keys()) or 'none'}; "
            f"not in the file {_listed(have.keys() - state_dict.keys()) or 'none'}"
        )
    for key, value in state_dict.items():
        shape = tuple(have[key].shape)
        if value.dim() != len(shape) or any(s > m for s, m in zip(value.shape, shape, strict=True)):
            raise ConfigurationError(
                f"load_pruned: {key!r} has shape {tuple(value.shape)} in {path} but {shape} in model=; a pruned "
                "model is only ever smaller than the model it was pruned from: pass the model as built before "
                "pruning (same constructor arguments)"
            )


def _read_payload(path: Path) -> Any:
    """``torch.load(weights_only=True)`` after checking the archive's CRC-32 checksums (a flipped bit in the weights
    would otherwise load silently); every failure a one-line ConfigurationError naming the file."""
    if not path.is_file():
        raise ConfigurationError(f"load_pruned: file not found: {path}")
    verify_torch_archive(path, ConfigurationError, f"{FORMAT} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigurationError(f"{path} is not a readable {FORMAT} file: {first}") from None


@checked_arguments
def load_pruned(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a file written by ``save_pruned`` (``weights_only=True``: no pickled code runs).

    Args:
        path: the file.
        model: a fresh instance of the saved class as built *before* pruning, e.g. ``YourNet()``; it is re-shaped in
            place and returned. Optional only for regimen's reference models (built from the saved config).

    Raises:
        ConfigurationError: ``model`` is missing for your own class, or its class, submodules, parameter names or
            sizes do not fit the file (the message names what differs; ``model`` is then left unchanged).
    """
    payload = _read_payload(Path(path))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("model"), dict):
        raise ConfigurationError(f"{path} is not a {FORMAT} file")
    arch = payload.get("architecture") or {}
    state_dict = payload["model"]
    if model is None:
        if "config" not in arch:
            name = str(arch.get("class", "YourNet"))
            raise ConfigurationError(f"{path} holds a {arch.get('qualname', name)}, not a regimen reference model: "
                                     f"load with load_pruned(path, model={name}())")
        return restore_pruned(build_from_spec(arch), state_dict, arch.get("head_counts"))
    if not isinstance(model, nn.Module):
        raise ConfigurationError(f"load_pruned: model= must be an nn.Module, got {type(model).__name__}")
    _check_class(arch, model, path)
    trial = copy.deepcopy(model)  # checked and re-shaped first, so that a failure leaves ``model`` as it was
    from regimen.subnet.lowrank import restore_lowrank

    restore_lowrank(trial, state_dict)
    _check_modules(arch, trial, path)
    _check_tensors(state_dict, trial, path)
    counts = arch.get("head_counts")
    try:
        restore_pruned(trial, state_dict, counts)
    except (RuntimeError, ValueError, AttributeError) as error:
        raise ConfigurationError(f"load_pruned: cannot load {path} into model=: {error}") from error
    return restore_pruned(model, state_dict, counts)
