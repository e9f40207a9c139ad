"""Fuzz entries of the low-rank names of regimen.subnet added on branch ``lowrank``: LoRA / ALLoRA, LOST and the
a-priori CP conv kernels (the Method classes get generic entries automatically)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, images, mlp, seeds, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "subnet")
SKIPPED: dict[str, str] = {}


def _mlp(seed=0):
    return mlp(seed, (6, 8, 8, 5))


def _lora_model(d):
    model = _mlp(d(seeds))
    S.apply_lora(model, rank=d(st.integers(1, 4)))
    return model


# ------------------------------------------------------------------------------------------------ LoRA / ALLoRA
add("LoRALinear", lambda d: Call(ModuleFn(S.LoRALinear, ("x",)), {
    "base": nn.Linear(6, 5), "rank": d(st.integers(1, 4)), "dropout": d(st.floats(0.0, 0.9)),
    "scale": d(st.booleans()), "x": tensor(d, (d(st.integers(1, 4)), 6))}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 5)),
    scalars={"rank": "count", "dropout": "prob_open", "scale": "bool", "alpha": "positive"}, tensors=("x",))
add("LoRAConv2d", lambda d: Call(ModuleFn(S.LoRAConv2d, ("x",)), {
    "base": nn.Conv2d(3, 4, 3, padding=1), "rank": d(st.integers(1, 3)), "x": images(d, c=(3, 3), hw=(2, 8))}),
    check=lambda r, c: expect(r.shape[:2] == (c.kwargs["x"].shape[0], 4)),
    scalars={"rank": "count", "dropout": "prob_open", "scale": "bool", "alpha": "positive"}, tensors=("x",))


def _delta_build(d):
    r = d(st.integers(1, 3))
    if d(st.booleans()):
        return Call(S.lora_delta, {"lora_a": tensor(d, (r, 5)), "lora_b": tensor(d, (4, r)),
                                   "scaling": d(st.floats(-2, 2))})
    return Call(S.lora_delta, {"lora_a": tensor(d, (r, 3, 3, 3)), "lora_b": tensor(d, (4, r, 1, 1)),
                               "scaling": d(st.floats(-2, 2))})


def _delta_check(result, c):
    a, b, scaling = c.kwargs["lora_a"], c.kwargs["lora_b"], c.kwargs["scaling"]
    expected = (b.flatten(1) @ a.flatten(1)).reshape(b.shape[0], *a.shape[1:]) * scaling
    expect(torch.allclose(result, expected, atol=1e-5))


add("lora_delta", _delta_build, check=_delta_check, scalars={"scaling": "finite"}, tensors=("lora_a", "lora_b"))
add("apply_lora", lambda d: Call(S.apply_lora, {"model": _mlp(d(seeds)), "rank": d(st.integers(1, 4)),
                                                "dropout": d(st.floats(0.0, 0.9))}),
    check=lambda r, c: expect(len(r) == 3),
    scalars={"rank": "count", "dropout": "prob_open", "alpha": "positive", "scale": "bool", "layers": "str",
             "model": "str"})
add("lora_layers", lambda d: Call(S.lora_layers, {"model": _lora_model(d)}), check=lambda r, c: expect(len(r) == 3),
    scalars={"model": "str"})
add("lora_parameters", lambda d: Call(S.lora_parameters, {"model": _lora_model(d)}),
    check=lambda r, c: expect(len(r) == 6), scalars={"model": "str"})
add("merge_lora", lambda d: Call(S.merge_lora, {"model": _lora_model(d)}), check=lambda r, c: expect(r == 3),
    scalars={"model": "str"})
add("unmerge_lora", lambda d: Call(S.unmerge_lora, {"model": _lora_model(d)}), check=lambda r, c: expect(r == 0),
    scalars={"model": "str"})


def _row_scale_check(result, c):
    p, eta = c.kwargs["param"], c.kwargs["eta"]
    for i in range(p.shape[0]):
        expected = 1.0 / (float(p[i].double().pow(2).sum()) + 1.0 / eta ** 2) ** 0.5
        expect(abs(float(result.flatten()[i]) - expected) <= 1e-4 * expected)


add("allora_row_scale", lambda d: Call(S.allora_row_scale, {
    "param": tensor(d, (d(st.integers(1, 4)), d(st.integers(1, 5)))), "eta": d(st.floats(0.1, 50))}),
    check=_row_scale_check, scalars={"eta": "positive"}, tensors=("param",))


def _scale_build(d):
    p = nn.Parameter(tensor(d, (3, 4)))
    p.grad = tensor(d, (3, 4))
    return Call(S.allora_scale_, {"params": [p], "eta": d(st.floats(0.1, 50))})


add("allora_scale_", _scale_build, scalars={"eta": "positive"})


# ------------------------------------------------------------------------------------------------ LOST
add("LOSTLinear", lambda d: Call(ModuleFn(S.LOSTLinear, ("x",)), {
    "in_features": 8, "out_features": 6, "rank": d(st.integers(1, 5)), "channels": d(st.integers(0, 8)),
    "gamma": d(st.floats(0.0, 1.0)), "x": tensor(d, (d(st.integers(1, 4)), 8))}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 6)),
    scalars={"in_features": "count", "out_features": "count", "rank": "count", "channels": "count0",
             "gamma": "prob", "activation": "str", "bias": "bool"}, tensors=("x",))


def _decompose_build(d):
    out, inp = d(st.integers(2, 6)), d(st.integers(2, 6))
    return Call(S.lost_decompose, {"weight": tensor(d, (out, inp)), "rank": d(st.integers(1, min(out, inp) - 1)),
                                   "channels": d(st.integers(0, inp))}, seed=d(seeds), generator="generator")


def _decompose_check(result, c):
    b, a, s, index = result
    weight = c.kwargs["weight"]
    expect(b.shape[1] == a.shape[0] == c.kwargs["rank"] and s.shape == (weight.shape[0], c.kwargs["channels"]))
    expect(torch.allclose(s, (weight.double() - b.double() @ a.double())[:, index].to(s.dtype), atol=1e-4))


add("lost_decompose", _decompose_build, check=_decompose_check,
    scalars={"rank": "count", "channels": "count0", "selection": "str"}, tensors=("weight",))


def _lost_linear_build(d):
    layer = S.LOSTLinear.from_linear(nn.Linear(6, 5), 2, d(st.integers(0, 6)))
    return Call(S.lost_linear, {"x": tensor(d, (d(st.integers(1, 3)), 6)), "lora_b": layer.lora_b.detach(),
                                "lora_a": layer.lora_a.detach(), "sparse": layer.sparse.detach(), "index": layer.index,
                                "gamma": d(st.floats(0, 1))})


def _lost_linear_check(result, c):
    k = c.kwargs
    dense = k["gamma"] * k["lora_b"] @ k["lora_a"]
    dense = dense.index_add(1, k["index"], (1 - k["gamma"]) * k["sparse"])
    expect(torch.allclose(result, k["x"] @ dense.T, atol=1e-4))


add("lost_linear", _lost_linear_build, check=_lost_linear_check, scalars={"gamma": "prob", "activation": "str"},
    tensors=("x", "lora_a"))
add("lost_parameter_count", lambda d: Call(S.lost_parameter_count, {
    "in_features": d(st.integers(1, 50)), "out_features": d(st.integers(1, 50)), "rank": d(st.integers(1, 10)),
    "channels": d(st.integers(0, 10))}),
    check=lambda r, c: expect(r == c.kwargs["rank"] * (c.kwargs["in_features"] + c.kwargs["out_features"])
                              + (c.kwargs["channels"] + 1) * c.kwargs["out_features"]),
    scalars={"in_features": "count", "out_features": "count", "rank": "count", "channels": "count0", "bias": "bool"})
add("select_channels", lambda d: Call(S.select_channels, {"residual": tensor(d, (4, 6)),
                                                         "channels": d(st.integers(0, 6))},
                                      seed=d(seeds), generator="generator"),
    check=lambda r, c: expect(r.numel() == c.kwargs["channels"] and len(set(r.tolist())) == r.numel()),
    scalars={"channels": "count0", "selection": "str"}, tensors=("residual",))
add("apply_lost", lambda d: Call(S.apply_lost, {"model": _mlp(d(seeds)), "rank": d(st.sampled_from([1, 2, 0.25])),
                                                "channels": d(st.sampled_from([0, 2, 0.5]))}),
    check=lambda r, c: expect(len(r) == 3),
    scalars={"rank": "positive", "channels": "nonneg", "gamma": "prob", "activation": "str", "selection": "str",
             "model": "str"})


# ------------------------------------------------------------------------------------------------ CP kernels
add("CPKernelConv2d", lambda d: Call(ModuleFn(S.CPKernelConv2d, ("x",)), {
    "in_channels": 3, "out_channels": 4, "kernel_size": 3, "rank": d(st.integers(1, 3)), "padding": 1,
    "x": images(d, c=(3, 3), hw=(3, 8))}),
    check=lambda r, c: expect(r.shape[:2] == (c.kwargs["x"].shape[0], 4)),
    scalars={"in_channels": "count", "out_channels": "count", "rank": "count", "groups": "count", "bias": "bool"},
    tensors=("x",))


def _cp_kernel_check(result, c):
    a, b = c.kwargs["factor_h"], c.kwargs["factor_w"]
    expected = sum(a[:, :, r, :, None] * b[:, :, r, None, :] for r in range(a.shape[2]))
    expect(torch.allclose(result, expected, atol=1e-5))


def _cp_kernel_build(d):
    o, i, r = d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(1, 3))
    return Call(S.cp_kernel, {"factor_h": tensor(d, (o, i, r, 3)), "factor_w": tensor(d, (o, i, r, 5))})


add("cp_kernel", _cp_kernel_build, check=_cp_kernel_check, tensors=("factor_h", "factor_w"))
add("cp_kernel_factors", lambda d: Call(S.cp_kernel_factors, {"weight": tensor(d, (2, 3, 3, 3)),
                                                              "rank": d(st.integers(1, 4))}),
    check=lambda r, c: expect(r[0].shape == (2, 3, c.kwargs["rank"], 3)), scalars={"rank": "count"},
    tensors=("weight",))
add("apply_cp_kernels", lambda d: Call(S.apply_cp_kernels, {
    "model": nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 5)),
    "rank": d(st.integers(1, 3)), "only_if_smaller": d(st.booleans())}, seed=d(seeds), generator="generator"),
    scalars={"rank": "count", "init": "str", "only_if_smaller": "bool", "model": "str"})
