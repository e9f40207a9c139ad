"""Hostile files (issue 21): truncated, bit-flipped and wrong-format checkpoints and pruned-model files, pickled
objects (refused by ``weights_only`` loading; a ``__reduce__`` that would write a marker file proves no code ran),
``.npz`` with object arrays or lying headers, IDX files with lying headers and huge declared sizes, binary "text"
files and token files. Each must be a one-line error naming the file, nothing overwritten, no code executed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from regimen.data.datasets import load_npz
from regimen.data.idx import DataError, read_idx
from regimen.data.text import load_token_array, text_corpus
from regimen.subnet import load_pruned, save_pruned
from regimen.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from tests.reliability import fuzzlib

MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"regimen-hostile-marker-{os.getpid()}"


class Payload:
    """Unpickling this would create MARKER: the proof that loading ran no code is that MARKER never appears."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


@pytest.fixture(autouse=True)
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a hostile file executed code while being loaded"


def one_line(error: BaseException, path: Path) -> None:
    message = str(error)
    assert "\n" not in message.strip(), f"not a one-line error: {message!r}"
    assert str(path) in message or path.name in message, f"the error does not name the file: {message}"


def _state() -> dict:
    torch.manual_seed(0)
    return {"format": CHECKPOINT_FORMAT, "model": torch.nn.Linear(16, 8).state_dict(), "epoch": 3,
            "recipe": {"name": "x"}}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(_state(), path)
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("keep", [0, 1, 30, 0.5, -1])
def test_truncated_checkpoint_is_a_one_line_error(tmp_path, checkpoint_bytes, keep):
    data = checkpoint_bytes[: int(len(checkpoint_bytes) * keep) if isinstance(keep, float) else keep]
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    one_line(info.value, path)


@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flipped_checkpoint_is_refused_or_loads_unchanged(tmp_path_factory, checkpoint_bytes, position, bit):
    """A flipped bit anywhere: a one-line error, or (a bit the format does not use) exactly the original state;
    never silently different weights (the loader checks the archive's CRC-32s)."""
    fuzzlib.COUNTS["hostile file"] += 1
    data = bytearray(checkpoint_bytes)
    data[int(position * len(data))] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "checkpoint.pt"
    path.write_bytes(bytes(data))
    try:
        state = load_checkpoint(path)
    except CheckpointError as error:
        one_line(error, path)
        return
    original = _state()
    assert state.keys() == original.keys()
    for key, value in original["model"].items():
        assert torch.equal(state["model"][key], value), f"a flipped bit silently changed {key}"


@pytest.mark.parametrize("kind", ["text", "npz", "json", "zip", "plain_list", "other_format", "empty_dict"])
def test_wrong_format_checkpoint_is_a_one_line_error(tmp_path, kind):
    path = tmp_path / "checkpoint.pt"
    if kind == "text":
        path.write_text("epoch = 3\n")
    elif kind == "npz":
        np.savez(tmp_path / "x.npz", a=np.zeros(3))
        path.write_bytes((tmp_path / "x.npz").read_bytes())
    elif kind == "json":
        path.write_text('{"format": "regimen-checkpoint-v1"}')
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("data.pkl", b"not a pickle")
    elif kind == "plain_list":
        torch.save([1, 2, 3], path)
    elif kind == "other_format":
        torch.save({"format": "someone-else-v9", "model": {}}, path)
    else:
        torch.save({}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    one_line(info.value, path)


def test_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}, "evil": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    one_line(info.value, path)
    assert not MARKER.exists()


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    from regimen.train.trainer import fit

    out = tmp_path_factory.mktemp("finished") / "run"
    recipe = {"name": "tiny", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [8]}}, "optim": {"name": "sgd", "lr": 0.05},
              "train": {"epochs": 1, "batch_size": 256}}
    fit(recipe, out_dir=out, quiet=True)
    return out, recipe


