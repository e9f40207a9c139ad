"""The table-driven fuzz harness: an :class:`Entry` per public name of a pillar, hostile-value generators, the
outcome rules, and a counter of the generated cases.

An entry says how to draw a *valid* call (``build``), what a valid result must satisfy (``check``: finite values, the
documented shape and, where one exists, an independent reference), which scalar parameters take which kind of
values (``scalars``: hostile values of the wrong type, NaN/inf, out of range are drawn for them) and which tensor
arguments to corrupt (``tensors``: NaN/inf/huge values, meta device, non-contiguous and expanded views, wrong dtype,
wrong number of dims, an empty batch).

Outcome rules (the issue's property):

* valid input: no exception, and ``check`` passes;
* a hostile scalar: ``TypeError``/``ValueError`` whose message names the parameter (or, for kinds where the value may
  be legal, ``ok_values`` lets a result through that then passes ``check``);
* a hostile tensor: a ``TypeError``/``ValueError`` naming the argument, or a result (NaN in, NaN out is torch's
  semantics); non-contiguous and expanded views must give exactly the result of their contiguous copy;
* never another exception type (an internal torch ``RuntimeError``/``IndexError``, a ``ZeroDivisionError``...), and
  never a hang (each case runs under an alarm).
"""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from hypothesis import strategies as st

#: cases run, by kind; conftest.py prints the totals at the end of the session
COUNTS: collections.Counter = collections.Counter()
#: seconds one case may take before it counts as a hang
CASE_TIMEOUT = 20.0


