"""Deprecated names kept for one release: a module ``__getattr__`` that warns and returns the new object.

Usage at the bottom of a module or package ``__init__``::

    __getattr__ = deprecated_aliases(__name__, {"GhostBN": "GhostBatchNormMethod"}, globals())
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["deprecated_aliases", "renamed_arguments"]

F = TypeVar("F", bound=Callable[..., Any])


def deprecated_aliases(module: str, aliases: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module-level ``__getattr__``: ``old`` names in ``aliases`` warn (DeprecationWarning) and return the new
    object: ``namespace[new]``, or, for a ``new`` that is a dotted path (``"regimen.losses.mixed_cross_entropy"``),
    that object in its module. Other names raise AttributeError as usual."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new = aliases[name]
        where = new if "." in new else f"{module}.{new}"
        warnings.warn(f"{module}.{name} is deprecated; use {where}", DeprecationWarning, stacklevel=2)
        if "." not in new:
            return namespace[new]
        home, _, attribute = new.rpartition(".")
        return getattr(importlib.import_module(home), attribute)

    return __getattr__


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: each old keyword (``@renamed_arguments(module_name="module")``) still works for one release, with a
    DeprecationWarning, and means the new one; passing both is a TypeError."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old}= (deprecated) and {new}=")
                    warnings.warn(f"{function.__name__}({old}=...) is deprecated; use {new}=...", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
