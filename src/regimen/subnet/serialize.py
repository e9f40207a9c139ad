"""Save and load pruned (or factorised) models with their architecture, loadable with ``weights_only=True``.

A pruned model differs from its constructor's model only in tensor shapes (and packed attention replaced by
``PrunedMultiheadAttention``, TRP's factorised layers by ``FactorizedConv2d``/``FactorizedLinear``), so the file
holds the base model's constructor spec plus the state dict: ``restore_pruned`` re-shapes a freshly built base model
to the state dict's shapes, fixes module attributes and loads the weights. No pickled code, so loading is safe.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regimen.subnet._surgery import module_info, size_attributes, to_pruned_attention
from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = ["architecture_spec", "build_from_spec", "load_pruned", "restore_pruned", "save_pruned"]

FORMAT = "regimen-pruned-v1"


def architecture_spec(model: nn.Module) -> dict[str, Any] | None:
    """``{"class": "ResNet"|"MLP", "config": {...}}`` for regimen reference models (``model.config``), else None."""
    from regimen import models

    name = type(model).__name__
    config = getattr(model, "config", None)
    if isinstance(config, dict) and getattr(models, name, None) is type(model):
        return {"class": name, "config": dict(config)}
    return None


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a regimen reference model from ``architecture_spec`` output (only classes of ``regimen.models``)."""
    from regimen import models

    name = spec.get("class")
    cls = getattr(models, str(name), None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"unknown model class {name!r} in the saved architecture")
    return cls(**spec.get("config", {}))


def restore_pruned(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Re-shape ``model`` (the unpruned architecture) to ``state_dict``'s shapes, then load it (strict)."""
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
    model.load_state_dict(state_dict, strict=True)
    return model


def save_pruned(model: nn.Module, path: str | os.PathLike, spec: dict[str, Any] | None = None,
                extra: dict[str, Any] | None = None) -> None:
    """Write ``{"format", "architecture", "model", "extra"}`` atomically; ``spec`` defaults to ``architecture_spec``."""
    spec = spec if spec is not None else architecture_spec(model)
    if spec is None:
        raise ValueError("save_pruned needs spec= for models that are not regimen reference models")
    payload = {"format": FORMAT, "architecture": spec, "model": model.state_dict(), "extra": extra or {}}
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


def load_pruned(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Load a file written by ``save_pruned``; ``model`` is the unpruned base (built from the spec when None)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if model is None:
        model = build_from_spec(payload["architecture"])
    return restore_pruned(model, payload["model"])
