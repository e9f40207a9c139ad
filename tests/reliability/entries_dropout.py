"""Fuzz entries of regimen.dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import regimen.dropout as D
from tests.reliability.fuzzlib import Call, Entry
from tests.reliability.strategies import ModuleFn, images, same_shape_as, seeds, staged_resnet, tensor, tiny_cnn

ENTRIES: list[Entry] = []
WRAPPED_LAYER = {"extra_dim": "the wrapped user layer (an nn.Conv2d) receives x as given and raises its "
                                "own error"}
SKIPPED = {
    "dropout.HEAD_NAMES": "a constant tuple of conventional head names; default_head is fuzzed with it",
    "dropout.INNER_MODEL_NAMES": "a constant tuple of wrapper attribute names; default_head is fuzzed with it",
    "dropout.mc_dropout_mode": "a context manager over a model (no scalar or tensor input); mc_predict runs it "
                               "and is fuzzed",
}


def add(name, build, check=None, scalars=None, tensors=(), exempt=None):
    ENTRIES.append(Entry(f"dropout.{name}", build, check, scalars or {}, tensors, exempt or {}))


def _check(condition, message="check failed"):
    if not condition:
        raise AssertionError(message)


def _features(d):
    return tensor(d, (d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 4))))


def _zero_or_scaled(result, c, scale_key="scale_by_keep"):
    """Dropout's output: every value is 0 or the input times 1/(1-p) (or times 1)."""
    x, p = c.kwargs["x"], c.kwargs["p"]
    factor = 1 / (1 - p) if c.kwargs.get(scale_key, True) and p < 1 else 1.0
    ok = (result == 0) | torch.isclose(result, x * factor, rtol=1e-5, atol=1e-6)
    _check(bool(ok.all()), "a value that is neither dropped nor scaled")


def _fn(fn, extra=None, x=_features):
    def build(d):
        return Call(fn, {"x": x(d), "p": d(st.floats(0, 0.9)), **(extra(d) if extra else {})}, d(seeds), "generator")
    return build


add("drop_path", _fn(D.drop_path, lambda d: {"mode": d(st.sampled_from(["sample", "block"])),
                                             "scale_by_keep": d(st.booleans())}),
    check=lambda r, c: (same_shape_as("x")(r, c), _zero_or_scaled(r, c)),
    scalars={"p": "prob", "training": "bool", "scale_by_keep": "bool", "mode": "str"}, tensors=("x",))
add("temporal_dropout", _fn(D.temporal_dropout, lambda d: {"scale_by_keep": d(st.booleans())}),
    check=lambda r, c: (same_shape_as("x")(r, c), _zero_or_scaled(r, c)),
    scalars={"p": "prob_open", "dim": "int", "training": "bool", "scale_by_keep": "bool"}, tensors=("x",))
add("nested_dropout", _fn(D.nested_dropout, lambda d: {"p": d(st.floats(0.01, 0.9))}),
    check=same_shape_as("x"),
    scalars={"p": "prob_open", "dim": "int", "training": "bool", "scale": "bool"}, tensors=("x",))


def _block_extra(d):
    return {"block_size": d(st.integers(1, 2)), "batchwise": d(st.booleans()), "scale_by_keep": d(st.booleans())}


add("drop_block2d", _fn(D.drop_block2d, _block_extra, x=lambda d: images(d, hw=(2, 9))),
    check=same_shape_as("x"),
    scalars={"p": "prob", "block_size": "count", "training": "bool", "gamma_scale": "positive",
             "scale_by_keep": "bool", "batchwise": "bool"}, tensors=("x",))


def _dropblock_mask_build(d):
    like = torch.empty(0)
    shape = [d(st.integers(1, 3)), d(st.integers(1, 3)), d(st.integers(3, 9)), d(st.integers(3, 9))]
    return Call(D.dropblock_mask, {"shape": shape, "p": d(st.floats(0, 0.9)), "block_size": d(st.integers(1, 3)),
                                   "like": like}, d(seeds), "generator")