@dataclass
class Call:
    """A drawn call: ``fn(**kwargs)``; a ``generator`` is made from ``seed`` afresh on every run (so a call can be
    repeated bit for bit) when ``fn`` takes one."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    seed: int = 0
    generator: str | None = None  # the keyword that takes a torch.Generator, if any

    def run(self, **overrides: Any) -> Any:
        kwargs = {**self.kwargs, **overrides}
        if self.generator is not None and self.generator not in overrides:
            kwargs[self.generator] = torch.Generator().manual_seed(self.seed)
        with _alarm(CASE_TIMEOUT):
            return self.fn(**kwargs)


@dataclass
class Entry:
    """One public name: ``name`` is ``"pillar.Name"``."""

    name: str
    build: Callable[[Callable], Call]  # draw -> Call
    check: Callable[[Any, Call], None] | None = None
    scalars: dict[str, str] = field(default_factory=dict)  # parameter -> kind (see HOSTILE)
    tensors: tuple[str, ...] = ()
    #: hostile tensor variants this entry does not take (e.g. "meta" where the call needs values), with the reason
    tensor_exempt: dict[str, str] = field(default_factory=dict)
    #: other names an error may use for a tensor argument (a Module's forward ``x`` is its functional's ``features``)
    aliases: tuple[str, ...] = ()



def entry_adder(entries: list[Entry], pillar: str) -> Callable[..., None]:
    """The ``add`` of an ``entries_<name>.py`` file: ``add(name, build, check=None, scalars=None, tensors=(),
    exempt=None, aliases=())`` appends ``Entry("<pillar>.<name>", ...)`` to ``entries``."""

    def add(name: str, build: Callable[[Callable], Call], check: Callable[[Any, Call], None] | None = None,
            scalars: dict[str, str] | None = None, tensors: tuple[str, ...] = (),
            exempt: dict[str, str] | None = None, aliases: tuple[str, ...] = ()) -> None:
        entries.append(Entry(f"{pillar}.{name}", build, check, scalars or {}, tensors, exempt or {}, aliases))

    return add


def expect(condition: Any, message: str = "check failed") -> None:
    """An entry's check: an ``AssertionError`` with ``message`` unless ``condition`` holds (``assert`` statements
    cannot sit in the lambdas most checks are)."""
    if not condition:
        raise AssertionError(message)

# --------------------------------------------------------------------------------------------- hostile scalars
#: kind -> values that are never legal for a parameter of that kind
HOSTILE: dict[str, list[Any]] = {
    "prob": [float("nan"), float("inf"), -0.25, 1.5, "0.5", None, [0.5]],  # a probability/fraction in [0, 1]
    "prob_open": [float("nan"), float("inf"), -0.25, 1.0, 1.5, "0.5", None],  # [0, 1)
    "positive": [float("nan"), float("inf"), -1.0, 0.0, "1", None],  # a finite number > 0
    "nonneg": [float("nan"), float("inf"), -1.0, "1", None],  # a finite number >= 0
    "finite": [float("nan"), float("inf"), -float("inf"), "1", None],  # any finite number
    "count": [0, -1, 2.5, "2", None, float("nan")],  # an integer >= 1
    "count0": [-1, 2.5, "2", None, float("nan")],  # an integer >= 0
    "count_or_none": [0, -1, 2.5, "2", float("nan")],  # an integer >= 1, or None (where None means something)
    "int": [2.5, "2", None, float("nan")],  # any integer
    "bool": ["yes", None, 2.5],
    "str": [3, None, b"l2", "no-such-choice"],
}


def hostile_values(kind: str) -> st.SearchStrategy:
    return st.sampled_from(HOSTILE[kind])


# --------------------------------------------------------------------------------------------- hostile tensors
TENSOR_VARIANTS = ("nan", "inf", "huge", "meta", "noncontiguous", "expanded", "int64", "bool", "float64", "extra_dim",
                   "empty", "not_a_tensor")


def corrupt(x: torch.Tensor, variant: str) -> Any:
    if variant == "not_a_tensor":
        return x.tolist() if x.numel() < 64 else "tensor"
    if variant == "meta":
        return x.to("meta")
    if variant == "noncontiguous":
        return torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    if variant == "expanded":  # a stride-0 view of the same values (one row broadcast), compared with its copy
        return x[:1].expand_as(x) if x.dim() and x.shape[0] else x
    if variant == "int64":
        return x.to(torch.int64) if x.dtype != torch.int64 else x.to(torch.float32)
    if variant == "bool":
        return x != 0
    if variant == "float64":
        return x.double() if x.dtype != torch.float64 else x.float()
    if variant == "extra_dim":
        return x.unsqueeze(0)
    if variant == "empty":
        return x[:0] if x.dim() else x.reshape(1)[:0]  # a 0-d tensor has no batch to empty: an empty vector
    if not x.is_floating_point():
        return x  # NaN/inf/huge only exist in float tensors
    y = x.clone(memory_format=torch.contiguous_format)  # a flat view of the copy, whatever x's strides
    if y.numel() == 0:
        return y
    flat = y.view(-1)
    value = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30 if y.dtype != torch.float16 else 6e4}[variant]
    flat[0] = value
    if flat.numel() > 2:
        flat[-1] = -value if variant != "nan" else value
    return y


# ------------------------------------------------------------------------------------------------ outcomes
class Hang(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float):
    def handler(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


CLEAN = (TypeError, ValueError)


def outcome(call: Call, tolerate: tuple[type, ...] = (), **overrides: Any) -> tuple[str, Any]:
    """("ok", result) or ("error", exception) for a clean TypeError/ValueError (or a ``tolerate``d type); anything
    else fails the test."""
    try:
        return "ok", call.run(**overrides)
    except CLEAN + tolerate as error:
        return "error", error
    except Hang as error:
        raise AssertionError(f"{call.fn}: hang: {error}") from None
    except Exception as error:  # noqa: BLE001 - the point: an internal error is a defect
        raise AssertionError(f"{getattr(call.fn, '__qualname__', call.fn)} with {_short(overrides)} raised an "
                             f"internal {type(error).__name__}: {error}\n{traceback.format_exc(limit=-4)}") from None


def default_of(fn: Callable, parameter: str) -> Any:
    """The default of ``parameter`` in what ``fn`` calls (``fn.target`` or ``fn.cls`` for the harness's wrappers),
    or a sentinel when it has none."""
    import inspect
    for target in (fn, getattr(fn, "target", None), getattr(fn, "cls", None)):
        if target is None:
            continue
        try:
            found = inspect.signature(target).parameters.get(parameter)
        except (TypeError, ValueError):
            continue
        if found is not None and found.default is not inspect.Parameter.empty:
            return found.default
    return ...


def _short(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_repr(v)}" for k, v in kwargs.items())


def _repr(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"Tensor{tuple(v.shape)}[{v.dtype}, {v.device}, contiguous={v.is_contiguous()}]"
    text = repr(v)
    return text if len(text) < 60 else text[:57] + "..."


def names_argument(error: BaseException, names: tuple[str, ...] | str) -> bool:
    message = str(error)
    names = (names,) if isinstance(names, str) else names
    return any(name in message for name in names)


# ------------------------------------------------------------------------------------------- result checks
def tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for name in value.__dataclass_fields__ for t in tensors_in(getattr(value, name))]
    if isinstance(value, torch.nn.Module):  # a trained model: its parameters and buffers (identity is never equal)
        return list(value.state_dict().values())
    return []


def assert_finite(value: Any) -> None:
    for t in tensors_in(value):
        if t.is_floating_point() and t.device.type != "meta":
            assert torch.isfinite(t).all(), f"non-finite values in a result of shape {tuple(t.shape)}"
    if isinstance(value, float):
        assert math.isfinite(value), f"non-finite result {value}"


def same(a: Any, b: Any) -> bool:
    """Exactly equal results (NaN equal to NaN), recursively."""
    ta, tb = tensors_in(a), tensors_in(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.device.type == "meta" or y.device.type == "meta":
            continue
        if not torch.equal(torch.nan_to_num(x.float(), nan=12345.0), torch.nan_to_num(y.float(), nan=12345.0)):
            if x.is_floating_point() and torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True):
                continue  # a different memory layout may change the summation order
            return False
    if not ta:
        return a == b if not isinstance(a, float) else (a == b or (math.isnan(a) and math.isnan(b)))
    return True
