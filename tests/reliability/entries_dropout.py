"""Fuzz entries of regimen.dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import regimen.dropout as D
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, images, same_shape_as, seeds, staged_resnet, tensor, tiny_cnn

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "dropout")
WRAPPED_LAYER = {"extra_dim": "the wrapped user layer (an nn.Conv2d) receives x as given and raises its "
                                "own error"}
SKIPPED = {
    "dropout.HEAD_NAMES": "a constant tuple of conventional head names; default_head is fuzzed with it",
    "dropout.INNER_MODEL_NAMES": "a constant tuple of wrapper attribute names; default_head is fuzzed with it",
    "dropout.mc_dropout_mode": "a context manager over a model (no scalar or tensor input); mc_predict runs it "
                               "and is fuzzed",
}


def _features(d):
    return tensor(d, (d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 4))))


def _zero_or_scaled(result, c, scale_key="scale_by_keep"):
    """Dropout's output: every value is 0 or the input times 1/(1-p) (or times 1)."""
    x, p = c.kwargs["x"], c.kwargs["p"]
    factor = 1 / (1 - p) if c.kwargs.get(scale_key, True) and p < 1 else 1.0
    ok = (result == 0) | torch.isclose(result, x * factor, rtol=1e-5, atol=1e-6)
    expect(bool(ok.all()), "a value that is neither dropped nor scaled")


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
    check=lambda r, c: expect(list(r.shape) == c.kwargs["shape"] and bool(((r == 0) | (r == 1)).all())),
    scalars={"p": "prob", "block_size": "count", "gamma_scale": "positive", "batchwise": "bool", "shape": "str"})

add("drop_path_rates", lambda d: Call(D.drop_path_rates, {"num_blocks": d(st.integers(1, 12)),
                                                          "max_rate": d(st.floats(0, 0.99))}),
    check=lambda r, c: expect(all(abs(v - (i + 1) / c.kwargs["num_blocks"] * c.kwargs["max_rate"]) < 1e-12
                                  for i, v in enumerate(r)) and len(r) == c.kwargs["num_blocks"]),
    scalars={"num_blocks": "count", "max_rate": "prob_open"})

add("gyro_group_index", lambda d: Call(D.gyro_group_index, {"n": d(st.integers(0, 40)), "tau": d(st.integers(1, 16))}),
    check=lambda r, c: expect(r.tolist() == [i * c.kwargs["tau"] // max(c.kwargs["n"], 1)
                                             for i in range(c.kwargs["n"])]),
    scalars={"n": "count0", "tau": "count"})


def _nested_index_build(d):
    return Call(D.nested_dropout_index, {"batch": d(st.integers(0, 10)), "p": d(st.floats(0.01, 0.9)),
                                         "like": torch.empty(0)}, d(seeds), "generator")


add("nested_dropout_index", _nested_index_build,
    check=lambda r, c: expect(r.shape == (c.kwargs["batch"],) and bool((r >= 1).all())),
    scalars={"batch": "count0", "p": "prob_open"})


def _concrete_build(d):
    shape = (d(st.integers(1, 4)), d(st.integers(1, 4)))
    return Call(D.concrete_dropout_mask, {"p": tensor(d, (), 0.01, 0.9), "noise": tensor(d, shape, 0.01, 0.99),
                                          "temperature": d(st.floats(0.01, 1))})


def _concrete_check(result, c):
    p, u, t, eps = c.kwargs["p"], c.kwargs["noise"], c.kwargs["temperature"], 1e-7
    z = torch.sigmoid((torch.log(p + eps) - torch.log(1 - p + eps) + torch.log(u + eps) - torch.log(1 - u + eps)) / t)
    expect(torch.allclose(result, (1 - z) / (1 - p), rtol=1e-4, atol=1e-5), "concrete mask formula")


add("concrete_dropout_mask", _concrete_build, check=_concrete_check,
    scalars={"temperature": "positive", "eps": "nonneg"}, tensors=("p", "noise"))  # eps = 0: no smoothing, legal


