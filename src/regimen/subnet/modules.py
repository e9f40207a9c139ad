"""Layers that pruning produces: packed multi-head self-attention whose inner width differs from its embedding width.

Structured pruning of ``nn.MultiheadAttention`` removes whole heads (the q, k and v rows of a head and its columns of
``out_proj``) and, through the residual stream, embedding dims. ``nn.MultiheadAttention`` ties the inner width
``num_heads * head_dim`` to ``embed_dim``; ``PrunedMultiheadAttention`` does not, with the same parameter names so
state dicts line up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import checked_arguments

__all__ = ["PrunedMultiheadAttention"]


@checked_arguments
class PrunedMultiheadAttention(nn.Module):
    """Packed multi-head self-attention whose inner width ``num_heads * head_dim`` may differ from ``embed_dim``.

    Same parameter names and forward signature as ``nn.MultiheadAttention`` (``in_proj_weight (3*inner, embed_dim)``,
    ``in_proj_bias``, ``out_proj``), so state dicts line up; returns ``(output, weights or None)``.

    Args:
        embed_dim: width of the input and output tokens.
        num_heads: number of heads.
        head_dim: width of one head (``nn.MultiheadAttention``: ``embed_dim // num_heads``).
        dropout: dropout on the attention weights in training.
        bias: learn ``in_proj_bias`` and ``out_proj.bias``.
        batch_first: inputs are ``(batch, length, embed_dim)`` instead of ``(length, batch, embed_dim)``.
        device, dtype: where and how the parameters are allocated (as for ``nn.Linear``).
    """

    # read by nn.TransformerEncoderLayer/TransformerEncoder: False keeps them off their fused fast path, which
    # assumes num_heads * head_dim == embed_dim
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0, bias: bool = True,
                 batch_first: bool = False, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if num_heads < 1 or head_dim < 1 or embed_dim < 1:
            raise ValueError(f"embed_dim, num_heads and head_dim must be >= 1, got {embed_dim}, {num_heads}, "
                             f"{head_dim}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **factory))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, **factory))
        else:  # registered as None, as nn.MultiheadAttention does, so the attribute is a parameter slot
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (2, 3):
                raise ValueError(f"{name} must be a (L, E) or batched 3-d tensor, got "
                                 f"{tuple(getattr(tensor, 'shape', ())) or type(tensor).__name__}")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, length, _ = query.shape
        source = key.shape[1]
        if key.shape[0] != batch or value.shape[:2] != key.shape[:2]:
            raise ValueError(f"query, key and value must share the batch (and key and value the source length), got "
                             f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)} "
                             f"(batch first)")
        inner = self.num_heads * self.head_dim
        w_q, w_k, w_v = self.in_proj_weight.split(inner)
        b_q = b_k = b_v = None
        if self.in_proj_bias is not None:
            b_q, b_k, b_v = self.in_proj_bias.split(inner)
        q = F.linear(query, w_q, b_q).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(batch, source, self.num_heads, self.head_dim).transpose(1, 2)
        scores = (q * (1.0 / math.sqrt(self.head_dim))) @ k.transpose(-2, -1)
        if is_causal and attn_mask is None:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=query.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dim() == 2 else attn_mask.view(batch, self.num_heads, length, source)
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(batch, 1, 1, source)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        attn = scores.softmax(dim=-1)
        weights = attn
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(batch, length, inner)
        out = self.out_proj(out)
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        if unbatched:
            weights = weights.squeeze(0)
        return out, weights

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"dropout={self.dropout}, batch_first={self.batch_first}")
