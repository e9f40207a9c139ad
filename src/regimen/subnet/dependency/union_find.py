"""Union-find over channel elements: every tensor position the tracer labels is an element; coupled ones merge."""

from __future__ import annotations

import torch

__all__ = ["UnionFind"]


class UnionFind:
    """Disjoint sets of integer elements, each with a kind (``"channel"`` or ``"head"``); the smaller id is the root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.kind: list[str] = []

    def __len__(self) -> int:
        return len(self.parent)

    def new(self, count: int, kind: str = "channel") -> torch.Tensor:
        """``count`` fresh elements; returns their ids."""
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        self.kind.extend([kind] * count)
        return torch.arange(start, start + count, dtype=torch.long)

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # a set that holds an attention head is a head: the merged root keeps that kind
            kind = "head" if "head" in (self.kind[ra], self.kind[rb]) else self.kind[min(ra, rb)]
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb
            self.kind[min(ra, rb)] = kind

    def set_kind(self, elements: torch.Tensor, kind: str) -> None:
        """Give the sets of ``elements`` (labels, -1 ignored) the kind ``kind``."""
        for value in elements[elements >= 0].unique().tolist():
            self.kind[self.find(value)] = kind

    def union_all(self, elements: torch.Tensor) -> int | None:
        """Merge every labeled element of ``elements`` into one set; returns its root (None when none is labeled)."""
        values = elements[elements >= 0].unique().tolist()
        if not values:
            return None
        for value in values[1:]:
            self.union(values[0], value)
        return self.find(values[0])

    def union_pairs(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Merge ``a[i]`` with ``b[i]`` wherever both are labeled (>= 0)."""
        mask = (a >= 0) & (b >= 0) & (a != b)
        if not bool(mask.any()):
            return
        base = len(self.parent) + 1
        codes = torch.unique(a[mask] * base + b[mask])  # one int64 per pair: much faster than unique(dim=0)
        for x, y in zip((codes // base).tolist(), (codes % base).tolist(), strict=True):
            self.union(x, y)

    def roots(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with every element replaced by its root (-1 stays -1)."""
        flat = labels.reshape(-1).tolist()
        return torch.tensor([self.find(v) if v >= 0 else -1 for v in flat], dtype=torch.long).reshape(labels.shape)