def _msd_build(d):
    n, f, k = d(st.integers(1, 5)), d(st.integers(1, 6)), d(st.integers(1, 4))
    return Call(D.multi_sample_dropout, {"features": tensor(d, (n, f)), "weight": tensor(d, (3, f)),
                                         "bias": tensor(d, (3,)), "num_samples": k, "p": d(st.floats(0, 0.9))},
                d(seeds), "generator")


def _msd_check(result, c):
    n = c.kwargs["features"].shape[0]
    expect(result.shape == (c.kwargs["num_samples"], n, 3), f"{result.shape}")
    if c.kwargs["p"] == 0:
        expected = F.linear(c.kwargs["features"], c.kwargs["weight"], c.kwargs["bias"])
        expect(torch.allclose(result, expected.expand_as(result), atol=1e-5))


add("multi_sample_dropout", _msd_build, check=_msd_check,
    scalars={"num_samples": "count", "p": "prob_open", "training": "bool"}, tensors=("features", "weight", "bias"))
add("multi_sample_dropout_masks", lambda d: Call(D.multi_sample_dropout_masks, {
    "num_samples": d(st.integers(1, 4)), "shape": [d(st.integers(0, 4)), d(st.integers(1, 4))],
    "p": d(st.floats(0, 0.9))}, d(seeds), "generator"),
    check=lambda r, c: expect(list(r.shape) == [c.kwargs["num_samples"], *c.kwargs["shape"]]),
    scalars={"num_samples": "count", "p": "prob_open", "shape": "str"})

add("time_step_mask_shape", lambda d: Call(D.time_step_mask_shape, {"x": _features(d), "dim": d(st.integers(1, 2))}),
    check=lambda r, c: expect(r[0] == c.kwargs["x"].shape[0] and r[c.kwargs["dim"]] == c.kwargs["x"].shape[
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
             "dropout_regularizer": "nonneg", "eps": "nonneg"}, tensors=("x",))
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
    check=lambda r, c: expect(r.shape == (c.kwargs["num_samples"], c.kwargs["x"].shape[0], 3)),
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
add("default_dropblock_targets", _surgery(D.default_dropblock_targets), check=lambda r, c: expect(isinstance(r, list)),
    scalars={"model": "str"})
add("default_head", _surgery(D.default_head), check=lambda r, c: expect(isinstance(r, str)), scalars={"model": "str"})
add("is_mc_dropout_layer", lambda d: Call(D.is_mc_dropout_layer, {"module": d(st.sampled_from(
    [nn.Dropout(0.1), nn.Linear(2, 2), D.DropPath(0.1), nn.Dropout2d(0.2)]))}),
    check=lambda r, c: expect(isinstance(r, bool)))


def _mc_build(d):
    torch.manual_seed(d(seeds))
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))
    return Call(D.mc_predict, {"model": model, "x": tensor(d, (d(st.integers(1, 5)), 4)),
                               "samples": d(st.integers(1, 6))}, d(seeds), "generator")


def _mc_check(result, c):
    mean, var = result
    expect(mean.shape == (c.kwargs["x"].shape[0], 3) and var.shape == mean.shape and bool((var >= 0).all()))


add("mc_predict", _mc_build, check=_mc_check, scalars={"samples": "count", "chunk_size": "count", "model": "str"},
    tensors=("x",),
    exempt={"extra_dim": "the user's model receives x as given", "int64": "the user's model decides its dtypes",
            "meta": "the user's model holds its own parameters' device",
            "bool": "the user's model decides its dtypes", "float64": "the user's model decides its dtypes"})


# ==================================================================================================================
# Public since the suite's merge (issue 21 follow-up): nested dropout head, MC dropout classifier, temporal dropout.
import math  # noqa: E402

from tests.reliability.fuzzlib import HOSTILE  # noqa: E402

HOSTILE.setdefault("text", [3, None, b"x", 2.5])
HOSTILE.setdefault("module", ["model", 3, None])
SKIPPED["dropout.NESTED_SAMPLERS"] = "a constant tuple of sampler names; NestedDropout is fuzzed with each"


def _head_model(seed=0):
    from collections import OrderedDict

    from regimen.models import ClassifierHead
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 6, 3, padding=1), act=nn.ReLU(), head=ClassifierHead(6, 4)))


