"""Property-based fuzzing of every public name in the pillars' ``__all__`` (issue 21).

The registry (``registry.py``) holds one :class:`~tests.reliability.fuzzlib.Entry` per public name, or a justified
skip. Three properties run per entry (see ``fuzzlib`` for the outcome rules): valid input gives a checked result,
hostile scalars are refused naming the parameter, hostile tensors give a clean error naming the argument or a
consistent result. ``REGIMEN_FUZZ=large`` runs the large profile (conftest.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.reliability import fuzzlib
from tests.reliability.registry import ENTRIES, PILLARS, SKIPPED
from tests.reliability.strategies import ModuleFn

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_public_name_has_a_fuzz_entry_or_a_justified_skip():
    missing, stale = [], []
    public = set()
    for pillar in PILLARS:
        module = importlib.import_module(f"regimen.{pillar}")
        for name in module.__all__:
            key = f"{pillar}.{name}"
            public.add(key)
            if key not in ENTRIES and key not in SKIPPED:
                missing.append(key)
    stale = sorted((set(ENTRIES) | set(SKIPPED)) - public)
    assert not missing, f"public names without a fuzz entry (add one to tests/reliability/registry.py): {missing}"
    assert not stale, f"fuzz entries for names that are not public (any more): {stale}"
    assert not set(ENTRIES) & set(SKIPPED), "a name is both fuzzed and skipped"
    for key, reason in SKIPPED.items():
        assert len(reason) > 20, f"{key}: a skip needs a reason"


ENTRY_LIST = sorted(ENTRIES.values(), key=lambda e: e.name)
SCALAR_ENTRIES = [e for e in ENTRY_LIST if e.scalars]
TENSOR_ENTRIES = [e for e in ENTRY_LIST if e.tensors]


@pytest.mark.parametrize("entry", ENTRY_LIST, ids=lambda e: e.name)
@given(data=st.data())
def test_valid_input_gives_a_checked_result(entry, data):
    call = entry.build(data.draw)
    kind, result = fuzzlib.outcome(call)
    fuzzlib.COUNTS["valid"] += 1
    assert kind == "ok", f"{entry.name}: valid input {fuzzlib._short(call.kwargs)} refused: {result}"
    fuzzlib.assert_finite(result)
    if entry.check is not None:
        entry.check(result, call)


@pytest.mark.parametrize("entry", SCALAR_ENTRIES, ids=lambda e: e.name)
@given(data=st.data())
def test_hostile_scalar_is_refused_naming_the_parameter(entry, data):
    call = entry.build(data.draw)
    parameter = data.draw(st.sampled_from(sorted(entry.scalars)), label="parameter")
    values = [v for v in fuzzlib.HOSTILE[entry.scalars[parameter]]
              if not (v is None and fuzzlib.default_of(call.fn, parameter) is None)]  # None is legal there
    value = data.draw(st.sampled_from(values), label="value")
    kind, result = fuzzlib.outcome(call, **{parameter: value})
    fuzzlib.COUNTS["hostile scalar"] += 1
    assert kind == "error", f"{entry.name}: {parameter}={value!r} was accepted"
    assert fuzzlib.names_argument(result, parameter), (
        f"{entry.name}: {parameter}={value!r} raised {type(result).__name__} without naming {parameter!r}: {result}")


@pytest.mark.parametrize("entry", TENSOR_ENTRIES, ids=lambda e: e.name)
@given(data=st.data())
def test_hostile_tensor_gives_a_named_error_or_a_consistent_result(entry, data):
    call = entry.build(data.draw)
    argument = data.draw(st.sampled_from(entry.tensors), label="argument")
    original = call.kwargs[argument]
    variants = [v for v in fuzzlib.TENSOR_VARIANTS if v not in entry.tensor_exempt]
    variant = data.draw(st.sampled_from(variants), label="variant")
    bad = fuzzlib.corrupt(original, variant)
    # torch.nn's convention: a layer with parameters raises RuntimeError for an input of another dtype (the user
    # converts the model or the input); regimen's layers follow it
    layer_dtype = isinstance(call.fn, ModuleFn) and variant in ("int64", "bool", "float64", "meta")
    tolerate = (RuntimeError, NotImplementedError) if layer_dtype else ()
    kind, result = fuzzlib.outcome(call, tolerate, **{argument: bad})
    fuzzlib.COUNTS["hostile tensor"] += 1
    if variant in ("noncontiguous", "expanded"):
        base_kind, base = fuzzlib.outcome(call, **{argument: bad.contiguous()})
        assert kind == base_kind, (f"{entry.name}: a {variant} {argument} gave {kind} but its contiguous copy "
                                   f"{base_kind}: {result if kind == 'error' else base}")
        if kind == "ok":
            assert fuzzlib.same(result, base), f"{entry.name}: a {variant} {argument} changed the result"
        return
    if kind == "error" and not (layer_dtype and isinstance(result, tolerate)):
        assert fuzzlib.names_argument(result, entry.tensors + entry.aliases), (
            f"{entry.name}: {variant} {argument} raised {type(result).__name__} naming none of {entry.tensors}: "
            f"{result}")
        return
    if variant == "meta":
        for t in fuzzlib.tensors_in(result):
            assert isinstance(t, torch.Tensor)