add("dropblock_mask", _dropblock_mask_build,
    check=lambda r, c: _check(list(r.shape) == c.kwargs["shape"] and bool(((r == 0) | (r == 1)).all())),
    scalars={"p": "prob", "block_size": "count", "gamma_scale": "positive", "batchwise": "bool", "shape": "str"})

add("drop_path_rates", lambda d: Call(D.drop_path_rates, {"num_blocks": d(st.integers(1, 12)),
                                                          "max_rate": d(st.floats(0, 0.99))}),
    check=lambda r, c: _check(all(abs(v - (i + 1) / c.kwargs["num_blocks"] * c.kwargs["max_rate"]) < 1e-12
                                  for i, v in enumerate(r)) and len(r) == c.kwargs["num_blocks"]),
    scalars={"num_blocks": "count", "max_rate": "prob_open"})

add("gyro_group_index", lambda d: Call(D.gyro_group_index, {"n": d(st.integers(0, 40)), "tau": d(st.integers(1, 16))}),
    check=lambda r, c: _check(r.tolist() == [i * c.kwargs["tau"] // max(c.kwargs["n"], 1)
                                             for i in range(c.kwargs["n"])]),
    scalars={"n": "count0", "tau": "count"})


def _nested_index_build(d):
    return Call(D.nested_dropout_index, {"batch": d(st.integers(0, 10)), "p": d(st.floats(0.01, 0.9)),
                                         "like": torch.empty(0)}, d(seeds), "generator")


add("nested_dropout_index", _nested_index_build,
    check=lambda r, c: _check(r.shape == (c.kwargs["batch"],) and bool((r >= 1).all())),
    scalars={"batch": "count0", "p": "prob_open"})


def _concrete_build(d):
    shape = (d(st.integers(1, 4)), d(st.integers(1, 4)))
    return Call(D.concrete_dropout_mask, {"p": tensor(d, (), 0.01, 0.9), "noise": tensor(d, shape, 0.01, 0.99),
                                          "temperature": d(st.floats(0.01, 1))})


def _concrete_check(result, c):
    p, u, t, eps = c.kwargs["p"], c.kwargs["noise"], c.kwargs["temperature"], 1e-7
    z = torch.sigmoid((torch.log(p + eps) - torch.log(1 - p + eps) + torch.log(u + eps) - torch.log(1 - u + eps)) / t)
    _check(torch.allclose(result, (1 - z) / (1 - p), rtol=1e-4, atol=1e-5), "concrete mask formula")


add("concrete_dropout_mask", _concrete_build, check=_concrete_check,
    scalars={"temperature": "positive", "eps": "positive"}, tensors=("p", "noise"))


def _msd_build(d):
    n, f, k = d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 4))
    return Call(D.multi_sample_dropout, {"features": tensor(d, (n, f)), "weight": tensor(d, (3, f)),
                                         "bias": tensor(d, (3,)), "num_samples": k, "p": d(st.floats(0, 0.9))},
                d(seeds), "generator")


def _msd_check(result, c):
    n = c.kwargs["features"].shape[0]
    _check(result.shape == (c.kwargs["num_samples"], n, 3), f"{result.shape}")
    if c.kwargs["p"] == 0:
        expected = F.linear(c.kwargs["features"], c.kwargs["weight"], c.kwargs["bias"])
        _check(torch.allclose(result, expected.expand_as(result), atol=1e-5))


add("multi_sample_dropout", _msd_build, check=_msd_check,
    scalars={"num_samples": "count", "p": "prob_open", "training": "bool"}, tensors=("features", "weight", "bias"))