def _npl_build(d):
    n, dim, c = d(st.integers(1, 4)), d(st.integers(1, 6)), d(st.integers(1, 4))
    return Call(D.nested_prefix_logits, {"features": tensor(d, (n, dim)), "weight": tensor(d, (c, dim)),
                                         "bias": d(st.sampled_from([None, tensor(d, (c,))]))})


def _npl_check(result, c):
    h, w, b = c.kwargs["features"], c.kwargs["weight"], c.kwargs["bias"]
    n, dim = h.shape
    for k in range(1, dim + 1):  # the loop reference: a Linear on the first k units only
        expected = h[:, :k] @ w[:, :k].T + (0 if b is None else b)
        if not torch.allclose(result[:, k - 1], expected, atol=1e-5):
            raise AssertionError(f"prefix {k} differs from W[:, :k] h[:k] + b")


add("nested_prefix_logits", _npl_build, check=_npl_check, tensors=("features", "weight"))


def _half_gaussian_check(result, c):
    expect(1 <= result <= c.kwargs["units"], f"k={result} outside 1..{c.kwargs['units']}")


add("half_gaussian_nested_index", lambda d: Call(D.half_gaussian_nested_index, {
    "units": d(st.integers(1, 64)), "sigma": d(st.floats(0.1, 50)), "mu": d(st.floats(-5, 5))}, d(seeds),
    "generator"), check=_half_gaussian_check, scalars={"units": "count", "sigma": "positive", "mu": "finite"})


def _nested_linear_build(d):
    return Call(ModuleFn(D.NestedLinear, ("x",)), {"in_features": 6, "out_features": 3,
                                                   "sigma": d(st.floats(0.5, 10)),
                                                   "x": tensor(d, (d(st.integers(1, 4)), 6))}, d(seeds), "generator")


def _nested_linear_check(result, c):
    x = c.kwargs["x"]
    torch.manual_seed(0)
    layer = D.NestedLinear(6, 3, sigma=c.kwargs["sigma"])
    k = D.half_gaussian_nested_index(6, c.kwargs["sigma"], generator=torch.Generator().manual_seed(c.seed))
    expected = x[:, :k] @ layer.weight[:, :k].T + layer.bias
    expect(result.shape == (x.shape[0], 3), "shape")
    expect(torch.allclose(result, expected, atol=1e-5), "not the Linear on a k-unit prefix")


add("NestedLinear", _nested_linear_build, check=_nested_linear_check,
    scalars={"in_features": "count", "out_features": "count", "bias": "bool", "sigma": "positive", "mu": "finite"},
    tensors=("x",))


def _find_check(result, c):
    expect(result == "head.fc", f"{result}")


add("find_classifier_linear", lambda d: Call(D.find_classifier_linear, {"model": _head_model(d(seeds)),
                                                                        "module": d(st.sampled_from([None, "head"]))}),
    check=_find_check, scalars={"model": "module", "module": "text"})


def _apply_nested_check(result, c):
    model = c.kwargs["model"]
    expect(isinstance(result, D.NestedLinear) and model.head.fc is result, "the classifier Linear replaced")
    model.eval()
    expect(model(torch.rand(2, 3, 4, 4)).shape == (2, 4), "model output")


add("apply_nested_dropout_head", lambda d: Call(D.apply_nested_dropout_head, {
    "model": _head_model(d(seeds)), "sigma": d(st.floats(0.5, 10))}, d(seeds), "generator"),
    check=_apply_nested_check, scalars={"sigma": "positive", "mu": "finite", "module": "text", "model": "module"})


def _select_k_build(d):
    from regimen.data.datasets import TensorDataset
    model = _head_model(d(seeds))
    D.apply_nested_dropout_head(model)
    n = d(st.integers(1, 6))
    data = TensorDataset(torch.rand(n, 3, 4, 4), torch.randint(0, 4, (n,)))
    return Call(D.select_nested_k, {"model": model, "dataset": data, "batch_size": d(st.integers(1, 4))})


