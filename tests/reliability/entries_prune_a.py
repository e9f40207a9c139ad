"""Fuzz entries of the prune-a names of regimen.subnet: polarization, PQ-Index/SAP, class-dependent, random search."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, mlp, seeds, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "subnet")
SKIPPED = {
    "subnet.SearchResult": "a dataclass result of random_search (fuzzed there)",
}


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


def _x():
    return torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def _mlp(seed=0):
    return mlp(seed, (6, 8, 3))


# ------------------------------------------------------------------------------------------- polarization
add("ChannelGate", lambda d: Call(ModuleFn(S.ChannelGate, ("x",)), {
    "channels": (c := d(st.integers(1, 4))), "x": tensor(d, (2, c, 3))}),
    check=lambda r, c: expect(torch.equal(r, c.kwargs["x"])), scalars={"channels": "count"})
add("apply_gates", lambda d: Call(S.apply_gates, {"model": _cnn(d(seeds))}),
    check=lambda r, c: expect(len(r) == 2), scalars={"model": "str", "ignore": "int"})


def _fold_build(d):
    model = _cnn(d(seeds))
    S.apply_gates(model)
    return Call(S.fold_gates, {"model": model})


add("fold_gates", _fold_build, check=lambda r, c: expect(set(r) == {"1", "4"}), scalars={"model": "str"})
add("scaling_factors", lambda d: Call(S.scaling_factors, {"model": _cnn(d(seeds))}),
    check=lambda r, c: expect([f.numel() for f in r] == [4, 6]), scalars={"model": "str", "ignore": "int"})
add("polarization_penalty", lambda d: Call(S.polarization_penalty, {
    "factors": torch.rand(d(st.integers(1, 6)), generator=torch.Generator().manual_seed(d(seeds))),
    "t": d(st.floats(0, 2)), "alpha": d(st.floats(0, 1))}),
    check=lambda r, c: expect(r.dim() == 0), scalars={"t": "finite", "alpha": "finite"})
add("search_threshold", lambda d: Call(S.search_threshold, {
    "factors": torch.rand(d(st.integers(1, 30)), generator=torch.Generator().manual_seed(d(seeds)))}),
    check=lambda r, c: expect(0 < r <= 1), scalars={"upper": "positive", "bins": "count"})
add("polarized_fraction", lambda d: Call(S.polarized_fraction, {
    "factors": torch.rand(d(st.integers(1, 30)), generator=torch.Generator().manual_seed(d(seeds)))}),
    check=lambda r, c: expect(0 <= r[0] <= 1 and 0 <= r[1] <= 1), scalars={"upper": "positive"})
add("polarization_plan", lambda d: Call(S.polarization_plan, {
    "model": _cnn(d(seeds)), "example_inputs": _x(), "sparsity": d(st.floats(0, 0.9))}),
    check=lambda r, c: expect(all(len(k) >= 1 for k in r.values())),
    scalars={"sparsity": "prob_open", "model": "str"})

# ------------------------------------------------------------------------------------------- PQ index / SAP
add("pq_index", lambda d: Call(S.pq_index, {
    "weight": torch.randn(d(st.integers(1, 20)), generator=torch.Generator().manual_seed(d(seeds))),
    "p": 0.5, "q": 1.0}),
    check=lambda r, c: expect(0 <= float(r) <= 1), scalars={"p": "positive", "q": "positive"})
add("sap_prune_counts", lambda d: Call(S.sap_prune_counts, {
    "index": torch.tensor(d(st.floats(0, 0.99))), "remaining": torch.tensor(d(st.integers(1, 1000)))}),
    check=lambda r, c: expect(0 <= int(r) <= int(c.kwargs["remaining"])),
    scalars={"eta": "nonneg", "gamma": "positive", "beta": "positive"})
add("prunable_weights", lambda d: Call(S.prunable_weights, {"model": _mlp(d(seeds))}),
    check=lambda r, c: expect(list(r) == ["0.weight", "2.weight"]), scalars={"model": "str", "ignore": "int"})
add("sap_prune", lambda d: Call(S.sap_prune, {"model": _mlp(d(seeds)),
                                              "scope": d(st.sampled_from(["neuron", "layer", "global"]))}),
    check=lambda r, c: expect(set(r) == {"0.weight", "2.weight"}),
    scalars={"scope": "str", "gamma": "positive", "scale": "nonneg", "model": "str"})
add("apply_masks", lambda d: Call(S.apply_masks, {"model": (m := _mlp(d(seeds))), "masks": S.sap_prune(m)}),
    scalars={"model": "str", "masks": "str"})
add("sparsity_of", lambda d: Call(S.sparsity_of, {"masks": {"w": torch.rand(
    d(st.integers(1, 10)), generator=torch.Generator().manual_seed(d(seeds))) > 0.5}}),
    check=lambda r, c: expect(0 <= r <= 1), scalars={"masks": "str"})

# ------------------------------------------------------------------------------------------- class-dependent


def _logits_build(fn, **extra):
    def build(d):
        n, k = d(st.integers(1, 6)), d(st.integers(2, 4))
        return Call(fn, {"logits": tensor(d, (n, k)), "targets": torch.randint(
            0, k, (n,), generator=torch.Generator().manual_seed(d(seeds))), "cls": d(st.integers(0, k - 1)), **extra})
    return build


add("class_rank_loss", _logits_build(S.class_rank_loss), check=lambda r, c: expect(float(r) >= 0),
    scalars={"cls": "count0"})
add("class_weighted_loss", _logits_build(S.class_weighted_loss), check=lambda r, c: expect(r.dim() == 0),
    scalars={"cls": "count0", "class_weight": "positive", "rank_weight": "nonneg"})
add("class_false_negatives", lambda d: Call(S.class_false_negatives, {
    "model": _mlp(d(seeds)), "inputs": torch.randn(5, 6), "targets": torch.randint(0, 3, (5,)),
    "cls": d(st.integers(0, 2))}),
    check=lambda r, c: expect(0 <= r <= 5), scalars={"cls": "count0", "batch_size": "count"})
add("layer_prune_masks", lambda d: Call(S.layer_prune_masks, {
    "model": _mlp(d(seeds)), "fraction": d(st.floats(0, 0.9)), "score": "magnitude"}),
    check=lambda r, c: expect(all(int(m.sum()) >= 1 for m in r.values())),
    scalars={"fraction": "prob_open", "score": "str", "model": "str"})

# ------------------------------------------------------------------------------------------- random search
add("random_node_plan", lambda d: Call(S.random_node_plan, {
    "model": _cnn(d(seeds)), "example_inputs": _x(), "sparsity": d(st.floats(0, 0.9))}, d(seeds), "generator"),
    check=lambda r, c: expect(all(len(k) >= 1 for k in r.values())),
    scalars={"sparsity": "prob_open", "model": "str"})
add("random_search", lambda d: Call(S.random_search, {
    "make_model": _cnn, "example_inputs": _x(), "score": lambda m: 0.0, "candidates": d(st.integers(1, 2)),
    "sparsity": 0.5}, d(seeds), "generator"),
    check=lambda r, c: expect(len(r.scores) == c.kwargs["candidates"]),
    scalars={"candidates": "count", "sparsity": "prob_open"})
