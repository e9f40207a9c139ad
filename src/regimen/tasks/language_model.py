"""``task = "language_model"``: predict the next token of offline text with a GPT.

Batches are ``(inputs (N, T) int64 token ids, targets (N, T) int64)`` with ``targets[:, t] = inputs[:, t + 1]`` in
the text (:class:`regimen.data.TokenWindows`). The default model is :class:`regimen.models.GPT` (``vocab_size`` set
from the tokenizer, ``block_size`` defaults to ``data.options.seq_len``); the loss is the mean next-token
cross-entropy (nats per token; ``reduction="none"`` gives each sequence's mean). Metrics:

* ``loss``: mean cross-entropy per target token (nats), summed over every target token of the split;
* ``perplexity``: ``exp(loss)``;
* ``bits_per_byte`` (primary, lower is better): ``Σ nats / Σ bytes / ln 2`` where the bytes are the UTF-8 bytes the
  target tokens stand for (``token_bytes[target]``), so it is exact for bytes and for BPE alike, and comparable
  between them. ``nan`` for a token array without a tokenizer (its bytes are unknown).

Data (``data.name``): ``auto`` (the KJV Bible if Debian's ``bible-kjv`` is installed, else this Python's standard
library sources), ``kjv``, ``stdlib``, ``text`` (``data.root``: a ``.txt`` file or folder), ``tokens``
(``data.root``: ``.npy`` or nanoGPT ``.bin``). See :mod:`regimen.data.text` for the contiguous splits
(``data.val_fraction``, ``data.test_fraction``). ``data.options``: ``seq_len`` (default 128), ``tokenizer``
(``"bytes"``, the default, or ``"bpe"``), ``vocab_size`` (BPE: default 4096; token arrays: default max id + 1),
``batching`` and ``max_tokens`` (below). ``data.train_subset`` / ``data.test_subset`` keep the first that many
windows.

Training batches (``data.options.batching``):

* ``"windows"`` (default): ``train.batch_size`` windows of ``seq_len`` tokens cut from the running text (they cross
  document boundaries);
* ``"length_buckets"``: whole documents (verses, files; longer ones cut into pieces of ``seq_len``), ``batch_size``
  of similar length per batch (:class:`regimen.batch.LengthBucketBatchSampler`), padded to the longest;
* ``"token_budget"``: whole documents, as many per batch as fit in ``max_tokens`` padded tokens (default
  ``batch_size × seq_len``; :class:`regimen.batch.TokenBudgetBatchSampler`), so every step costs about the same.

Padded targets are ``IGNORE_INDEX`` and count in no loss or metric; validation and test always score the same
windows, so the batching modes compare on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import (
    IGNORE_INDEX,
    BatchSamplerLoader,
    DataError,
    DataSplits,
    DocumentPieces,
    InMemoryLoader,
    TokenWindows,
)
from regimen.errors import ConfigurationError
from regimen.tasks.base import Task

__all__ = ["LanguageModelTask", "lm_cross_entropy"]

_DATA_OPTIONS = {"seq_len": int, "tokenizer": str, "vocab_size": int, "batching": str, "max_tokens": int}
BATCHING = ("windows", "length_buckets", "token_budget")
DEFAULT_SEQ_LEN = 128
DEFAULT_BPE_VOCAB = 4096


def lm_cross_entropy(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy of logits ``(N, T, V)`` against ids ``(N, T)``: mean over tokens, sum, or each
    sequence's mean ``(N,)`` for ``reduction="none"``. Targets equal to ``IGNORE_INDEX`` (padding) count in none
    of them: the means divide by the real targets only."""
    if not isinstance(output, torch.Tensor) or output.dim() != 3:
        raise ValueError(f"language-model logits must be (N, T, V), got {tuple(getattr(output, 'shape', ()))}")
    if tuple(target.shape) != tuple(output.shape[:2]):
        raise ValueError(f"targets {tuple(target.shape)} must be the logits' (N, T) = {tuple(output.shape[:2])}")
    losses = F.cross_entropy(output.flatten(0, 1).float(), target.reshape(-1), reduction="none",
                             ignore_index=IGNORE_INDEX)
    if reduction == "mean":
        return losses.sum() / (target != IGNORE_INDEX).sum().clamp(min=1)
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        real = (target != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        return losses.view(target.shape).sum(dim=1) / real
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class LanguageModelTask(Task):
    """Next-token prediction on text (KJV Bible, stdlib sources, your files): loss, perplexity, bits per byte."""

    name = "language_model"
    input_kind = "tokens"
    target_kind = "tokens"
    metrics = ("loss", "perplexity", "bits_per_byte")
    primary_metric = "bits_per_byte"
    higher_is_better = False
    train_metrics = ()
    data_names = ("auto", "kjv", "stdlib", "text", "tokens")
    model_names = ("gpt",)
    default_model = "gpt"
    data_arguments: ClassVar[tuple[str, ...]] = ("vocab_size",)
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        self.tokenizer = None

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        options.setdefault("seq_len", DEFAULT_SEQ_LEN)
        options.setdefault("tokenizer", "bytes")
        if options["seq_len"] < 1:
            raise ConfigurationError(f"data.options.seq_len must be >= 1, got {options['seq_len']}")
        if options["tokenizer"] not in ("bytes", "bpe"):
            raise ConfigurationError(f"data.options.tokenizer must be 'bytes' or 'bpe', got {options['tokenizer']!r}")
        options.setdefault("batching", "windows")
        if options["batching"] not in BATCHING:
            raise ConfigurationError(f"data.options.batching must be one of {', '.join(map(repr, BATCHING))}, got "
                                     f"{options['batching']!r}")
        if "max_tokens" in options:
            if options["batching"] != "token_budget":
                raise ConfigurationError("data.options.max_tokens is the token budget of batching = 'token_budget'; "
                                         f"remove it or set that batching (it is {options['batching']!r})")
            if options["max_tokens"] < 2:
                raise ConfigurationError(f"data.options.max_tokens must be >= 2, got {options['max_tokens']}")
        if options["tokenizer"] == "bytes" and "vocab_size" in options and self.recipe.data.name != "tokens":
            raise ConfigurationError("data.options.vocab_size: the byte tokenizer has 256 tokens; set tokenizer = "
                                     "'bpe' for a larger vocabulary")
        return options

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        options = self.data_options()
        block = self.recipe.model.options.get("block_size")
        if not user_model and isinstance(block, int) and block < options["seq_len"]:
            raise ConfigurationError(f"data.options.seq_len = {options['seq_len']} is longer than the model's "
                                     f"positions (model.options.block_size = {block})")

    def model_class(self, name: str) -> type | None:
        from regimen.models import GPT

        return GPT

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        from regimen.data.text import (
            TokenWindows,
            encode_block,
            load_corpus,
            load_token_array,
            split_documents,
            split_tokens,
        )
        from regimen.data.tokenizers import ByteTokenizer, train_bpe

        cfg, options = self.recipe.data, self.data_options()
        seq_len = options["seq_len"]
        if cfg.name == "tokens":
            if cfg.root is None:
                raise DataError("data.name = 'tokens' needs data.root (a .npy or nanoGPT .bin token array)")
            tokens = load_token_array(cfg.root, options.get("vocab_size"))
            vocab = options.get("vocab_size", int(tokens.max()) + 1)
            blocks = [(torch.from_numpy(b), None) for b in split_tokens(tokens, cfg.val_fraction, cfg.test_fraction)]
            token_bytes, name, source = None, "tokens", str(cfg.root)
            self.tokenizer = None
        else:
            corpus = load_corpus(cfg.name, cfg.root)
            parts = split_documents(corpus.documents, cfg.val_fraction, cfg.test_fraction)
            if options["tokenizer"] == "bpe":
                tokenizer = train_bpe(parts[0], options.get("vocab_size", DEFAULT_BPE_VOCAB))
            else:
                tokenizer = ByteTokenizer()
            self.tokenizer = tokenizer
            vocab, token_bytes = tokenizer.vocab_size, tokenizer.token_bytes
            blocks = [encode_block(part, tokenizer) for part in parts]
            name, source = corpus.name, corpus.source
        splits = []
        for index, (label, (tokens, starts)) in enumerate(zip(("train", "val", "test"), blocks)):
            if tokens.numel() < 2:
                if index == 0:
                    raise DataError(f"data: the training block of {name} is empty")
                splits.append(None)
                continue
            if tokens.numel() - 1 < seq_len:
                raise DataError(f"data.options.seq_len = {seq_len} is longer than the {label} block of {name} "
                                f"({tokens.numel()} tokens); lower seq_len or data.{label}_fraction")
            splits.append(TokenWindows(tokens.to(torch.int32 if vocab < 2**31 else torch.int64), seq_len, vocab,
                                       token_bytes, starts, f"{name}-{label}"))
        train, val, test = splits
        if cfg.train_subset is not None and cfg.train_subset < len(train):
            train = train.subset(torch.arange(cfg.train_subset))
        if cfg.test_subset is not None and test is not None and cfg.test_subset < len(test):
            test = test.subset(torch.arange(cfg.test_subset))
        fractions = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
        sources = {label: f"contiguous {fraction:.0%} block of {source}"
                   for label, fraction in zip(("train", "val", "test"), fractions)}
        return DataSplits(train, val, test, sources=sources)

    def train_loader(self, dataset: Any, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Any:
        """Windows in fixed-size batches, or whole documents in length buckets or token budgets
        (``data.options.batching``)."""
        from regimen.batch import LengthBucketBatchSampler, TokenBudgetBatchSampler

        options = self.data_options()
        if options["batching"] == "windows":
            return super().train_loader(dataset, batch_size, seed, rank, world_size, device)
        if not isinstance(dataset, TokenWindows):
            raise DataError(f"data.options.batching = {options['batching']!r} needs the training split as "
                            f"TokenWindows (documents), got {type(dataset).__name__}")
        pieces = DocumentPieces.from_windows(dataset)
        if options["batching"] == "length_buckets":
            sampler = LengthBucketBatchSampler(pieces.lengths, batch_size, drop_last=True, seed=seed,
                                               num_replicas=world_size, rank=rank)
        else:
            budget = options.get("max_tokens", batch_size * options["seq_len"])
            if budget < options["seq_len"]:
                raise ConfigurationError(f"data.options.max_tokens = {budget} is below seq_len = "
                                         f"{options['seq_len']}: the longest pieces would not fit a batch")
            sampler = TokenBudgetBatchSampler(pieces.lengths, budget, seed=seed, num_replicas=world_size, rank=rank)
        return BatchSamplerLoader(pieces, sampler, world_size=world_size, device=device)

    def adopt_data(self, data: Any) -> DataSplits:
        """``DataSplits`` of :class:`TokenWindows`, or a dict ``{"train": ..., "val": ..., "test": ...}`` of them."""
        if isinstance(data, DataSplits):
            return data
        if isinstance(data, dict) and "train" in data and set(data) <= {"train", "val", "test"}:
            return DataSplits(data["train"], data.get("val"), data.get("test"), sources={k: "user data" for k in data})
        raise DataError("data: the language_model task takes DataSplits or a dict of TokenWindows "
                        "{'train': ..., 'val': ..., 'test': ...}")

    # ----------------------------------------------------------------------------------------------------- model
    def vocab_size(self, data: DataSplits) -> int:
        return int(data.train.vocab_size)

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import GPT

        options = dict(self.recipe.model.options)
        options.setdefault("block_size", data.train.seq_len)
        if options["block_size"] < data.train.seq_len:
            raise ConfigurationError(f"data.options.seq_len = {data.train.seq_len} is longer than the model's "
                                     f"positions (model.options.block_size = {options['block_size']})")
        return GPT(vocab_size=self.vocab_size(data), **options)

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        spec = dict(super().model_spec(data), vocab_size=self.vocab_size(data))
        if self.tokenizer is not None:
            spec["tokenizer"] = self.tokenizer.spec()
        return spec

    def run_facts(self, data: DataSplits) -> dict[str, Any]:
        return {"num_classes": self.vocab_size(data)}

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        return lm_cross_entropy

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        nats = F.cross_entropy(output.flatten(0, 1).float(), target.reshape(-1), reduction="sum",
                               ignore_index=IGNORE_INDEX)
        tokens = (target != IGNORE_INDEX).sum()
        return torch.stack([nats.double(), tokens.double().cpu()])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Total nats, target tokens and target bytes over the split (sharded over ranks, summed): ``loss`` =
        nats / tokens, ``perplexity`` = exp(loss), ``bits_per_byte`` = nats / bytes / ln 2."""
        was_training = model.training
        model.eval()
        loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                                world_size=world_size, device=device)
        token_bytes = getattr(dataset, "token_bytes", None)
        lookup = token_bytes.to(device) if token_bytes is not None else None
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
        for x, y, _ in loader:
            if len(y) == 0:
                continue
            totals[:2] += self.eval_sums(model(normalize(x)), y).to(device)
            if lookup is not None:
                real = y != IGNORE_INDEX
                totals[2] += lookup[y.clamp(min=0)][real].sum().double()
        if all_reduce is not None:
            totals = all_reduce(totals, "sum")
        model.train(was_training)
        nats, tokens, num_bytes = totals.tolist()
        loss = nats / max(tokens, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "bits_per_byte": nats / num_bytes / math.log(2) if lookup is not None and num_bytes else math.nan}
