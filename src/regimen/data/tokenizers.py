"""Tokenizers for the language-model task: bytes (vocab 256, the default) and byte-level BPE.

Both map text to token ids and back *losslessly* and know how many UTF-8 bytes every token stands for
(``token_bytes``, int64 ``(V,)``), so bits per byte is exact for either: ``Σ nats / Σ token_bytes[targets] / ln 2``.

* :class:`ByteTokenizer`: token = one byte of the UTF-8 encoding (``token_bytes`` all ones).
* :class:`BPETokenizer`: Hugging Face ``tokenizers`` byte-level BPE (GPT-2's scheme, no prefix space, no special
  tokens), trained offline on the training text by :func:`train_bpe` and cached by the hash of the text and the
  vocabulary size under the regimen cache folder (``$REGIMEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/regimen``, else
  ``~/.cache/regimen``). The byte-level alphabet maps each byte to one character, so a token's byte count is the
  length of its string. Install with ``pip install tokenizers`` (the ``lm`` and ``dev`` extras have it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from regimen.data.idx import DataError

__all__ = ["BPETokenizer", "ByteTokenizer", "cache_dir", "tokenizer_from_spec", "train_bpe"]


def cache_dir() -> Path:
    """``$REGIMEN_CACHE_DIR``, else ``$XDG_CACHE_HOME/regimen``, else ``~/.cache/regimen``."""
    if os.environ.get("REGIMEN_CACHE_DIR"):
        return Path(os.environ["REGIMEN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "regimen"


class ByteTokenizer:
    """One token per UTF-8 byte: ``vocab_size = 256``; lossless for any text."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        """Token ids (uint8 array) of ``text``'s UTF-8 bytes."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(d) for d in documents]

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Text of ``ids`` (invalid UTF-8, e.g. a sampled partial character, is replaced by U+FFFD)."""
        values = np.asarray(ids.tolist() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise ValueError(f"byte token ids must lie in [0, 256), got [{values.min()}, {values.max()}]")
        return values.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> torch.Tensor:
        return torch.ones(256, dtype=torch.int64)

    def spec(self) -> dict:
        """What rebuilds this tokenizer (saved in checkpoints)."""
        return {"kind": "bytes"}


class BPETokenizer:
    """Byte-level BPE from Hugging Face ``tokenizers`` (built by :func:`train_bpe` or from its JSON)."""

    kind = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        Tokenizer = _tokenizers().Tokenizer
        self.json = tokenizer_json
        self._tok = Tokenizer.from_str(tokenizer_json)
        self.vocab_size = self._tok.get_vocab_size()
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, index in self._tok.get_vocab().items():
            lengths[index] = len(token)  # byte-level alphabet: one character per byte
        self._token_bytes = torch.from_numpy(lengths)

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return np.asarray(self._tok.encode(text).ids, dtype=np.int64)

    def encode_documents(self, documents: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tok.encode_batch(list(documents))]

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        values = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if values and (min(values) < 0 or max(values) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got [{min(values)}, {max(values)}]")
        # byte-level decoding via the token strings, so a partial UTF-8 character cannot raise
        inverse = {v: k for k, v in self._tok.get_vocab().items()}
        table = _byte_decoder()
        return bytes(table[ch] for i in values for ch in inverse[i]).decode("utf-8", errors="replace")

    @property
    def token_bytes(self) -> torch.Tensor:
        return self._token_bytes.clone()

    def spec(self) -> dict:
        return {"kind": "bpe", "json": self.json}


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError("data.options.tokenizer = 'bpe' needs Hugging Face tokenizers: pip install tokenizers "
                        "(or pip install 'regimen[lm]')") from None
    return tokenizers


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: character -> byte."""
    alphabet = _tokenizers().pre_tokenizers.ByteLevel.alphabet()
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    assert set(chars) == set(alphabet), "unexpected byte-level alphabet"
    return chars


MAX_BPE_VOCAB = 2**20  # 1,048,576: four times the largest vocabularies in use (256k)


def train_bpe(documents: Sequence[str], vocab_size: int, cache: bool = True) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``documents`` (or load it from the cache).

    Args:
        documents: the training text (only training text: the held-out blocks must not shape the vocabulary).
        vocab_size: total vocabulary, at least 257 (the 256 bytes plus one merge).
        cache: read and write ``<cache_dir>/bpe/<sha256 of text and size>.json``.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 257:
        raise ValueError(f"data.options.vocab_size must be an int >= 257 for BPE (256 bytes + merges), got "
                         f"{vocab_size!r}")
    if vocab_size > MAX_BPE_VOCAB:  # `tokenizers` allocates for the requested size up front: 10**10 aborts the process
        raise ValueError(f"data.options.vocab_size must be <= {MAX_BPE_VOCAB:,} for BPE, got {vocab_size:,}")
    corpus_bytes = sum(len(document.encode("utf-8")) for document in documents)
    if vocab_size > 256 + corpus_bytes:  # every merge joins two tokens of the text: at most one per byte
        raise ValueError(f"data.options.vocab_size = {vocab_size:,} exceeds what BPE can learn from "
                         f"{corpus_bytes:,} bytes of training text (at most 256 + one merge per byte)")
    tk = _tokenizers()
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.encode("utf-8"))
        digest.update(b"\0")
    key = f"{digest.hexdigest()[:24]}-v{vocab_size}-tk{tk.__version__}"
    path = cache_dir() / "bpe" / f"{key}.json"
    if cache and path.is_file():
        return BPETokenizer(path.read_text(encoding="utf-8"))
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     show_progress=False, special_tokens=[])
    tokenizer.train_from_iterator(documents, trainer=trainer)
    text = tokenizer.to_str()
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as handle:
                handle.write(text)
            os.replace(handle.name, path)
        except OSError:  # a read-only cache folder: train again next time
            pass
    return BPETokenizer(text)


def tokenizer_from_spec(spec: dict) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a checkpoint's ``spec()`` describes."""
    if not isinstance(spec, dict) or spec.get("kind") not in ("bytes", "bpe"):
        raise DataError(f"unknown tokenizer spec {spec!r}; expected kind 'bytes' or 'bpe'")
    if spec["kind"] == "bytes":
        return ByteTokenizer()
    return BPETokenizer(spec["json"] if isinstance(spec["json"], str) else json.dumps(spec["json"]))
