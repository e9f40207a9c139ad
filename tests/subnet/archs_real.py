"""Architectures the dependency tracer learned in issue 17: channel shuffle, split/concat, GLU halves, stock and
hand-written transformers, functional layers, pixel shuffle, and Hugging Face models built from tiny configs.

Each builder returns ``(model, example_input)``; ``REAL_ARCHS`` maps a name to its builder, ``HF_ARCHS`` names the
ones that need ``transformers`` (random weights from a config, nothing downloaded). ``output`` extracts the tensor to
compare from any of their outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HF_ARCHS",
    "REAL_ARCHS",
    "FunctionalNet",
    "GhostNet",
    "SDPAViT",
    "ShuffleNetV1",
    "ShuffleNetV2",
    "SubPixelNet",
    "SwiGLUMLP",
    "output",
]


def output(y: Any) -> torch.Tensor:
    """The tensor to compare: a plain output, ``logits`` or ``last_hidden_state`` of a Hugging Face output."""
    if isinstance(y, torch.Tensor):
        return y
    for key in ("logits", "last_hidden_state"):
        if getattr(y, key, None) is not None:
            return getattr(y, key)
    return y[0]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle written as view -> transpose -> view (groups fixed, channels per group follow)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnitV1(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.reduce = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups, bias=False), _bn(channels),
                                    nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                       _bn(channels))
        self.expand = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=groups, bias=False), _bn(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = shuffle(self.reduce(x), self.groups)
        return F.relu(x + self.expand(self.depthwise(y)))


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 units: grouped 1x1 convs around a view/transpose/view channel shuffle, residual adds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 12, 3, 2, 1, bias=False), _bn(12), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnitV1(12, 3), ShuffleUnitV1(12, 3))
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean((2, 3)))


class ShuffleUnitV2(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1, bias=False), _bn(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), _bn(half),
                                    nn.Conv2d(half, half, 1, bias=False), _bn(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = x.chunk(2, dim=1)
        return shuffle(torch.cat([left, self.branch(right)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNet v2 units: chunk the channels in halves, one half through a branch, concat, shuffle by two."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), _bn(16), nn.ReLU())
        self.units = nn.Sequential(ShuffleUnitV2(16), ShuffleUnitV2(16))
        self.head = nn.Sequential(nn.Conv2d(16, 24, 1), nn.ReLU())
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.units(self.stem(x))).mean((2, 3)))


class GhostModule(nn.Module):
    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.cout = cout
        init = cout // 2
        self.primary = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), _bn(init), nn.ReLU() if relu else
                                     nn.Identity())
        self.cheap = nn.Sequential(nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), _bn(init),
                                   nn.ReLU() if relu else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)
        return out[:, : self.cout]


class GhostBottleneck(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(channels, hidden)
        self.ghost2 = GhostModule(hidden, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ghost2(self.ghost1(x))


class GhostNet(nn.Module):
    """GhostNet bottlenecks: a primary conv, a cheap depthwise conv of its output, concatenated (split-concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1, bias=False), _bn(8), nn.ReLU())
        self.blocks = nn.Sequential(GhostBottleneck(8, 16), GhostBottleneck(8, 24))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class SwiGLUMLP(nn.Module):
    """Token MLPs with gated halves: SwiGLU (one Linear, ``chunk`` in two, ``silu(a) * b``) and ``F.glu``."""

    def __init__(self, dim: int = 16, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.up = nn.Linear(dim, 2 * hidden)
        self.down = nn.Linear(hidden, dim)
        self.glu_up = nn.Linear(dim, 2 * hidden)
        self.glu_down = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        gate, value = self.up(h).chunk(2, dim=-1)
        h = h + self.down(F.silu(gate) * value)
        h = h + self.glu_down(F.glu(self.glu_up(h), dim=-1))
        return self.head(h.mean(1))


class SDPAAttention(nn.Module):
    """timm-style attention: one qkv Linear, reshape to (3, heads, head_dim), unbind, F.scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, -1))


class SDPABlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SDPAAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SDPAViT(nn.Module):
    """A ViT whose attention is hand-written with ``F.scaled_dot_product_attention`` (``num_heads`` fixed in code)."""

    def __init__(self, dim: int = 16, heads: int = 4, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, 16, dim) * 0.1)
        self.blocks = nn.Sequential(SDPABlock(dim, heads, hidden), SDPABlock(dim, heads, hidden))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class FunctionalConv(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=1)


class FunctionalLinear(nn.Module):
    """Stores its weight as (in, out) and multiplies with ``torch.addmm`` like Hugging Face's Conv1D."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cin, cout) * 0.3)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class FunctionalNet(nn.Module):
    """``F.conv2d``, ``F.linear`` and ``torch.addmm`` on the modules' own parameters instead of nn layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = FunctionalConv(1, 8)
        self.conv2 = FunctionalConv(8, 12)
        self.fc_weight = nn.Parameter(torch.randn(16, 12) * 0.3)
        self.fc = FunctionalLinear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = F.relu(F.linear(x.mean((2, 3)), self.fc_weight))
        return self.fc(x)


class SubPixelNet(nn.Module):
    """Super-resolution style: conv -> pixel_shuffle (blocks of r^2 channels) -> conv, and pixel_unshuffle back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 6, 3, padding=1)
        self.out = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(self.up(F.relu(self.conv1(x)))))
        x = F.relu(self.conv3(F.pixel_unshuffle(x, 2)))
        return self.out(x)


