"""Strategies and small builders shared by the registry's entries."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st
from torch import nn

from tests.reliability.fuzzlib import HOSTILE, Call, Entry

seeds = st.integers(0, 2**31 - 1)


def tensor(draw, shape, low=-3.0, high=3.0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(draw(seeds, label="tensor seed"))
    return (torch.rand(shape, generator=g, dtype=torch.float64) * (high - low) + low).to(dtype)


def images(draw, n=(1, 4), c=(1, 3), hw=(1, 12), dtype=torch.float32, square=False) -> torch.Tensor:
    shape_n = draw(st.integers(*n), label="N")
    channels = draw(st.sampled_from(sorted({c[0], c[1]})), label="C")
    h = draw(st.integers(*hw), label="H")
    w = h if square else draw(st.integers(*hw), label="W")
    x = tensor(draw, (shape_n, channels, h, w), 0.0, 1.0)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    return x.to(dtype)


def labels(draw, n, classes) -> torch.Tensor:
    g = torch.Generator().manual_seed(draw(seeds, label="labels seed"))
    return torch.randint(0, classes, (n,), generator=g)


def call(fn: Callable, draw=None, generator: str | None = None, **kwargs) -> Call:
    seed = draw(seeds, label="seed") if draw is not None else 0
    return Call(fn, kwargs, seed=seed, generator=generator)


def takes_generator(fn: Callable) -> str | None:
    try:
        return "generator" if "generator" in inspect.signature(fn).parameters else None
    except (TypeError, ValueError):
        return None


def shape_is(*expected) -> Callable[[Any, Call], None]:
    def check(result, c):
        out = result[0] if isinstance(result, tuple) else result
        assert tuple(out.shape) == tuple(expected), f"shape {tuple(out.shape)} != {expected}"
    return check


def same_shape_as(argument: str, index: int | None = None) -> Callable[[Any, Call], None]:
    def check(result, c):
        out = result[index] if index is not None else result
        assert out.shape == c.kwargs[argument].shape, f"shape {tuple(out.shape)} != {tuple(c.kwargs[argument].shape)}"
    return check


def tiny_cnn(classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes))


def mlp(seed: int = 0, widths: tuple[int, ...] = (6, 8, 8, 3)) -> nn.Module:
    """Linear layers of ``widths`` with a ReLU between each two, initialised from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return nn.Sequential(*layers)


def staged_resnet(seed: int = 0) -> nn.Module:
    from regimen.models.resnet import ResNet
    torch.manual_seed(seed)
    return ResNet(in_channels=3, num_classes=4, widths=(8, 16), depths=(1, 1))


class ModuleFn:
    """``cls(**constructor kwargs)(*inputs)`` as one callable of keyword arguments (so hostile constructor values and
    hostile inputs go through one Call); ``forward_kwargs`` are passed to the forward by name."""

    def __init__(self, cls, inputs: tuple[str, ...], forward_kwargs: tuple[str, ...] = (), train: bool = True):
        self.cls, self.inputs, self.forward_kwargs, self.train = cls, inputs, forward_kwargs, train
        self.__qualname__ = f"{cls.__name__}(...)(...)"

    def __call__(self, **kwargs):
        ctor = {k: v for k, v in kwargs.items() if k not in self.inputs and k not in self.forward_kwargs}
        torch.manual_seed(0)  # the same initial weights on every run of a call
        module = self.cls(**ctor)
        module.train(self.train)
        return module(*[kwargs[n] for n in self.inputs], **{k: kwargs[k] for k in self.forward_kwargs if k in kwargs})


# ------------------------------------------------------------------------------------------------ Methods
def _hostile_for(annotation: Any) -> list[Any] | None:
    """Values that an annotation never admits (None when the annotation is not understood)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    optional = type(None) in args
    members = [a for a in args if a is not type(None)] if (origin is typing.Union or
                                                            type(annotation).__name__ == "UnionType") else [annotation]
    values: list[Any] = [] if optional else [None]
    kinds = set()
    for m in members:
        mo = typing.get_origin(m)
        if m is float:
            kinds.add("float")
        elif m is int:
            kinds.add("int")
        elif m is bool:
            kinds.add("bool")
        elif m is str:
            kinds.add("str")
        elif mo is typing.Literal:
            kinds.add("literal")
        elif mo in (list, tuple) or (mo is not None and getattr(mo, "__name__", "") == "Sequence"):
            kinds.add("list")
        else:
            return None
    if "float" in kinds:
        values += [float("nan"), float("inf"), -float("inf")]
    if kinds <= {"float", "int"}:
        values += ["1", b"1"]
    if kinds == {"int"}:
        values += [2.5, True]
    if kinds == {"bool"}:
        values += ["yes", 1, 0.0]
    if kinds == {"literal"}:
        values += ["no-such-choice", 3]
    if kinds == {"list"}:
        values += [object(), 3.5]
    return values or None


def method_entry(pillar: str, cls: type) -> Entry:
    """A Method: built from its defaults; every typed parameter gets the values its annotation never admits."""
    scalars = {}
    for name, annotation, _default in cls.parameters():
        hostile = _hostile_for(annotation)
        if hostile and name in getattr(cls, "infinite_parameters", ()):  # +inf means something there
            hostile = [v for v in hostile if not (isinstance(v, float) and v == float("inf"))]
        if hostile:
            kind = f"{cls.__name__}.{name}"
            HOSTILE[kind] = hostile
            scalars[name] = kind

    def check(method, c):
        assert isinstance(method, cls)
        method.state_dict()  # a fresh method's state is saveable

    return Entry(f"{pillar}.{cls.__name__}", lambda draw: Call(cls, {}), check=check, scalars=scalars)
