"""Transformer blocks shared by regimen's transformer models (``gpt``, ``vit``): pre-norm residual blocks of
(causal, or with ``causal=False`` bidirectional) self-attention and a feed-forward network (dense GELU / SwiGLU,
or a top-k mixture of experts).

* Attention: ``F.scaled_dot_product_attention`` (fused, causal), optional qk-layernorm (Dehghani et al. 2023;
  Wortsman et al. 2023, arXiv 2309.14322: a LayerNorm over the head dimension of q and k, with gains, before the dot
  product), optional rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864: pairs of channels
  ``(x_{2i}, x_{2i+1})`` rotated by ``pos · base^{-2i/d}``). ``max_logit`` (set ``track_max_logit = True``) records
  the largest pre-softmax attention logit ``max q·k/√d`` of the last forward (the instability the small-scale-proxies
  paper tracks); it costs an explicit ``QKᵀ`` and is off by default.
* Feed-forward: ``gelu`` (``W₂ GELU(W₁ x)``) or ``swiglu`` (``W₂ (SiLU(W₁ x) ⊙ W₃ x)``, Shazeer 2020).
* :class:`MoEFeedForward`: router ``softmax(W_r x)``, each token goes to its ``top_k`` experts with gates = the top-k
  probabilities (renormalised to sum 1 when ``top_k > 1``; the raw probability for top-1, as in Switch, so the router
  gets a gradient). All experts run as one batched matmul: the token-expert assignments are sorted by expert,
  scattered into an ``(E, C, d)`` buffer (``C`` = the largest expert's load: no token is dropped) and multiplied by
  the stacked expert weights ``(E, d, h)`` with ``torch.bmm`` — no Python loop over experts. The last router
  probabilities and expert indices stay on the module (``router_probs``, ``expert_indices``) for the load-balancing
  loss (:func:`regimen.losses.load_balancing_loss`).
* :class:`TransformerBlock`: ``x + drop_path1(attn(norm1(x)))``, then ``x + drop_path2(ffn(norm2(x)))``;
  ``drop_path1/2`` are ``nn.Identity`` placeholders that :func:`regimen.dropout.apply_drop_path` fills in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CausalSelfAttention", "FeedForward", "MoEFeedForward", "TransformerBlock", "apply_rotary", "make_norm",
           "rotary_tables"]


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def make_norm(kind: str, dim: int) -> nn.Module:
    """``"layernorm"`` (no bias) or ``"rmsnorm"`` over the last dimension."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=False)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