add("multi_sample_dropout_masks", lambda d: Call(D.multi_sample_dropout_masks, {
    "num_samples": d(st.integers(1, 4)), "shape": [d(st.integers(0, 4)), d(st.integers(1, 4))],
    "p": d(st.floats(0, 0.9))}, d(seeds), "generator"),
    check=lambda r, c: _check(list(r.shape) == [c.kwargs["num_samples"], *c.kwargs["shape"]]),
    scalars={"num_samples": "count", "p": "prob_open", "shape": "str"})

add("time_step_mask_shape", lambda d: Call(D.time_step_mask_shape, {"x": _features(d), "dim": d(st.integers(1, 2))}),
    check=lambda r, c: _check(r[0] == c.kwargs["x"].shape[0] and r[c.kwargs["dim"]] == c.kwargs["x"].shape[
        c.kwargs["dim"]]),
    scalars={"dim": "int"}, tensors=("x",),
    exempt={v: "only the shape of x is read" for v in ("nan", "inf", "huge", "meta", "int64", "bool", "float64")})


# ------------------------------------------------------------------------------------------------ Modules
def _module(cls, x=_features, **extra):
    def build(d):
        return Call(ModuleFn(cls, ("x",)), {"x": x(d), **{k: (v(d) if callable(v) else v) for k, v in extra.items()}},
                    d(seeds), "generator")
    return build


add("DropPath", _module(D.DropPath, p=lambda d: d(st.floats(0, 0.9))), check=same_shape_as("x"),
    scalars={"p": "prob", "scale_by_keep": "bool", "mode": "str"}, tensors=("x",))
add("TemporalDropout", _module(D.TemporalDropout, p=lambda d: d(st.floats(0, 0.9))), check=same_shape_as("x"),
    scalars={"p": "prob_open", "dim": "int", "scale_by_keep": "bool"}, tensors=("x",))
add("NestedDropout", _module(D.NestedDropout, p=lambda d: d(st.floats(0.01, 0.9))), check=same_shape_as("x"),
    scalars={"p": "prob_open", "dim": "int", "scale": "bool"}, tensors=("x",))
add("DropBlock2d", _module(D.DropBlock2d, x=lambda d: images(d, hw=(3, 9)), p=lambda d: d(st.floats(0, 0.9)),
                           block_size=lambda d: d(st.integers(1, 3))), check=same_shape_as("x"),
    scalars={"p": "prob", "block_size": "count", "gamma_scale": "positive", "scale_by_keep": "bool",
             "batchwise": "bool"}, tensors=("x",))
add("ConcreteTemporalDropout", _module(D.ConcreteTemporalDropout, init_p=lambda d: d(st.floats(0.01, 0.9))),
    check=same_shape_as("x"),
    scalars={"init_p": "prob_open", "dim": "int", "temperature": "positive", "weight_regularizer": "nonneg",
             "dropout_regularizer": "nonneg", "eps": "positive"}, tensors=("x",))
add("GyroDropout", _module(D.GyroDropout, x=lambda d: tensor(d, (d(st.integers(1, 8)), d(st.integers(1, 6)))),
                           p=lambda d: d(st.floats(0, 0.9)), sigma=lambda d: d(st.integers(4, 16)),
                           tau=lambda d: d(st.integers(1, 4))),
    check=same_shape_as("x"), scalars={"p": "prob_open", "sigma": "count", "tau": "count", "interval": "count"},
    tensors=("x",))


def _msd_module_build(d):
    f = d(st.integers(1, 6))
    return Call(ModuleFn(D.MultiSampleDropout, ("x",)), {"head": nn.Linear(f, 3), "x": tensor(d, (d(st.integers(1, 4)),
                                                                                                 f)),
                                                        "num_samples": d(st.integers(1, 4)),
                                                        "p": d(st.floats(0, 0.9))}, d(seeds), "generator")


add("MultiSampleDropout", _msd_module_build,
    check=lambda r, c: _check(r.shape == (c.kwargs["num_samples"], c.kwargs["x"].shape[0], 3)),
    scalars={"num_samples": "count", "p": "prob_open", "head": "str"}, tensors=("x",))
