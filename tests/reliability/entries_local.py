"""Fuzz entries of regimen.local."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.local as LL
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import images, labels, seeds, staged_resnet, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "local")
SKIPPED = {
    "local.AUX_TYPES": "a constant tuple of auxiliary names; LocalLearning is fuzzed with each",
    "local.BALANCE_MODES": "a constant tuple of balance modes; block_costs is fuzzed with each",
    "local.AuxiliaryNetwork": "an abstract base class (loss() raises NotImplementedError by design); its "
                              "subclasses are fuzzed",
    "local.LocalStepOutput": "a dataclass result of local_step (fuzzed through LocalLearning.local_step)",
}


add("auglocal_layer_indices", lambda d: Call(LL.auglocal_layer_indices, {
    "layer": d(st.integers(0, 5)), "num_layers": d(st.integers(7, 12)), "depth": d(st.integers(1, 4))}),
    check=lambda r, c: expect(len(r) <= c.kwargs["depth"] and all(c.kwargs["layer"] <= i < c.kwargs["num_layers"]
                                                                  for i in r), f"{r}"),
    scalars={"layer": "count0", "num_layers": "count", "depth": "count"})
add("pyramid_depths", lambda d: Call(LL.pyramid_depths, {"num_auxiliaries": d(st.integers(0, 8)),
                                                         "depth": d(st.integers(1, 6)), "coeff": d(st.floats(0, 1))}),
    check=lambda r, c: expect(len(r) == c.kwargs["num_auxiliaries"] and all(1 <= v <= c.kwargs["depth"] for v in r)),
    scalars={"num_auxiliaries": "count0", "depth": "count", "coeff": "prob"})
add("reinitialized_copy", lambda d: Call(LL.reinitialized_copy, {"module": nn.Sequential(nn.Linear(3, 4), nn.ReLU())}),
    check=lambda r, c: expect(r is not c.kwargs["module"]), scalars={"module": "str"})


def _stages(seed=0):
    return list(staged_resnet(seed).stages)


def _auglocal_build(d):
    stages = _stages(d(seeds))
    x = torch.zeros(1, 3, 8, 8)
    shapes = [tuple(x.shape[1:])]  # the input, then each backbone layer's output
    for s in stages[:-1]:
        x = s(x)
        shapes.append(tuple(x.shape[1:]))
    return Call(LL.auglocal_auxiliary, {"stages": stages, "shapes": shapes, "layer": d(st.integers(0, len(stages) - 3)),
                                        "depth": d(st.integers(1, 3)), "num_classes": d(st.integers(1, 5))})


def _auglocal_check(result, c):
    k = c.kwargs
    features = torch.randn(2, *k["shapes"][k["layer"] + 1])
    expect(result.head(features).shape == (2, k["num_classes"]), "auxiliary logits of the wrong shape")


add("auglocal_auxiliary", _auglocal_build, check=_auglocal_check,
    scalars={"layer": "count0", "depth": "count", "num_classes": "count", "shapes": "int", "stages": "int"})


def _head_check(result, c):
    x = torch.zeros(2, *c.kwargs["shape"])
    out = result.eval()(x)
    expect(out.shape == (2, c.kwargs["num_classes"]), f"{out.shape}")


def _feature_shape(d):
    return d(st.sampled_from([(4, 8, 8), (8, 4, 4), (16, 2, 2), (6,), (5, 4)]))


add("dgl_head", lambda d: Call(LL.dgl_head, {"shape": _feature_shape(d), "num_classes": d(st.integers(1, 5)),
                                             "depth": d(st.integers(1, 3)), "mlp_layers": d(st.integers(1, 3))}),
    check=_head_check, scalars={"num_classes": "count", "depth": "count0", "mlp_layers": "count0", "shape": "str"})
add("infopro_head", lambda d: Call(LL.infopro_head, {"shape": _feature_shape(d), "num_classes": d(st.integers(1, 5)),
                                                     "hidden": d(st.integers(1, 16))}),
    check=_head_check, scalars={"num_classes": "count", "hidden": "count", "shape": "str"})
add("infopro_decoder", lambda d: Call(LL.infopro_decoder, {"shape": d(st.sampled_from([(4, 4, 4), (8, 2, 2)])),
                                                           "image_shape": (3, 8, 8), "width": d(st.integers(1, 12))}),
    check=lambda r, c: expect(r.eval()(torch.zeros(1, *c.kwargs["shape"])).shape == (1, 3, 8, 8)),
    scalars={"width": "count", "sigmoid": "bool", "shape": "str", "image_shape": "str"})


def _infopro_weights_check(result, c):
    i, n, first, last = c.kwargs["index"], c.kwargs["num_auxiliaries"], c.kwargs["first"], c.kwargs["last"]
    t = i / (n - 1) if n > 1 else 0.0
    expected = tuple(a + (b - a) * t for a, b in zip(first, last))
    expect(all(abs(r - e) < 1e-9 for r, e in zip(result, expected)), f"{result} != {expected}")


def _infopro_weights_build(d):
    n = d(st.integers(1, 6))
    return Call(LL.infopro_weights, {"index": d(st.integers(0, n - 1)), "num_auxiliaries": n,
                                     "first": (d(st.floats(0, 5)), 1.0), "last": (0.0, d(st.floats(0, 5)))})


add("infopro_weights", _infopro_weights_build, check=_infopro_weights_check,
    scalars={"index": "count0", "num_auxiliaries": "count", "first": "str", "last": "str"})


def _aux_loss(cls, **ctor):
    def build(d):
        n = d(st.integers(2, 4))  # the heads' BatchNorm needs two samples in training
        h = tensor(d, (n, 4, 4, 4))

        def run(head=None, weight=None, **kw):
            kwargs = {**({} if head is None else {"head": head}), **({} if weight is None else {"weight": weight}),
                      **{k: v for k, v in kw.items() if k not in ("features", "target", "image")}}
            torch.manual_seed(0)  # the same auxiliary weights on every run of a call
            aux = cls(**kwargs)
            return aux.loss(kw["features"], kw["target"], criterion=nn.functional.cross_entropy,
                            image=kw.get("image"), module_input=kw["features"])

        run.__qualname__ = cls.__name__
        run.target = cls
        extra = {k: v(d) if callable(v) else v for k, v in ctor.items()}
        return Call(run, {"features": h, "target": labels(d, n, 3), "image": tensor(d, (n, 3, 8, 8), 0, 1), **extra})
    return build


add("ClassifierAuxiliary", _aux_loss(LL.ClassifierAuxiliary, head=lambda d: LL.dgl_head((4, 4, 4), 3)),
    check=lambda r, c: expect(r.dim() == 0), scalars={"weight": "nonneg", "head": "str"}, tensors=("features",))
add("InfoProAuxiliary", _aux_loss(LL.InfoProAuxiliary, head=lambda d: LL.infopro_head((4, 4, 4), 3),
                                  decoder=lambda d: LL.infopro_decoder((4, 4, 4), (3, 8, 8)),
                                  recon_weight=1.0, ce_weight=1.0),
    check=lambda r, c: expect(r.dim() == 0),
    scalars={"recon_weight": "nonneg", "ce_weight": "nonneg", "bce": "bool", "head": "str"}, tensors=("features",))
add("ReconstructionAuxiliary", _aux_loss(LL.ReconstructionAuxiliary, shape=(4, 4, 4), input_shape=(4, 4, 4),
                                         num_classes=3),
    check=lambda r, c: expect(r.dim() == 0),
    scalars={"recon_weight": "nonneg", "ce_weight": "nonneg", "num_classes": "count", "shape": "str"},
    tensors=("features",))
add("MomentumAuxiliary", _aux_loss(LL.MomentumAuxiliary, next_block=lambda d: nn.Conv2d(4, 4, 3, padding=1),
                                   out_shape=(4, 4, 4), num_classes=3),
    check=lambda r, c: expect(r.dim() == 0),
    scalars={"momentum": "prob", "learnable": "str", "head_depth": "count0", "num_classes": "count",
             "next_block": "str", "out_shape": "str"}, tensors=("features",))


def _ema_build(d):
    shapes = [(d(st.integers(1, 3)), 2), (3,)]
    return Call(LL.ema_update_, {"ema": [tensor(d, s) for s in shapes], "source": [tensor(d, s) for s in shapes],
                                 "momentum": d(st.floats(0, 1))})


def _ema_run(ema, source, momentum):
    copies = [e.clone() for e in ema]
    LL.ema_update_(copies, source, momentum)
    return copies


def _ema_build_pure(d):
    c = _ema_build(d)
    c.fn = _ema_run
    return c


def _ema_check(result, c):
    m = c.kwargs["momentum"]
    for r, e, s in zip(result, c.kwargs["ema"], c.kwargs["source"]):
        expect(torch.allclose(r, m * e + (1 - m) * s, atol=1e-6), "EMA formula")


add("ema_update_", _ema_build_pure, check=_ema_check, scalars={"momentum": "prob"})


def _resolve_build(d):
    return Call(LL.resolve_stages, {"model_or_stages": staged_resnet(d(seeds))})


add("resolve_stages", _resolve_build, check=lambda r, c: expect(len(r) == 4), scalars={"model_or_stages": "str",
                                                                                       "split_points": "str"})


def _block_costs_build(d):
    return Call(LL.block_costs, {"stages": _stages(d(seeds)), "balance": d(st.sampled_from(["params", "activations",
                                                                                           "blocks"])),
                                 "example_inputs": images(d, n=(1, 2), c=(3, 3), hw=(8, 8))})


add("block_costs", _block_costs_build, check=lambda r, c: expect(len(r) == 3 and all(v >= 0 for v in r), f"{r}"),
    scalars={"balance": "str", "stages": "str"})


def _balanced_check(result, c):
    k = c.kwargs["num_modules"]
    expect(len(result) == k - 1 and result == sorted(set(result)), f"{result}")


def _balanced_build(d):
    n = d(st.integers(2, 9))
    return Call(LL.balanced_split_points, {"costs": [d(st.floats(0, 10)) for _ in range(n)],
                                           "num_modules": d(st.integers(1, n))})


add("balanced_split_points", _balanced_build, check=_balanced_check,
    scalars={"num_modules": "count", "min_last_blocks": "count", "costs": "str"})
add("split_points_to_ranges", lambda d: Call(LL.split_points_to_ranges, {"split_points": [2, 4], "num_stages": 7}),
    check=lambda r, c: expect(r == [(0, 2), (2, 4), (4, 7)], f"{r}"),
    scalars={"num_stages": "count", "min_last_blocks": "count0", "split_points": "str"})


def _local_learning_run(stages, x, y, **kwargs):
    torch.manual_seed(0)  # the same auxiliary heads on every run of a call (they are drawn from the global RNG)
    local = LL.LocalLearning(stages, **kwargs)
    out = local.local_step(x, y)
    return out.loss, out.logits, out.losses


_local_learning_run.target = LL.LocalLearning


def _local_build(d):
    aux = d(st.sampled_from(["dgl", "infopro", "man", "recon"]))  # auglocal needs >= 4 blocks: not this ResNet
    return Call(_local_learning_run, {"stages": staged_resnet(d(seeds)), "x": images(d, n=(2, 3), c=(3, 3),
                                                                                    hw=(8, 8)),
                                      "y": labels(d, 2, 4), "num_modules": 2, "aux": aux,
                                      "input_shape": (3, 8, 8), "num_classes": 4})


def _local_fix_batch(c):
    c.kwargs["y"] = c.kwargs["y"][: c.kwargs["x"].shape[0]].repeat(2)[: c.kwargs["x"].shape[0]]
    return c


add("LocalLearning", lambda d: _local_fix_batch(_local_build(d)),
    check=lambda r, c: expect(r[1].shape == (c.kwargs["x"].shape[0], 4)),
    scalars={"num_modules": "count", "aux": "str", "aux_depth": "count0", "balance": "str", "num_classes": "count",
             "pyramid_coeff": "prob", "momentum": "prob", "man_learnable": "str", "recon_weight": "nonneg",
             "stages": "str", "infopro_first": "str"},
    tensors=("x", "y"),
    exempt={v: "the user's stages receive x as given (torch.nn's convention for its layers: another dtype or "
               "device is torch's RuntimeError)" for v in ("int64", "bool", "float64", "meta")})


def _apply_build(d):
    model = staged_resnet(d(seeds))
    return Call(LL.apply_local_learning, {"model": model, "num_modules": d(st.integers(1, 3)),
                                          "aux": d(st.sampled_from(["dgl", "infopro"])),
                                          "input_shape": (3, 8, 8), "num_classes": 4})


add("apply_local_learning", _apply_build, scalars={"num_modules": "count", "aux": "str", "model": "str"})


def _local_step_build(d):
    model = LL.LocalLearning(staged_resnet(d(seeds)), num_modules=2, input_shape=(3, 8, 8), num_classes=4)
    n = d(st.integers(2, 3))  # the heads' BatchNorm needs two samples in training
    return Call(LL.local_step, {"stages": list(model.stages), "ranges": model.ranges,
                                "auxiliaries": list(model.auxiliaries), "x": images(d, n=(n, n), c=(3, 3), hw=(8, 8)),
                                "y": labels(d, n, 4)})


add("local_step", _local_step_build, check=lambda r, c: expect(r.logits.shape == (c.kwargs["x"].shape[0], 4)),
    scalars={"ranges": "str", "stages": "int"}, tensors=("x", "y"),
    exempt={v: "the user's stages receive x as given (torch.nn's convention for its layers: another dtype or "
               "device is torch's RuntimeError)" for v in ("int64", "bool", "float64", "meta")})