def rotary_tables(length: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``(length, head_dim // 2)``: angle ``pos · base^{-2i/head_dim}``."""
    if head_dim % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {head_dim}")
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64).unsqueeze(1) * inv_freq
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(x_{2i}, x_{2i+1})`` of ``x`` ``(..., T, D)`` by the angles of ``cos/sin``
    ``(T, D/2)``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with optional qk-layernorm and rotary positions."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, rotary: bool = False, max_len: int = 1024,
                 dropout: float = 0.0, bias: bool = False, causal: bool = True) -> None:
        super().__init__()
        self.causal = causal
        _positive_int("dim", dim)
        _positive_int("heads", heads)
        if dim % heads:
            raise ValueError(f"heads: the width dim={dim} must be divisible by heads={heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        if rotary and self.head_dim % 2:
            raise ValueError(f"heads: rotary positions need an even head dimension, dim/heads = {self.head_dim}")
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else None
        self.rotary = rotary
        if rotary:
            cos, sin = rotary_tables(max_len, self.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.dropout = dropout
        #: 1/√d by default; muP sets 1/d.
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.track_max_logit = False
        self.max_logit: torch.Tensor | None = None
        #: ``fn(q, k, v, module) -> out`` used instead of full attention while training (subsampled attention).
        self.train_attention: Callable | None = None

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``q, k, v`` of shape ``(B, heads, T, head_dim)``, normalised and rotated."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:
            cos, sin = self.rope_cos[:t], self.rope_sin[:t]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of ``(B, H, T, D)`` tensors; while training, ``train_attention`` when a method set one
        (subsampled attention)."""
        if self.training and self.train_attention is not None:
            return self.train_attention(q, k, v, self)
        if self.track_max_logit:
            with torch.no_grad():
                logits = (q @ k.transpose(-2, -1)).float() * self.scale
                if self.causal:
                    t = q.shape[-2]
                    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
                    logits = logits.masked_fill(~mask, float("-inf"))
                self.max_logit = logits.amax()
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale,
                                              dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        out = self.attend(*self.project(x))
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))  # heads x head_dim: below dim once heads are pruned


class FeedForward(nn.Module):
    """``W₂ GELU(W₁ x)`` or ``W₂ (SiLU(W₁ x) ⊙ W₃ x)`` (SwiGLU)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = False) -> None:
        super().__init__()
        if activation not in ("gelu", "swiglu"):
            raise ValueError(f"activation must be 'gelu' or 'swiglu', got {activation!r}")
        self.activation = activation
        self.fc1 = nn.Linear(dim, 2 * hidden if activation == "swiglu" else hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.fc2(h)


class MoEFeedForward(nn.Module):
    """Top-k mixture of ``num_experts`` feed-forward experts, all run by one batched matmul (see module doc)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int = 2, activation: str = "gelu") -> None:
        super().__init__()
        _positive_int("moe_experts", num_experts, 2)
        _positive_int("moe_top_k", top_k)
        if top_k > num_experts:
            raise ValueError(f"moe_top_k = {top_k} must be <= moe_experts = {num_experts}")
        if activation not in ("gelu", "swiglu"):
            raise ValueError(f"activation must be 'gelu' or 'swiglu', got {activation!r}")
        self.num_experts, self.top_k, self.activation = num_experts, top_k, activation
        self.router = nn.Linear(dim, num_experts, bias=False)
        width = 2 * hidden if activation == "swiglu" else hidden
        self.w1 = nn.Parameter(torch.empty(num_experts, dim, width))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, dim))
        nn.init.normal_(self.w1, std=0.02)
        nn.init.normal_(self.w2, std=0.02)
        self.router_probs: torch.Tensor | None = None
        self.expert_indices: torch.Tensor | None = None

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(probs (N, E), gates (N, k), experts (N, k))`` of tokens ``h`` ``(N, d)``."""
        probs = self.router(h).float().softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = top_p / top_p.sum(dim=-1, keepdim=True) if self.top_k > 1 else top_p
        return probs, gates, top_i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        n = h.shape[0]
        probs, gates, experts = self.route(h)
        self.router_probs, self.expert_indices = probs, experts
        flat_expert = experts.reshape(-1)
        order = flat_expert.argsort(stable=True)
        expert_sorted = flat_expert[order]
        token_sorted = order // self.top_k
        counts = torch.bincount(flat_expert, minlength=self.num_experts)
        capacity = int(counts.max())
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(order.numel(), device=h.device) - first[expert_sorted]
        buffer = h.new_zeros(self.num_experts, capacity, shape[-1])
        buffer[expert_sorted, slot] = h[token_sorted]
        hidden = torch.bmm(buffer, self.w1)
        if self.activation == "swiglu":
            gate, up = hidden.chunk(2, dim=-1)
            hidden = F.silu(gate) * up
        else:
            hidden = F.gelu(hidden)
        expert_out = torch.bmm(hidden, self.w2)[expert_sorted, slot]
        weighted = expert_out * gates.reshape(-1)[order].unsqueeze(1).to(expert_out.dtype)
        out = h.new_zeros(n, shape[-1]).index_add_(0, token_sorted, weighted)
        return out.reshape(shape)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + drop_path1(attn(norm1(x)))``; ``x + drop_path2(ffn(norm2(x)))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, norm: str = "layernorm",
                 activation: str = "gelu", qk_norm: bool = False, rotary: bool = False, max_len: int = 1024,
                 dropout: float = 0.0, moe_experts: int = 0, moe_top_k: int = 2, causal: bool = True) -> None:
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        if hidden < 1:
            raise ValueError(f"mlp_ratio must give a hidden width >= 1, got {mlp_ratio}")
        self.norm1 = make_norm(norm, dim)
        self.attn = CausalSelfAttention(dim, heads, qk_norm, rotary, max_len, dropout, causal=causal)
        self.norm2 = make_norm(norm, dim)
        self.mlp: nn.Module = (MoEFeedForward(dim, hidden, moe_experts, moe_top_k, activation) if moe_experts
                               else FeedForward(dim, hidden, activation))
        self.drop_path1: nn.Module = nn.Identity()
        self.drop_path2: nn.Module = nn.Identity()
        self.resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.resid_dropout(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.resid_dropout(self.mlp(self.norm2(x))))