def _image(size: int = 16) -> torch.Tensor:
    return torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0))


def _tokens(vocab: int = 50, length: int = 8) -> torch.Tensor:
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(0))


def _transformer() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Stock nn.Transformer (encoder + decoder with cross-attention); eval mode takes the fused fast path."""
    model = nn.Transformer(d_model=16, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=24,
                           dropout=0.0, batch_first=True)
    g = torch.Generator().manual_seed(0)
    return model, (torch.randn(2, 6, 16, generator=g), torch.randn(2, 5, 16, generator=g))


class EncoderClassifier(nn.Module):
    """nn.TransformerEncoder of two stock layers (norm_first and not) between an embedding and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True), 2, enable_nested_tensor=False)
        self.last = nn.TransformerEncoderLayer(16, 2, 20, dropout=0.0, batch_first=True, norm_first=True,
                                               activation="gelu")
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.last(self.encoder(self.embed(x))).mean(1))


def _gpt2() -> tuple[nn.Module, torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=50, n_positions=16, use_cache=False,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config), _tokens()


def _bert() -> tuple[nn.Module, torch.Tensor]:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                        vocab_size=50, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config), _tokens()


def _llama() -> tuple[nn.Module, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=48, vocab_size=50, max_position_embeddings=16, use_cache=False,
                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config), _tokens()


def _vit() -> tuple[nn.Module, torch.Tensor]:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       image_size=16, patch_size=4, num_channels=1, num_labels=10)
    return ViTForImageClassification(config), _image(16)


REAL_ARCHS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "shufflenet_v1_shuffle": lambda: (ShuffleNetV1(), _image(16)),
    "shufflenet_v2_chunk": lambda: (ShuffleNetV2(), _image(16)),
    "ghostnet_split_concat": lambda: (GhostNet(), _image(16)),
    "swiglu_glu_mlp": lambda: (SwiGLUMLP(), torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))),
    "transformer_encoder_decoder": _transformer,
    "transformer_encoder_stack": lambda: (EncoderClassifier(),
                                          torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0))),
    "sdpa_vit": lambda: (SDPAViT(), _image(16)),
    "functional_layers": lambda: (FunctionalNet(), _image(8)),
    "pixel_shuffle": lambda: (SubPixelNet(), _image(8)),
    "hf_gpt2": _gpt2,
    "hf_bert": _bert,
    "hf_llama_gqa": _llama,
    "hf_vit": _vit,
}
HF_ARCHS = frozenset(name for name in REAL_ARCHS if name.startswith("hf_"))
