"""Fuzz entries of regimen.subnet added on branch h17ev: the layer-wise sparsity allocations (uniform, global, LAMP,
ERK) of ``regimen.subnet.allocation``."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import mlp, seeds, tensor

ENTRIES: list[Entry] = []
SKIPPED: dict[str, str] = {}


add = entry_adder(ENTRIES, "subnet")


def _lamp_check(result, c):
    w = c.kwargs["weight"]
    expect(result.shape == w.shape and result.dtype == torch.float64)
    if w.numel():
        expect(bool(((result >= 0) & (result <= 1 + 1e-12)).all()))
        if bool((w != 0).any()):
            expect(abs(float(result.max()) - 1.0) < 1e-9, "the largest entry scores 1")


add("lamp_scores", lambda d: Call(S.lamp_scores, {"weight": tensor(d, (3, 4))}), check=_lamp_check,
    tensors=("weight",), exempt={"extra_dim": "any shape is valid", "empty": "an empty tensor has empty scores"})


_SHAPES = {"conv": (8, 4, 3, 3), "fc": (10, 8), "tiny": (2, 2)}


def _erk_check(result, c):
    density = c.kwargs["density"]
    sizes = {k: math.prod(v) for k, v in c.kwargs["shapes"].items()}
    expect(set(result) == set(sizes) and all(0.0 <= v <= 1.0 for v in result.values()))
    kept = sum(result[k] * n for k, n in sizes.items())
    expect(abs(kept - density * sum(sizes.values())) < 1e-6 * sum(sizes.values()), "total density")


add("erk_densities", lambda d: Call(S.erk_densities, {"shapes": dict(_SHAPES), "density": d(st.floats(0.05, 1.0)),
                                                      "power": d(st.floats(0.0, 2.0))}),
    check=_erk_check, scalars={"density": "prob", "power": "nonneg"})


def _allocate_check(result, c):
    expect(set(result) == {"0", "2", "4"} and all(0.0 <= v < 1.0 for v in result.values()))
    if c.kwargs.get("rule", "lamp") in ("global", "lamp"):
        sizes = {"0": 48, "2": 64, "4": 24}
        removed = sum(round(result[k] * n) for k, n in sizes.items())
        expect(removed == math.floor(c.kwargs["sparsity"] * 136 + 1e-9))


add("allocate_sparsity", lambda d: Call(S.allocate_sparsity, {
    "model": mlp(d(seeds)), "sparsity": d(st.floats(0, 0.95)),
    "rule": d(st.sampled_from(["uniform", "global", "lamp", "erk"]))}),
    check=_allocate_check, scalars={"sparsity": "prob_open", "rule": "str", "ignore": "int"})


def _apply_check(result, c):
    expect(set(result) == set(c.kwargs["amounts"]))
    for name, mask in result.items():
        n = mask.numel()
        expect(int((~mask).sum()) == math.floor(c.kwargs["amounts"][name] * n + 1e-9))


add("apply_allocation", lambda d: Call(S.apply_allocation, {
    "model": mlp(d(seeds)), "amounts": {"0": d(st.floats(0, 0.95)), "4": d(st.floats(0, 0.95))}}),
    check=_apply_check)
