"""A graph convolutional network (GCN) on a sparse graph, without torch_geometric.

Paper: Kipf & Welling, "Semi-Supervised Classification with Graph Convolutional Networks", ICLR 2017, arXiv
1609.02907. One layer propagates features over the graph with self-loops and the symmetric normalisation::

    H' = Â H W + b,   Â = D̃^{-1/2} (A + I) D̃^{-1/2},   D̃_ii = 1 + deg(i)

computed as a sparse product: ``out[i] = Σ_{j ∈ N(i) ∪ {i}} Â_ij (H W)[j]`` with ``index_add_`` over the edge list
(no dense N × N matrix). The two-layer :class:`GCN` holds its graph (row-normalised features, raw features, edges)
as non-persistent buffers, so ``model(nodes)`` returns the logits of the nodes ``nodes`` (a transductive task: the
whole graph is propagated every forward, the loss reads the labelled nodes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GCN", "GraphConv", "check_edge_index", "gcn_norm", "gcn_propagate", "row_normalize"]


def check_edge_index(edge_index: torch.Tensor, num_nodes: int, name: str = "edge_index") -> None:
    """A ``(2, E)`` int64 tensor of node ids in ``[0, num_nodes)``, or a ValueError naming ``name``."""
    if not isinstance(edge_index, torch.Tensor) or edge_index.dtype != torch.int64 or edge_index.dim() != 2 \
            or edge_index.shape[0] != 2:
        raise ValueError(f"{name} must be an int64 tensor (2, E), got {getattr(edge_index, 'dtype', type(edge_index))}"
                         f" {tuple(getattr(edge_index, 'shape', ()))}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        bad = edge_index[:, ((edge_index < 0) | (edge_index >= num_nodes)).any(dim=0)][:, 0].tolist()
        raise ValueError(f"{name}: edge {tuple(bad)} names a node outside [0, {num_nodes}) (the graph has {num_nodes} "
                         "nodes)")


def gcn_norm(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges of ``A + I`` ``(2, E + N)`` (``(target, source)`` rows) and their weights ``1/sqrt(d̃_i d̃_j)``.

    ``edge_index`` lists each undirected edge in both directions, without self-loops."""
    check_edge_index(edge_index, num_nodes)
    loops = torch.arange(num_nodes, device=edge_index.device)
    index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    degree = torch.bincount(index[0], minlength=num_nodes).float()
    inv_sqrt = degree.rsqrt()
    return index, inv_sqrt[index[0]] * inv_sqrt[index[1]]


def gcn_propagate(x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``Â x`` for the normalised edges ``(index, weight)`` of :func:`gcn_norm`: ``out[i] = Σ_j w_ij x[j]``."""
    out = torch.zeros_like(x)
    return out.index_add_(0, index[0], x[index[1]] * weight.unsqueeze(1).to(x.dtype))


def row_normalize(features: torch.Tensor) -> torch.Tensor:
    """Each row divided by its sum (rows that sum to 0 stay 0), as Kipf & Welling normalise bag-of-words rows."""
    sums = features.sum(dim=1, keepdim=True)
    return torch.where(sums > 0, features / sums.clamp_min(1e-12), torch.zeros_like(features))


class GraphConv(nn.Module):
    """``Â X W (+ b)`` (Kipf & Welling's layer) with Glorot-uniform ``W``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = gcn_propagate(x @ self.weight, index, weight)
        return out + self.bias if self.bias is not None else out


class GCN(nn.Module):
    """Two GCN layers with ReLU and dropout (Kipf & Welling): ``Â ReLU(Â X W1) W2``; ``forward(nodes)`` gives the
    logits of ``nodes`` (int64 ids) after propagating the whole graph set by :meth:`set_graph`."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 16, dropout: float = 0.5) -> None:
        super().__init__()
        for key, value in (("in_features", in_features), ("num_classes", num_classes), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GCN: {key} must be an int >= 1, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"GCN: dropout must be in [0, 1), got {dropout!r}")
        self.conv1 = GraphConv(in_features, hidden)
        self.conv2 = GraphConv(hidden, num_classes)
        self.dropout = float(dropout)
        self.in_features = in_features
        for name in ("features", "raw_features", "edge_index", "adj_index", "adj_weight"):
            self.register_buffer(name, None, persistent=False)

    def set_graph(self, features: torch.Tensor, edge_index: torch.Tensor, raw_features: torch.Tensor | None = None,
                  ) -> GCN:
        """The graph: input features ``(N, F)`` (already normalised), the undirected edges in both directions
        ``(2, E)``, and the raw features a feature generator learns from (default: ``features``)."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"GCN: features must be (N, {self.in_features}), got {tuple(features.shape)}")
        self.features = features
        self.raw_features = features if raw_features is None else raw_features
        self.edge_index = edge_index
        self.adj_index, self.adj_weight = gcn_norm(edge_index, features.shape[0])
        return self

    def hidden(self, features: torch.Tensor, conv: GraphConv | None = None) -> torch.Tensor:
        """The first layer's output ``ReLU(Â dropout(X) W1)`` of ``features`` (``conv``: another first layer)."""
        x = F.dropout(features, self.dropout, training=self.training)
        return F.relu((conv or self.conv1)(x, self.adj_index, self.adj_weight))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Every node's logits from the first layer's output."""
        return self.conv2(F.dropout(hidden, self.dropout, training=self.training), self.adj_index, self.adj_weight)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        if self.features is None:
            raise RuntimeError("GCN: call set_graph(features, edge_index) before the forward")
        return self.logits(self.hidden(self.features))[nodes]