def _select_k_check(result, c):
    k, accuracy = result
    model, data = c.kwargs["model"], c.kwargs["dataset"]
    expect(1 <= k <= 6 and 0 <= accuracy <= 1, f"{result}")
    layer = model.head.fc
    model.eval()
    accuracies = []
    for j in range(1, 7):  # the loop reference: every prefix evaluated through the model itself
        layer.eval_k = j
        accuracies.append(float((model(data.inputs).argmax(1) == data.targets).double().mean()))
    layer.eval_k = k
    expect(abs(accuracy - max(accuracies)) < 1e-9 and accuracies.index(max(accuracies)) + 1 == k,
           f"{result} vs {accuracies}")


add("select_nested_k", _select_k_build, check=_select_k_check, scalars={"batch_size": "count", "model": "module"})


def _mc_build(d):
    torch.manual_seed(d(seeds))
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    return Call(ModuleFn(D.MCDropoutClassifier, ("x",)), {"model": model, "samples": d(st.integers(1, 4)),
                                                          "seed": d(st.integers(0, 100)),
                                                          "chunk_size": d(st.sampled_from([None, 1, 3])),
                                                          "x": tensor(d, (d(st.integers(1, 4)), 5))})


def _mc_check(result, c):
    expect(result.shape == (c.kwargs["x"].shape[0], 3), "(N, C) log-probabilities")
    expect(torch.allclose(result.exp().sum(1), torch.ones(result.shape[0]), atol=1e-5), "not log of a mean softmax")


add("MCDropoutClassifier", _mc_build, check=_mc_check,
    scalars={"samples": "count", "seed": "int", "chunk_size": "count", "model": "module"}, tensors=("x",),
    exempt={v: "the user's model receives x as given (torch.nn's convention for its layers)"
            for v in ("extra_dim", "int64", "bool", "float64", "meta")})


def _rnn(seed=0):
    from regimen.models.sequence import SequenceRNN
    torch.manual_seed(seed)
    return SequenceRNN(in_features=3, num_classes=2, hidden=4)


def _slots_check(result, c):
    expect(isinstance(result, list) and len(result) >= 1 and all(isinstance(n, str) for n in result), f"{result}")


add("time_dropout_slots", lambda d: Call(D.time_dropout_slots, {"model": _rnn(d(seeds))}), check=_slots_check,
    scalars={"model": "module", "slot": "text"})


def _apply_td_run(model, x, apply, **kwargs):
    names = apply(model, **kwargs)
    model.train()
    return names, model(x)


def _apply_td_build(apply, **extra):
    def build(d):
        return Call(_apply_td_run, {"model": _rnn(d(seeds)), "x": tensor(d, (2, d(st.integers(1, 5)), 3)),
                                    "apply": apply, **{k: v(d) for k, v in extra.items()}}, d(seeds), "generator")
    return build


def _apply_td_check(result, c):
    names, out = result
    slots = D.time_dropout_slots(_rnn())
    expect(names == [f"{s}.time_dropout" for s in slots] and out.shape == (2, 2), f"{names} {tuple(out.shape)}")


def _td_target(apply):
    def run(**kw):
        return _apply_td_run(apply=apply, **kw)
    run.target = apply
    run.__qualname__ = apply.__name__
    return run


add("apply_temporal_dropout", lambda d: Call(_td_target(D.apply_temporal_dropout), {
    k: v for k, v in _apply_td_build(D.apply_temporal_dropout, p=lambda d: d(st.floats(0, 0.9)))(d).kwargs.items()
    if k != "apply"}, d(seeds), "generator"), check=_apply_td_check,
    scalars={"p": "prob_open", "slot": "text", "scale_by_keep": "bool", "model": "module"})
add("apply_concrete_temporal_dropout", lambda d: Call(_td_target(D.apply_concrete_temporal_dropout), {
    k: v for k, v in _apply_td_build(D.apply_concrete_temporal_dropout,
                                     init_p=lambda d: d(st.floats(0.01, 0.9)))(d).kwargs.items()
    if k != "apply"}, d(seeds), "generator"), check=_apply_td_check,
    scalars={"init_p": "prob_open", "temperature": "positive", "weight_regularizer": "nonneg",
             "dropout_regularizer": "nonneg", "slot": "text", "model": "module"})
_ = math
