"""Checkpoints: atomic writes (temp file + rename), ``weights_only=True`` loading, RNG state capture.

A checkpoint is a plain dict of tensors and Python primitives (so ``torch.load(..., weights_only=True)`` can read it):
``format``, ``recipe`` (dict), ``model_spec`` ({"name", "input_shape", "num_classes", "options"}), ``model``,
``optimizer``, ``scheduler``, ``methods`` (list of method states), ``rng``, ``epoch`` (epochs completed), ``step``,
``history`` (per-epoch metrics) and ``elapsed`` (training seconds so far).
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from regimen._archive import verify_torch_archive
from regimen.errors import RegimenError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "capture_rng", "load_checkpoint", "load_model_state",
           "restore_rng", "save_checkpoint"]

CHECKPOINT_FORMAT = "regimen-checkpoint-v1"


class CheckpointError(RegimenError, ValueError):
    """A checkpoint that cannot be read or does not fit the model it is loaded into."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: a temp file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (a temp file beside it, then ``os.replace``): a crash mid-write
    leaves the previous file intact."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def _torch_load(path: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` (no code runs) after the archive's checksums; one-line errors."""
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    verify_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable {what}: {first}") from None


def verify_archive(path: Path, error: type[Exception] | None = None) -> None:
    """Check a torch zip file's CRC-32 checksums before loading it (see :func:`verify_torch_archive`)."""
    verify_torch_archive(path, error or CheckpointError, "checkpoint")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a regimen checkpoint with ``weights_only=True`` (no code runs); clear errors for foreign files."""
    state = _torch_load(Path(path), "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a regimen checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Model weights from a regimen checkpoint (its ``model`` entry) or from a plain ``torch.save(model.state_dict())``
    file, loaded with ``weights_only=True``; a one-line :class:`CheckpointError` for anything else."""
    state = _torch_load(Path(path), "weights file")
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        return state["model"]
    if isinstance(state, dict) and state and all(isinstance(k, str) for k in state) and any(
            isinstance(v, torch.Tensor) for v in state.values()):
        return state
    raise CheckpointError(f"{path} holds neither a regimen checkpoint nor a model state_dict "
                          f"(got {type(state).__name__})")


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict`` with a one-line error when the checkpoint comes from another model.

    The model is only modified when every key and shape matches.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [k for k in own if k in state_dict and _shape(own[k]) != _shape(state_dict[k])]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {key}: checkpoint "
                         f"{_shape(state_dict[key])} vs model {_shape(own[key])})")
        raise CheckpointError(f"{source} was saved from a different model: {'; '.join(parts)}")
    model.load_state_dict(state_dict)


def _shape(value: Any) -> tuple[int, ...] | str:
    """A state entry's shape; a module's ``get_extra_state`` may return any object, compared by its type name."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def capture_rng() -> dict[str, Any]:
    """The process's RNG states: torch (CPU and CUDA), NumPy and Python's ``random``."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),  # a tensor: weights_only-loadable
        "numpy_pos": int(np.random.get_state()[2]),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].clone())  # a view at a storage offset would be read from the storage start
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
