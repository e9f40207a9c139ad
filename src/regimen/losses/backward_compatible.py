"""BT²: backward-compatible training with a basis transformation (new embeddings that an old gallery can search).

Paper: Zhou, Li, Shrivastava, Zhao, Torralba, Tian & Lim, "BT²: Backward-compatible Training with Basis
Transformation", ICCV 2023, arXiv 2211.03989 (reference code: YifeiZhou02/BT-2, ``models/resnet.py::ResNet_ortho``,
``trainers/transfer_trainer.py``, ``train_feature_transfer.py``).

A retrieval system that upgrades its embedding model must either re-embed ("backfill") the whole gallery or train the
new model to be *compatible*: new queries must find old gallery items. BCT (Shen et al. 2020) makes the new embedding
compatible by training it with the old model's classifier, and loses some of the new model's own accuracy; BT² adds
a few dimensions through *orthonormal* maps, which lose no information, so one vector serves both uses.

Model (``BT2Model`` around the task's backbone ``h = backbone(x)``, D numbers; old embedding d_old; ``a`` extra dims;
scale ``C``)::

    f = normalize(h)                                   the new feature (trained like the independent new model)
    o = normalize(W₃ relu(h) + b₃)                     a d_old-dim old-space head (the reference's ``fc3``)
    z = [normalize(o[:, :a]), P(C·f)]                  a + D numbers; P orthogonal (D × D)
    bct = O₂ z[:, :d_old]                              O₂ orthogonal (d_old × d_old): the backward-compatible part
    embedding = [bct, z[:, d_old:]]                    D + a numbers: bct, then the a + D - d_old remaining ones

New-to-new retrieval uses the whole embedding; new-to-old retrieval its first d_old numbers (``bct``) against the
old model's gallery. P and O₂ are ``torch.nn.utils.parametrizations.orthogonal`` parametrisations (registered
before the parameters join the optimizer).

Loss (per sample; φ_old, φ_new: the frozen old and independent new models' L2-normalised embeddings, computed on
the same, augmented, batch; W_old: the mean normalised old embedding of each training class, the "pseudo
classifier" the reference builds when the old classifier does not cover the new classes)::

    L = task_loss(f, y) + λ₁ (1 - cos(f, φ_new)) + λ₂ CE(normalize(bct) W_oldᵀ, y) + λ₃ (1 - cos(bct, φ_old))

``task_loss`` is the rest of the criterion chain (the task's contrastive loss, or ``multi_similarity`` listed after
this method), applied to ``f`` where the reference applies its cross-entropy classifier ``fc_out(f)``.

Pitfalls handled / differences from the reference:

* The reference's trainer hard-codes λ₃ = 10, λ₁ = 1 and λ₂ = 10 (``configs/cifar100_transfer.yaml`` names other
  values that the trainer does not read); these are our defaults. Its class default for C is 3 (the configs use 2).
* The reference's backbone emits D + d_old numbers and uses the first D as f; here f is the whole backbone output
  and the old-space head reads it too, so the baseline and BT² can share the task's model unchanged.
* The reference stores φ_old / φ_new per image path, computed on un-augmented images while training on augmented
  ones; here they are computed on the batch the model sees (the models are frozen, so the cost is two forwards).
* The pseudo-classifier logits are cosines without a temperature, as in the reference (small gradients: λ₂ = 10
  makes up for them).
* ``extra_dims`` must satisfy 1 <= a <= d_old and D + a >= d_old; the embedding has D + a numbers.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = ["BT2Method", "BT2Model", "BT2Output", "bt2_embedding", "bt2_regularizer", "class_means"]


class BT2Output(NamedTuple):
    """What ``BT2Model`` returns in training mode: the embedding, its backward-compatible part and the feature f."""

    embedding: torch.Tensor
    compatible: torch.Tensor
    feature: torch.Tensor


@checked_arguments
def bt2_embedding(feature: torch.Tensor, old_space: torch.Tensor, p: torch.Tensor, o2: torch.Tensor, extra_dims: int,
                  scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The BT² embedding ``[O₂ z[:, :d_old], z[:, d_old:]]`` with ``z = [normalize(old_space[:, :a]), P(C·f)]``.

    Args:
        feature: ``(N, D)`` the new feature f (L2-normalised by the caller).
        old_space: ``(N, d_old)`` the old-space head's output o.
        p: ``(D, D)`` orthogonal matrix (applied as ``x @ p.T``, as ``nn.Linear`` does).
        o2: ``(d_old, d_old)`` orthogonal matrix.
        extra_dims: a, the dimensions added (1 <= a <= d_old, D + a >= d_old).
        scale: C, the factor on f before P.

    Returns:
        ``(embedding (N, D + a), compatible (N, d_old))``.
    """
    for name, value in (("feature", feature), ("old_space", old_space), ("p", p), ("o2", o2)):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    for name, value in (("old_space", old_space), ("p", p), ("o2", o2)):
        if value.dtype != feature.dtype:
            raise TypeError(f"{name} must have feature's dtype {feature.dtype}, got {value.dtype}")
    require_same_device(feature=feature, old_space=old_space, p=p, o2=o2)
    if feature.dim() != 2 or old_space.dim() != 2 or feature.shape[0] != old_space.shape[0]:
        raise ValueError(f"feature (N, D) and old_space (N, d_old) must be 2-D with one row per sample, got "
                         f"{tuple(feature.shape)} and {tuple(old_space.shape)}")
    d, d_old = feature.shape[1], old_space.shape[1]
    if tuple(p.shape) != (d, d) or tuple(o2.shape) != (d_old, d_old):
        raise ValueError(f"p must be ({d}, {d}) and o2 ({d_old}, {d_old}), got {tuple(p.shape)} and "
                         f"{tuple(o2.shape)}")
    if not 1 <= extra_dims <= d_old:
        raise ValueError(f"extra_dims must lie in [1, d_old = {d_old}], got {extra_dims}")
    if d + extra_dims < d_old:  # z = [a old-space dims, D new dims] must cover the d_old compatible dims
        raise ValueError(f"extra_dims must be >= d_old - D = {d_old} - {d} = {d_old - d} (the embedding's first "
                         f"d_old dims are the compatible part), got {extra_dims}")
    z = torch.cat([F.normalize(old_space[:, :extra_dims], dim=1), (scale * feature) @ p.T], dim=1)
    compatible = z[:, :d_old] @ o2.T
    return torch.cat([compatible, z[:, d_old:]], dim=1), compatible


