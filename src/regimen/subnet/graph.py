"""The dependency graph's v1 import path: everything moved to ``regimen.subnet.dependency`` (same names).

``from regimen.subnet.graph import Group, dependency_groups, ...`` keeps working; new code imports from
``regimen.subnet`` or ``regimen.subnet.dependency``.
"""

from regimen.subnet._common import evaluating, normalize_inputs
from regimen.subnet.dependency import (
    DependencyGraph,
    Group,
    Slice,
    UntraceableError,
    dependency_groups,
    scale_units,
    trace_dependencies,
    zero_units,
)

__all__ = [
    "DependencyGraph",
    "Group",
    "Slice",
    "UntraceableError",
    "dependency_groups",
    "evaluating",
    "normalize_inputs",
    "scale_units",
    "trace_dependencies",
    "zero_units",
]
