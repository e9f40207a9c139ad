"""Renamed keyword arguments kept for one release: ``@renamed_arguments(targets="target")`` maps the old keyword
to the new one with a DeprecationWarning (both given is a TypeError)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_arguments(**old_to_new: str) -> Callable[[F], F]:
    """Decorator: accept each old keyword (a key of ``old_to_new``) as its new name, with a DeprecationWarning."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old!r} (deprecated) and {new!r}; "
                                        f"pass {new!r}")
                    warnings.warn(f"{function.__name__}(): {old!r} is deprecated; use {new!r}", DeprecationWarning,
                                  stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
