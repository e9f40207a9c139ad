"""``task = "node_classification"``: label a graph's nodes from a few labelled ones (transductive, Planetoid-style).

Batches are ``(node ids (N,) int64, labels (N,) int64)``: the model holds the graph and returns the logits of the
nodes it is given, after propagating the whole graph (full-batch GCN: ``train.batch_size`` = the labelled nodes, one
step per epoch). The default model is Kipf & Welling's two-layer :class:`regimen.models.GCN` (sparse propagation,
no torch_geometric); the loss is cross-entropy; the metrics are the mean cross-entropy, accuracy (primary, higher is
better) and the accuracy on the low-degree nodes (degree ≤ ``data.options.low_degree``, default 2) and on the rest.

Data (offline, generated from ``data.options.graph_seed``, the same graph for every run seed): ``sbm`` (``auto``), a
stochastic block model of ``nodes`` = 1000 nodes in ``classes`` = 5 equal classes; each pair of nodes is joined with
probability ``p_in`` within a class and ``p_out`` across, chosen so that the expected degree is ``mean_degree`` = 2.5
and a fraction ``homophily`` = 0.8 of a node's expected edges stay in its class, so degrees are Poisson(2.5)-like:
about 8 % isolated nodes, 20 % of degree 1 and 26 % of degree 2. Features: ``features`` = 200 binary "words" per node,
word ``j`` present with probability ``p_topic`` = 0.1 when it is one of the ``topic_words`` = 20 words of the node's
class, else ``p_other`` = 0.03 (sparse bag-of-words, each class its own block of words; a node has ~7 words of which
~2 are its topic's). Inputs are row-normalised (the raw binary rows are kept for feature generators). Splits:
``labels_per_class`` = 20 labelled nodes per class for training, ``val_nodes`` = 200 for validation, the rest for
testing (seeded by the graph seed). A user's own graph: :meth:`NodeClassificationTask.adopt_data`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import DataError, DataSplits
from regimen.errors import ConfigurationError
from regimen.tasks.base import Task

__all__ = ["Graph", "NodeClassificationTask", "NodeSet", "stochastic_block_graph"]

_DATA_OPTIONS = {"nodes": int, "classes": int, "mean_degree": float, "homophily": float, "features": int,
                 "topic_words": int, "p_topic": float, "p_other": float, "labels_per_class": int, "val_nodes": int,
                 "low_degree": int, "graph_seed": int}
_DEFAULTS = {"nodes": 1000, "classes": 5, "mean_degree": 2.5, "homophily": 0.8, "features": 200, "topic_words": 20,
             "p_topic": 0.1, "p_other": 0.03, "labels_per_class": 20, "val_nodes": 200, "low_degree": 2,
             "graph_seed": 0}


@dataclass
class Graph:
    """One graph: raw node features ``(N, F)``, undirected edges listed in both directions ``(2, E)``, labels
    ``(N,)`` and node degrees ``(N,)``."""

    features: torch.Tensor
    edge_index: torch.Tensor
    labels: torch.Tensor
    name: str = "graph"

    @property
    def num_nodes(self) -> int:
        return self.features.shape[0]

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def degree(self) -> torch.Tensor:
        return torch.bincount(self.edge_index[0], minlength=self.num_nodes)


class NodeSet:
    """A split: the ids of its nodes in the graph; ``gather`` gives ``(node ids, labels)``."""

    def __init__(self, graph: Graph, nodes: torch.Tensor, name: str = "nodes") -> None:
        self.graph, self.nodes, self.name = graph, nodes, name

    def __len__(self) -> int:
        return self.nodes.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def num_classes(self) -> int:
        return self.graph.num_classes

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        nodes = self.nodes[indices]
        return nodes.to(device), self.graph.labels[nodes].to(device)

    def subset(self, indices: torch.Tensor) -> NodeSet:
        return NodeSet(self.graph, self.nodes[indices], self.name)


def stochastic_block_graph(nodes: int = 1000, classes: int = 5, mean_degree: float = 2.5, homophily: float = 0.8,
                           features: int = 200, topic_words: int = 20, p_topic: float = 0.1, p_other: float = 0.03,
                           seed: int = 0) -> Graph:
    """A stochastic block model with sparse class-dependent binary features (see the module docstring)."""
    if classes < 2 or nodes < 2 * classes:
        raise ValueError(f"need classes >= 2 and nodes >= 2 * classes, got nodes={nodes}, classes={classes}")
    if classes * topic_words > features:
        raise ValueError(f"classes * topic_words = {classes * topic_words} exceeds features = {features}")
    if not (0 <= homophily <= 1 and mean_degree > 0):
        raise ValueError(f"need 0 <= homophily <= 1 and mean_degree > 0, got {homophily}, {mean_degree}")
    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(nodes) % classes)[torch.randperm(nodes, generator=g)]
    size = nodes / classes
    p_in = homophily * mean_degree / (size - 1)
    p_out = (1 - homophily) * mean_degree / (nodes - size)
    if p_in > 1:
        raise ValueError(f"mean_degree {mean_degree} with homophily {homophily} needs p_in = {p_in:.3g} > 1")
    i, j = torch.triu_indices(nodes, nodes, offset=1)
    p = torch.where(labels[i] == labels[j], p_in, p_out)
    keep = torch.rand(p.shape, generator=g, dtype=torch.float64) < p
    i, j = i[keep], j[keep]
    edge_index = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    topic = torch.zeros(classes, features, dtype=torch.bool)
    for c in range(classes):
        topic[c, c * topic_words:(c + 1) * topic_words] = True
    probs = torch.where(topic[labels], p_topic, p_other)
    x = (torch.rand(probs.shape, generator=g, dtype=torch.float64) < probs).float()
    return Graph(x, edge_index, labels, "sbm")


def _check_graph(graph: Graph, where: str = "data") -> None:
    from regimen.models import check_edge_index

    x, edges, labels = graph.features, graph.edge_index, graph.labels
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
        raise DataError(f"{where}['features']: node features must be a float tensor (N, F), got "
                        f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if not torch.isfinite(x).all():
        raise DataError(f"{where}['features']: contain NaN or inf")
    try:
        check_edge_index(edges, x.shape[0], f"{where}['edges']")
    except ValueError as error:
        raise DataError(str(error)) from None
    if (edges[0] == edges[1]).any():
        raise DataError(f"{where}['edges']: self-loops are added by the GCN; remove them from the edge list")
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (x.shape[0],):
        raise DataError(f"{where}['labels']: must be int64 ({x.shape[0]},), got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)} {tuple(getattr(labels, 'shape', ()))}")
    if labels.min() < 0:
        raise DataError(f"{where}['labels']: must be >= 0, got {int(labels.min())}")


def _symmetric(edges: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Each undirected edge once in each direction (duplicates dropped)."""
    both = torch.cat([edges, edges.flip(0)], dim=1)
    keys = torch.unique(both[0] * num_nodes + both[1])
    return torch.stack([keys // num_nodes, keys % num_nodes])


class NodeClassificationTask(Task):
    """Classify the nodes of a graph (synthetic SBM, your own): cross-entropy, accuracy, low-degree accuracy."""

    name = "node_classification"
    input_kind = "graph_nodes"
    target_kind = "labels"
    metrics = ("loss", "acc", "acc_low_degree", "acc_high_degree")
    primary_metric = "acc"
    higher_is_better_metrics = ("acc", "acc_low_degree", "acc_high_degree")
    higher_is_better = True
    train_metrics = ("acc",)
    data_names = ("auto", "sbm")
    model_names = ("gcn",)
    default_model = "gcn"
    data_arguments: ClassVar[tuple[str, ...]] = ("in_features", "num_classes")
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        return {**_DEFAULTS, **options}

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        self.data_options()

    def model_class(self, name: str) -> type | None:
        from regimen.models import GCN

        return GCN

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        o = self.data_options()
        try:
            graph = stochastic_block_graph(o["nodes"], o["classes"], o["mean_degree"], o["homophily"], o["features"],
                                           o["topic_words"], o["p_topic"], o["p_other"], o["graph_seed"])
        except ValueError as error:
            raise ConfigurationError(f"data.options: {error}") from None
        return self._splits(graph, o["labels_per_class"], o["val_nodes"], o["graph_seed"],
                            f"SBM, graph_seed {o['graph_seed']}")

    def _splits(self, graph: Graph, per_class: int, val_nodes: int, seed: int, source: str) -> DataSplits:
        g = torch.Generator().manual_seed(seed + 1)
        order = torch.randperm(graph.num_nodes, generator=g)
        labels = graph.labels[order]
        train = torch.cat([order[labels == c][:per_class] for c in range(graph.num_classes)])
        rest = order[~torch.isin(order, train)]
        if len(rest) <= val_nodes:
            raise ConfigurationError(f"data.options.val_nodes = {val_nodes} leaves no test nodes of "
                                     f"{graph.num_nodes}")
        cfg = self.recipe.data
        test = rest[val_nodes:]
        if cfg.test_subset is not None:
            test = test[:cfg.test_subset]
        return DataSplits(NodeSet(graph, train, f"{graph.name}-train"),
                          NodeSet(graph, rest[:val_nodes], f"{graph.name}-val") if val_nodes else None,
                          NodeSet(graph, test, f"{graph.name}-test"),
                          sources={"train": f"{per_class} labelled nodes per class ({source})",
                                   "val": f"{val_nodes} nodes", "test": f"the other {len(test)} nodes"})

    def adopt_data(self, data: Any) -> DataSplits:
        """A dict ``{"features": (N, F) float, "edges": (2, E) int64 (each undirected edge once or in both
        directions), "labels": (N,) int64, "train": ids, "val": ids (optional), "test": ids}``, or DataSplits."""
        if isinstance(data, DataSplits):
            return data
        keys = {"features", "edges", "labels", "train", "test"}
        if not isinstance(data, dict) or not keys <= set(data) or not set(data) <= keys | {"val"}:
            raise DataError("data: the node_classification task takes a dict with features, edges, labels, train, "
                            "test (and val) entries, or DataSplits")
        graph = Graph(data["features"], data["edges"], data["labels"], "user graph")
        _check_graph(graph)
        graph.edge_index = _symmetric(graph.edge_index, graph.num_nodes)
        splits = {}
        for key in ("train", "val", "test"):
            ids = data.get(key)
            if ids is None:
                continue
            if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.dim() != 1:
                raise DataError(f"data['{key}']: node ids must be an int64 tensor (M,), got "
                                f"{getattr(ids, 'dtype', type(ids).__name__)}")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= graph.num_nodes):
                raise DataError(f"data['{key}']: node ids must lie in [0, {graph.num_nodes}), got "
                                f"[{int(ids.min())}, {int(ids.max())}]")
            splits[key] = NodeSet(graph, ids, f"user-{key}")
        return DataSplits(splits["train"], splits.get("val"), splits["test"], sources={k: "user graph" for k in splits})

    # ----------------------------------------------------------------------------------------------------- model
    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import GCN, row_normalize

        graph = data.train.graph
        model = GCN(in_features=graph.features.shape[1], num_classes=graph.num_classes, **self.recipe.model.options)
        return model.set_graph(row_normalize(graph.features), graph.edge_index, graph.features)

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        graph = data.train.graph
        return {"name": self.recipe.model.name or self.default_model, "nodes": graph.num_nodes,
                "in_features": graph.features.shape[1], "num_classes": graph.num_classes,
                "options": dict(self.recipe.model.options)}

    def run_facts(self, data: DataSplits) -> dict[str, Any]:
        return {"num_classes": data.train.graph.num_classes, "label_smoothing": self.recipe.train.label_smoothing}

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        from regimen.tasks.classification import classification_criterion

        return classification_criterion(self.recipe.train.label_smoothing)

    def train_sums(self, output: Any, target: Any) -> list[float]:
        return [float((output.argmax(dim=1) == target).sum())]

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("node_classification evaluates a split's nodes at once (see evaluate)")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Every node of the split in one forward; accuracy overall, on nodes of degree ≤ ``low_degree`` and above."""
        was_training = model.training
        model.eval()
        nodes, labels = dataset.gather(torch.arange(len(dataset)), device)
        logits = model(normalize(nodes)).float()
        model.train(was_training)
        correct = (logits.argmax(dim=1) == labels).double()
        low = (dataset.graph.degree.to(device)[nodes] <= self.data_options()["low_degree"])

        def mean(values: torch.Tensor) -> float:
            return float(values.mean()) if values.numel() else float("nan")

        return {"loss": float(F.cross_entropy(logits, labels)), "acc": mean(correct),
                "acc_low_degree": mean(correct[low]), "acc_high_degree": mean(correct[~low])}
