"""BatchFormer: a Transformer encoder layer across the *batch* axis, in training only, before a shared classifier.

Paper: Zhi Hou, Baosheng Yu & Dacheng Tao, "BatchFormer: Learning to Explore Sample Relationships for Robust
Representation Learning", CVPR 2022, arXiv 2203.01522.

With the pooled features ``X ∈ R^{N×C}`` of a mini-batch, one ``TransformerEncoderLayer`` (TEL) treats the batch as a
sequence of N tokens, so every sample attends to the others::

    X' = TEL(X as one sequence of length N)          (N tokens of width C, batch of 1)
    logits = W [X; X'] + b,  labels = [y; y]         (one shared classifier on both, loss over 2N rows)

At evaluation the layer is removed: ``logits = W X + b`` (the classifier was trained to work on the original
features too, which is why it is shared). Reference defaults (authors' README, ``obtain_sample_relation_models``):
``TransformerEncoderLayer(C, nhead=4, dim_feedforward=C, dropout=0.5)``; the layer's parameters get 0.1 × the base LR
(``lr_mult``).

Pitfalls handled:
  * ``nn.TransformerEncoderLayer`` defaults to ``batch_first=False``, and the reference's ``X.unsqueeze(1)`` relies on
    it (authors' issues #11, #29): with ``batch_first=True`` that shape is N sequences of length 1 and the layer
    mixes nothing. :func:`batch_former` reads the layer's ``batch_first`` and lays the batch out as the *sequence*
    dimension either way.
  * Evaluation bypasses the layer (the reference's ``eval_batch`` averages both heads: an ablation, not the method).
  * The effect depends on the batch: the trainer drops the last incomplete batch, so no batch of 1 occurs; under DDP
    the layer mixes the per-process batch only (as the reference).
  * The head's own dropout (``ClassifierHead(dropout=...)``) applies to both halves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["BatchFormer", "BatchFormerHead", "BatchFormerMethod", "apply_batchformer", "batch_former"]

_HEAD_NAMES = ("head", "fc", "classifier")


def _batch_first(layer: nn.Module) -> bool:
    """Where ``layer`` expects the sequence: ``nn.TransformerEncoderLayer`` keeps the flag on its attention
    (``layer.self_attn.batch_first``), not on itself."""
    if hasattr(layer, "batch_first"):
        return bool(layer.batch_first)
    attention = getattr(layer, "self_attn", None)
    return bool(getattr(attention, "batch_first", False))


@checked_arguments
def batch_former(features: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``X' = layer(X)`` with the N rows of ``features (N, C)`` as *one sequence* of N tokens.

    ``layer`` is an ``nn.TransformerEncoderLayer`` (or any module with its call convention); its ``batch_first``
    flag (on ``layer.self_attn`` for torch's layer) says where the sequence dimension is, so the attention runs over
    the batch whatever its value.
    """
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        raise TypeError(f"features must be a floating tensor, got {getattr(features, 'dtype', type(features))}")
    if features.dim() != 2:
        raise ValueError(f"features must be (N, C) pooled features, got shape {tuple(features.shape)}")
    if _batch_first(layer):
        return layer(features.unsqueeze(0)).squeeze(0)  # (1, N, C): one batch element, a sequence of N
    return layer(features.unsqueeze(1)).squeeze(1)  # (N, 1, C): sequence of N, batch of 1


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_dropout(dropout: object) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
    return float(dropout)


