"""Package-internal surgery helpers: module size attributes after slicing, attention replacement, an undo log, and
optimizer rebinding. Used by ``prune.py`` (physical removal), ``serialize.py`` (re-shaping a base model to a saved
pruned state dict), ``maestro.py`` and ``lowrank.py`` (layer replacement).

Surgery goes through nn.Module's public API only: new modules are built by their constructors (``skip_init`` when
their initial values are overwritten anyway), Parameters are moved in with ``setattr`` (so they stay the same objects
and keep their optimizer state), and a failed surgery is undone by re-assigning what was there before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = [
    "HEAD_COUNT_ATTRIBUTES",
    "SurgeryLog",
    "attention_attributes",
    "module_info",
    "rebind_sliced",
    "replace_parameters",
    "size_attributes",
    "to_pruned_attention",
]


def module_info(module: nn.Module) -> dict[str, Any]:
    """What ``size_attributes`` needs to know about ``module`` from *before* its tensors were sliced."""
    if isinstance(module, nn.modules.conv._ConvNd):
        ipg = module.in_channels // module.groups
        opg = module.out_channels // module.groups
        return {"depthwise": (not module.transposed) and module.groups > 1 and ipg == 1, "opg": opg}
    if isinstance(module, nn.MultiheadAttention | PrunedMultiheadAttention):
        return {"head_dim": module.head_dim}
    return {}


def size_attributes(module: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    """The size attributes (``out_channels``, ``groups``, ``num_features``...) matching ``module``'s sliced tensors."""
    if isinstance(module, nn.modules.conv._ConvNd):
        weight = module.weight
        if module.transposed:
            return {"in_channels": weight.shape[0], "out_channels": weight.shape[1] * module.groups}
        if info.get("depthwise"):  # depthwise: groups follow the channels, each group keeps its multiplier
            groups = weight.shape[0] // info["opg"]
            return {"out_channels": weight.shape[0], "groups": groups, "in_channels": groups}
        return {"out_channels": weight.shape[0], "in_channels": weight.shape[1] * module.groups}
    if isinstance(module, nn.Linear):
        return {"out_features": module.weight.shape[0], "in_features": module.weight.shape[1]}
    if isinstance(module, nn.modules.batchnorm._NormBase):
        tensor = module.weight if module.weight is not None else module.running_mean
        return {} if tensor is None else {"num_features": tensor.shape[0]}
    if isinstance(module, nn.LayerNorm):
        return {} if module.weight is None else {"normalized_shape": tuple(module.weight.shape)}
    if isinstance(module, nn.Embedding):
        return {"embedding_dim": module.weight.shape[1]}
    if isinstance(module, nn.PReLU):
        return {"num_parameters": module.weight.numel()}
    if isinstance(module, PrunedMultiheadAttention):
        return {"embed_dim": module.in_proj_weight.shape[1],
                "num_heads": module.in_proj_weight.shape[0] // (3 * module.head_dim)}
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2 and all(
            isinstance(getattr(module, a, None), int) for a in ("nf", "nx")):
        # Hugging Face's Conv1D (GPT-2): a Linear with the weight transposed, ``x @ W + b`` with W (nx, nf)
        return {"nf": weight.shape[1], "nx": weight.shape[0]}
    return {}


#: Attributes attention modules keep about their heads: ``(names, what they count)``. ``heads``: query heads,
#: ``kv_heads``: key/value heads, ``inner``: query heads x head_dim (e.g. GPT-2's ``split_size``).
HEAD_COUNT_ATTRIBUTES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("num_heads", "num_attention_heads", "n_head", "n_heads", "nhead", "heads"), "heads"),
    (("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head"), "kv_heads"),
    (("all_head_size", "split_size", "inner_dim", "inner_size"), "inner"),
)


def attention_attributes(module: nn.Module, before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, Any]:
    """New values of ``module``'s head-count attributes (``HEAD_COUNT_ATTRIBUTES``) that equal the old counts
    ``before`` (``{"heads", "kv_heads", "inner"}``); attributes holding other values are left alone."""
    values: dict[str, Any] = {}
    for names, what in HEAD_COUNT_ATTRIBUTES:
        for name in names:
            value = getattr(module, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == before[what]:
                values[name] = after[what]
    return values


def to_pruned_attention(mha: nn.MultiheadAttention, head_dim: int) -> PrunedMultiheadAttention:
    """A ``PrunedMultiheadAttention`` that owns ``mha``'s (already sliced) Parameters and ``out_proj``."""
    weight = mha.in_proj_weight
    new = nn.utils.skip_init(
        PrunedMultiheadAttention, embed_dim=weight.shape[1], num_heads=weight.shape[0] // (3 * head_dim),
        head_dim=head_dim, dropout=mha.dropout, bias=mha.in_proj_bias is not None, batch_first=mha.batch_first,
        device=weight.device, dtype=weight.dtype,
    )
    new.in_proj_weight = weight
    new.in_proj_bias = mha.in_proj_bias
    new.out_proj = mha.out_proj
    return new.train(mha.training)


class SurgeryLog:
    """Makes changes to modules and remembers what was there, so ``undo()`` restores the very same objects."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, ...]] = []

    def set_tensor(self, module: nn.Module, name: str, value: torch.Tensor) -> None:
        """Replace parameter or buffer ``name`` of ``module`` (a Parameter stays a parameter, a buffer a buffer)."""
        self._undo.append(("attr", module, name, getattr(module, name)))
        setattr(module, name, value)

    def set_attributes(self, module: nn.Module, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            self._undo.append(("attr", module, name, getattr(module, name)))
            setattr(module, name, value)

    def set_submodule(self, model: nn.Module, name: str, module: nn.Module) -> None:
        self._undo.append(("module", model, name, model.get_submodule(name)))
        model.set_submodule(name, module)

    def undo(self) -> None:
        """Re-assign everything changed, newest first."""
        for kind, owner, name, old in reversed(self._undo):
            if kind == "module":
                owner.set_submodule(name, old)
            else:
                setattr(owner, name, old)
        self._undo.clear()


Replaced = dict[int, tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]]]]


def _slice_like(value: Any, old: torch.Tensor, kept: list[tuple[int, torch.Tensor]]) -> Any:
    if isinstance(value, torch.Tensor) and value.shape == old.shape and value.dim() > 0:
        out = value
        for dim, keep in kept:
            out = out.index_select(dim, keep.to(out.device))
        return out.clone()
    return value


def rebind_sliced(optimizer: torch.optim.Optimizer, replaced: Replaced) -> None:
    """Point ``optimizer`` at the sliced Parameters; per-parameter state of the old shape is sliced the same way.

    ``replaced`` maps ``id(old)`` to ``(old, new, [(dim, kept positions), ...])``.
    """
    for param_group in optimizer.param_groups:
        params = param_group["params"]
        for index, param in enumerate(params):
            if id(param) in replaced:
                old, new, kept = replaced[id(param)]
                params[index] = new
                state = optimizer.state.pop(old, None)
                if state is not None:
                    optimizer.state[new] = {k: _slice_like(v, old, kept) for k, v in state.items()}


def replace_parameters(optimizer: torch.optim.Optimizer,
                       replaced: Mapping[nn.Parameter, Sequence[nn.Parameter]]) -> None:
    """Each old Parameter leaves its param group (and its state); its replacements join that group in its place."""
    for group in optimizer.param_groups:
        params: list[nn.Parameter] = []
        for param in group["params"]:
            if param in replaced:
                params.extend(p for p in replaced[param] if not any(p is q for q in params))
                optimizer.state.pop(param, None)
            else:
                params.append(param)
        group["params"] = params