ENTRIES[-1].aliases = ("features", "like")


def _wrapper(cls, inner_kw, drop):
    def build(d):
        x = images(d, c=(2, 2), hw=(3, 6))
        return Call(ModuleFn(cls, ("x",)), {inner_kw: nn.Conv2d(2, 2, 3, padding=1), "x": x, drop[0]: drop[1]()})
    return build


add("DropBlockOutput", _wrapper(D.DropBlockOutput, "module", ("dropblock", lambda: D.DropBlock2d(0.2, 3))),
    check=same_shape_as("x"), scalars={"module": "str", "dropblock": "str"}, tensors=("x",))
ENTRIES[-1].tensor_exempt = WRAPPED_LAYER
add("DropPathBranch", _wrapper(D.DropPathBranch, "branch", ("drop", lambda: D.DropPath(0.2))),
    check=same_shape_as("x"), scalars={"branch": "str", "drop": "str"}, tensors=("x",))
ENTRIES[-1].tensor_exempt = WRAPPED_LAYER


# ------------------------------------------------------------------------------------------------ surgery
def _surgery(fn, model=staged_resnet, **extra):
    def build(d):
        return Call(fn, {"model": model(seed=d(seeds)), **{k: (v(d) if callable(v) else v) for k, v in extra.items()}})
    return build


add("apply_drop_path", _surgery(D.apply_drop_path, max_rate=lambda d: d(st.floats(0, 0.9))),
    scalars={"max_rate": "prob", "scale_by_keep": "bool", "mode": "str", "blocks": "int", "model": "str"})
add("apply_dropblock", _surgery(D.apply_dropblock, p=lambda d: d(st.floats(0, 0.9))),
    scalars={"p": "prob", "block_size": "count", "gamma_scale": "positive", "scale_by_keep": "bool",
             "batchwise": "bool", "modules": "int", "model": "str"})
add("apply_gyro_dropout", _surgery(D.apply_gyro_dropout, model=tiny_cnn),
    scalars={"sigma": "count", "tau": "count", "interval": "count", "p": "prob_open", "model": "str"})
add("apply_multi_sample_dropout", _surgery(D.apply_multi_sample_dropout, num_samples=lambda d: d(st.integers(1, 4))),
    scalars={"num_samples": "count", "p": "prob_open", "module": "str", "model": "str"})
add("default_dropblock_targets", _surgery(D.default_dropblock_targets), check=lambda r, c: _check(isinstance(r, list)),
    scalars={"model": "str"})
add("default_head", _surgery(D.default_head), check=lambda r, c: _check(isinstance(r, str)), scalars={"model": "str"})
add("is_mc_dropout_layer", lambda d: Call(D.is_mc_dropout_layer, {"module": d(st.sampled_from(
    [nn.Dropout(0.1), nn.Linear(2, 2), D.DropPath(0.1), nn.Dropout2d(0.2)]))}),
    check=lambda r, c: _check(isinstance(r, bool)))


def _mc_build(d):
    torch.manual_seed(d(seeds))
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
    return Call(D.mc_predict, {"model": model, "x": tensor(d, (d(st.integers(1, 5)), 4)),
                               "samples": d(st.integers(1, 6))}, d(seeds), "generator")


def _mc_check(result, c):
    mean, var = result
    _check(mean.shape == (c.kwargs["x"].shape[0], 3) and var.shape == mean.shape and bool((var >= 0).all()))


add("mc_predict", _mc_build, check=_mc_check, scalars={"samples": "count", "chunk_size": "count", "model": "str"},
    tensors=("x",),
    exempt={"extra_dim": "the user's model receives x as given", "int64": "the user's model decides its dtypes",
            "meta": "the user's model holds its own parameters' device",
            "bool": "the user's model decides its dtypes", "float64": "the user's model decides its dtypes"})
