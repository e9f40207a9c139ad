"""Fuzz entries of regimen.losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

import regimen.losses as L
from tests.reliability.fuzzlib import Call, Entry
from tests.reliability.strategies import ModuleFn, labels, seeds, tensor

ENTRIES: list[Entry] = []
SKIPPED: dict[str, str] = {}


def add(name, build, check=None, scalars=None, tensors=(), exempt=None, aliases=()):
    ENTRIES.append(Entry(f"losses.{name}", build, check, scalars or {}, tensors, exempt or {}, aliases))


def _check(condition, message="check failed"):
    if not condition:
        raise AssertionError(message)


def _close(result, expected, message, atol=1e-5, rtol=1e-4):
    _check(torch.allclose(result.double(), expected.double(), atol=atol, rtol=rtol),
           f"{message}: {result} != {expected}")


def _logits_labels(d, n=(1, 6), k=(2, 6)):
    n, k = d(st.integers(*n)), d(st.integers(*k))
    return tensor(d, (n, k)), labels(d, n, k)


def _ce_build(fn, soft=None):
    def build(d):
        z, y = _logits_labels(d)
        target = y
        if soft or (soft is None and d(st.booleans())):
            target = tensor(d, z.shape, 0.01, 1).softmax(1)
        return Call(fn, {"logits": z, "target": target, "label_smoothing": d(st.floats(0, 0.5)),
                         "reduction": d(st.sampled_from(["mean", "sum", "none"]))})
    return build


def _ce_check(result, c):
    expected = F.cross_entropy(c.kwargs["logits"], c.kwargs["target"], label_smoothing=c.kwargs["label_smoothing"],
                               reduction=c.kwargs["reduction"])
    _close(result, expected, "differs from F.cross_entropy")


_CE_SCALARS = {"label_smoothing": "prob", "reduction": "str"}
add("classification_loss", _ce_build(L.classification_loss), check=_ce_check, scalars=_CE_SCALARS,
    tensors=("logits", "target"))
add("soft_target_cross_entropy", _ce_build(L.soft_target_cross_entropy, soft=True), check=_ce_check,
    scalars=_CE_SCALARS, tensors=("logits", "target"))


def _mixed_build(d):
    z, a = _logits_labels(d)
    b = labels(d, z.shape[0], z.shape[1])
    lam = tensor(d, (z.shape[0],), 0, 1)
    return Call(L.mixed_cross_entropy, {"logits": z, "target_a": a, "target_b": b, "lam": lam,
                                        "label_smoothing": d(st.floats(0, 0.5))})


def _mixed_check(result, c):
    k = c.kwargs
    ls = k["label_smoothing"]
    ca = F.cross_entropy(k["logits"], k["target_a"], label_smoothing=ls, reduction="none")
    cb = F.cross_entropy(k["logits"], k["target_b"], label_smoothing=ls, reduction="none")
    _close(result, (k["lam"] * ca + (1 - k["lam"]) * cb).mean(), "differs from lam CE_a + (1 - lam) CE_b")


add("mixed_cross_entropy", _mixed_build, check=_mixed_check, scalars={"label_smoothing": "prob",
                                                                      "reduction": "str"},
    tensors=("logits", "target_a", "target_b", "lam"))


def _msce_build(d):
    k = d(st.integers(1, 4))
    z, y = _logits_labels(d)
    return Call(L.multi_sample_cross_entropy, {"logits_k": torch.stack([z + tensor(d, z.shape) for _ in range(k)]),
                                               "target": y, "average": d(st.sampled_from(["losses", "logits"]))})


def _msce_check(result, c):
    z, y = c.kwargs["logits_k"], c.kwargs["target"]
    if c.kwargs["average"] == "losses":
        expected = torch.stack([F.cross_entropy(s, y) for s in z]).mean()
    else:
        expected = F.cross_entropy(z.mean(0), y)
    _close(result, expected, "multi-sample CE")


add("multi_sample_cross_entropy", _msce_build, check=_msce_check,
    scalars={"label_smoothing": "prob", "average": "str"}, tensors=("logits_k", "target"))


def _check_single_build(d):
    z, y = _logits_labels(d)
    return Call(L.check_single_sample_logits, {"logits": z, "target": y})


add("check_single_sample_logits", _check_single_build, check=lambda r, c: _check(r is None),
    tensors=("logits", "target"),
    exempt={v: "only the shapes are read" for v in ("nan", "inf", "huge", "meta", "int64", "bool", "float64",
                                                   "empty")})


# --------------------------------------------------------------------------------------------------- z-loss
def _zloss_build(d):
    z, y = _logits_labels(d, k=(2, 6))
    return Call(L.z_loss, {"logits": z, "target": y, "a": d(st.floats(0.01, 2)), "b": d(st.floats(-5, 20)),
                           "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _zloss_check(result, c):
    o, y, a, b = c.kwargs["logits"].double(), c.kwargs["target"], c.kwargs["a"], c.kwargs["b"]
    z = (o - o.mean(1, keepdim=True)) / (o.var(1, unbiased=False, keepdim=True) + 1e-6).sqrt()  # eps in the sqrt
    per = F.softplus(a * (b - z.gather(1, y[:, None])[:, 0])) / a
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[c.kwargs["reduction"]]
    if torch.allclose(result.double(), expected, atol=1e-4, rtol=1e-3):
        return
    z = (o - o.mean(1, keepdim=True)) / (o.var(1, keepdim=True) + 1e-6).sqrt()  # the unbiased variance
    per = F.softplus(a * (b - z.gather(1, y[:, None])[:, 0])) / a
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[c.kwargs["reduction"]]
    _close(result, expected, "z-loss formula", atol=1e-4, rtol=1e-3)


add("z_loss", _zloss_build, check=_zloss_check,
    scalars={"a": "positive", "b": "finite", "reduction": "str", "ignore_index": "int", "eps": "nonneg"},
    tensors=("logits", "target"))
add("ZLoss", lambda d: Call(ModuleFn(L.ZLoss, ("logits", "target")), dict(zip(("logits", "target"),
                                                                               _logits_labels(d)))),
    scalars={"a": "positive", "b": "finite", "reduction": "str", "ignore_index": "int", "eps": "nonneg"},
    tensors=("logits", "target"))


def _logit_z_build(d):
    z, y = _logits_labels(d)
    return Call(L.logit_z_loss, {"logits": z, "target": y, "z_loss_coef": d(st.floats(0, 1)),
                                 "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _logit_z_check(result, c):
    per = c.kwargs["z_loss_coef"] * torch.logsumexp(c.kwargs["logits"].double(), 1) ** 2
    _close(result, {"mean": per.mean(), "sum": per.sum(), "none": per}[c.kwargs["reduction"]], "logit z-loss")


add("logit_z_loss", _logit_z_build, check=_logit_z_check,
    scalars={"z_loss_coef": "nonneg", "ignore_index": "int", "reduction": "str"}, tensors=("logits", "target"))
add("LogitZLoss", lambda d: Call(ModuleFn(L.LogitZLoss, ("logits", "target")), dict(zip(("logits", "target"),
                                                                                         _logits_labels(d)))),
    scalars={"z_loss_coef": "nonneg", "ignore_index": "int", "reduction": "str"}, tensors=("logits", "target"))


# ------------------------------------------------------------------------------------------- linear CE
def _lce_build(d):
    n, dim, v = d(st.integers(1, 6)), d(st.integers(1, 5)), d(st.integers(2, 9))
    return Call(L.linear_cross_entropy, {"embeddings": tensor(d, (n, dim)), "classifier_weight": tensor(d, (v, dim)),
                                         "target": labels(d, n, v), "bias": tensor(d, (v,)),
                                         "chunk_size": d(st.integers(1, 8)),
                                         "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _lce_check(result, c):
    k = c.kwargs
    expected = F.cross_entropy(k["embeddings"] @ k["classifier_weight"].T + k["bias"], k["target"],
                               reduction=k["reduction"])
    _close(result, expected, "linear CE differs from F.cross_entropy of the logits")


add("linear_cross_entropy", _lce_build, check=_lce_check,
    scalars={"ignore_index": "int", "reduction": "str", "chunk_size": "count", "z_loss_coef": "nonneg",
             "row_chunk_size": "count", "shift": "bool"},
    tensors=("embeddings", "classifier_weight", "target", "bias"))


def _lce_module_build(d):
    c = _lce_build(d)
    k = c.kwargs
    return Call(ModuleFn(L.LinearCrossEntropy, ("embeddings", "classifier_weight", "target", "bias")),
                {n: k[n] for n in ("embeddings", "classifier_weight", "target", "bias")})


add("LinearCrossEntropy", _lce_module_build,
    scalars={"ignore_index": "int", "reduction": "str", "chunk_size": "count", "z_loss_coef": "nonneg",
             "row_chunk_size": "count", "shift": "bool"}, tensors=("embeddings", "classifier_weight", "target"))


# ------------------------------------------------------------------------------------------- load balance
def _indices(d, t, e, k=1):
    g = torch.Generator().manual_seed(d(seeds))
    return torch.randint(0, e, (t, k) if k > 1 else (t,), generator=g)


add("expert_counts", lambda d: Call(L.expert_counts, {"expert_indices": _indices(d, d(st.integers(0, 20)), 4,
                                                                                   d(st.integers(1, 2))),
                                                      "num_experts": 4}),
    check=lambda r, c: _check(r.tolist() == torch.bincount(c.kwargs["expert_indices"].flatten(), minlength=4)
                              .tolist()),
    scalars={"num_experts": "count"}, tensors=("expert_indices",),
    exempt={"nan": "integer indices", "inf": "integer indices", "huge": "integer indices"})


def _lb_build(d):
    t, e = d(st.integers(1, 12)), d(st.integers(1, 5))
    probs = tensor(d, (t, e)).softmax(1)
    return Call(L.load_balancing_loss, {"router_probs": probs, "expert_indices": _indices(d, t, e),
                                        "num_experts": e, "global_batch": False})


def _lb_check(result, c):
    p, idx, e = c.kwargs["router_probs"], c.kwargs["expert_indices"], c.kwargs["num_experts"]
    f = torch.bincount(idx.flatten(), minlength=e).double() / idx.numel()
    _close(result, e * (f * p.double().mean(0)).sum(), "Switch load-balancing formula")


add("load_balancing_loss", _lb_build, check=_lb_check, scalars={"num_experts": "count", "global_batch": "bool"},
    tensors=("router_probs", "expert_indices"))


def _accumulator_build(d):
    def run(num_experts, counts):
        acc = L.LoadBalanceAccumulator(num_experts)
        acc.add(counts) if hasattr(acc, "add") else None
        return acc
    e = d(st.integers(1, 6))
    run.__qualname__ = "LoadBalanceAccumulator"
    return Call(run, {"num_experts": e, "counts": torch.zeros(e, dtype=torch.int64)})


add("LoadBalanceAccumulator", lambda d: Call(L.LoadBalanceAccumulator, {"num_experts": d(st.integers(1, 6))}),
    scalars={"num_experts": "count"})


# ----------------------------------------------------------------------------------------- multi-similarity
def _ms_build(d):
    n = d(st.integers(2, 8))
    return Call(L.multi_similarity_loss, {"embeddings": tensor(d, (n, d(st.integers(1, 5)))),
                                          "labels": labels(d, n, d(st.integers(1, 3)))})


add("multi_similarity_loss", _ms_build, check=lambda r, c: _check(r.dim() == 0 and r >= 0),
    scalars={"alpha": "positive", "beta": "positive", "base": "finite", "margin": "nonneg", "normalize": "bool"},
    tensors=("embeddings", "labels"))
add("MultiSimilarityLoss", lambda d: Call(ModuleFn(L.MultiSimilarityLoss, ("embeddings", "labels")),
                                          _ms_build(d).kwargs),
    scalars={"alpha": "positive", "beta": "positive", "base": "finite", "margin": "nonneg", "normalize": "bool"},
    tensors=("embeddings", "labels"))


def _pk_check(result, c):
    p, k = c.kwargs["p"], c.kwargs["k"]
    y = c.kwargs["labels"].tolist()
    for batch in list(result):
        _check(len(batch) == p * k and len({y[i] for i in batch}) == p, "a P x K batch with P distinct classes")


def _pk_batches(**kwargs):
    return list(L.PKSampler(**kwargs))


_pk_batches.target = L.PKSampler
add("PKSampler", lambda d: Call(_pk_batches, {"labels": torch.arange(12) % 4, "p": d(st.integers(1, 4)),
                                              "k": d(st.integers(1, 3)), "num_batches": d(st.integers(1, 4))},
                                d(seeds), "generator"),
    check=_pk_check, scalars={"p": "count", "k": "count", "num_batches": "count"}, tensors=("labels",),
    exempt={"nan": "integer labels", "inf": "integer labels", "huge": "integer labels"})


# ------------------------------------------------------------------------------------------------- S3IM
add("gaussian_window", lambda d: Call(L.gaussian_window, {"kernel": d(st.integers(1, 9)),
                                                          "sigma": d(st.floats(0.1, 5))}),
    check=lambda r, c: _check(r.shape == (c.kwargs["kernel"],) * 2 and abs(r.sum().item() - 1) < 1e-9),
    scalars={"kernel": "count", "sigma": "positive"})


def _ssim_build(d):
    x = tensor(d, (d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(4, 10)), d(st.integers(4, 10))), 0, 1)
    return Call(L.ssim, {"img1": x, "img2": x.clone(), "kernel": d(st.integers(1, 4)), "stride": d(st.integers(1, 4))})


add("ssim", _ssim_build, aliases=("images",),
    check=lambda r, c: _close(r, torch.tensor(1.0), "SSIM(x, x) != 1", atol=1e-4),
    scalars={"kernel": "count", "stride": "count", "sigma": "positive"}, tensors=("img1", "img2"))
add("s3im_indices", lambda d: Call(L.s3im_indices, {"n": d(st.integers(1, 20)), "repeats": d(st.integers(1, 4))},
                                   d(seeds), "generator"),
    check=lambda r, c: _check(r.numel() == c.kwargs["n"] * c.kwargs["repeats"]),
    scalars={"n": "count", "repeats": "count"})


def _s3im_build(d):
    h = d(st.integers(4, 8))  # the virtual image must be at least one SSIM window tall
    n = h * d(st.integers(1, 4))
    pred = tensor(d, (n, 3), 0, 1)
    return Call(L.s3im_loss, {"pred": pred, "target": pred.clone(), "repeats": d(st.integers(1, 4)),
                              "kernel": d(st.integers(1, 4)), "stride": d(st.integers(1, 4)), "patch_height": h},
                d(seeds), "generator")


add("s3im_loss", _s3im_build, check=lambda r, c: _close(r, torch.tensor(0.0), "S3IM(x, x) != 0", atol=1e-4),
    scalars={"repeats": "count", "kernel": "count", "stride": "count", "patch_height": "count"},
    tensors=("pred", "target"))


def _s3im_module_build(d):
    c = _s3im_build(d)
    k = c.kwargs
    return Call(ModuleFn(L.S3IM, ("pred", "target")), {"pred": k["pred"], "target": k["target"],
                                                       "patch_height": k["patch_height"], "seed": d(seeds)})


add("S3IM", _s3im_module_build, scalars={"repeats": "count", "kernel": "count", "stride": "count",
                                         "patch_height": "count", "seed": "int"}, tensors=("pred", "target"))
