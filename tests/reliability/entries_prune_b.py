"""Fuzz entries of regimen.subnet added on branch prune-b: Lottery Jackpots, FTWT, layer DP allocation, TSCNC."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, mlp, seeds, tensor, tiny_cnn

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "subnet")
SKIPPED: dict[str, str] = {}


def _mlp(seed=0):
    return mlp(seed, (6, 8, 8, 3))


def _example(n=2):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(n))


def _mask(d, shape):
    g = torch.Generator().manual_seed(d(seeds))
    return torch.rand(shape, generator=g) > 0.5


# ------------------------------------------------------------------------------------------- lottery jackpots
add("jackpot_init_scores", lambda d: Call(S.jackpot_init_scores, {"mask": _mask(d, (3, 4))}),
    check=lambda r, c: expect(torch.equal(r, torch.where(c.kwargs["mask"], 1.0, 0.99))),
    scalars={"pruned_score": "prob_open"})
add("jackpot_mask_update", lambda d: Call(S.jackpot_mask_update, {
    "mask": (m := _mask(d, (4, 5))), "scores": S.jackpot_init_scores(m) + 0.01 * tensor(d, (4, 5))}),
    check=lambda r, c: expect(int(r.sum()) == int(c.kwargs["mask"].sum())), scalars={"rate": "prob"})
add("JackpotMask", lambda d: Call(ModuleFn(S.JackpotMask, ("weight",)), {
    "mask": _mask(d, (3, 4)), "weight": tensor(d, (3, 4))}),
    check=lambda r, c: expect(torch.equal(r, c.kwargs["weight"] * c.kwargs["mask"])))
add("apply_lottery_jackpots", lambda d: Call(S.apply_lottery_jackpots, {
    "model": _mlp(d(seeds)), "sparsity": d(st.floats(0, 0.9)), "scope": d(st.sampled_from(["global", "uniform"]))}),
    check=lambda r, c: expect(r == ["0", "2"]),
    scalars={"sparsity": "prob_open", "keep_classifier": "bool", "random_scores": "bool", "scope": "str",
             "ignore": "int"})


def _export_build(d):
    model = _mlp(d(seeds))
    S.apply_lottery_jackpots(model, 0.5)
    return Call(S.export_lottery_jackpots, {"model": model})


add("export_lottery_jackpots", _export_build,
    check=lambda r, c: expect(int((r[0].weight == 0).sum()) > 0 and not hasattr(r[0], "parametrizations")),
    scalars={"unfreeze": "bool"})


# ------------------------------------------------------------------------------------------------------- FTWT
def _heat_check(result, c):
    x = c.kwargs["output"]
    expect(torch.equal(result, x.abs().reshape(x.shape[0], x.shape[1], -1).amax(2)))


add("channel_heat", lambda d: Call(S.channel_heat, {"output": tensor(d, (d(st.integers(1, 3)), 4, 3, 3))}),
    check=_heat_check, tensors=("output",),
    exempt={"meta": "no values to compare", "extra_dim": "any (N, C, ...) shape is valid",
            "empty": "an empty batch gives an empty result"})
add("ftwt_targets", lambda d: Call(S.ftwt_targets, {
    "heat": tensor(d, (3, 5), 0.0, 3.0), "mode": d(st.sampled_from(["mass", "uniform"])),
    "threshold": d(st.floats(0.1, 0.9))}),
    check=lambda r, c: expect(bool(((r == 0) | (r == 1)).all()) and bool((r.sum(1) >= 1).all())),
    scalars={"mode": "str", "threshold": "prob"})
add("ftwt_mask_loss", lambda d: Call(S.ftwt_mask_loss, {
    "logits": tensor(d, (3, 4)), "target": (torch.rand(3, 4, generator=torch.Generator().manual_seed(d(seeds)))
                                           > 0.5).float()}),
    check=lambda r, c: expect(r.dim() == 0 and math.isfinite(float(r.detach()))))
add("MaskPredictor", lambda d: Call(ModuleFn(S.MaskPredictor, ("x",)), {
    "in_channels": (ci := d(st.integers(1, 4))), "out_channels": d(st.integers(1, 5)),
    "x": tensor(d, (2, ci, 3, 3))}),
    check=lambda r, c: expect(r.shape == (2, c.kwargs["out_channels"])),
    scalars={"in_channels": "count", "out_channels": "count", "init_bias": "finite", "softmax": "bool"})


def _gate_build(d):
    torch.manual_seed(d(seeds))
    block = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return Call(ModuleFn(S.FTWTGate, ("x",)), {"block": block, "in_channels": 2, "out_channels": 4,
                                               "x": tensor(d, (2, 2, 4, 4))})


add("FTWTGate", _gate_build, check=lambda r, c: expect(r.shape == (2, 4, 4, 4)),
    scalars={"mode": "str", "threshold": "prob", "decoupled": "bool", "init_bias": "finite", "softmax": "bool"})
add("apply_ftwt", lambda d: Call(S.apply_ftwt, {"model": tiny_cnn(seed=d(seeds))}),
    check=lambda r, c: expect(len(r) == 2),
    scalars={"mode": "str", "threshold": "prob", "decoupled": "bool", "init_bias": "finite", "softmax": "bool"})


def _dynamic_build(d):
    model = tiny_cnn(seed=d(seeds))
    S.apply_ftwt(model)
    return Call(S.ftwt_dynamic_macs, {"model": model, "inputs": tensor(d, (3, 3, 8, 8))})


add("ftwt_dynamic_macs", _dynamic_build, check=lambda r, c: expect(r.shape == (3,) and bool((r > 0).all())))


# ---------------------------------------------------------------------------------------------------- layer DP
add("rd_curves", lambda d: Call(S.rd_curves, {"model": _mlp(d(seeds)), "calib_inputs": _example(8),
                                              "grid": d(st.integers(2, 5))}),
    check=lambda r, c: expect(r[0].shape == (3, c.kwargs["grid"]) and bool((r[0][:, 0] == 0).all())),
    scalars={"grid": "count", "max_amount": "prob_open", "worst_case": "bool"})
add("layer_costs", lambda d: Call(S.layer_costs, {"model": _mlp(d(seeds)), "example_inputs": _example(),
                                                  "layers": ["0", "2"], "cost": d(st.sampled_from(S.layer_dp.COSTS))}),
    check=lambda r, c: expect(r == [1, 1]), scalars={"cost": "str"})


def _dp_build(d):
    g = torch.Generator().manual_seed(d(seeds))
    costs = torch.randint(0, 9, (3, 4), generator=g)
    return Call(S.dp_allocate, {"curves": torch.rand(3, 4, generator=g), "costs": costs,
                                "budget": int(costs.min(1).values.sum()) + d(st.integers(0, 10))})


add("dp_allocate", _dp_build,
    check=lambda r, c: expect(sum(int(c.kwargs["costs"][i, k]) for i, k in enumerate(r)) <= c.kwargs["budget"]),
    scalars={"budget": "int", "resolution": "count"})
add("apply_layer_dp", lambda d: Call(S.apply_layer_dp, {"model": _mlp(d(seeds)), "calib_inputs": _example(8),
                                                        "sparsity": d(st.floats(0, 0.9)), "grid": 5}),
    check=lambda r, c: expect(set(r["masks"]) == {"0", "2", "4"}),
    scalars={"sparsity": "prob_open", "grid": "count", "max_amount": "prob_open", "worst_case": "bool",
             "cost": "str", "resolution": "count_or_none", "ignore": "int"})  # None: exact costs


# ------------------------------------------------------------------------------------------------------- TSCNC
def _tl1_check(result, c):
    w, a = c.kwargs["weight"], c.kwargs.get("a", 1.0)
    expect(torch.allclose(result, ((a + 1) * w.abs() / (a + w.abs())).sum(), rtol=1e-5, atol=1e-5))


add("transformed_l1", lambda d: Call(S.transformed_l1, {"weight": tensor(d, (3, 4)), "a": d(st.floats(0.1, 5))}),
    check=_tl1_check, scalars={"a": "positive"}, tensors=("weight",),
    exempt={"meta": "no values to compare", "extra_dim": "any shape is valid", "empty": "an empty sum is 0"})
add("condition_number_penalty", lambda d: Call(S.condition_number_penalty, {
    "weight": tensor(d, (4, 3)) + 3 * torch.eye(4, 3), "kind": d(st.sampled_from(["frobenius", "spectral"]))}),
    check=lambda r, c: expect(math.isfinite(float(r.detach())) and float(r.detach()) >= -1e-5),
    scalars={"kind": "str", "eps": "positive"})
add("condition_numbers", lambda d: Call(S.condition_numbers, {"model": _mlp(d(seeds))}),
    check=lambda r, c: expect(set(r) == {"0", "2", "4"} and all(v >= 1 for v in r.values())),
    scalars={"ignore": "int"})
add("tscnc_penalty", lambda d: Call(S.tscnc_penalty, {"model": _mlp(d(seeds))}),
    check=lambda r, c: expect(math.isfinite(float(r.detach()))),
    scalars={"sparse_weight": "nonneg", "cond_weight": "nonneg", "a": "positive", "kind": "str", "eps": "positive"})


def _attack_build(fn, generator=None, **extra):
    def build(d):
        seed = d(seeds)
        torch.manual_seed(seed)
        model = nn.Linear(5, 3)
        x = tensor(d, (4, 5), -1.0, 1.0)
        return Call(fn, {"model": model, "x": x, "target": torch.tensor([0, 1, 2, 0]), **extra}, seed, generator)
    return build


def _ball_check(result, c):
    eps = c.kwargs.get("epsilon", 0.1)
    expect(result.shape == c.kwargs["x"].shape and float((result - c.kwargs["x"]).abs().max()) <= eps + 1e-5)


add("fgsm_example", _attack_build(S.fgsm_example), check=_ball_check, scalars={"epsilon": "nonneg"})
add("pgd_attack", _attack_build(S.pgd_attack, "generator", steps=3), check=_ball_check,
    scalars={"epsilon": "nonneg", "alpha": "positive", "steps": "count", "random_start": "bool"})
