"""``task = "metric_learning"``: embeddings trained on some classes, scored by retrieval on *unseen* classes.

The zero-shot retrieval protocol of deep metric learning (CUB-200 / Cars-196 / SOP train on the first half of the
classes and retrieve on the second half; Musgrave et al., "A Metric Learning Reality Check", ECCV 2020,
arXiv 2003.08505) on Fashion-MNIST: the model embeds the training images of ``data.options.train_classes`` (default
0-5); validation is a seeded ``data.val_fraction`` of those images (retrieval among seen classes); the test split is
the test images of ``data.options.test_classes`` (default 6-9), classes the model never saw. A class in both lists is
refused. Labels keep their original class ids.

Batches are ``(images (N, 1, 28, 28) float in [0, 1], class ids (N,) int64)`` (``target_kind = "identity"``: class
ids that only say which samples match, so label-mixing methods, which need class-index targets, are refused). The
default model is regimen's ResNet whose head outputs ``model.options.embedding_dim`` (default 64) numbers; ``mlp``
works too. The default loss is the contrastive loss (Hadsell, Chopra & LeCun 2006) on L2-normalised embeddings,
per anchor ``mean_{j ∈ P_i} d_ij² + mean_{j ∈ N_i} max(0, m - d_ij)²`` with ``d`` the Euclidean distance and margin
``m = 1`` (``reduction="none"`` gives each anchor's term; ``"mean"`` their mean). ``multi_similarity`` replaces it.

Metrics (cosine similarity of L2-normalised embeddings; every item of the split is a query against all the others,
itself excluded by index, ties broken by index):

* ``recall_at_k`` (k = 1, 2, 4): fraction of queries with at least one same-class item among their k nearest;
* ``map_at_r``: MAP@R (Musgrave et al. 2020): for a query with R same-class items in the gallery,
  ``(1/R) Σ_{i=1}^{R} P@i · rel_i``, averaged over queries (queries without a same-class item are skipped).

Primary: ``recall_at_1`` (higher is better). With ``data.options.gallery_model`` (a ``checkpoint.pt`` of an earlier
``metric_learning`` run: the *old* model) the task also scores backward compatibility: ``compat_recall_at_1``,
``compat_recall_at_2``, ``compat_recall_at_4`` and ``compat_map_at_r`` rank the old model's embeddings of the same
images (the gallery, computed once) for queries made of the first ``d_old`` numbers of the new model's embedding
(new-to-old retrieval, as BT² and BCT score it).

Data (offline): ``auto`` / ``fashion_mnist`` (Debian's ``dataset-fashion-mnist``; ``auto`` falls back to scikit-learn's
digits), ``digits``. ``data.train_subset`` keeps a seeded subset of the training images, ``data.test_subset`` the first
test images of the unseen classes. The per-channel normalisation uses the statistics of the *whole* training set (all
classes), so models trained on different class lists (old and new) see identically normalised inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import DataError, DataSplits
from regimen.errors import ConfigurationError
from regimen.tasks.image_classification import ImageClassificationTask

__all__ = ["MetricLearningTask", "contrastive_loss", "retrieval_metrics"]

_DATA_OPTIONS = {"train_classes": list, "test_classes": list, "gallery_model": str}
DEFAULT_TRAIN_CLASSES = (0, 1, 2, 3, 4, 5)
DEFAULT_TEST_CLASSES = (6, 7, 8, 9)
DEFAULT_EMBEDDING_DIM = 64
RECALL_KS = (1, 2, 4)


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0,
                     reduction: str = "mean") -> torch.Tensor:
    """Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006) of a batch of embeddings, per anchor.

    With ``q = normalize(embeddings)`` and ``d_ij = ||q_i - q_j||``, anchor i with positives P_i (same label, j ≠ i)
    and negatives N_i scores ``mean_{P_i} d² + mean_{N_i} max(0, margin - d)²`` (an empty set adds 0).

    Args:
        embeddings: ``(m, d)`` floating embeddings.
        labels: ``(m,)`` integer labels.
        margin: the distance negatives are pushed beyond (> 0; distances of unit vectors lie in [0, 2]).
        reduction: ``"mean"`` over anchors, ``"sum"``, or ``"none"`` (each anchor's loss, ``(m,)``).
    """
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point() or embeddings.dim() != 2:
        raise ValueError(f"embeddings must be a floating (m, d) tensor, got {getattr(embeddings, 'shape', embeddings)}")
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise TypeError("labels must be a 1-D integer tensor")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) differ in length")
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    q = F.normalize(embeddings.float(), dim=1)
    # squared distance of unit vectors: 2 - 2 cos, clamped (rounding); the distance's gradient at 0 is avoided by
    # using d² for positives and sqrt only where the hinge is active
    sq = (2.0 - 2.0 * (q @ q.T)).clamp_min(0.0)
    m = q.shape[0]
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(m, dtype=torch.bool, device=q.device)
    pos, neg = same & ~eye, ~same
    dist = torch.where(neg, sq, torch.ones_like(sq)).sqrt()  # sqrt only of negatives' (nonzero) distances
    pos_term = (sq * pos).sum(1) / pos.sum(1).clamp_min(1)
    neg_term = ((margin - dist).clamp_min(0.0).square() * neg).sum(1) / neg.sum(1).clamp_min(1)
    per_anchor = pos_term + neg_term
    if reduction == "none":
        return per_anchor
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


@torch.no_grad()
def retrieval_metrics(queries: torch.Tensor, labels: torch.Tensor, gallery: torch.Tensor | None = None,
                      ks: Sequence[int] = RECALL_KS, chunk: int = 512) -> dict[str, float]:
    """Recall@k and MAP@R of leave-one-out retrieval by cosine similarity.

    Args:
        queries: ``(n, d)`` query embeddings.
        labels: ``(n,)`` integer labels of the items.
        gallery: ``(n, d')`` embeddings of the *same* items by another model (new-to-old retrieval; ``d' = d``), or
            ``None`` to search the queries themselves. Item i is never its own neighbour.
        ks: the k of Recall@k.
        chunk: queries ranked at a time (memory: ``chunk × n``).

    Returns:
        ``{"recall_at_<k>": ..., "map_at_r": ...}`` averaged over the queries that have a same-class item.
    """
    if queries.dim() != 2 or labels.dim() != 1 or queries.shape[0] != labels.shape[0]:
        raise ValueError(f"queries must be (n, d) and labels (n,), got {tuple(queries.shape)} and "
                         f"{tuple(labels.shape)}")
    if gallery is not None and tuple(gallery.shape) != tuple(queries.shape):
        raise ValueError(f"gallery must hold the same items as the queries, shape {tuple(queries.shape)}, got "
                         f"{tuple(gallery.shape)}")
    n = queries.shape[0]
    if n < 2 or any(k < 1 or k > n - 1 for k in ks):
        raise ValueError(f"retrieval needs more than max(ks) = {max(ks)} items, got {n}")
    q = F.normalize(queries.float(), dim=1)
    g = q if gallery is None else F.normalize(gallery.float(), dim=1)
    counts = (labels.unsqueeze(0) == labels.unsqueeze(1)).sum(1) - 1  # R of every query (itself excluded)
    valid = counts > 0
    if not valid.any():
        raise ValueError("no query has a same-class item to retrieve")
    recall_hits = torch.zeros(len(ks), dtype=torch.float64)
    ap_sum = 0.0
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(start + chunk, n))
        sim = q[rows] @ g.T
        sim[torch.arange(len(rows)), rows] = -float("inf")  # never retrieve the query itself
        order = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, : n - 1]
        rel = labels[order] == labels[rows].unsqueeze(1)  # (rows, n - 1) in rank order
        ok = valid[rows]
        for i, k in enumerate(ks):
            recall_hits[i] += (rel[:, :k].any(1) & ok).sum()
        r = counts[rows]
        depth = int(r.max())
        if depth == 0:
            continue
        top = rel[:, :depth].double()
        precision = top.cumsum(1) / torch.arange(1, depth + 1, dtype=torch.float64)
        within = torch.arange(depth).unsqueeze(0) < r.unsqueeze(1)
        ap = (precision * top * within).sum(1) / r.clamp_min(1)
        ap_sum += float(ap[ok].sum())
    num = float(valid.sum())
    results = {f"recall_at_{k}": float(recall_hits[i]) / num for i, k in enumerate(ks)}
    results["map_at_r"] = ap_sum / num
    return results


def _class_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value or any(isinstance(c, bool) or not isinstance(c, int)
                                                               or c < 0 for c in value):
        raise ConfigurationError(f"data.options.{key}: expected a non-empty list of class ids (ints >= 0), got "
                                 f"{value!r}")
    if len(set(value)) != len(value):
        raise ConfigurationError(f"data.options.{key}: lists a class twice: {list(value)}")
    return tuple(int(c) for c in value)


class MetricLearningTask(ImageClassificationTask):
    """Embed images, retrieve unseen classes (Fashion-MNIST 0-5 → 6-9): Recall@1/2/4, MAP@R."""

    name = "metric_learning"
    input_kind = "image"
    target_kind = "identity"
    metrics: ClassVar[tuple[str, ...]] = ("recall_at_1", "recall_at_2", "recall_at_4", "map_at_r")
    primary_metric = "recall_at_1"
    higher_is_better_metrics = ("recall_at_1", "recall_at_2", "recall_at_4", "map_at_r")
    higher_is_better = True
    train_metrics = ()
    data_names = ("auto", "fashion_mnist", "digits")
    model_names = ("resnet", "mlp")
    default_model = "resnet"
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        options = self.data_options()
        self.train_classes, self.test_classes = options["train_classes"], options["test_classes"]
        self.gallery_path = options.get("gallery_model")
        if self.gallery_path:  # an instance attribute: the summary and study read the metrics of this run
            self.metrics = (*type(self).metrics, *(f"compat_{m}" for m in type(self).metrics))
        self._gallery_cache: dict[int, torch.Tensor] = {}
        self._gallery_model: nn.Module | None = None

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        train = _class_list(options.get("train_classes", list(DEFAULT_TRAIN_CLASSES)), "train_classes")
        test = _class_list(options.get("test_classes", list(DEFAULT_TEST_CLASSES)), "test_classes")
        shared = sorted(set(train) & set(test))
        if shared:
            raise ConfigurationError(f"data.options.test_classes: class {shared[0]} is also in "
                                     "data.options.train_classes; zero-shot retrieval tests on unseen classes only")
        return dict(options, train_classes=train, test_classes=test)

    def _check_model_options(self, name: str, options: dict[str, Any]) -> None:
        options = dict(options)
        dim = options.pop("embedding_dim", DEFAULT_EMBEDDING_DIM)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ConfigurationError(f"model.options.embedding_dim: expected an int >= 1, got {dim!r}")
        super()._check_model_options(name, options)

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        from regimen.data.select import _load_pair, make_splits

        cfg, seed = self.recipe.data, self.recipe.seed
        if self.gallery_path and not Path(self.gallery_path).is_file():  # before training, not at the first evaluation
            raise ConfigurationError(f"data.options.gallery_model: checkpoint not found: {self.gallery_path} "
                                     "(train the old model first)")
        name = cfg.name
        if name == "auto":
            try:
                train, test = _load_pair("fashion_mnist", cfg.root)
                name = "fashion_mnist"
            except DataError:
                train, test = _load_pair("digits", None)
                name = "digits"
        else:
            train, test = _load_pair(name, cfg.root)
        mean, std = train.channel_stats()  # all classes: old and new models see the same normalisation
        for key, classes in (("train_classes", self.train_classes), ("test_classes", self.test_classes)):
            missing = sorted(set(classes) - set(train.labels.unique().tolist()))
            if missing:
                raise ConfigurationError(f"data.options.{key}: {name} has no class {missing[0]} (its classes are "
                                         f"0-{train.num_classes - 1})")
        train = train.subset(torch.isin(train.labels, torch.tensor(self.train_classes)).nonzero().flatten())
        test = test.subset(torch.isin(test.labels, torch.tensor(self.test_classes)).nonzero().flatten())
        train, val, test = make_splits(train, test, cfg.val_fraction, seed, cfg.train_subset, cfg.test_subset,
                                       cfg.test_fraction)
        seen, unseen = ",".join(map(str, self.train_classes)), ",".join(map(str, self.test_classes))
        sources = {"train": f"{name} train images of classes {seen}",
                   "val": f"seeded {cfg.val_fraction:g} of them (seen classes)",
                   "test": f"{name} test images of the unseen classes {unseen}"}
        return DataSplits(train, val, test, mean, std, sources)

    def adopt_data(self, data: Any) -> DataSplits:
        """As :meth:`ImageClassificationTask.adopt_data`; the class lists are not applied to a user's own splits."""
        return super().adopt_data(data)

    # ----------------------------------------------------------------------------------------------------- model
    def embedding_dim(self) -> int:
        return int(self.recipe.model.options.get("embedding_dim", DEFAULT_EMBEDDING_DIM))

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import build_model

        options = {k: v for k, v in self.recipe.model.options.items() if k != "embedding_dim"}
        return build_model(self.recipe.model.name or self.default_model, data.train.input_shape,
                           self.embedding_dim(), **options)

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        model = self.recipe.model
        return {"name": model.name or self.default_model, "input_shape": list(data.train.input_shape),
                "options": {k: v for k, v in model.options.items() if k != "embedding_dim"},
                "embedding_dim": self.embedding_dim()}

    def run_facts(self, data: DataSplits) -> dict[str, Any]:
        return {"data_mean": data.mean, "data_std": data.std}

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        def loss(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
            return contrastive_loss(output, target, reduction=reduction)

        return loss

    def train_sums(self, output: Any, target: Any) -> list[float]:
        return []

    @torch.no_grad()
    def embed(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
              device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings ``(n, d)`` (CPU, float) and labels of every item of ``dataset`` (model in eval mode)."""
        was_training = model.training
        model.eval()
        outputs, labels = [], []
        for start in range(0, len(dataset), batch_size):
            x, y = dataset.gather(torch.arange(start, min(start + batch_size, len(dataset))), device)
            outputs.append(model(normalize(x)).float().cpu())
            labels.append(y.cpu())
        model.train(was_training)
        return torch.cat(outputs), torch.cat(labels)

    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Retrieval metrics over the whole split. Every rank embeds the whole split (retrieval ranks each item
        against all the others), so the result is the same on every rank without a gather."""
        embeddings, labels = self.embed(model, dataset, normalize, batch_size, device)
        results = retrieval_metrics(embeddings, labels)
        if self.gallery_path:
            gallery = self._gallery(dataset, normalize, batch_size, device)
            if embeddings.shape[1] < gallery.shape[1]:
                raise ConfigurationError(f"data.options.gallery_model: the old model's embedding has "
                                         f"{gallery.shape[1]} numbers, more than this model's {embeddings.shape[1]}")
            compat = retrieval_metrics(embeddings[:, : gallery.shape[1]], labels, gallery)
            results.update({f"compat_{key}": value for key, value in compat.items()})
        return results

    def _gallery(self, dataset: Any, normalize: Callable, batch_size: int, device: torch.device | str) -> torch.Tensor:
        """The old model's embeddings of ``dataset`` (computed once per split)."""
        if id(dataset) not in self._gallery_cache:
            if self._gallery_model is None:
                from regimen.models import load_embedding_model

                try:
                    self._gallery_model = load_embedding_model(self.gallery_path, "data.options.gallery_model")
                except ValueError as error:
                    raise ConfigurationError(str(error)) from None
            self._gallery_model.to(device)
            self._gallery_cache[id(dataset)] = self.embed(self._gallery_model, dataset, normalize, batch_size,
                                                          device)[0]
        return self._gallery_cache[id(dataset)]
