"""A frozen embedding model rebuilt from a ``metric_learning`` run's checkpoint.

Backward-compatible training (BT², :mod:`regimen.losses.backward_compatible`) and the ``metric_learning`` task's
new-to-old retrieval need the *old* model (and BT² the independent *new* one) as frozen feature extractors. A run of
the ``metric_learning`` task writes ``checkpoint.pt`` with its ``model_spec`` (``name``, ``input_shape``,
``options``, ``embedding_dim``) and the weights; :func:`load_embedding_model` rebuilds the module from them with
``weights_only=True`` (no code from the file runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from regimen.models.factory import build_model

__all__ = ["load_embedding_model"]


def load_embedding_model(path: str | os.PathLike, where: str = "checkpoint") -> nn.Module:
    """The embedding model saved in a ``metric_learning`` run's checkpoint, in eval mode, its parameters frozen.

    Args:
        path: a ``checkpoint.pt`` written by ``regimen train`` on ``task = "metric_learning"``.
        where: the recipe key that named the file (used in error messages).

    Raises:
        ValueError: the file is missing, unreadable, not a metric-learning checkpoint, or its weights do not fit the
            model its spec describes (a run trained with surgery such as ``bt2`` changes the module).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{where}: checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ValueError(f"{where}: {path} is not a readable checkpoint ({type(error).__name__})") from None
    spec = state.get("model_spec") if isinstance(state, dict) else None
    if not isinstance(spec, dict) or state.get("task") != "metric_learning" or "embedding_dim" not in spec:
        raise ValueError(f"{where}: {path} is not a checkpoint of a metric_learning run (task "
                         f"{state.get('task') if isinstance(state, dict) else None!r})")
    model = build_model(spec["name"], tuple(spec["input_shape"]), int(spec["embedding_dim"]), **spec["options"])
    own, saved = model.state_dict(), state["model"]
    if set(own) != set(saved) or any(own[k].shape != saved[k].shape for k in own):
        raise ValueError(f"{where}: the weights in {path} do not fit a plain {spec['name']!r} embedding model (was "
                         "it trained with a method that changes the model, such as bt2?)")
    model.load_state_dict(saved)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
