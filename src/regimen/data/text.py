"""Text corpora read offline, tokenised into contiguous train / validation / test blocks of next-token windows.

Corpora (``data.name`` of the ``language_model`` task):

* ``kjv``: the King James Bible printed by Debian's ``bible-kjv`` package (``bible -f "gen1:1-rev22:21"``, 4.4 MB,
  31 102 verses; install with ``apt-get install bible-kjv``, which ``scripts/setup`` does when run as root). The
  verse references (``Ge1:1``) are stripped; each verse is one document (a line of text ending in ``\\n``).
* ``stdlib``: the fallback every Python install has: the top-level ``*.py`` files of the running interpreter's
  standard library (``sysconfig.get_paths()["stdlib"]``), sorted by file name, each file one document, the first
  4 MB. The text depends on the Python version (numbers measured on it are comparable within one version only).
* ``auto``: ``kjv`` when the ``bible`` program is installed, else ``stdlib``.
* ``text``: a user's UTF-8 ``.txt`` file, or a folder of them (searched recursively, sorted by path), each file one
  document. Empty files and binary files (NUL bytes, invalid UTF-8) are refused.
* ``tokens``: a pre-tokenised 1-D token array: ``.npy`` (any integer dtype) or ``.bin`` (nanoGPT's raw uint16).

Splits are contiguous blocks, never shuffled samples: the first ``1 - val - test`` of the documents (by bytes) train,
the next ``val`` validate, the last ``test`` test; documents are never cut (token arrays have none and are cut by
token count). Windows never cross a split, so nothing of the held-out text leaks into training. The BPE vocabulary
is trained on the training block only.

A split is a :class:`TokenWindows` dataset: sample ``i`` is the window of ``seq_len + 1`` tokens starting at
``starts[i]`` (non-overlapping, stride ``seq_len``), ``gather`` returns ``(inputs (N, T), targets (N, T))`` with
targets shifted by one, so every token of the split but the first is a target exactly once. The document boundaries
(``doc_starts``) are kept for the length-bucketed and token-budget samplers (``document_lengths``).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regimen.data.idx import DataError, check_npy_size

__all__ = [
    "KJV_PASSAGE",
    "TextCorpus",
    "TokenWindows",
    "encode_block",
    "kjv_corpus",
    "load_corpus",
    "load_token_array",
    "split_documents",
    "split_tokens",
    "stdlib_corpus",
    "text_corpus",
]

KJV_PASSAGE = "gen1:1-rev22:21"
STDLIB_MAX_BYTES = 4_000_000
_HOW_TO_GET_KJV = ("the King James text comes from Debian's bible-kjv package: apt-get install bible-kjv (or use "
                   "data.name = 'stdlib', or 'text' with data.root)")


@dataclass
class TextCorpus:
    """A corpus as its documents (their concatenation is the text) and where it came from."""

    documents: list[str]
    name: str
    source: str = ""

    @property
    def num_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)


def kjv_corpus(passage: str = KJV_PASSAGE) -> TextCorpus:
    """The King James Bible from Debian's ``bible`` program, one document per verse (references stripped)."""
    program = shutil.which("bible")
    if program is None:
        raise DataError(f"data.name = 'kjv': the `bible` program is not installed; {_HOW_TO_GET_KJV}")
    try:
        result = subprocess.run([program, "-f", passage], capture_output=True, check=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as error:
        raise DataError(f"data.name = 'kjv': `bible -f {passage}` failed ({error}); {_HOW_TO_GET_KJV}") from None
    verses = []
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        reference, _, text = line.partition(" ")
        if ":" in reference and text.strip():
            verses.append(text.strip() + "\n")
    if len(verses) < 100:
        raise DataError(f"data.name = 'kjv': `bible -f {passage}` printed {len(verses)} verses; {_HOW_TO_GET_KJV}")
    return TextCorpus(verses, "kjv", f"King James Bible (bible -f {passage})")


def stdlib_corpus(max_bytes: int = STDLIB_MAX_BYTES) -> TextCorpus:
    """The top-level ``*.py`` files of this Python's standard library, sorted by name, up to ``max_bytes``."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    documents, total = [], 0
    for path in sorted(folder.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text or "\0" in text:
            continue
        documents.append(text if text.endswith("\n") else text + "\n")
        total += len(documents[-1].encode("utf-8"))
        if total >= max_bytes:
            break
    if not documents:
        raise DataError(f"data.name = 'stdlib': no readable .py files in {folder}")
    return TextCorpus(documents, "stdlib", f"Python {'.'.join(map(str, __import__('sys').version_info[:2]))} "
                                           f"standard library sources ({folder})")


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"data.root: {path} is empty; give a UTF-8 text file with some text in it")
    if b"\0" in data:
        raise DataError(f"data.root: {path} is a binary file (it holds NUL bytes); give UTF-8 text, or a token "
                        "array with data.name = 'tokens'")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"data.root: {path} is not UTF-8 text ({error.reason} at byte {error.start})") from None


def text_corpus(root: str | os.PathLike) -> TextCorpus:
    """A ``.txt`` file, or every ``*.txt`` under a folder (sorted by path), one document per file."""
    root = Path(root)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"data.root: folder {root} holds no .txt files")
    elif root.is_file():
        files = [root]
    else:
        raise DataError(f"data.root: {root} does not exist")
    documents = [_read_text_file(p) for p in files]
    return TextCorpus(documents, root.stem or root.name, str(root))


def load_corpus(name: str, root: str | None = None) -> TextCorpus:
    """``kjv``, ``stdlib``, ``text`` (needs ``root``) or ``auto`` (``kjv`` if installed, else ``stdlib``)."""
    if name == "auto":
        return kjv_corpus() if shutil.which("bible") else stdlib_corpus()
    if name == "kjv":
        return kjv_corpus()
    if name == "stdlib":
        return stdlib_corpus()
    if name == "text":
        if root is None:
            raise DataError("data.name = 'text' needs data.root (a .txt file or a folder of them)")
        return text_corpus(root)
    raise DataError(f"data.name: unknown text corpus {name!r}; expected auto, kjv, stdlib, text or tokens")


def load_token_array(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """A 1-D token array from ``.npy`` (integer dtype) or ``.bin`` (nanoGPT: raw uint16), checked against
    ``vocab_size`` (``data.options.vocab_size``) when given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.root: token file {path} does not exist")
    if path.suffix == ".npy":
        check_npy_size(path)
        try:
            tokens = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as error:
            raise DataError(f"data.root: {path} is not a readable .npy array ({error})") from None
    elif path.suffix == ".bin":
        if path.stat().st_size % 2:
            raise DataError(f"data.root: {path} has an odd byte count; a nanoGPT .bin holds uint16 tokens")
        tokens = np.fromfile(path, dtype=np.uint16)
    else:
        raise DataError(f"data.root: token arrays must be .npy or .bin (nanoGPT uint16), got {path.name}")
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise DataError(f"data.root: {path} must hold a 1-D integer token array, got {tokens.dtype} {tokens.shape}")
    if tokens.size < 2:
        raise DataError(f"data.root: {path} holds {tokens.size} tokens; need at least 2")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0:
        raise DataError(f"data.root: {path} holds negative token ids (min {low})")
    if vocab_size is not None and high >= vocab_size:
        raise DataError(f"data.options.vocab_size = {vocab_size}, but {path} holds token id {high} (ids must be < "
                        "vocab_size)")
    return tokens.astype(np.int64)


@dataclass
class TokenWindows:
    """Next-token windows over a contiguous token block: sample ``i`` is ``tokens[starts[i] : starts[i]+T+1]``.

    ``gather(indices)`` gives ``inputs = window[:, :-1]`` and ``targets = window[:, 1:]`` (int64 ``(N, T)``).
    ``token_bytes`` (``(V,)``) is the UTF-8 byte count of each token (``None``: unknown, e.g. a token array).
    """

    tokens: torch.Tensor
    seq_len: int
    vocab_size: int
    token_bytes: torch.Tensor | None = None
    doc_starts: torch.Tensor | None = None
    name: str = "text"
    starts: torch.Tensor | None = None
    num_classes: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise DataError(f"data.options.seq_len must be an int >= 1, got {self.seq_len!r}")
        if self.tokens.dim() != 1 or self.tokens.is_floating_point():
            raise DataError(f"tokens must be a 1-D integer tensor, got {self.tokens.dtype} {tuple(self.tokens.shape)}")
        if self.starts is None:
            count = (self.tokens.numel() - 1) // self.seq_len
            if count < 1:
                raise DataError(f"data.options.seq_len = {self.seq_len} is longer than the {self.name} block "
                                f"({self.tokens.numel()} tokens); lower seq_len or give more text")
            self.starts = torch.arange(count, dtype=torch.int64) * self.seq_len
        self.num_classes = self.vocab_size
        self._offsets = torch.arange(self.seq_len + 1, dtype=torch.int64)

    def __len__(self) -> int:
        return int(self.starts.numel())

    @property
    def input_shape(self) -> tuple[int]:
        return (self.seq_len,)

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        windows = self.tokens[self.starts[indices].unsqueeze(1) + self._offsets].long()
        windows = windows.to(device, non_blocking=True)
        return windows[:, :-1], windows[:, 1:]

    def subset(self, indices: torch.Tensor) -> TokenWindows:
        return TokenWindows(self.tokens, self.seq_len, self.vocab_size, self.token_bytes, self.doc_starts, self.name,
                            self.starts[torch.as_tensor(indices, dtype=torch.int64)])

    def target_bytes(self) -> int | None:
        """UTF-8 bytes of every target token of every window (``None`` when ``token_bytes`` is unknown)."""
        if self.token_bytes is None:
            return None
        targets = self.tokens[self.starts.unsqueeze(1) + self._offsets[1:]].long()
        return int(self.token_bytes[targets].sum())

    def document_lengths(self) -> torch.Tensor:
        """Token count of every document of the block (one document when boundaries are unknown)."""
        n = self.tokens.numel()
        if self.doc_starts is None or self.doc_starts.numel() == 0:
            return torch.tensor([n])
        ends = torch.cat([self.doc_starts[1:], torch.tensor([n])])
        return ends - self.doc_starts

    def documents(self) -> list[torch.Tensor]:
        """The block's documents as variable-length token sequences (for length-bucketed / token-budget batches)."""
        lengths = self.document_lengths().tolist()
        start = 0 if self.doc_starts is None or self.doc_starts.numel() == 0 else int(self.doc_starts[0])
        return list(torch.split(self.tokens[start:], lengths))


IGNORE_INDEX = -100  # a padded target: no loss, no gradient (torch's cross-entropy default)


@dataclass
class DocumentPieces:
    """The documents of a token block as variable-length training sequences, for length-bucketed and token-budget
    batches (:class:`regimen.batch.LengthBucketBatchSampler`, :class:`regimen.batch.TokenBudgetBatchSampler`).

    A document of ``L`` tokens gives ``L - 1`` next-token targets. One longer than ``seq_len + 1`` tokens is cut
    into consecutive pieces of at most ``seq_len + 1`` tokens that overlap by one, so every target of the block is
    predicted exactly once; a one-token document has no target and is left out. ``gather`` pads a batch to its
    longest piece: inputs with token 0, targets with ``IGNORE_INDEX`` (the loss and the metrics skip them), so a
    batch of similar lengths wastes few slots.
    """

    tokens: torch.Tensor
    starts: torch.Tensor
    sizes: torch.Tensor  # tokens per piece (targets + 1)
    seq_len: int
    vocab_size: int
    token_bytes: torch.Tensor | None = None
    name: str = "text"
    num_classes: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.num_classes = self.vocab_size
        if self.starts.numel() == 0:
            raise DataError(f"the {self.name} block has no document of two or more tokens to train on")

    @classmethod
    def from_windows(cls, windows: TokenWindows) -> DocumentPieces:
        """The pieces of the documents of ``windows``' block (its ``doc_starts``; the whole block as one document
        when they are unknown); a subset of the windows (``data.train_subset``) keeps the pieces inside their span."""
        lengths = windows.document_lengths()
        first = 0 if windows.doc_starts is None or windows.doc_starts.numel() == 0 else int(windows.doc_starts[0])
        doc_starts = first + torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
        targets = (lengths - 1).clamp(min=0)
        pieces = -(-targets // windows.seq_len)  # ceil: pieces per document
        document = torch.repeat_interleave(torch.arange(lengths.numel()), pieces)
        first_piece = torch.cumsum(pieces, 0) - pieces
        within = torch.arange(document.numel()) - first_piece[document]
        starts = doc_starts[document] + within * windows.seq_len
        sizes = torch.minimum(targets[document] - within * windows.seq_len, torch.tensor(windows.seq_len)) + 1
        if len(windows) < (windows.tokens.numel() - 1) // windows.seq_len:  # a subset: keep to the windows' span
            end = windows.starts.max() + windows.seq_len + 1
            covered = (starts >= windows.starts.min()) & (starts + sizes <= end)
            starts, sizes = starts[covered], sizes[covered]
        return cls(windows.tokens, starts, sizes, windows.seq_len, windows.vocab_size, windows.token_bytes,
                   windows.name)

    def __len__(self) -> int:
        return int(self.starts.numel())

    @property
    def input_shape(self) -> tuple[int]:
        return (self.seq_len,)

    @property
    def lengths(self) -> torch.Tensor:
        """Targets (= input tokens) of every piece: what a batch of it costs."""
        return self.sizes - 1

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        sizes = self.sizes[indices]
        longest = int(sizes.max()) if indices.numel() else 1
        offsets = torch.arange(longest, dtype=torch.int64)
        inside = offsets < sizes.unsqueeze(1)
        positions = (self.starts[indices].unsqueeze(1) + offsets).clamp(max=self.tokens.numel() - 1)
        pieces = torch.where(inside, self.tokens[positions].long(), 0)
        targets = torch.where(inside[:, 1:], pieces[:, 1:], IGNORE_INDEX)
        return pieces[:, :-1].to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def subset(self, indices: torch.Tensor) -> DocumentPieces:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        return DocumentPieces(self.tokens, self.starts[indices], self.sizes[indices], self.seq_len, self.vocab_size,
                              self.token_bytes, self.name)


def _fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise DataError(f"data.val_fraction ({val_fraction}) + data.test_fraction ({test_fraction}) must be < 1")


def split_documents(documents: list[str], val_fraction: float, test_fraction: float) -> list[list[str]]:
    """Contiguous ``[train, val, test]`` blocks cut at the byte fractions; a document that straddles a cut is split
    at its first line break after the cut (a document without one stays whole in the earlier block)."""
    _fractions(val_fraction, test_fraction)
    total = sum(len(d.encode("utf-8")) for d in documents)
    cuts = (total * (1.0 - val_fraction - test_fraction), total * (1.0 - test_fraction))
    blocks: list[list[str]] = [[], [], []]
    block, position = 0, 0  # position: bytes before ``document``
    for document in documents:
        while block < 2 and cuts[block] < position + len(document.encode("utf-8")):
            offset = int(math.ceil(cuts[block] - position))
            if offset <= 0:
                block += 1
                continue
            at = len(document.encode("utf-8")[:offset].decode("utf-8", errors="ignore"))
            newline = document.find("\n", max(at - 1, 0))
            if newline == -1 or newline == len(document) - 1:
                break  # the whole document stays in this block; the next one starts the next block
            head, document = document[: newline + 1], document[newline + 1 :]
            blocks[block].append(head)
            position += len(head.encode("utf-8"))
            block += 1
        if document:
            blocks[block].append(document)
            position += len(document.encode("utf-8"))
    if not blocks[0]:
        raise DataError("data: the training block is empty; lower data.val_fraction / data.test_fraction")
    return blocks


def split_tokens(tokens: np.ndarray, val_fraction: float, test_fraction: float) -> list[np.ndarray]:
    """Contiguous ``[train, val, test]`` blocks of a token array, cut at the token fractions."""
    _fractions(val_fraction, test_fraction)
    n = len(tokens)
    cut_val, cut_test = int(n * (1.0 - val_fraction - test_fraction)), int(n * (1.0 - test_fraction))
    return [tokens[:cut_val], tokens[cut_val:cut_test], tokens[cut_test:]]


def encode_block(documents: list[str], tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, doc_starts)`` of a block of documents."""
    encoded = tokenizer.encode_documents(documents)
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, dtype=np.int64)
    tokens = np.concatenate(encoded).astype(np.int64) if encoded else np.zeros(0, dtype=np.int64)
    keep = lengths > 0
    return torch.from_numpy(tokens), torch.from_numpy(starts[keep])
