"""regimen: composable, verified training methods for PyTorch.

``regimen.fit(recipe, model=..., data=...)`` trains (imported lazily: ``import regimen`` loads neither Lightning nor
pydantic); the Method contract is :mod:`regimen.method`; tasks are :mod:`regimen.tasks`; the pillars are
``regimen.augment``, ``regimen.dropout``, ``regimen.batch``, ``regimen.losses``, ``regimen.local`` and
``regimen.subnet``.
"""

from typing import Any

from regimen.errors import ConfigurationError, RegimenError
from regimen.method import Context, Method, RunInfo, get_method, list_methods, register_method

__version__ = "0.2.0.dev0"

__all__ = [
    "ConfigurationError",
    "Context",
    "Method",
    "RegimenError",
    "RunInfo",
    "__version__",
    "fit",
    "get_method",
    "list_methods",
    "register_method",
]


def __getattr__(name: str) -> Any:
    if name == "fit":  # the trainer pulls in Lightning Fabric and pydantic: load it on first use
        from regimen.train import fit

        return fit
    raise AttributeError(f"module 'regimen' has no attribute {name!r}")
