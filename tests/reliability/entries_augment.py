"""Fuzz entries of regimen.augment."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import regimen.augment as A
from tests.reliability.fuzzlib import HOSTILE, Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, images, labels, same_shape_as, seeds, shape_is, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "augment")
HOSTILE.setdefault("nonneg_or_inf", [float("nan"), -float("inf"), -1.0, "1", None])  # inf means something there
SKIPPED = {
    "augment.OPS": "a constant tuple of op names (no inputs); apply_ops/RandAugment fuzz every op through it",
    "augment.functional": "a submodule, not a callable; its ops run through apply_ops, RandAugment and AugMix here",
    "augment.native": "the compiled kernel module: fuzzed in a subprocess by test_native_kernel_fuzz.py",
    "augment.AugUndo": "a result type of InvertibleAugment (built by it, fuzzed through invertible_augment)",
    "augment.AugmentParams": "a plain container of (ops, values) tensors; validated and fuzzed through apply_ops",
}


def _images_call(fn, draw, generator=True, uint8=False, **kwargs):
    x = images(draw, dtype=torch.uint8 if uint8 and draw(st.booleans(), label="uint8") else torch.float32)
    return Call(fn, {"images": x, **kwargs}, seed=draw(seeds), generator="generator" if generator else None)


def _in_unit_range(result, c):
    out = result[0] if isinstance(result, tuple) else result
    if out.is_floating_point():
        assert out.min() >= 0 and out.max() <= 1, "augmented float images left [0, 1]"


def _check_same_shape_unit(result, c):
    same_shape_as("images")(result, c)
    _in_unit_range(result, c)


add("alternating_flip_mask",
    lambda d: Call(A.alternating_flip_mask, {"indices": torch.arange(d(st.integers(0, 20))),
                                             "epoch": d(st.integers(0, 100)), "seed": d(st.integers(0, 99))}),
    check=lambda r, c: (r.dtype == torch.bool and r.shape == c.kwargs["indices"].shape) or (_ for _ in ()).throw(
        AssertionError("mask shape/dtype")),
    scalars={"epoch": "count0", "seed": "int"}, tensors=("indices",))


def _apply_ops_build(d):
    x = images(d, dtype=torch.uint8 if d(st.booleans()) else torch.float32)
    n, k = x.shape[0], d(st.integers(1, 3))
    g = torch.Generator().manual_seed(d(seeds))
    ops = torch.randint(0, len(A.OPS), (n, k), generator=g)
    values = torch.zeros(n, k, dtype=torch.float64)  # zero magnitude: every op's identity-ish parameter
    for i, op in enumerate(A.OPS):
        values[ops == i] = {"Posterize": 8.0, "Solarize": 256.0, "Brightness": 1.0, "Color": 1.0, "Contrast": 1.0,
                            "Sharpness": 1.0}.get(op, 0.0)
    return Call(A.apply_ops, {"images": x, "params": A.AugmentParams(ops, values),
                              "interpolation": d(st.sampled_from(["nearest", "bilinear"]))})


add("apply_ops", _apply_ops_build, check=same_shape_as("images"),
    scalars={"interpolation": "str"}, tensors=("images",))
ENTRIES[-1].aliases = ("params",)  # an images batch of another size than params: the error names params

add("augmix", lambda d: _images_call(A.augmix, d, uint8=True, severity=d(st.integers(1, 10)),
                                     width=d(st.integers(1, 3)), depth=d(st.sampled_from([-1, 1, 2]))),
    check=_check_same_shape_unit,
    scalars={"severity": "positive", "width": "count", "alpha": "positive", "augmentation_set": "str",
             "interpolation": "str"}, tensors=("images",))


def _augmix_params_check(result, c):
    chains, weights, m = result
    n = c.kwargs["n"]
    assert weights.shape[0] == n and m.shape == (n,)
    assert torch.allclose(weights.sum(1).double(), torch.ones(n, dtype=torch.float64), atol=1e-5)


add("augmix_params", lambda d: Call(A.augmix_params, {"n": d(st.integers(0, 5)), "height": d(st.integers(1, 12)),
                                                       "width_px": d(st.integers(1, 12))}, d(seeds), "generator"),
    check=_augmix_params_check,
    scalars={"n": "count0", "height": "count", "width_px": "count", "severity": "positive", "width": "count",
             "alpha": "positive", "augmentation_set": "str"})


def _colout_check(result, c):
    n, ch, h, w = c.kwargs["images"].shape
    p_row, p_col = c.kwargs["p_row"], c.kwargs["p_col"]
    assert result.shape == (n, ch, h - int(p_row * h), w - int(p_col * w)), result.shape


add("colout", lambda d: _images_call(A.colout, d, uint8=True, p_row=d(st.floats(0, 0.9)), p_col=d(st.floats(0, 0.9)),
                                     per_sample=d(st.booleans())),
    check=_colout_check, scalars={"p_row": "prob_open", "p_col": "prob_open", "per_sample": "bool"},
    tensors=("images",))

add("colout_indices", lambda d: Call(A.colout_indices, {"n": d(st.integers(0, 5)), "size": d(st.integers(1, 20)),
                                                        "p": d(st.floats(0, 0.9))}, d(seeds), "generator"),
    check=lambda r, c: shape_is(c.kwargs["n"], c.kwargs["size"] - int(c.kwargs["p"] * c.kwargs["size"]))(r, c),
    scalars={"n": "count0", "size": "count", "p": "prob_open", "per_sample": "bool"})


def _mix_build(fn):
    def build(d):
        x = images(d, n=(1, 5), dtype=torch.uint8 if d(st.booleans()) else torch.float32)
        k = d(st.integers(2, 6))
        return Call(fn, {"images": x, "targets": labels(d, x.shape[0], k), "num_classes": k,
                         "alpha": d(st.floats(0.05, 5)), "label_smoothing": d(st.floats(0, 0.3)),
                         "per_sample": d(st.booleans())}, d(seeds), "generator")
    return build


def _mix_check(result, c):
    x, soft = result
    assert x.shape == c.kwargs["images"].shape and x.dtype == c.kwargs["images"].dtype
    assert soft.shape == (x.shape[0], c.kwargs["num_classes"])
    assert torch.allclose(soft.sum(1), torch.ones(x.shape[0], dtype=soft.dtype), atol=1e-5)


for _name in ("cutmix", "mixup"):
    add(_name, _mix_build(getattr(A, _name)), check=_mix_check,
        scalars={"alpha": "positive", "num_classes": "count", "label_smoothing": "prob_open", "per_sample": "bool",
                 "return_pair": "bool"}, tensors=("images", "targets"))


def _cutmix_boxes_check(result, c):
    boxes, lam = result
    h, w = c.kwargs["height"], c.kwargs["width"]
    y1, y2, x1, x2 = boxes.unbind(1)
    assert ((0 <= y1) & (y1 <= y2) & (y2 <= h) & (0 <= x1) & (x1 <= x2) & (x2 <= w)).all()
    assert torch.allclose(lam.double(), 1 - ((y2 - y1) * (x2 - x1)).double() / (h * w), atol=1e-6)  # area correction


add("cutmix_boxes", lambda d: Call(A.cutmix_boxes, {"lam": tensor(d, (d(st.integers(0, 6)),), 0, 1),
                                                    "height": d(st.integers(1, 16)), "width": d(st.integers(1, 16))},
                                   d(seeds), "generator"),
    check=_cutmix_boxes_check, scalars={"height": "count", "width": "count"}, tensors=("lam",))

add("cutout", lambda d: _images_call(A.cutout, d, uint8=True, num_holes=d(st.integers(1, 3)),
                                     length=d(st.floats(0.01, 1)), p=d(st.floats(0, 1))),
    check=same_shape_as("images"),
    scalars={"num_holes": "count", "length": "positive", "p": "prob", "fill": "finite"}, tensors=("images",))

add("cutout_boxes", lambda d: Call(A.cutout_boxes, {"n": d(st.integers(0, 5)), "height": d(st.integers(1, 12)),
                                                    "width": d(st.integers(1, 12)), "num_holes": d(st.integers(1, 3)),
                                                    "length": d(st.floats(0.01, 1)), "p": d(st.floats(0, 1))},
                                   d(seeds), "generator"),
    check=lambda r, c: shape_is(c.kwargs["n"], c.kwargs["num_holes"], 4)(r, c),
    scalars={"n": "count0", "height": "count", "width": "count", "num_holes": "count", "length": "positive",
             "p": "prob"})


def _cutout_mask_build(d):
    n, h, w = d(st.integers(0, 4)), d(st.integers(1, 10)), d(st.integers(1, 10))
    boxes = A.cutout_boxes(n, h, w, num_holes=2, generator=torch.Generator().manual_seed(d(seeds)))
    return Call(A.cutout_mask, {"boxes": boxes, "height": h, "width": w})


def _cutout_mask_check(result, c):
    boxes, h, w = c.kwargs["boxes"], c.kwargs["height"], c.kwargs["width"]
    expected = torch.zeros(boxes.shape[0], 1, h, w, dtype=torch.bool)
    for i in range(boxes.shape[0]):  # the loop reference
        for y1, y2, x1, x2 in boxes[i].tolist():
            expected[i, 0, y1:y2, x1:x2] = True
    assert torch.equal(result, expected)


add("cutout_mask", _cutout_mask_build, check=_cutout_mask_check, scalars={"height": "count", "width": "count"},
    tensors=("boxes",))


def _facility_build(d):
    n = d(st.integers(1, 12))
    return Call(A.facility_location, {"points": tensor(d, (n, d(st.integers(1, 4)))), "k": d(st.integers(1, n))},
                d(seeds), "generator")


def _facility_check(result, c):
    index, weights = result
    n, k = c.kwargs["points"].shape[0], c.kwargs["k"]
    assert index.shape == (k,) and len(set(index.tolist())) == k and weights.sum().item() == n


add("facility_location", _facility_build, check=_facility_check, scalars={"k": "count0", "epsilon": "prob_open"},
    tensors=("points",))
ENTRIES[-1].aliases = ("k",)  # no points: the error says k is out of range


def _flip_build(d):
    x = images(d)
    return Call(A.flip_images, {"images": x, "mask": A.random_flip_mask(x.shape[0], 0.5,
                                                                       torch.Generator().manual_seed(d(seeds)))})


def _flip_check(result, c):
    x, mask = c.kwargs["images"], c.kwargs["mask"]
    expected = torch.stack([im.flip(-1) if m else im for im, m in zip(x, mask.tolist())])
    assert torch.equal(result, expected)


add("flip_images", _flip_build, check=_flip_check, tensors=("images", "mask"))


def _flip_tta_build(d):
    torch.manual_seed(d(seeds))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = images(d, c=(3, 3), hw=(2, 6), square=True)
    model(x)
    return Call(A.flip_tta, {"model": model, "x": x})


def _flip_tta_check(result, c):
    m, x = c.kwargs["model"], c.kwargs["x"]
    assert torch.allclose(result, (m(x) + m(x.flip(-1))) / 2, atol=1e-5)


add("flip_tta", _flip_tta_build, check=_flip_tta_check, tensors=("x",),
    exempt={"extra_dim": "the model is the user's: a 5-d input fails inside it, as it would without TTA",
            "meta": "the user's model holds its own parameters' device",
            "int64": "the user's model decides its dtypes", "bool": "the user's model decides its dtypes",
            "float64": "the user's model decides its dtypes"})


def _flip_tta_module_build(d):
    c = _flip_tta_build(d)
    return Call(ModuleFn(A.FlipTTA, ("x",), train=False), {"module": c.kwargs["model"], "x": c.kwargs["x"]})


add("FlipTTA", _flip_tta_module_build, check=lambda r, c: None, scalars={"module": "str"})


def _proxies_build(d):
    n, k = d(st.integers(1, 6)), d(st.integers(2, 5))
    return Call(A.gradient_proxies, {"logits": tensor(d, (n, k)), "labels": labels(d, n, k)})


def _proxies_check(result, c):
    z, y = c.kwargs["logits"], c.kwargs["labels"]
    assert torch.allclose(result, z.softmax(1) - F.one_hot(y, z.shape[1]).float(), atol=1e-6)


add("gradient_proxies", _proxies_build, check=_proxies_check, tensors=("logits", "labels"))


def _invertible_build(d):
    x = images(d, hw=(2, 10))
    n = x.shape[0]
    return Call(A.invertible_augment, {"images": x, "flip": torch.rand(n) < 0.5,
                                       "scale": tensor(d, (n,), 0.8, 1.2), "angle": tensor(d, (n,), -10, 10),
                                       "translate": tensor(d, (n, 2), -0.1, 0.1)})


add("invertible_augment", _invertible_build, check=same_shape_as("images", 0),
    scalars={"fill": "finite", "mode": "str"}, tensors=("images", "scale", "angle", "translate"))

add("InvertibleAugment", lambda d: Call(ModuleFn(A.InvertibleAugment, ("images",), ("generator",)),
                                        {"images": images(d, hw=(2, 10))}, d(seeds), "generator"),
    check=lambda r, c: None,
    scalars={"hflip_p": "prob", "fill": "finite", "mode": "str", "scale": "str", "rotate": "str"},
    tensors=("images",))  # the forward's argument is ``images`` (the large profile caught the entry calling it x)


def _model_proxies_build(d):
    torch.manual_seed(d(seeds))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    x = images(d, n=(1, 6), c=(3, 3), hw=(4, 4), dtype=torch.uint8)
    return Call(A.model_gradient_proxies, {"model": model, "images": x, "labels": labels(d, x.shape[0], 3),
                                           "batch_size": d(st.integers(1, 8))})


add("model_gradient_proxies", _model_proxies_build, check=lambda r, c: shape_is(c.kwargs["images"].shape[0], 3)(r, c),
    scalars={"batch_size": "count", "last_layer": "bool"}, tensors=("images", "labels"),
    exempt={"extra_dim": "the user's model receives the images as given", "float64": "the user's model's dtype",
            "huge": "float images are taken as given; the user's model sees them",
            "nan": "float images are taken as given", "inf": "float images are taken as given"})

add("progressive_scale", lambda d: Call(A.progressive_scale, {"progress": d(st.floats(0, 1)),
                                                               "initial_scale": d(st.floats(0.05, 1)),
                                                               "delay": d(st.floats(0, 0.5)),
                                                               "finetune": d(st.floats(0, 0.4))}),
    check=lambda r, c: (c.kwargs["initial_scale"] - 1e-9 <= r <= 1.0) or (_ for _ in ()).throw(AssertionError(r)),
    scalars={"progress": "nonneg", "initial_scale": "prob", "delay": "prob", "finetune": "prob"})  # progress > 1: legal


def _resize_check(result, c):
    n, ch, h, w = c.kwargs["images"].shape
    assert result.shape[:2] == (n, ch) and result.shape[2] <= h and result.shape[3] <= w


add("resize_batch", lambda d: _images_call(A.resize_batch, d, scale=d(st.floats(0.1, 1)),
                                           mode=d(st.sampled_from(["resize", "crop"])),
                                           size_increment=d(st.integers(1, 4))),
    check=_resize_check, scalars={"scale": "prob", "mode": "str", "size_increment": "count"}, tensors=("images",))

add("random_flip_mask", lambda d: Call(A.random_flip_mask, {"n": d(st.integers(0, 20)), "p": d(st.floats(0, 1))},
                                       d(seeds), "generator"),
    check=lambda r, c: shape_is(c.kwargs["n"])(r, c), scalars={"n": "count0", "p": "prob"})


def _randaugment_build(cls, **extra):
    def build(d):
        return Call(ModuleFn(cls, ("images",), ("generator",)),
                    {"images": images(d, dtype=torch.uint8 if d(st.booleans()) else torch.float32), **extra},
                    d(seeds), "generator")
    return build


add("RandAugment", _randaugment_build(A.RandAugment), check=_check_same_shape_unit,
    scalars={"num_ops": "count0", "magnitude": "nonneg", "num_magnitude_bins": "count",
             "magnitude_std": "nonneg_or_inf", "interpolation": "str"}, tensors=("images",))
add("TrivialAugment", _randaugment_build(A.TrivialAugment), check=_check_same_shape_unit,
    scalars={"num_magnitude_bins": "count", "interpolation": "str"}, tensors=("images",))


def _coreset_build(d):
    n, k = d(st.integers(1, 12)), d(st.integers(1, 3))
    return Call(A.select_coreset, {"proxies": tensor(d, (n, 3)), "labels": labels(d, n, k),
                                   "fraction": d(st.floats(0.05, 1))}, d(seeds), "generator")


def _coreset_check(result, c):
    index, weights = result
    assert index.shape == weights.shape and len(set(index.tolist())) == index.numel()
    assert weights.sum().item() == c.kwargs["labels"].numel()


add("select_coreset", _coreset_build, check=_coreset_check, scalars={"fraction": "prob"},
    tensors=("proxies", "labels"))


# ==================================================================================================================
# Public since the suite's merge (issue 21 follow-up): local augmentation for graphs (LA-GCN) and AugMix's
# Jensen-Shannon consistency.
from torch import nn  # noqa: E402

from tests.reliability.fuzzlib import HOSTILE  # noqa: E402

HOSTILE.setdefault("module", ["model", 3, None])


def _js_build(d):
    n, c, k = d(st.integers(1, 4)), d(st.integers(1, 5)), d(st.integers(2, 4))
    return Call(A.jensen_shannon_consistency, {"logits": [tensor(d, (n, c)) for _ in range(k)]})


def _js_check(result, c):
    probs = [t.double().softmax(1) for t in c.kwargs["logits"]]
    m = torch.stack(probs).mean(0).clamp(1e-7, 1)
    expected = sum((p * (p.clamp_min(1e-300).log() - m.log())).sum(1).mean() for p in probs) / len(probs)
    expect(torch.allclose(result.double(), expected, atol=1e-5), "JS divergence formula")


add("jensen_shannon_consistency", _js_build, check=_js_check, scalars={"eps": "prob_open", "logits": "int"})


def _consistency_build(d):
    n, c, s = d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(1, 3))
    return Call(A.consistency_loss, {"probabilities": [tensor(d, (n, c), 0.05, 1).softmax(1) for _ in range(s)],
                                     "temperature": d(st.floats(0.1, 2))})


def _consistency_check(result, c):
    ps = [p.double() for p in c.kwargs["probabilities"]]
    mean = torch.stack(ps).mean(0)
    sharp = mean ** (1 / c.kwargs["temperature"])
    sharp = sharp / sharp.sum(1, keepdim=True)
    expected = sum(((p - sharp) ** 2).sum(1).mean() for p in ps) / len(ps)
    expect(torch.allclose(result.double(), expected, atol=1e-5), "consistency formula")


add("consistency_loss", _consistency_build, check=_consistency_check,
    scalars={"temperature": "positive", "probabilities": "int"})


def _cvae_loss_build(d):
    n, f, z = d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(1, 3))
    return Call(A.cvae_loss, {"recon": tensor(d, (n, f), 0.01, 0.99), "x": tensor(d, (n, f), 0, 1),
                              "mean": tensor(d, (n, z)), "log_var": tensor(d, (n, z), -1, 1)})


def _cvae_loss_check(result, c):
    k = {n: t.double() for n, t in c.kwargs.items()}
    bce = -(k["x"] * k["recon"].log() + (1 - k["x"]) * (1 - k["recon"]).log()).sum()
    kld = -0.5 * (1 + k["log_var"] - k["mean"] ** 2 - k["log_var"].exp()).sum()
    expect(torch.allclose(result.double(), (bce + kld) / k["x"].shape[0], rtol=1e-4), "BCE_sum + KLD per sample")


add("cvae_loss", _cvae_loss_build, check=_cvae_loss_check, tensors=("recon", "x", "mean", "log_var"))


def _ncvae_build(d):
    f, z = d(st.integers(1, 4)), d(st.integers(1, 3))
    n = d(st.integers(1, 4))
    return Call(ModuleFn(A.NeighbourCVAE, ("x", "c", "noise")), {
        "features": f, "latent": z, "hidden": d(st.integers(1, 8)), "x": tensor(d, (n, f), 0, 1),
        "c": tensor(d, (n, f), 0, 1), "noise": tensor(d, (n, z))})


def _ncvae_check(result, c):
    recon, mean, log_var = result
    n, f = c.kwargs["x"].shape
    expect(recon.shape == (n, f) and mean.shape == log_var.shape == (n, c.kwargs["latent"]), "shapes")
    expect(bool(((recon >= 0) & (recon <= 1)).all()), "a Bernoulli decoder's output in [0, 1]")


add("NeighbourCVAE", _ncvae_build, check=_ncvae_check,
    scalars={"features": "count", "latent": "count", "hidden": "count"}, tensors=("x", "c", "noise"))


def _graph(d, n=None):
    n = d(st.integers(2, 6)) if n is None else n
    features = tensor(d, (n, 3), 0, 1)
    src = torch.arange(n)
    dst = (src + 1) % n
    edge_index = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return features, edge_index


def _train_cvae_build(d):
    features, edge_index = _graph(d)
    return Call(A.train_neighbour_cvae, {"features": features, "edge_index": edge_index, "latent": d(st.integers(1, 3)),
                                         "hidden": d(st.integers(1, 8)), "epochs": d(st.integers(0, 2)),
                                         "batch_size": d(st.integers(1, 8)), "lr": d(st.floats(1e-4, 0.1))},
                d(seeds), "generator")


def _train_cvae_check(result, c):
    expect(isinstance(result, A.NeighbourCVAE) and not result.training, "an eval-mode CVAE")
    expect(all(not p.requires_grad for p in result.parameters()), "frozen parameters")


add("train_neighbour_cvae", _train_cvae_build, check=_train_cvae_check,
    scalars={"latent": "count", "hidden": "count", "epochs": "count0", "batch_size": "count", "lr": "positive"},
    tensors=("features", "edge_index"))


def _lagcn_run(gcn, cvae, nodes, concat=1, **kw):
    torch.manual_seed(0)
    return A.LocalAugmentedGCN(gcn, cvae, concat, **kw)(nodes)


_lagcn_run.target = A.LocalAugmentedGCN


def _lagcn_build(d):
    from regimen.models import GCN
    features, edge_index = _graph(d)
    torch.manual_seed(d(seeds))
    gcn = GCN(3, 2, hidden=4).set_graph(features, edge_index)
    cvae = A.NeighbourCVAE(3, latent=2, hidden=4)
    n = features.shape[0]
    return Call(_lagcn_run, {"gcn": gcn, "cvae": cvae, "nodes": torch.arange(d(st.integers(0, n))),
                             "concat": d(st.integers(1, 3))}, d(seeds), "generator")


add("LocalAugmentedGCN", _lagcn_build,
    check=lambda r, c: expect(r.shape == (c.kwargs["nodes"].numel(), 2), f"{tuple(r.shape)}"),
    scalars={"concat": "count", "gcn": "module", "cvae": "module"}, tensors=("nodes",),
    exempt={v: "integer node indices: NaN/inf/huge do not exist" for v in ("nan", "inf", "huge")})
_ = nn
