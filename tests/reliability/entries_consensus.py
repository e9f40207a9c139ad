"""Fuzz entries of regimen.subnet added on branch h17gates: the consensus sub-network's dynamic gates."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, seeds, tensor, tiny_cnn

ENTRIES: list[Entry] = []
SKIPPED: dict[str, str] = {}


add = entry_adder(ENTRIES, "subnet")


def _x(d, n=3):
    return tensor(d, (n, 3, 8, 8))


def _gated(d):
    model = tiny_cnn(seed=d(seeds))
    S.apply_consensus_gates(model, _x(d, 2))
    return model


def _ste_check(result, c):
    logits = c.kwargs["logits"]
    finite = torch.isfinite(logits) if logits.is_floating_point() else torch.ones_like(logits, dtype=torch.bool)
    expect(result.shape == logits.shape)
    expect(torch.equal(result.detach()[finite], (logits[finite] > 0).to(result.dtype)))


add("straight_through_gate", lambda d: Call(S.straight_through_gate, {"logits": tensor(d, (d(st.integers(1, 4)), 5))}),
    check=_ste_check, tensors=("logits",),
    exempt={"extra_dim": "any shape is valid (elementwise)", "empty": "an empty tensor gives an empty result"})


def _rates(d, n=6):
    return torch.rand(n, generator=torch.Generator().manual_seed(d(seeds)))


def _sparsity_check(result, c):
    r = c.kwargs["rates"]
    expect(math.isclose(float(result), (float(r.mean()) - c.kwargs["target"]) ** 2, rel_tol=1e-5, abs_tol=1e-7))


add("gate_sparsity_loss", lambda d: Call(S.gate_sparsity_loss, {"rates": _rates(d), "target": d(st.floats(0, 1))}),
    check=_sparsity_check, scalars={"target": "prob"}, tensors=("rates",),
    exempt={"extra_dim": "rates of any shape are flattened", "nan": "NaN in, NaN out"})


def _polar_check(result, c):
    r = c.kwargs["rates"].reshape(-1).tolist()
    t = c.kwargs["t"]
    mean = sum(r) / len(r)
    expect(math.isclose(float(result), sum(t * abs(v) - abs(v - mean) for v in r) / len(r), rel_tol=1e-4,
                        abs_tol=1e-6))


add("gate_polarization", lambda d: Call(S.gate_polarization, {"rates": _rates(d), "t": d(st.floats(-2, 2))}),
    check=_polar_check, scalars={"t": "finite"}, tensors=("rates",),
    exempt={"extra_dim": "rates of any shape are flattened", "nan": "NaN in, NaN out"})


def _gate_build(d):
    torch.manual_seed(d(seeds))
    return Call(ModuleFn(S.ConsensusGate, ("x",)), {"layer": nn.Conv2d(3, 4, 3, padding=1), "norm": nn.BatchNorm2d(4),
                                                    "x": _x(d, 2)})


add("ConsensusGate", _gate_build, check=lambda r, c: expect(r.shape == (2, 4, 8, 8)), scalars={"init_bias": "finite"})
add("apply_consensus_gates", lambda d: Call(S.apply_consensus_gates, {"model": tiny_cnn(seed=d(seeds)),
                                                                      "example_inputs": _x(d, 2)}),
    check=lambda r, c: expect(r == ["0", "4"]), scalars={"init_bias": "finite"})
add("remove_consensus_gates", lambda d: Call(S.remove_consensus_gates, {"model": _gated(d)}),
    check=lambda r, c: expect(sorted(r) == ["0", "4"] and isinstance(c.kwargs["model"][1], nn.BatchNorm2d)))
add("firing_rates", lambda d: Call(S.firing_rates, {"model": _gated(d), "inputs": _x(d, 4),
                                                    "batch_size": d(st.integers(1, 5))}),
    check=lambda r, c: expect(sorted(r) == ["0", "4"] and all(bool(((v >= 0) & (v <= 1)).all()) for v in r.values())),
    scalars={"batch_size": "count"})
add("consensus_dynamic_macs", lambda d: Call(S.consensus_dynamic_macs, {"model": _gated(d), "inputs": _x(d, 3)}),
    check=lambda r, c: expect(r.shape == (3,) and bool((r > 0).all())))


def _rates_of(model):
    return {name: torch.linspace(0, 1, m.out_channels) for name, m in model.named_modules()
            if isinstance(m, S.ConsensusGate)}


def _plan_build(d):
    model = _gated(d)
    rates = _rates_of(model)
    S.remove_consensus_gates(model)
    return Call(S.consensus_plan, {"model": model, "example_inputs": _x(d, 2), "rates": rates,
                                   "threshold": d(st.floats(0, 0.9))})


add("consensus_plan", _plan_build, check=lambda r, c: expect(len(r) == 2 and all(len(k) >= 1 for k in r.values())),
    scalars={"threshold": "prob_open"})


def _extract_build(d):
    model = _gated(d)
    return Call(S.extract_consensus, {"model": model, "example_inputs": _x(d, 2), "rates": _rates_of(model),
                                      "threshold": d(st.floats(0, 0.9))})


add("extract_consensus", _extract_build,
    check=lambda r, c: expect(not any(isinstance(m, S.ConsensusGate) for m in c.kwargs["model"].modules())),
    scalars={"threshold": "prob_open"})


def _masks_build(d):
    model = _gated(d)
    return Call(S.consensus_masks, {"model": model, "rates": _rates_of(model), "threshold": d(st.floats(0, 0.9))})


add("consensus_masks", _masks_build,
    check=lambda r, c: expect(all(m.forced is not None for m in c.kwargs["model"].modules()
                                  if isinstance(m, S.ConsensusGate))),
    scalars={"threshold": "prob_open"})
