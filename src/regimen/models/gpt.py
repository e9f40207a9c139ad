"""A GPT-style decoder-only language model (Radford et al. 2019), built as explicit stages.

``stages`` = [token embedding (+ learned positions), transformer block, ..., LM head]: pre-norm blocks
(:class:`regimen.models.transformer.TransformerBlock`), a final norm and a linear read-out to the vocabulary,
optionally tied to the token embedding (Press & Wolf 2017). ``model(ids)`` gives logits ``(B, T, V)``;
``model(ids, return_hidden=True)`` gives the final-normed hidden states ``(B, T, d)`` and ``model.output_weight``
the read-out matrix ``(V, d)``, so a chunked cross-entropy (:func:`regimen.losses.linear_cross_entropy`) can take
the place of the logits. Init: N(0, 0.02), residual output projections N(0, 0.02/√(2L)) (GPT-2).

Bad input: ids that are not an integer ``(B, T)`` tensor, ``T > block_size``, ids outside ``[0, vocab_size)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from regimen.models.staged import StagedModel
from regimen.models.transformer import MoEFeedForward, TransformerBlock, make_norm

__all__ = ["GPT", "LMHead", "TokenEmbedding", "generate"]


class TokenEmbedding(nn.Module):
    """Token embedding, plus learned absolute positions unless the blocks rotate q/k (RoPE)."""

    def __init__(self, vocab_size: int, dim: int, block_size: int, learned_positions: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(block_size, dim) if learned_positions else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        if self.pos is not None:
            x = x + self.pos.weight[: ids.shape[1]]
        return self.dropout(x)


class LMHead(nn.Module):
    """Final norm and the read-out ``fc`` to the vocabulary; ``features(x)`` is the normed hidden state (times
    ``logit_scale``)."""

    def __init__(self, dim: int, vocab_size: int, norm: str) -> None:
        super().__init__()
        self.norm = make_norm(norm, dim)
        self.fc = nn.Linear(dim, vocab_size, bias=False)
        #: multiplies the read-out's input (muP's output multiplier / width multiplier); 1 by default.
        self.logit_scale = 1.0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return x * self.logit_scale if self.logit_scale != 1.0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class GPT(StagedModel):
    """Decoder-only transformer LM (see the module docstring).

    Args:
        vocab_size: tokens (set by the task from the tokenizer).
        block_size: the longest sequence (positions) the model takes.
        dim, depth, heads: width, number of blocks, attention heads (``dim`` divisible by ``heads``).
        mlp_ratio: feed-forward hidden width / ``dim``.
        norm: ``"layernorm"`` or ``"rmsnorm"``. activation: ``"gelu"`` or ``"swiglu"``.
        positions: ``"rope"`` (rotary) or ``"learned"``.
        tie_embeddings: share the token embedding with the read-out.
        qk_norm: LayerNorm q and k per head before the dot product.
        dropout: on embeddings, attention probabilities and residual branches.
        moe_experts: experts of a mixture-of-experts feed-forward (0: dense); moe_top_k: experts per token.
        moe_every: every how many blocks the feed-forward is a MoE (the last of each group), when ``moe_experts``.
    """

    def __init__(self, vocab_size: int = 256, block_size: int = 256, dim: int = 128, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 4.0, norm: str = "layernorm", activation: str = "gelu",
                 positions: str = "rope", tie_embeddings: bool = True, qk_norm: bool = False, dropout: float = 0.0,
                 moe_experts: int = 0, moe_top_k: int = 2, moe_every: int = 1) -> None:
        for key, value in (("vocab_size", vocab_size), ("block_size", block_size), ("dim", dim), ("depth", depth),
                           ("heads", heads), ("moe_every", moe_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if dim % heads:
            raise ValueError(f"heads: the width dim={dim} must be divisible by heads={heads}")
        if positions not in ("rope", "learned"):
            raise ValueError(f"positions must be 'rope' or 'learned', got {positions!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(moe_experts, bool) or not isinstance(moe_experts, int) or moe_experts < 0 or moe_experts == 1:
            raise ValueError(f"moe_experts must be 0 (dense) or an int >= 2, got {moe_experts!r}")
        if moe_experts and not 1 <= moe_top_k <= moe_experts:
            raise ValueError(f"moe_top_k = {moe_top_k} must lie in [1, moe_experts = {moe_experts}]")
        stages: list[nn.Module] = [TokenEmbedding(vocab_size, dim, block_size, positions == "learned", dropout)]
        for index in range(depth):
            experts = moe_experts if moe_experts and (index + 1) % moe_every == 0 else 0
            stages.append(TransformerBlock(dim, heads, mlp_ratio, norm, activation, qk_norm, positions == "rope",
                                           block_size, dropout, experts, moe_top_k))
        stages.append(LMHead(dim, vocab_size, norm))
        super().__init__(stages)
        self.vocab_size, self.block_size = vocab_size, block_size
        self.config = dict(vocab_size=vocab_size, block_size=block_size, dim=dim, depth=depth, heads=heads,
                           mlp_ratio=mlp_ratio, norm=norm, activation=activation, positions=positions,
                           tie_embeddings=tie_embeddings, qk_norm=qk_norm, dropout=dropout,
                           moe_experts=moe_experts, moe_top_k=moe_top_k, moe_every=moe_every)
        self._init_weights(depth)
        if tie_embeddings:
            self.head.fc.weight = self.stages[0].tok.weight

    def _init_weights(self, depth: int) -> None:
        residual_std = 0.02 / math.sqrt(2 * depth)
        for name, param in self.named_parameters():
            if param.dim() < 2:
                continue
            last = name.rsplit(".", 1)[0]
            is_residual_out = last.endswith("attn.proj") or last.endswith("mlp.fc2") or name.endswith("mlp.w2")
            nn.init.normal_(param, std=residual_std if is_residual_out else 0.02)

    @property
    def output_weight(self) -> torch.Tensor:
        """The read-out matrix ``(vocab_size, dim)`` (the token embedding when tied)."""
        return self.head.fc.weight

    def moe_layers(self) -> list[MoEFeedForward]:
        return [m for m in self.modules() if isinstance(m, MoEFeedForward)]

    def check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(f"GPT input must be an integer tensor (B, T) of token ids, got "
                             f"{getattr(ids, 'dtype', type(ids).__name__)} {tuple(getattr(ids, 'shape', ()))}")
        if ids.shape[1] > self.block_size:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's block_size = {self.block_size}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, vocab_size = {self.vocab_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")

    def forward(self, ids: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        self.check_ids(ids)
        x = self.forward_features(ids)
        return self.head.features(x) if return_hidden else self.head(x)


@torch.no_grad()
def generate(model: nn.Module, ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``max_new_tokens`` tokens after ``ids`` ``(B, T)`` from a causal LM that maps ids to logits
    ``(B, T, V)``: each step feeds the last ``block_size`` tokens, divides the last logits by ``temperature``, keeps
    the ``top_k`` largest (``None``: all) and draws from the softmax with ``generator``. ``temperature = 0`` is
    greedy. Returns ``(B, T + max_new_tokens)``."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[1] < 1:
        raise ValueError("ids must be a (B, T >= 1) tensor of token ids (the prompt must not be empty)")
    block = getattr(model, "block_size", ids.shape[1] + max_new_tokens)
    was_training = model.training
    model.eval()
    for _ in range(max_new_tokens):
        logits = model(ids[:, -block:])[:, -1, :].float()
        if temperature == 0.0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.shape[-1]:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_id = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
        ids = torch.cat([ids, next_id.to(ids.dtype)], dim=1)
    model.train(was_training)
    return ids
