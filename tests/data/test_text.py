"""Text corpora, tokenizers and next-token windows: lossless tokenisation, exact byte counts, contiguous splits
without leakage, and one-line errors for bad files."""

import shutil

import numpy as np
import pytest
import torch

from regimen.data import DataError
from regimen.data.text import (
    TokenWindows,
    encode_block,
    kjv_corpus,
    load_token_array,
    split_documents,
    split_tokens,
    stdlib_corpus,
    text_corpus,
)
from regimen.data.tokenizers import ByteTokenizer, tokenizer_from_spec, train_bpe

TEXT = ("In the beginning God created the heaven and the earth. Ünïcödé ✓ — naïve café.\n"
        "And the earth was without form, and void; and darkness was upon the face of the deep.\n") * 20


def test_byte_tokenizer_round_trips_and_counts_one_byte_per_token():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert int(tok.token_bytes[torch.from_numpy(ids.astype(np.int64))].sum()) == len(TEXT.encode("utf-8"))


def test_bpe_round_trips_counts_exact_bytes_and_is_cached(tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("REGIMEN_CACHE_DIR", str(tmp_path))
    documents = [line + "\n" for line in TEXT.splitlines()]
    tok = train_bpe(documents, 300)
    assert tok.vocab_size == 300
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges happened
    assert tok.decode(ids) == TEXT
    # bits per byte is exact: the tokens' byte counts add up to the UTF-8 length of the text
    assert int(tok.token_bytes[torch.as_tensor(ids)].sum()) == len(TEXT.encode("utf-8"))
    cached = list((tmp_path / "bpe").glob("*.json"))
    assert len(cached) == 1
    again = train_bpe(documents, 300)
    assert again.json == tok.json == cached[0].read_text(encoding="utf-8")
    assert tokenizer_from_spec(tok.spec()).encode(TEXT).tolist() == ids.tolist()
    with pytest.raises(ValueError, match="vocab_size must be an int >= 257"):
        train_bpe(documents, 200)


def test_split_documents_is_contiguous_whole_documents_without_overlap():
    documents = [f"verse {i} " + "x" * (i % 7) + "\n" for i in range(1000)]
    train, val, test = split_documents(documents, 0.1, 0.2)
    assert train + val + test == documents  # contiguous blocks in order: nothing shuffled, nothing shared
    total = sum(len(d) for d in documents)
    assert abs(sum(len(d) for d in test) / total - 0.2) < 0.01
    assert abs(sum(len(d) for d in val) / total - 0.1) < 0.01
    tokens = np.arange(1000)
    blocks = split_tokens(tokens, 0.1, 0.2)
    assert np.array_equal(np.concatenate(blocks), tokens) and [len(b) for b in blocks] == [700, 100, 200]
    with pytest.raises(DataError, match="val_fraction"):
        split_documents(documents, 0.6, 0.5)


def test_windows_match_a_python_loop_and_cover_every_target_once():
    tokens = torch.arange(3, 3 + 101, dtype=torch.int32) % 50
    windows = TokenWindows(tokens, seq_len=10, vocab_size=50, token_bytes=torch.full((50,), 2))
    assert len(windows) == 10  # (101 - 1) // 10
    indices = torch.tensor([7, 0, 3])
    x, y = windows.gather(indices)
    for row, i in enumerate(indices.tolist()):
        start = i * 10
        assert x[row].tolist() == tokens[start:start + 10].tolist()
        assert y[row].tolist() == tokens[start + 1:start + 11].tolist()
    assert x.dtype == y.dtype == torch.int64
    targets = torch.cat([windows.gather(torch.tensor([i]))[1][0] for i in range(len(windows))])
    assert targets.tolist() == tokens[1:].tolist()  # every token but the first is a target exactly once
    assert windows.target_bytes() == 2 * 100
    sub = windows.subset(torch.tensor([2, 5]))
    assert sub.gather(torch.tensor([1]))[0].tolist() == x.new_tensor(tokens[50:60].tolist()).unsqueeze(0).tolist()
    with pytest.raises(DataError, match="seq_len"):
        TokenWindows(tokens[:5], seq_len=10, vocab_size=50)


def test_documents_are_kept_for_the_samplers():
    tok = ByteTokenizer()
    documents = ["ab\n", "cdef\n", "g\n"]
    tokens, starts = encode_block(documents, tok)
    windows = TokenWindows(tokens, 2, 256, tok.token_bytes, starts)
    assert windows.document_lengths().tolist() == [3, 5, 2]
    assert [tok.decode(d) for d in windows.documents()] == documents


def test_text_files_and_folders_are_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third\n")
    (tmp_path / "a.txt").write_text("first\n")
    assert text_corpus(tmp_path).documents == ["first\n", "second\n", "third\n"]
    assert text_corpus(tmp_path / "a.txt").documents == ["first\n"]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"  \n", "is empty"), (b"abc\0def", "binary file"), (b"\xff\xfe\xfa", "not UTF-8"),
])
def test_bad_text_files_are_refused_naming_data_root(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"data.root: .*{message}"):
        text_corpus(path)


def test_token_arrays_npy_and_nanogpt_bin(tmp_path):
    tokens = np.array([1, 5, 2, 9, 0, 3], dtype=np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    np.save(tmp_path / "train.npy", tokens.astype(np.int32))
    assert load_token_array(tmp_path / "train.bin").tolist() == tokens.tolist()
    assert load_token_array(tmp_path / "train.npy", vocab_size=10).tolist() == tokens.tolist()
    with pytest.raises(DataError, match="data.options.vocab_size = 9, but .* holds token id 9"):
        load_token_array(tmp_path / "train.npy", vocab_size=9)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="odd byte count"):
        load_token_array(tmp_path / "odd.bin")
    np.save(tmp_path / "float.npy", np.zeros(4, dtype=np.float32))
    with pytest.raises(DataError, match="1-D integer token array"):
        load_token_array(tmp_path / "float.npy")


def test_stdlib_fallback_is_deterministic():
    first, second = stdlib_corpus(max_bytes=50_000), stdlib_corpus(max_bytes=50_000)
    assert first.documents == second.documents and len(first.documents) >= 1
    assert first.num_bytes >= 50_000 or len(first.documents) > 100


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian's bible-kjv is not installed")
def test_kjv_is_read_one_verse_per_document_without_references():
    corpus = kjv_corpus()
    assert len(corpus.documents) == 31102
    assert corpus.documents[0] == "In the beginning God created the heaven and the earth.\n"
    assert corpus.documents[-1] == "The grace of our Lord Jesus Christ be with you all. Amen.\n"


def test_a_single_document_is_cut_at_line_breaks():
    text = "".join(f"line {i:03d}\n" for i in range(100))  # 9 bytes a line
    train, val, test = split_documents([text], 0.1, 0.2)
    assert "".join(train + val + test) == text
    assert [sum(len(d) for d in b) for b in (train, val, test)] == [630, 90, 180]
    assert all(d.endswith("\n") for d in train + val + test)


@pytest.mark.parametrize("vocab_size, match", [(10**10, "must be <= 1,048,576"), (300, "exceeds what BPE can learn")])
def test_bpe_vocabulary_is_bounded_before_allocating(vocab_size, match):
    # 10**10 made `tokenizers` try to allocate ~570 GB and abort the whole process (not a Python error)
    with pytest.raises(ValueError, match=f"data.options.vocab_size.*{match}|{match}"):
        train_bpe(["tiny text"], vocab_size, cache=False)
