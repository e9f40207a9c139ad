"""regimen's own error types. The command line prints these as one-line user errors; anything else is a bug and
shows a traceback.

Every class also derives from ``ValueError`` (or ``RuntimeError``), so code written against the older behaviour, which
raised plain ``ValueError``, keeps working.
"""

from __future__ import annotations

__all__ = ["ArgumentError", "ConfigurationError", "DivergenceError", "RegimenError"]


class RegimenError(Exception):
    """Base of the errors regimen raises for bad input: recipes, data, checkpoints, methods on models they cannot
    serve. The message names the argument, key or method and what was expected."""


class ConfigurationError(RegimenError, ValueError):
    """A setting that cannot work: a method on a task or model it cannot serve, a bad command-line argument."""


class ArgumentError(RegimenError, TypeError, ValueError):
    """An argument of the wrong type or out of its domain (``"0.5"`` or NaN for a rate, ``2.5`` for a count, a list
    for a tensor), raised by :func:`regimen.method.checked_arguments` before the function runs; the message names
    the function and the argument. Both a ``TypeError`` and a ``ValueError``, so callers that caught either keep
    working."""


class DivergenceError(RegimenError, FloatingPointError):
    """Training diverged: the loss became NaN or infinite. A property of the recipe (learning rate, clipping, data),
    not a bug, so the command line reports it in one line. A ``FloatingPointError``, as before."""
