"""A small recurrent sequence classifier built as stages: per-step embedding, GRU/LSTM, classifier head.

Inputs are batch-first sequences ``(N, T, F)`` (Fashion-MNIST: T = 28 rows of F = 28 pixels). The stages:

1. :class:`StepEmbedding`: ``ReLU(Linear(F, hidden))`` applied to every time step, after a ``time_dropout`` slot
   (``nn.Identity()`` until surgery puts a temporal dropout layer there: the convention
   :func:`regimen.dropout.apply_temporal_dropout` looks for, as timm's blocks have a ``drop_path`` slot);
2. :class:`RecurrentEncoder`: a GRU or LSTM over the steps; its output is the last step's hidden state ``(N, hidden)``;
3. :class:`~regimen.models.ClassifierHead` (optional dropout, Linear to the classes).
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.models.staged import ClassifierHead, StagedModel

__all__ = ["RecurrentEncoder", "SequenceRNN", "StepEmbedding"]


class StepEmbedding(nn.Module):
    """``ReLU(Linear(time_dropout(x)))`` on every step of ``x (N, T, F)``; ``time_dropout`` is a slot (Identity)."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.time_dropout: nn.Module = nn.Identity()
        self.proj = nn.Linear(in_features, hidden)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"sequences must be (N, T, F), got {tuple(x.shape)}")
        return self.act(self.proj(self.time_dropout(x)))


class RecurrentEncoder(nn.Module):
    """A batch-first GRU or LSTM; returns the top layer's hidden state after the last step ``(N, hidden)``."""

    def __init__(self, hidden: int, layers: int = 1, cell: str = "gru") -> None:
        super().__init__()
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(hidden, hidden, num_layers=layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.rnn(x)
        return output[:, -1]


class SequenceRNN(StagedModel):
    """Classify sequences ``(N, T, F)``: stages ``[StepEmbedding, RecurrentEncoder, ClassifierHead]``.

    Args:
        in_features: F, features per step (set by the task).
        num_classes: classes (set by the task).
        hidden: embedding and recurrent width. layers: recurrent layers. cell: ``"gru"`` or ``"lstm"``.
        head_dropout: dropout before the classifier (an ``nn.Dropout``, kept on by MC inference).
    """

    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 64, layers: int = 1, cell: str = "gru",
                 head_dropout: float = 0.0) -> None:
        for name, value in (("in_features", in_features), ("num_classes", num_classes), ("hidden", hidden),
                            ("layers", layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        super().__init__([StepEmbedding(in_features, hidden), RecurrentEncoder(hidden, layers, cell),
                          ClassifierHead(hidden, num_classes, pool=False, dropout=head_dropout)])
        self.config = dict(in_features=in_features, num_classes=num_classes, hidden=hidden, layers=layers, cell=cell,
                           head_dropout=head_dropout)
