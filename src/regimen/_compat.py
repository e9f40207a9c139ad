"""Deprecated names kept for one release: a module ``__getattr__`` that warns and returns the new object.

Usage at the bottom of a module or package ``__init__``::

    __getattr__ = deprecated_aliases(__name__, {"GhostBN": "GhostBatchNormMethod"}, globals())
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["deprecated_aliases"]


def deprecated_aliases(module: str, aliases: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module-level ``__getattr__``: ``old`` names in ``aliases`` warn (DeprecationWarning) and return
    ``namespace[new]``; other names raise AttributeError as usual."""

    def __getattr__(name: str) -> Any:
        if name in aliases:
            new = aliases[name]
            warnings.warn(f"{module}.{name} is deprecated; use {module}.{new}", DeprecationWarning, stacklevel=2)
            return namespace[new]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
