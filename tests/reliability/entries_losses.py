"""Fuzz entries of regimen.losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import regimen.losses as L
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, labels, seeds, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "losses")
SKIPPED: dict[str, str] = {}


def _close(result, expected, message, atol=1e-5, rtol=1e-4):
    expect(torch.allclose(result.double(), expected.double(), atol=atol, rtol=rtol),
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


add("check_single_sample_logits", _check_single_build, check=lambda r, c: expect(r is None),
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
    check=lambda r, c: expect(r.tolist() == torch.bincount(c.kwargs["expert_indices"].flatten(), minlength=4)
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


add("multi_similarity_loss", _ms_build, check=lambda r, c: expect(r.dim() == 0 and r >= 0),
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
        expect(len(batch) == p * k and len({y[i] for i in batch}) == p, "a P x K batch with P distinct classes")


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
    check=lambda r, c: expect(r.shape == (c.kwargs["kernel"],) * 2 and abs(r.sum().item() - 1) < 1e-9),
    scalars={"kernel": "count", "sigma": "positive"})


def _ssim_build(d):
    x = tensor(d, (d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(4, 10)), d(st.integers(4, 10))), 0, 1)
    return Call(L.ssim, {"img1": x, "img2": x.clone(), "kernel": d(st.integers(1, 4)), "stride": d(st.integers(1, 4))})


add("ssim", _ssim_build, aliases=("images",),
    check=lambda r, c: _close(r, torch.tensor(1.0), "SSIM(x, x) != 1", atol=1e-4),
    scalars={"kernel": "count", "stride": "count", "sigma": "positive"}, tensors=("img1", "img2"))
add("s3im_indices", lambda d: Call(L.s3im_indices, {"n": d(st.integers(1, 20)), "repeats": d(st.integers(1, 4))},
                                   d(seeds), "generator"),
    check=lambda r, c: expect(r.numel() == c.kwargs["n"] * c.kwargs["repeats"]),
    scalars={"n": "count", "repeats": "count"})


def _s3im_build(d):
    h = d(st.integers(4, 8))  # the virtual image must be at least one SSIM window tall
    n = h * d(st.integers(1, 4))
    pred = tensor(d, (n, 3), 0, 1)
    repeats = d(st.integers(1, 4))
    width = repeats * n // h  # the virtual image is h x width: the window must fit both
    return Call(L.s3im_loss, {"pred": pred, "target": pred.clone(), "repeats": repeats,
                              "kernel": d(st.integers(1, min(4, h, width))), "stride": d(st.integers(1, 4)),
                              "patch_height": h},
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


# ==================================================================================================================
# Public since the suite's merge (issue 21 follow-up): flow matching (CFM, I-CFM, OT-CFM, W-CFM), comp-sum losses,
# aggregate (bag) loss, ConR and LDS, BT² backward-compatible embeddings.
import math  # noqa: E402

from tests.reliability.fuzzlib import HOSTILE  # noqa: E402

HOSTILE.setdefault("module", ["model", 3, None])
_SHAPES_ONLY = {v: "integer labels: NaN/inf/huge do not exist" for v in ("nan", "inf", "huge")}


def _points(d, n=None, dim=None):
    n = d(st.integers(1, 5)) if n is None else n
    dim = d(st.integers(1, 3)) if dim is None else dim
    return tensor(d, (n, dim))


# ---- flow matching
def _pairs_build(d):
    x0 = _points(d)
    n, dim = x0.shape
    sigma = d(st.sampled_from([0.0, 0.1, 0.5]))
    return Call(L.cfm_pairs, {"x0": x0, "x1": tensor(d, (n, dim)), "t": tensor(d, (n,), 0.0, 1.0), "sigma": sigma,
                              "noise": tensor(d, (n, dim)) if sigma > 0 else None})


def _pairs_check(result, c):
    k = c.kwargs
    t = k["t"].unsqueeze(1)
    xt = (1 - t) * k["x0"] + t * k["x1"] + (k["sigma"] * k["noise"] if k["sigma"] > 0 else 0)
    inputs, target = result
    expect(torch.allclose(inputs, torch.cat([xt, t], 1), atol=1e-6), "x_t = (1 - t) x0 + t x1 + sigma eps")
    expect(torch.equal(target, torch.cat([k["x0"], k["x1"], t], 1)), "target [x0, x1, t]")


add("cfm_pairs", _pairs_build, check=_pairs_check, scalars={"sigma": "nonneg"}, tensors=("x0", "x1", "t"))


def _target(d):
    x0 = _points(d)
    n, dim = x0.shape
    return torch.cat([x0, tensor(d, (n, dim)), tensor(d, (n, 1), 0, 1)], 1)


def _split_check(result, c):
    target = c.kwargs["target"]
    dim = (target.shape[1] - 1) // 2
    expect(torch.equal(torch.cat([result[0], result[1], result[2].unsqueeze(1)], 1), target), "not a split")
    expect(result[0].shape == (target.shape[0], dim), "x0 shape")


add("split_cfm_target", lambda d: Call(L.split_cfm_target, {"target": _target(d)}), check=_split_check,
    tensors=("target",))


def _cfm_loss_build(d):
    target = _target(d)
    dim = (target.shape[1] - 1) // 2
    return Call(L.cfm_loss, {"output": tensor(d, (target.shape[0], dim)), "target": target,
                             "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _cfm_loss_check(result, c):
    k = c.kwargs
    dim = k["output"].shape[1]
    x0, x1 = k["target"][:, :dim], k["target"][:, dim:2 * dim]
    per = ((k["output"] - (x1 - x0)) ** 2).mean(1)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[k["reduction"]]
    expect(torch.allclose(result, expected, atol=1e-5), "CFM loss formula")


add("cfm_loss", _cfm_loss_build, check=_cfm_loss_check, scalars={"reduction": "str"}, tensors=("output", "target"))


def _flow_build(d):
    a = d(st.floats(-1, 1))
    return Call(L.integrate_flow, {"velocity": lambda z: a * z[:, :-1], "x0": _points(d),
                                   "steps": d(st.integers(1, 6)), "solver": d(st.sampled_from(["euler", "midpoint"])),
                                   "_a": a})


def _flow_run(velocity, x0, steps, solver="euler", _a=0.0):
    return L.integrate_flow(velocity, x0, steps, solver)


_flow_run.target = L.integrate_flow


def _flow_check(result, c):
    k = c.kwargs
    h, a = 1.0 / k["steps"], k["_a"]
    factor = (1 + a * h) if k["solver"] == "euler" else (1 + a * h + (a * h) ** 2 / 2)  # the solvers on dx/dt = a x
    expect(torch.allclose(result, k["x0"] * factor ** k["steps"], atol=1e-5), "not the solver's closed form")


add("integrate_flow", lambda d: Call(_flow_run, _flow_build(d).kwargs), check=_flow_check,
    scalars={"steps": "count", "solver": "str"}, tensors=("x0",))


def _noise_build(d):
    n, dim = d(st.integers(1, 5)), d(st.integers(1, 3))
    return Call(L.add_path_noise, {"inputs": tensor(d, (n, dim + 1)), "sigma": d(st.floats(0, 1)),
                                   "noise": tensor(d, (n, dim))})


def _noise_check(result, c):
    k = c.kwargs
    expected = torch.cat([k["inputs"][:, :-1] + k["sigma"] * k["noise"], k["inputs"][:, -1:]], 1)
    expect(torch.allclose(result, expected, atol=1e-6), "[x_t + sigma eps, t]")


add("add_path_noise", _noise_build, check=_noise_check, scalars={"sigma": "nonneg"}, tensors=("inputs", "noise"))


def _pair_cost_build(d):
    x0 = _points(d)
    return Call(L.pair_cost, {"x0": x0, "x1": tensor(d, tuple(x0.shape)),
                              "cost": d(st.sampled_from(["sqeuclidean", "euclidean"]))})


def _pair_cost_check(result, c):
    k = c.kwargs
    sq = ((k["x1"] - k["x0"]) ** 2).sum(1)
    expect(torch.allclose(result, sq if k["cost"] == "sqeuclidean" else sq.sqrt(), atol=1e-6), "pair cost")


add("pair_cost", _pair_cost_build, check=_pair_cost_check, scalars={"cost": "str"}, tensors=("x0", "x1"))


def _gibbs_check(result, c):
    cost, eps = c.kwargs["cost"].double(), c.kwargs["epsilon"]
    w = torch.exp(-cost / eps)
    if bool(w.sum() > 0):
        expect(torch.allclose(result.double(), w / w.sum() * cost.numel(), rtol=1e-5, atol=1e-6), "N softmax(-c/eps)")
    expect(abs(float(result.double().mean()) - 1) < 1e-5, "mean 1")


add("gibbs_weights", lambda d: Call(L.gibbs_weights, {"cost": tensor(d, (d(st.integers(1, 6)),), 0, 5),
                                                      "epsilon": d(st.floats(0.01, 10))}),
    check=_gibbs_check, scalars={"epsilon": "positive"}, tensors=("cost",))


def _ot_check(result, c):
    import itertools
    x0, x1 = c.kwargs["x0"].double(), c.kwargs["x1"].double()
    n = x0.shape[0]
    expect(sorted(result.tolist()) == list(range(n)), "not a permutation")

    def total(p):
        return float(((x0[list(p)] - x1) ** 2).sum())
    best = min(total(p) for p in itertools.permutations(range(n)))  # brute force over every pairing
    expect(abs(total(result.tolist()) - best) < 1e-9, f"not the least-cost pairing: {total(result.tolist())} > {best}")


add("ot_pairing", lambda d: Call(L.ot_pairing, {"x0": (x0 := _points(d)), "x1": tensor(d, tuple(x0.shape))}),
    check=_ot_check, tensors=("x0", "x1"))


# ---- comp-sum
def _comp_sum_build(d):
    n, c = d(st.integers(1, 5)), d(st.integers(2, 5))
    return Call(L.comp_sum_loss, {"logits": tensor(d, (n, c)), "target": labels(d, n, c),
                                  "tau": d(st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0])), "min_log_prob": None,
                                  "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _comp_sum_check(result, c):
    k = c.kwargs
    p = k["logits"].double().softmax(1).gather(1, k["target"].unsqueeze(1)).squeeze(1)
    tau = k["tau"]
    per = -p.log() if tau == 1.0 else (1 - p ** (tau - 1)) / (tau - 1)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[k["reduction"]]
    expect(torch.allclose(result.double(), expected, rtol=1e-4, atol=1e-5), "(1 - p_y^(tau-1)) / (tau - 1)")


add("comp_sum_loss", _comp_sum_build, check=_comp_sum_check,
    scalars={"tau": "nonneg", "reduction": "str", "label_smoothing": "prob_open", "check_values": "bool"},
    tensors=("logits", "target"))


def _comp_sum_module_build(d):
    c = _comp_sum_build(d)
    kw = dict(c.kwargs)
    return Call(ModuleFn(L.CompSumLoss, ("logits", "target")), kw)


add("CompSumLoss", _comp_sum_module_build, check=_comp_sum_check,
    scalars={"tau": "nonneg", "reduction": "str", "label_smoothing": "prob_open"}, tensors=("logits", "target"))


def _phi_check(result, c):
    u, tau = c.kwargs["u"].double(), c.kwargs["tau"]
    expected = torch.log1p(u) if tau == 1.0 else ((1 + u) ** (1 - tau) - 1) / (1 - tau)
    expect(torch.allclose(result.double(), expected, rtol=1e-4, atol=1e-6), "Phi^tau(u)")


add("comp_sum_phi", lambda d: Call(L.comp_sum_phi, {"u": tensor(d, (d(st.integers(0, 6)),), 0, 5),
                                                    "tau": d(st.sampled_from([0.0, 0.5, 1.0, 2.0]))}),
    check=_phi_check, scalars={"tau": "nonneg"}, tensors=("u",))


# ---- aggregate (bag) loss
def _agg_build(d):
    b = d(st.integers(1, 4))
    sizes = [d(st.integers(1, 3)) for _ in range(b)]
    bags = torch.tensor([i for i, s in enumerate(sizes) for _ in range(s)])
    return Call(L.aggregate_loss, {"prediction": tensor(d, (len(bags),)), "bags": bags,
                                   "bag_targets": tensor(d, (b,)), "rho": d(st.floats(0, 2)),
                                   "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _agg_check(result, c):
    k = c.kwargs
    per = []
    for a in range(k["bag_targets"].numel()):  # the loop reference over bags
        f = k["prediction"][k["bags"] == a].double()
        per.append((float(k["bag_targets"][a]) - float(f.mean())) ** 2 + k["rho"] * float(((f - f.mean()) ** 2).mean()))
    per = torch.tensor(per, dtype=torch.float64)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[k["reduction"]]
    expect(torch.allclose(result.double(), expected, rtol=1e-4, atol=1e-5), "L_rho per bag")


add("aggregate_loss", _agg_build, check=_agg_check, scalars={"rho": "nonneg", "reduction": "str"},
    tensors=("prediction", "bags", "bag_targets"))


# ---- ConR / LDS
def _conr_build(d):
    n = d(st.integers(1, 6))
    return Call(L.conr_loss, {"features": tensor(d, (n, 3)), "target": tensor(d, (n,), 0, 3),
                              "prediction": tensor(d, (n,), 0, 3), "window": d(st.floats(0.1, 2)),
                              "temperature": d(st.floats(0.05, 1)), "faithful": d(st.booleans()),
                              "reduction": d(st.sampled_from(["mean", "sum", "none"]))})


def _conr_check(result, c):
    k = c.kwargs
    q = F.normalize(k["features"].double(), dim=1)
    y, p = k["target"].double(), k["prediction"].double()
    n, w, tau = q.shape[0], k["window"], k["temperature"]
    per = []
    for i in range(n):  # the loop reference of the module docstring's formula, one anchor at a time
        pos = [j for j in range(n) if j != i and abs(y[i] - y[j]) <= w]
        neg = [j for j in range(n) if abs(y[i] - y[j]) > w and abs(p[i] - p[j]) <= w]
        if not pos or not neg:
            per.append(0.0)
            continue
        s = [float(q[i] @ q[j]) / tau for j in range(n)]
        if k["faithful"]:
            positive = sum(math.exp(s[j]) if j in pos else 1.0 for j in range(n))
        else:
            positive = sum(math.exp(s[j]) for j in pos)
        negative = sum(math.exp(k["push"] * abs(float(y[i] - y[j]))) * math.exp(s[j]) for j in neg)
        per.append(-sum(s[j] - math.log(positive + negative) for j in pos) / len(pos))
    per = torch.tensor(per, dtype=torch.float64)
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[k["reduction"]]
    expect(torch.allclose(result.double(), expected, rtol=1e-4, atol=1e-5), f"{result} != {expected}")


def _conr_run(push=0.01, **kw):
    return L.conr_loss(push=push, **kw)


_conr_run.target = L.conr_loss
add("conr_loss", lambda d: Call(_conr_run, {**_conr_build(d).kwargs, "push": 0.01}), check=_conr_check,
    scalars={"window": "positive", "temperature": "positive", "push": "finite", "faithful": "bool",
             "reduction": "str"}, tensors=("features", "target", "prediction"))


def _lds_check(result, c):
    weights, low = result
    t = c.kwargs["train_targets"].double()
    expect(low == float(t.min()), "lowest target")
    index = ((t - low) / c.kwargs["bin_width"]).floor().long()
    expect(abs(float(weights[index].double().mean()) - 1) < 1e-5, "training samples' mean weight 1")
    expect(bool((weights > 0).all()), "positive weights")


add("lds_weights", lambda d: Call(L.lds_weights, {"train_targets": tensor(d, (d(st.integers(1, 20)),), 0, 5),
                                                  "bin_width": d(st.floats(0.1, 2)),
                                                  "kernel_size": d(st.sampled_from([1, 3, 5])),
                                                  "sigma": d(st.floats(0.5, 3))}),
    check=_lds_check, scalars={"bin_width": "positive", "kernel_size": "count", "sigma": "positive"},
    tensors=("train_targets",))


# ---- BT²
def _orth(d, n):
    q, _ = torch.linalg.qr(tensor(d, (n, n), dtype=torch.float64))
    return q.float()


def _bt2e_build(d):
    n, dim, d_old = d(st.integers(1, 4)), d(st.integers(2, 5)), d(st.integers(1, 4))
    return Call(L.bt2_embedding, {"feature": F.normalize(tensor(d, (n, dim)), dim=1),
                                  "old_space": tensor(d, (n, d_old)), "p": _orth(d, dim), "o2": _orth(d, d_old),
                                  "extra_dims": d(st.integers(max(1, d_old - dim), d_old)),  # D + a >= d_old
                                  "scale": d(st.floats(0.5, 5))})


def _bt2e_check(result, c):
    k = c.kwargs
    a, d_old = k["extra_dims"], k["old_space"].shape[1]
    z = torch.cat([F.normalize(k["old_space"][:, :a], dim=1), (k["scale"] * k["feature"]) @ k["p"].T], 1)
    compatible = z[:, :d_old] @ k["o2"].T
    expect(torch.allclose(result[1], compatible, atol=1e-5), "compatible part")
    expect(torch.allclose(result[0], torch.cat([compatible, z[:, d_old:]], 1), atol=1e-5), "embedding")


add("bt2_embedding", _bt2e_build, check=_bt2e_check, scalars={"extra_dims": "count", "scale": "finite"},
    tensors=("feature", "old_space", "p", "o2"))


def _bt2r_build(d):
    n, dim, d_old, classes = d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(1, 4)), d(st.integers(2, 4))
    return Call(L.bt2_regularizer, {"feature": tensor(d, (n, dim)), "compatible": tensor(d, (n, d_old)),
                                    "target": labels(d, n, classes), "old": tensor(d, (n, d_old)),
                                    "new": d(st.sampled_from([None, tensor(d, (n, dim))])),
                                    "old_classifier": tensor(d, (classes, d_old))})


def _bt2r_check(result, c):
    k = c.kwargs
    logits = F.normalize(k["compatible"], dim=1) @ k["old_classifier"].T
    expected = 10 * F.cross_entropy(logits, k["target"], reduction="none") + 10 * (
        1 - F.cosine_similarity(k["compatible"], k["old"], dim=1))
    if k["new"] is not None:
        expected = expected + (1 - F.cosine_similarity(k["feature"], k["new"], dim=1))
    expect(torch.allclose(result, expected, atol=1e-4), "BT2 regulariser terms")


add("bt2_regularizer", _bt2r_build, check=_bt2r_check,
    scalars={"new_weight": "nonneg", "influence_weight": "nonneg", "old_weight": "nonneg"},
    tensors=("feature", "compatible", "target", "old", "old_classifier"))


def _class_means_build(d):
    n = d(st.integers(1, 8))
    return Call(L.class_means, {"embeddings": tensor(d, (n, 3)), "labels": labels(d, n, 4)})


def _class_means_check(result, c):
    means, lookup = result
    e, y = F.normalize(c.kwargs["embeddings"].double(), dim=1), c.kwargs["labels"]
    present = sorted(set(y.tolist()))
    expect(lookup.tolist() == [present.index(i) if i in present else -1 for i in range(max(present) + 1)], "lookup")
    for row, cls in enumerate(present):  # the loop reference
        expect(torch.allclose(means[row].double(), e[y == cls].mean(0), atol=1e-6), f"class {cls} mean")


add("class_means", _class_means_build, check=_class_means_check, tensors=("embeddings", "labels"))


def _bt2_model_run(backbone, x, feature_dim, old_dim, train=True, **kw):
    torch.manual_seed(0)
    model = L.BT2Model(backbone, feature_dim, old_dim, **kw)
    model.train(train)
    return model(x)


_bt2_model_run.target = L.BT2Model


def _bt2_model_build(d):
    dim, d_old = d(st.integers(2, 6)), d(st.integers(1, 4))
    torch.manual_seed(d(seeds))
    return Call(_bt2_model_run, {"backbone": nn.Linear(3, dim), "x": tensor(d, (d(st.integers(1, 4)), 3)),
                                 "feature_dim": dim, "old_dim": d_old,
                                 "extra_dims": d(st.integers(max(1, d_old - dim), d_old)),
                                 "train": d(st.booleans())})


def _bt2_model_check(result, c):
    k = c.kwargs
    n, width = k["x"].shape[0], k["feature_dim"] + k["extra_dims"]
    embedding = result.embedding if k["train"] else result
    expect(embedding.shape == (n, width), f"embedding {tuple(embedding.shape)} != {(n, width)}")
    if k["train"]:
        expect(isinstance(result, L.BT2Output) and result.compatible.shape == (n, k["old_dim"]), "BT2Output")


add("BT2Model", _bt2_model_build, check=_bt2_model_check,
    scalars={"feature_dim": "count", "old_dim": "count", "extra_dims": "count", "scale": "finite",
             "backbone": "module"}, tensors=("x",),
    exempt={v: "the user's backbone receives x as given (torch.nn's convention for its layers)"
            for v in ("extra_dim", "int64", "bool", "float64", "meta", "not_a_tensor")})
SKIPPED["losses.BT2Output"] = "a NamedTuple result of BT2Model in training mode (fuzzed through BT2Model)"
