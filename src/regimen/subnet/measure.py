"""Measuring a model before and after pruning: parameters, multiply-accumulates per sample, layer widths, the report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from regimen.method import checked_arguments
from regimen.subnet._common import evaluating, normalize_inputs, run_model
from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = ["PruneReport", "count_macs", "count_params", "layer_widths"]

_ATTENTION = (nn.MultiheadAttention, PrunedMultiheadAttention)


@checked_arguments
def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _attention_macs(module: nn.Module, inputs: tuple) -> int:
    """q/k/v projections, scores, weighted sum and output projection of one attention call."""
    inner = module.num_heads * module.head_dim
    query, key = inputs[0], inputs[1]
    tokens = query.numel() // module.embed_dim
    source_tokens = key.numel() // module.embed_dim
    batched = key.dim() == 3
    source_length = key.shape[1 if module.batch_first else 0] if batched else key.shape[0]
    projections = tokens * module.embed_dim * inner + 2 * source_tokens * module.embed_dim * inner
    attention = 2 * tokens * source_length * inner
    return projections + attention + tokens * inner * module.embed_dim


@checked_arguments
def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates per sample of one forward pass (conv, linear, attention), measured with hooks."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(module, nn.modules.conv._ConvNd):
            kernel = math.prod(module.kernel_size)
            if module.transposed:
                total[0] += inputs[0].numel() * (module.out_channels // module.groups) * kernel
            else:
                total[0] += out.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total[0] += out.numel() * module.in_features
        elif isinstance(module, _ATTENTION):
            total[0] += _attention_macs(module, inputs)

    # an attention layer's own out_proj is counted with the attention (it may not run as a module call)
    inside_attention = {id(m.out_proj) for m in model.modules() if isinstance(m, _ATTENTION)}
    handles = [module.register_forward_hook(hook) for module in model.modules()
               if id(module) not in inside_attention
               and isinstance(module, nn.modules.conv._ConvNd | nn.Linear | nn.MultiheadAttention
                              | PrunedMultiheadAttention)]
    args, _ = normalize_inputs(example_inputs)
    try:
        with evaluating(model):
            run_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 0 else 1
    return total[0] // max(batch, 1)


@checked_arguments
def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output width of every conv / linear layer and number of heads of every attention layer."""
    widths = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths[name] = module.out_channels
        elif isinstance(module, nn.Linear):
            widths[name] = module.out_features
        elif isinstance(module, _ATTENTION):
            widths[name + " (heads)"] = module.num_heads
    return widths


@dataclass
class PruneReport:
    """What ``prune`` did: parameters and MACs (per sample) before/after, per-layer widths, groups pruned."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    groups_pruned: int
    units_removed: int
    units_total: int
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [
            f"params {self.params_before:,} -> {self.params_after:,} "
            f"({self.params_after / max(self.params_before, 1):.1%})",
            f"MACs/sample {self.macs_before:,} -> {self.macs_after:,} "
            f"({self.macs_after / max(self.macs_before, 1):.1%})",
            f"units removed {self.units_removed}/{self.units_total} in {self.groups_pruned} groups",
            f"{'layer':<40} {'before':>7} {'after':>7}",
        ]
        for name, before in self.widths_before.items():
            after = self.widths_after.get(name, before)
            lines.append(f"{name or '<root>':<40} {before:>7} {after:>7}{'' if after == before else '  *'}")
        return "\n".join(lines)