@pytest.mark.parametrize("damage", ["truncate", "flip", "pickle"])
def test_failed_resume_from_a_hostile_checkpoint_leaves_the_run_folder_unchanged(tmp_path, finished_run, capsys,
                                                                                 damage):
    import shutil

    from regimen.cli import main

    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    recipe = finished_run[1]
    checkpoint = out / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "truncate":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        with zipfile.ZipFile(checkpoint) as archive:  # a byte in the middle of the largest tensor's data
            info = max(archive.infolist(), key=lambda i: i.compress_size)
        name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
        start = info.header_offset + 30 + name_length + extra_length
        flipped = bytearray(data)
        flipped[start + info.compress_size // 2] ^= 0x10
        checkpoint.write_bytes(bytes(flipped))
    else:
        torch.save({"format": CHECKPOINT_FORMAT, "recipe": recipe, "evil": Payload()}, checkpoint)
    before = _tree_digest(out)
    capsys.readouterr()
    assert main(["train", "--resume", str(checkpoint), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert "internal error" not in err and "error:" in err, err
    assert len(err.splitlines()) == 1 and str(checkpoint) in err, err
    assert _tree_digest(out) == before, "a failed resume changed the run folder"


# ------------------------------------------------------------------------------------------ pruned-model files
@pytest.fixture(scope="module")
def pruned_bytes(tmp_path_factory) -> bytes:
    from regimen.models.mlp import MLP
    path = tmp_path_factory.mktemp("pruned") / "model.pt"
    save_pruned(MLP(in_features=6, num_classes=3, hidden=[8]), path)
    return path.read_bytes()


@given(position=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flipped_pruned_model_is_refused_or_loads_unchanged(tmp_path_factory, pruned_bytes, position, bit):
    fuzzlib.COUNTS["hostile file"] += 1
    data = bytearray(pruned_bytes)
    data[int(position * len(data))] ^= 1 << bit
    folder = tmp_path_factory.mktemp("flip")
    path = folder / "model.pt"
    path.write_bytes(bytes(data))
    try:
        model = load_pruned(path)
    except ValueError as error:
        one_line(error, path)
        return
    (folder / "ok.pt").write_bytes(pruned_bytes)
    reference = load_pruned(folder / "ok.pt")
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), f"a flipped bit silently changed {name}"


@pytest.mark.parametrize("kind", ["truncated", "text", "pickle", "missing"])
def test_hostile_pruned_model_file_is_a_one_line_error(tmp_path, pruned_bytes, kind):
    path = tmp_path / "model.pt"
    if kind == "truncated":
        path.write_bytes(pruned_bytes[: len(pruned_bytes) // 2])
    elif kind == "text":
        path.write_text("hello")
    elif kind == "pickle":
        torch.save({"format": "regimen-pruned-v1", "model": {}, "evil": Payload()}, path)
    with pytest.raises(ValueError) as info:
        load_pruned(path)
    one_line(info.value, path)


# ------------------------------------------------------------------------------------------------------ .npz
def test_npz_with_object_arrays_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "data.npz"
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = Payload(), Payload()
    np.savez(path, x_train=objects, y_train=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info.value, path)
    assert "pickle" in str(info.value)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _lying_npy(shape: tuple[int, ...]) -> bytes:
    """A float32 ``.npy`` of 4 values whose header declares ``shape``."""
    data = _npy_bytes(np.zeros(4, dtype=np.float32))
    header_end = data.index(b"\n") + 1
    header = data[10:header_end].decode("latin1").replace("(4,)", str(shape).replace(" ", ""))
    header = header.rstrip().ljust(header_end - 10 - 1) + "\n"
    assert len(header) == header_end - 10, "the lying header must keep the header length"
    return data[:10] + header.encode("latin1") + data[header_end:]


@pytest.mark.parametrize("shape", [(10**6, 10**6), (2**40,), (5,)])
def test_npz_whose_header_declares_more_data_than_it_holds_is_refused_before_allocating(tmp_path, shape):
    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", _lying_npy(shape))
        archive.writestr("y_train.npy", _npy_bytes(np.zeros(4, dtype=np.int64)))
    with pytest.raises(DataError) as info:  # a MemoryError would mean it tried to allocate what the header says
        load_npz(path)
    one_line(info.value, path)


@pytest.mark.parametrize("kind", ["truncated", "text", "flip"])
def test_corrupt_npz_is_a_one_line_error(tmp_path, kind):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.zeros((4, 1, 2, 2), dtype=np.float32), y_train=np.zeros(4, dtype=np.int64))
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("x_train = [1, 2]")
    else:
        flipped = bytearray(data)
        flipped[data.index(b"\x93NUMPY") + 140] ^= 0x04  # inside the first member's array data
        path.write_bytes(bytes(flipped))
    with pytest.raises(DataError) as info:
        load_npz(path)
    one_line(info.value, path)


# ------------------------------------------------------------------------------------------------------- IDX
def _idx(shape: tuple[int, ...], payload: bytes, dtype_code: int = 0x08) -> bytes:
    return bytes([0, 0, dtype_code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", ["longer", "shorter", "huge", "bad_magic", "no_dims", "truncated_header", "empty",
                                  "bad_dtype"])
def test_idx_with_a_lying_header_is_a_one_line_error(tmp_path, gz, case):
    payload = bytes(range(24))
    data = {
        "longer": _idx((2, 3, 5), payload),  # declares 30 bytes, holds 24
        "shorter": _idx((2, 3, 3), payload),  # declares 18 bytes, holds 24
        "huge": _idx((2**32 - 1, 2**32 - 1, 2**32 - 1), payload),  # 8e28 bytes: must not be allocated
        "bad_magic": b"\x1f\x8b" + _idx((24,), payload)[2:],
        "no_dims": bytes([0, 0, 8, 0]) + payload,
        "truncated_header": bytes([0, 0, 8, 3, 0, 0]),
        "empty": b"",
        "bad_dtype": bytes([0, 0, 0x42, 1]) + struct.pack(">I", 24) + payload,
    }[case]
    path = tmp_path / ("data.idx.gz" if gz else "data.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    one_line(info.value, path)


def test_idx_gzip_bomb_header_is_refused_before_decompressing(tmp_path):
    """A small .gz whose header promises far more than deflate can expand to: refused from the header alone."""
    path = tmp_path / "bomb.idx.gz"
    path.write_bytes(gzip.compress(_idx((60000, 28, 28 * 1000), b"\0" * 1000)))
    with pytest.raises(DataError, match="more than a") as info:
        read_idx(path)
    one_line(info.value, path)


def test_corrupt_gzip_idx_is_a_one_line_error(tmp_path):
    data = bytearray(gzip.compress(_idx((24,), bytes(range(24)))))
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "data.idx.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError) as info:
        read_idx(path)
    one_line(info.value, path)


def test_valid_idx_still_reads(tmp_path):
    path = tmp_path / "ok.idx.gz"
    path.write_bytes(gzip.compress(_idx((2, 3, 4), bytes(range(24)))))
    assert read_idx(path).tolist() == np.arange(24, dtype=np.uint8).reshape(2, 3, 4).tolist()


# ------------------------------------------------------------------------------------------- text and tokens
@pytest.mark.parametrize("content", [b"\x00\x01\x02binary\x00", b"\xff\xfe\xfa not utf-8", b"   \n\n",
                                     bytes(range(256)) * 4])
def test_binary_or_empty_text_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        text_corpus(path)
    one_line(info.value, path)


def test_a_binary_file_in_a_text_folder_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("In the beginning.\n")
    (tmp_path / "b.txt").write_bytes(b"\x00\x00\x00")
    with pytest.raises(DataError) as info:
        text_corpus(tmp_path)
    one_line(info.value, tmp_path / "b.txt")


@pytest.mark.parametrize("kind", ["object", "lying_header", "float", "2d", "truncated", "odd_bin", "text_as_npy",
                                  "negative", "too_large_id"])
def test_hostile_token_file_is_a_one_line_error(tmp_path, kind):
    suffix = ".bin" if kind == "odd_bin" else ".npy"
    path = tmp_path / f"tokens{suffix}"
    if kind == "object":
        objects = np.empty(2, dtype=object)
        objects[0], objects[1] = Payload(), 3
        np.save(path, objects, allow_pickle=True)
    elif kind == "lying_header":
        path.write_bytes(_lying_npy((10**12,)))
    elif kind == "float":
        np.save(path, np.zeros(8, dtype=np.float32))
    elif kind == "2d":
        np.save(path, np.zeros((2, 4), dtype=np.int64))
    elif kind == "truncated":
        path.write_bytes(_npy_bytes(np.arange(100, dtype=np.int64))[:-17])
    elif kind == "odd_bin":
        path.write_bytes(b"\x01\x00\x02")
    elif kind == "text_as_npy":
        path.write_text("1 2 3 4")
    elif kind == "negative":
        np.save(path, np.array([1, -2, 3], dtype=np.int64))
    else:
        np.save(path, np.array([1, 2, 70000], dtype=np.int64))
    with pytest.raises(DataError) as info:
        load_token_array(path, vocab_size=50000)
    one_line(info.value, path if kind != "too_large_id" else Path("vocab_size"))