@checked_arguments
def bt2_regularizer(feature: torch.Tensor, compatible: torch.Tensor, target: torch.Tensor, old: torch.Tensor,
                    new: torch.Tensor | None, old_classifier: torch.Tensor, new_weight: float = 1.0,
                    influence_weight: float = 10.0, old_weight: float = 10.0) -> torch.Tensor:
    """BT²'s terms besides the task loss, per sample ``(N,)``:
    ``λ₁ (1 - cos(f, φ_new)) + λ₂ CE(normalize(bct) W_oldᵀ, y) + λ₃ (1 - cos(bct, φ_old))``.

    Args:
        feature: ``(N, D)`` f; compatible: ``(N, d_old)`` bct.
        target: ``(N,)`` row indices into ``old_classifier`` (the class of each sample).
        old: ``(N, d_old)`` the old model's embeddings; new: ``(N, D)`` the independent new model's, or ``None``
            to drop the λ₁ term.
        old_classifier: ``(classes, d_old)`` W_old.
    """
    for name, value in (("feature", feature), ("compatible", compatible), ("old", old), ("new", new),
                        ("old_classifier", old_classifier)):
        if value is not None and not value.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {value.dtype}")
    if compatible.dim() != 2 or old.shape != compatible.shape or feature.dim() != 2 or (
            feature.shape[0] != compatible.shape[0]) or (new is not None and new.shape != feature.shape):
        raise ValueError(f"feature (N, D), compatible and old (N, d_old) and new (N, D) must agree, got "
                         f"{tuple(feature.shape)}, {tuple(compatible.shape)}, {tuple(old.shape)} and "
                         f"{None if new is None else tuple(new.shape)}")
    for name, value in (("compatible", compatible), ("old", old), ("new", new), ("old_classifier", old_classifier)):
        if value is not None and value.dtype != feature.dtype:
            raise TypeError(f"{name} must have feature's dtype {feature.dtype}, got {value.dtype}")
    if old_classifier.dim() != 2 or old_classifier.shape[1] != compatible.shape[1]:
        raise ValueError(f"old_classifier must be (classes, {compatible.shape[1]}), got {tuple(old_classifier.shape)}")
    if target.shape != (compatible.shape[0],) or target.is_floating_point() or target.dtype == torch.bool:
        raise ValueError(f"target must be ({compatible.shape[0]},) class indices, got {target.dtype} "
                         f"{tuple(target.shape)}")
    for name, value in (("new_weight", new_weight), ("influence_weight", influence_weight),
                        ("old_weight", old_weight)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    require_same_device(feature=feature, compatible=compatible, target=target, old=old, new=new,
                        old_classifier=old_classifier)
    cos_old = F.cosine_similarity(compatible, old, dim=1)
    logits = F.normalize(compatible, dim=1) @ old_classifier.T
    terms = influence_weight * F.cross_entropy(logits, target, reduction="none") + old_weight * (1.0 - cos_old)
    if new is not None:
        terms = terms + new_weight * (1.0 - F.cosine_similarity(feature, new, dim=1))
    return terms


@checked_arguments
def class_means(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes, row_of_class)``: the mean L2-normalised embedding of each class present (sorted by id) and a lookup
    from class id to its row (-1 for absent ids)."""
    if embeddings.dim() != 2 or not embeddings.is_floating_point() or labels.shape != (embeddings.shape[0],) or (
            labels.is_floating_point() or labels.dtype == torch.bool):
        raise ValueError(f"embeddings must be floating (N, D) and labels (N,) integer class ids, got "
                         f"{embeddings.dtype} {tuple(embeddings.shape)} and {labels.dtype} {tuple(labels.shape)}")
    require_data(embeddings=embeddings, labels=labels)
    if labels.numel() == 0 or int(labels.min()) < 0:
        raise ValueError("labels must be a non-empty set of class ids >= 0")
    present = labels.unique(sorted=True)
    lookup = torch.full((int(present.max()) + 1,), -1, dtype=torch.int64)
    lookup[present] = torch.arange(len(present))
    rows = lookup[labels]
    sums = torch.zeros(len(present), embeddings.shape[1], dtype=torch.float64)
    sums.index_add_(0, rows, F.normalize(embeddings.double(), dim=1))
    counts = torch.bincount(rows, minlength=len(present)).double().unsqueeze(1)
    return (sums / counts).float(), lookup


@checked_arguments
class BT2Model(nn.Module):
    """A backbone with BT²'s old-space head and basis transformations (see the module docstring). Training mode
    returns :class:`BT2Output`; eval mode the embedding alone (what retrieval uses)."""

    def __init__(self, backbone: nn.Module, feature_dim: int, old_dim: int, extra_dims: int = 8,
                 scale: float = 3.0) -> None:
        super().__init__()
        if feature_dim < 1 or old_dim < 1:
            raise ValueError(f"feature_dim and old_dim must be >= 1, got {feature_dim} and {old_dim}")
        if not 1 <= extra_dims <= old_dim:
            raise ValueError(f"extra_dims must lie in [1, old_dim = {old_dim}], got {extra_dims}")
        if feature_dim + extra_dims < old_dim:
            raise ValueError(f"feature_dim + extra_dims = {feature_dim + extra_dims} is less than old_dim = "
                             f"{old_dim}; the compatible part needs d_old numbers")
        self.backbone = backbone
        self.old_head = nn.Linear(feature_dim, old_dim)
        self.basis_p = orthogonal(nn.Linear(feature_dim, feature_dim, bias=False))
        self.basis_old = orthogonal(nn.Linear(old_dim, old_dim, bias=False))
        self.feature_dim, self.old_dim, self.extra_dims, self.scale = feature_dim, old_dim, extra_dims, scale

    def forward(self, x: torch.Tensor) -> BT2Output | torch.Tensor:
        h = self.backbone(x)
        feature = F.normalize(h, dim=1)
        old_space = F.normalize(self.old_head(F.relu(h)), dim=1)
        embedding, compatible = bt2_embedding(feature, old_space, self.basis_p.weight, self.basis_old.weight,
                                              self.extra_dims, self.scale)
        if self.training:
            return BT2Output(embedding, compatible, feature)
        return embedding


@torch.no_grad()
def _embed_all(model: nn.Module, data: Any, normalize, device: torch.device, batch: int = 1000) -> torch.Tensor:
    outputs = []
    for start in range(0, len(data), batch):
        x, _ = data.gather(torch.arange(start, min(start + batch, len(data))), device)
        outputs.append(model(normalize(x)).float().cpu())
    return torch.cat(outputs)


def _labels(data: Any) -> torch.Tensor:
    for attribute in ("labels", "targets"):
        labels = getattr(data, attribute, None)
        if isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point():
            return labels
    raise ValueError("bt2 needs a training set with integer class labels (a labels or targets tensor (N,))")


@register_method
class BT2Method(Method):
    """Backward-compatible training with a basis transformation (BT², ICCV 2023): new embeddings an old gallery can
    search, plus extra dimensions through orthonormal maps.

    ``old_model`` (required; the empty default is refused at setup) and ``new_model`` (optional: without it the λ₁
    term is dropped) are ``checkpoint.pt`` files of earlier ``metric_learning`` runs. Setup wraps the model in
    :class:`BT2Model`, adds its new parameters to the optimizer, and builds the pseudo classifier from the old
    model's embeddings of the training set; ``forward_loss`` embeds each batch with the frozen models; the
    ``criterion`` link passes f to the rest of the chain and adds the BT² terms. Score new-to-old retrieval with
    ``data.options.gallery_model`` set to the same old checkpoint."""

    name = "bt2"
    paper_id = "arXiv:2211.03989"
    claim = ("new embeddings with orthonormal basis transforms and a few extra dimensions are compatible with the old "
             "gallery (CIFAR-100 new-to-old top-1 38.7 vs BCT 25.0, old-to-old 33.6) while keeping the independent "
             "new model's accuracy (new-to-new 62.4 vs independent 62.7)")
    claimed_effect = "no_worse"
    targets = ("identity",)
    before = ("multi_similarity",)
    constraint_reason = "bt2 wraps the criterion and hands f to the loss that multi_similarity replaces"

    def __init__(self, old_model: str = "", new_model: str = "", extra_dims: int = 8, scale: float = 3.0,
                 new_weight: float = 1.0, influence_weight: float = 10.0, old_weight: float = 10.0) -> None:
        if not isinstance(old_model, str):
            raise ValueError(f"bt2: old_model must name a checkpoint.pt of a metric_learning run, got {old_model!r}")
        if isinstance(extra_dims, bool) or not isinstance(extra_dims, int) or extra_dims < 1:
            raise ValueError(f"bt2: extra_dims must be an int >= 1, got {extra_dims!r}")
        if not scale > 0:
            raise ValueError(f"bt2: scale must be > 0, got {scale}")
        for key, value in (("new_weight", new_weight), ("influence_weight", influence_weight),
                           ("old_weight", old_weight)):
            if not value >= 0:
                raise ValueError(f"bt2: {key} must be >= 0, got {value}")
        self.old_path, self.new_path = old_model, new_model
        self.extra_dims, self.scale = extra_dims, float(scale)
        self.weights = (float(new_weight), float(influence_weight), float(old_weight))
        self.old: nn.Module | None = None
        self.new: nn.Module | None = None
        self.old_classifier: torch.Tensor | None = None
        self.class_row: torch.Tensor | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def setup(self, ctx: Context) -> None:
        from regimen.models import load_embedding_model

        if not self.old_path:
            raise ValueError("bt2.old_model: required: the checkpoint.pt of the old model's metric_learning run")
        device = ctx.run.device
        self.old = load_embedding_model(self.old_path, "bt2.old_model").to(device)
        self.new = load_embedding_model(self.new_path, "bt2.new_model").to(device) if self.new_path else None
        x, _ = ctx.example_batch(2)
        model = ctx.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            feature_dim = model(x).shape[1]
            old_dim = self.old(x).shape[1]
            new_dim = self.new(x).shape[1] if self.new is not None else feature_dim
        model.train(was_training)
        if new_dim != feature_dim:
            raise ValueError(f"bt2.new_model embeds into {new_dim} numbers, the model being trained into "
                             f"{feature_dim}; train both with the same model.options.embedding_dim")
        if self.extra_dims > old_dim:
            raise ValueError(f"bt2.extra_dims = {self.extra_dims} exceeds the old embedding's {old_dim} numbers")
        old_embeddings = _embed_all(self.old, ctx.train_data, ctx.normalize, device)
        self.old_classifier, self.class_row = class_means(old_embeddings, _labels(ctx.train_data))
        self.old_classifier, self.class_row = self.old_classifier.to(device), self.class_row.to(device)
        wrapped = BT2Model(model, feature_dim, old_dim, self.extra_dims, self.scale).to(device)
        added = [p for name, p in wrapped.named_parameters() if not name.startswith("backbone.")]
        group = ctx.optimizer.param_groups[0]
        ctx.optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"}, "params": added})
        ctx.model = wrapped

    def forward_loss(self, model, x, y, next, ctx: Context):
        with torch.no_grad():
            old = F.normalize(self.old(x).float(), dim=1)
            new = F.normalize(self.new(x).float(), dim=1) if self.new is not None else None
        self._batch = (old, new)
        try:
            return next(model, x, y)
        finally:
            self._batch = None

    def criterion(self, output: Any, target: torch.Tensor, next, ctx: Context, reduction: str = "mean"):
        if not isinstance(output, BT2Output):  # not the wrapped model's training output: nothing to add
            return next(output, target, reduction=reduction)
        if self._batch is None:
            raise RuntimeError("bt2: the criterion ran outside bt2's forward_loss (the frozen models' embeddings of "
                               "this batch are missing)")
        old, new = self._batch
        rows = self.class_row[target]
        terms = bt2_regularizer(output.feature, output.compatible, rows, old, new, self.old_classifier,
                                *self.weights)
        if reduction == "none":
            return next(output.feature, target, reduction="none") + terms
        task = next(output.feature, target, reduction=reduction)
        return task + (terms.sum() if reduction == "sum" else terms.mean())
