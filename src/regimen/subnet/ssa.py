"""Stochastically subsampled self-attention (SSA): each training step, every attention layer attends to a random
subset of the key/value positions; evaluation uses full attention.

Paper: Hussain, Zaki, Subramanian, "The Information Pathways Hypothesis: Transformers are Dynamic Self-Ensembles",
KDD 2023, arXiv 2306.01705 (no reference code was released). Per layer and sample, ``K = ⌈T / ratio⌉`` key/value
positions ``S`` are drawn uniformly without replacement (shared by every query and head of that sample), gathered
(not masked, so attention costs ``T × K`` instead of ``T × T``), and query ``i`` attends to
``{j ∈ S : j < i} ∪ {i}`` in a causal model (the GPT), ``{j ∈ S : j ≠ i} ∪ {i}`` in a bidirectional one (the ViT)::

    out_i = Σ_{j ∈ S, j < i} softmax_j(q_i·k_j · s) v_j  +  softmax_i(q_i·k_i · s) v_i     (one softmax over both)

Sampling: uniform, or **locality-biased** (``locality = τ > 0``, the paper's "locally-biased sampling to prioritize
key connections"; its exact rule was not published, so this is our parameterisation): per sample a centre ``c`` is
drawn uniformly and ``K`` positions are drawn without replacement with probability ∝ ``exp(−|j − c| / τ)``
(Gumbel top-k: ``argtopk_j(−|j − c| / τ + G_j)``, ``G_j`` standard Gumbel). Distances are in sequence positions
(for the ViT: patches in raster order).

Pitfalls handled: positions stay the original ones (rotary q/k are rotated before the gather); a query always sees
itself, so no row is empty and ``j = i`` is never counted twice; the last ``dense_fraction`` of training uses full
attention (the paper's short dense fine-tune before dense inference); randomness from ``ctx.generator``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = [
    "SubsampledAttentionMethod",
    "sample_kept_positions",
    "subsampled_attention",
    "subsampled_causal_attention",
]


@checked_arguments
def sample_kept_positions(batch: int, length: int, keep: int, generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu", locality: float = 0.0) -> torch.Tensor:
    """``(batch, keep)`` sorted positions per sample, without replacement from ``[0, length)``: uniform
    (``locality = 0``), or with probability ∝ ``exp(−|j − c| / locality)`` around a uniform random centre ``c`` per
    sample (Gumbel top-k)."""
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    if not 1 <= keep <= length:
        raise ValueError(f"keep must lie in [1, length = {length}], got {keep}")
    if not locality >= 0.0 or math.isinf(locality):
        raise ValueError(f"locality must be a finite number >= 0 (0: uniform), got {locality}")
    scores = torch.rand(batch, length, generator=generator)
    if locality > 0.0:
        centres = torch.randint(0, length, (batch, 1), generator=generator)
        distance = (torch.arange(length).unsqueeze(0) - centres).abs()
        gumbel = -torch.log(-torch.log(scores.clamp(1e-12, 1.0 - 1e-7)))
        scores = -(gumbel - distance / locality)  # argsort ascending = the largest perturbed log-weights first
    return scores.argsort(dim=1)[:, :keep].sort(dim=1).values.to(device)


@checked_arguments
def subsampled_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kept: torch.Tensor,
                                scale: float | None = None) -> torch.Tensor:
    """Causal attention of ``(B, H, T, D)`` queries to the kept keys/values ``kept`` ``(B, K)`` plus themselves."""
    require_data(kept=kept)
    return subsampled_attention(q, k, v, kept, scale, causal=True)


@checked_arguments
def subsampled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kept: torch.Tensor,
                         scale: float | None = None, causal: bool = True) -> torch.Tensor:
    """Attention of ``(B, H, T, D)`` queries to the kept keys/values ``kept`` ``(B, K)`` plus themselves: the
    earlier kept ones (``causal``) or all the other kept ones (bidirectional)."""
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, H, T, D) alike, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    for name, value in (("k", k), ("v", v)):
        if value.dtype != q.dtype:
            raise TypeError(f"{name} must have q's dtype {q.dtype}, got {value.dtype}")
    if not q.is_floating_point():
        raise TypeError(f"q, k and v must be floating point, got {q.dtype}")
    b, h, t, d = q.shape
    require_data(kept=kept)  # the positions index the keys
    require_same_device(q=q, k=k, v=v, kept=kept)
    if kept.dim() != 2 or kept.shape[0] != b or kept.is_floating_point() or kept.dtype == torch.bool:
        raise ValueError(f"kept must be integer positions (B={b}, K), got {tuple(kept.shape)} {kept.dtype}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    index = kept[:, None, :, None]
    k_kept = k.gather(2, index.expand(b, h, kept.shape[1], d))
    v_kept = v.gather(2, index.expand(b, h, kept.shape[1], v.shape[-1]))
    logits = (q @ k_kept.transpose(-1, -2)) * scale  # (B, H, T, K)
    query = torch.arange(t, device=q.device)[None, None, :, None]
    visible = kept[:, None, None, :] < query if causal else kept[:, None, None, :] != query
    logits = logits.masked_fill(~visible, float("-inf"))
    own = (q * k).sum(dim=-1, keepdim=True) * scale  # (B, H, T, 1)
    weights = torch.cat([logits, own], dim=-1).float().softmax(dim=-1).to(q.dtype)
    return weights[..., :-1] @ v_kept + weights[..., -1:] * v


class _SubsampledAttention:
    """The ``train_attention`` of every attention layer: draws its kept positions at each call."""

    def __init__(self, ratio: float, generator: torch.Generator, locality: float = 0.0) -> None:
        self.ratio, self.generator, self.locality, self.active = ratio, generator, locality, True

    def __call__(self, q, k, v, module):
        if not self.active:
            return module.train_attention_dense(q, k, v)
        t = q.shape[2]
        kept = sample_kept_positions(q.shape[0], t, max(1, math.ceil(t / self.ratio)), self.generator, q.device,
                                     self.locality)
        return subsampled_attention(q, k, v, kept, module.scale, causal=getattr(module, "causal", True))


def _attention_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "train_attention") and hasattr(m, "attend")]


@register_method
class SubsampledAttentionMethod(Method):
    """Train every attention layer on a random 1/ratio of the key positions (SSA); full attention to evaluate.

    Args:
        ratio: the subsampling factor ρ (keep ⌈T/ρ⌉ positions; the paper: 2-8).
        dense_fraction: the last fraction of training runs full attention (the dense fine-tune).
        locality: τ of the locality-biased sampling, in positions (0: uniform).

    Serves any model with regimen's attention layers (the GPT, the ViT); other models are refused at setup.
    """

    name = "ssa"
    paper_id = "arXiv:2306.01705"
    claim = ("stochastically subsampled self-attention cuts the memory and compute of self-attention by 4-8x during "
             "training and improves generalisation, the dense model being an ensemble of the sampled sub-networks")
    claimed_effect = "better"

    def __init__(self, ratio: float = 4.0, dense_fraction: float = 0.1, locality: float = 0.0) -> None:
        if not ratio >= 1.0:
            raise ValueError(f"ssa: ratio must be >= 1, got {ratio}")
        if not 0.0 <= dense_fraction < 1.0:
            raise ValueError(f"ssa: dense_fraction must be in [0, 1), got {dense_fraction}")
        if not locality >= 0.0 or math.isinf(locality):
            raise ValueError(f"ssa: locality must be a finite number >= 0 (0: uniform sampling), got {locality}")
        self.ratio, self.dense_fraction, self.locality = float(ratio), float(dense_fraction), float(locality)
        self.attention: _SubsampledAttention | None = None

    def setup(self, ctx: Context) -> None:
        layers = _attention_layers(ctx.model)
        if not layers:
            raise ConfigurationError(f"ssa needs attention layers with a train_attention slot (regimen's GPT or "
                                     f"ViT); {type(ctx.model).__name__} has none")
        self.attention = _SubsampledAttention(self.ratio, ctx.generator, self.locality)
        for layer in layers:
            layer.train_attention_dense = _dense(layer)
            layer.train_attention = self.attention

    def before_forward(self, x, y, ctx: Context) -> None:
        total = max(ctx.run.steps_per_epoch * ctx.run.epochs, 1)
        self.attention.active = ctx.step / total < 1.0 - self.dense_fraction

    def on_epoch_end(self, ctx: Context) -> None:
        self.log(ctx, "active", float(self.attention.active))


def _dense(layer: nn.Module):
    def dense(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=getattr(layer, "causal", True),
                                                                scale=layer.scale)

    return dense