@checked_arguments
class BatchFormer(nn.Module):
    """The batch-axis encoder: ``forward(X)`` is ``[X; X']`` ``(2N, C)`` in training and ``X`` in evaluation.

    Args:
        dim: feature width C.
        nhead: attention heads (must divide ``dim``); reference 4.
        dim_feedforward: width of the feed-forward block (reference: ``dim``; ``None`` means ``dim``).
        dropout: dropout inside the layer (reference 0.5).
    """

    def __init__(self, dim: int, nhead: int = 4, dim_feedforward: int | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        _check_int(dim, "dim")
        _check_int(nhead, "nhead")
        if dim % nhead:
            raise ValueError(f"nhead={nhead} must divide the feature width dim={dim}")
        dim_feedforward = dim if dim_feedforward is None else _check_int(dim_feedforward, "dim_feedforward")
        self.encoder = nn.TransformerEncoderLayer(dim, nhead, dim_feedforward=dim_feedforward,
                                                  dropout=_check_dropout(dropout), batch_first=False)

    def mix(self, features: torch.Tensor) -> torch.Tensor:
        """``X'``: the features after attention across the batch (always applied, whatever the mode)."""
        return batch_former(features, self.encoder)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        return torch.cat([features, self.mix(features)], dim=0)


@checked_arguments
class BatchFormerHead(nn.Module):
    """A classifier head with a :class:`BatchFormer` before its classifier: ``(2N, K)`` logits in training
    (original rows first, then the mixed ones), the plain head's ``(N, K)`` in evaluation.

    The head must expose ``features(x)`` (pooling/flatten) and a Linear ``fc`` (regimen's
    :class:`~regimen.models.ClassifierHead`), or be an ``nn.Linear`` itself. ``state_dict`` keys of the head are
    under ``head.``, the layer's under ``batchformer.``.
    """

    def __init__(self, head: nn.Module, batchformer: BatchFormer) -> None:
        super().__init__()
        if isinstance(head, BatchFormerHead):
            raise TypeError("head already has a BatchFormer")
        self.head = head
        self.batchformer = batchformer

    def _parts(self) -> tuple[Callable, nn.Module, nn.Linear]:
        head = self.head
        if isinstance(head, nn.Linear):
            return (lambda x: x), nn.Identity(), head
        return head.features, getattr(head, "dropout", nn.Identity()), head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not self.training:
            return self.head(x)
        features, dropout, fc = self._parts()
        return fc(dropout(self.batchformer(features(x))))


def _find_head(model: nn.Module) -> str | None:
    stages = model._modules.get("stages")
    if isinstance(stages, nn.ModuleList) and len(stages) > 0:
        return f"stages.{len(stages) - 1}"
    for name in _HEAD_NAMES:
        if model._modules.get(name) is not None:
            return name
    return None


def _head_width(head: nn.Module, name: str) -> int:
    if isinstance(head, nn.Linear):
        return head.in_features
    fc = getattr(head, "fc", None)
    if isinstance(fc, nn.Linear) and callable(getattr(head, "features", None)):
        return fc.in_features
    raise ConfigurationError(f"batchformer needs a classifier head with features() and a Linear fc (regimen's "
                             f"ClassifierHead) or an nn.Linear; {name!r} is a {type(head).__name__}")


@checked_arguments
def apply_batchformer(model: nn.Module, nhead: int = 4, dim_feedforward: int | None = None, dropout: float = 0.5,
                      *, module: str | None = None, optimizer: torch.optim.Optimizer | None = None,
                      lr_mult: float = 0.1) -> BatchFormer:
    """Put a :class:`BatchFormer` before the classifier of ``model``'s head (in place); returns the new layer.

    Args:
        model: any model whose head is ``module`` or found by convention (``stages[-1]``, else a child ``head``,
            ``fc`` or ``classifier``).
        nhead, dim_feedforward, dropout: of the encoder layer (see :class:`BatchFormer`).
        module: dotted name of the head.
        optimizer: when given, the layer's parameters join it as a new param group with ``lr × lr_mult`` (the
            reference's 0.1) and the first group's other settings.
        lr_mult: LR multiplier of the layer's param group (> 0).

    Everything is checked before the model changes, so a refused call leaves it as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(lr_mult, bool) or not isinstance(lr_mult, int | float) or not lr_mult > 0:
        raise ValueError(f"lr_mult must be a float > 0, got {lr_mult!r}")
    name = _find_head(model) if module is None else module
    if name is None:
        raise ConfigurationError(f"batchformer needs the classifier head: pass module='<dotted name>', or give the "
                                 f"model a `stages` list or a child named head, fc or classifier; "
                                 f"{type(model).__name__} has none")
    try:
        head = model.get_submodule(name)
    except AttributeError:
        raise ConfigurationError(f"batchformer: module {name!r} is not a submodule of {type(model).__name__}") from None
    if isinstance(head, BatchFormerHead):
        raise ValueError(f"batchformer is already applied to {name!r}")
    layer = BatchFormer(_head_width(head, name), nhead, dim_feedforward, dropout)
    reference = next(head.parameters(), None)
    if reference is not None:
        layer.to(device=reference.device, dtype=reference.dtype)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if optimizer is not None:
        settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        settings["lr"] = settings["lr"] * float(lr_mult)
        settings.pop("initial_lr", None)
        optimizer.add_param_group({**settings, "params": list(layer.parameters())})
    wrapped = BatchFormerHead(head, layer)
    if isinstance(parent, nn.ModuleList | nn.Sequential):
        parent[int(child)] = wrapped
    else:
        setattr(parent, child, wrapped)
    return layer


def _repeat(target: torch.Tensor) -> torch.Tensor:
    return torch.cat([target, target], dim=0)


@register_method
class BatchFormerMethod(Method):
    """BatchFormer (Hou, Yu & Tao 2022): a Transformer encoder layer across the batch before the shared classifier,
    in training only; the loss covers the original and the batch-mixed features, labels ``[y; y]``.

    Args:
        nhead: attention heads of the layer (reference 4; must divide the feature width).
        dim_feedforward: feed-forward width (``None``: the feature width, as the reference).
        dropout: dropout inside the layer (reference 0.5).
        lr_mult: the layer's LR relative to the base LR (reference 0.1).
        module: dotted name of the classifier head (default: by convention).

    The ``forward_loss`` link hands the inner links a model whose training output has 2N rows and the targets
    repeated (so the task's loss, label smoothing and soft targets apply to both halves) and returns the first N rows
    as the output (training metrics). The ``criterion`` link does the same for a 2N-row output handed to
    ``ctx.criterion`` directly (``reduction="none"``: each sample's mean over its two rows).
    """

    name = "batchformer"
    paper_id = "arXiv:2203.01522"
    claim = ("a transformer across the mini-batch in training lets samples share knowledge, improving long-tailed "
             "recognition most on the rare (few-shot) classes")
    claimed_effect = "better"
    targets = ("labels",)
    inputs = ("image", "vector")
    conflicts = ("multi_sample_dropout", "nested_width")
    before = ("hesso",)
    constraint_reason = ("multi-sample dropout also replaces the head's training output with a multi-row form, "
                         "nested widths change the feature width the batch-axis layer is built for, and HESSO's "
                         "pruning groups must be traced with the BatchFormer head in place")

    def __init__(self, nhead: int = 4, dim_feedforward: int | None = None, dropout: float = 0.5,
                 lr_mult: float = 0.1, module: str | None = None) -> None:
        _check_int(nhead, "nhead")
        if dim_feedforward is not None:
            _check_int(dim_feedforward, "dim_feedforward")
        self.dropout = _check_dropout(dropout)
        if isinstance(lr_mult, bool) or not isinstance(lr_mult, int | float) or not lr_mult > 0:
            raise ValueError(f"lr_mult must be a float > 0, got {lr_mult!r}")
        self.nhead, self.dim_feedforward, self.lr_mult, self.module = nhead, dim_feedforward, float(lr_mult), module

    def setup(self, ctx: Context) -> None:
        apply_batchformer(ctx.model, self.nhead, self.dim_feedforward, self.dropout, module=self.module,
                          optimizer=ctx.optimizer, lr_mult=self.lr_mult)

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        n = y.shape[0]
        # in training the wrapped head returns 2N rows; the targets are repeated to match
        loss, output = next(model, x, _repeat(y))
        if isinstance(output, torch.Tensor) and output.shape[0] == 2 * n:
            output = output[:n]
        return loss, output

    def criterion(self, output: Any, target: Any, next: Callable, ctx: Context, reduction: str = "mean"):
        if not (isinstance(output, torch.Tensor) and isinstance(target, torch.Tensor)
                and output.shape[0] == 2 * target.shape[0] and target.shape[0] > 0):
            return next(output, target, reduction=reduction)
        losses = next(output, _repeat(target), reduction=reduction)
        if reduction == "none":
            return losses.view(2, -1, *losses.shape[1:]).mean(dim=0)
        return losses / 2 if reduction == "sum" else losses
