"""What a trace produces: ``Slice`` (one tensor's share of a group), ``Group`` (coupled units pruned together) and
``DependencyGraph`` (the groups plus what could not be grouped). The layout is documented in the package docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["AttentionSite", "DependencyGraph", "Group", "Slice", "UntraceableError"]


class UntraceableError(RuntimeError):
    """The tracer met an op that touches channel data and that it cannot map (the message names the op)."""


@dataclass(frozen=True, eq=False)
class Slice:
    """One tensor's share of a group: unit ``i`` occupies ``indices[i]`` along ``dim`` of ``module.param``."""

    module: str
    param: str
    dim: int
    indices: torch.Tensor
    role: str
    is_buffer: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.module, self.param, self.dim)

    def tensor(self, model: nn.Module) -> torch.Tensor:
        """The parameter or buffer this slice lives in."""
        return getattr(model.get_submodule(self.module), self.param)


@dataclass(frozen=True, eq=False)
class AttentionSite:
    """A module whose forward calls ``scaled_dot_product_attention`` on heads of a group: query head ``i`` is unit
    ``q_units[i]`` of the group (-1: another group), key/value head ``j`` is unit ``kv_units[j]``. After head pruning
    the module's head-count attributes (``num_heads``, ``num_key_value_heads``, ``split_size``...) are updated."""

    module: str
    q_units: torch.Tensor
    kv_units: torch.Tensor
    head_dim: int


@dataclass(eq=False)
class Group:
    """Coupled units that are pruned together; see ``regimen.subnet.dependency`` for the exact layout."""

    id: int
    size: int
    slices: list[Slice]
    kind: str = "channel"
    lossless: bool = True
    name: str = ""
    modules: tuple[str, ...] = ()
    attention: tuple[AttentionSite, ...] = ()

    def positions(self, slice_: Slice, units: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Sorted positions along ``slice_.dim`` occupied by ``units``."""
        units = torch.as_tensor(units, dtype=torch.long)
        return slice_.indices[units].reshape(-1).sort().values

    def out_slices(self) -> list[Slice]:
        return [s for s in self.slices if s.role == "out"]

    def __repr__(self) -> str:
        members = ", ".join(f"{s.module or '<root>'}.{s.param}[d{s.dim},k{s.indices.shape[1]},{s.role}]"
                            for s in self.slices)
        flag = "" if self.lossless else ", lossy"
        return f"Group(id={self.id}, {self.kind} x{self.size}, name={self.name!r}{flag}: {members})"


@dataclass
class DependencyGraph:
    """Result of a trace: the groups, what could not be grouped and why, and which recorder ran."""

    groups: list[Group]
    skipped: list[str] = field(default_factory=list)
    tracer: str = "fx"
