"""Copying modules safely when some of their tensors are parametrized."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["copy_module"]


def copy_module(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module)`` that also gives every parametrized submodule of the copy its own class.

    ``torch.nn.utils.parametrize`` puts a module's parametrized tensors as properties on a class made for that module,
    and a deep copy shares the class: removing the original's parametrizations (e.g. N:M sparsity's export at the end
    of training) would delete the properties from the copy too. Use this for every long-lived copy of a model or
    block (EMA weights, auxiliary copies, exported sub-networks)."""
    replica = copy.deepcopy(module)
    for sub in replica.modules():
        if parametrize.is_parametrized(sub):
            cls = type(sub)
            sub.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return replica
