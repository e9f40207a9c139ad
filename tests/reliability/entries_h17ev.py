"""Fuzz entries of regimen.subnet added on branch h17ev: the layer-wise sparsity allocations (uniform, global, LAMP,
ERK) of ``regimen.subnet.allocation``."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry
from tests.reliability.strategies import seeds, tensor

ENTRIES: list[Entry] = []
SKIPPED: dict[str, str] = {}


def add(name, build, check=None, scalars=None, tensors=(), exempt=None):
    ENTRIES.append(Entry(f"subnet.{name}", build, check, scalars or {}, tensors, exempt or {}))


def _check(condition, message="check failed"):
    if not condition:
        raise AssertionError(message)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _lamp_check(result, c):
    w = c.kwargs["weight"]
    _check(result.shape == w.shape and result.dtype == torch.float64)
    if w.numel():
        _check(bool(((result >= 0) & (result <= 1 + 1e-12)).all()))
        if bool((w != 0).any()):
            _check(abs(float(result.max()) - 1.0) < 1e-9, "the largest entry scores 1")


add("lamp_scores", lambda d: Call(S.lamp_scores, {"weight": tensor(d, (3, 4))}), check=_lamp_check,
    tensors=("weight",), exempt={"extra_dim": "any shape is valid", "empty": "an empty tensor has empty scores"})


_SHAPES = {"conv": (8, 4, 3, 3), "fc": (10, 8), "tiny": (2, 2)}


def _erk_check(result, c):
    density = c.kwargs["density"]
    sizes = {k: math.prod(v) for k, v in c.kwargs["shapes"].items()}
    _check(set(result) == set(sizes) and all(0.0 <= v <= 1.0 for v in result.values()))
    kept = sum(result[k] * n for k, n in sizes.items())
    _check(abs(kept - density * sum(sizes.values())) < 1e-6 * sum(sizes.values()), "total density")


add("erk_densities", lambda d: Call(S.erk_densities, {"shapes": dict(_SHAPES), "density": d(st.floats(0.05, 1.0)),
                                                      "power": d(st.floats(0.0, 2.0))}),
    check=_erk_check, scalars={"density": "prob", "power": "nonneg"})


def _allocate_check(result, c):
    _check(set(result) == {"0", "2", "4"} and all(0.0 <= v < 1.0 for v in result.values()))
    if c.kwargs.get("rule", "lamp") in ("global", "lamp"):
        sizes = {"0": 48, "2": 64, "4": 24}
        removed = sum(round(result[k] * n) for k, n in sizes.items())
        _check(removed == math.floor(c.kwargs["sparsity"] * 136 + 1e-9))


add("allocate_sparsity", lambda d: Call(S.allocate_sparsity, {
    "model": _mlp(d(seeds)), "sparsity": d(st.floats(0, 0.95)),
    "rule": d(st.sampled_from(["uniform", "global", "lamp", "erk"]))}),
    check=_allocate_check, scalars={"sparsity": "prob_open", "rule": "str", "ignore": "int"})


def _apply_check(result, c):
    _check(set(result) == set(c.kwargs["amounts"]))
    for name, mask in result.items():
        n = mask.numel()
        _check(int((~mask).sum()) == math.floor(c.kwargs["amounts"][name] * n + 1e-9))


add("apply_allocation", lambda d: Call(S.apply_allocation, {
    "model": _mlp(d(seeds)), "amounts": {"0": d(st.floats(0, 0.95)), "4": d(st.floats(0, 0.95))}}),
    check=_apply_check)
