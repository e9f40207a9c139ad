"""Fuzz entries of regimen.batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import regimen.batch as B
from tests.reliability.fuzzlib import Call, Entry
from tests.reliability.strategies import ModuleFn, images, same_shape_as, seeds, tensor, tiny_cnn

ENTRIES: list[Entry] = []
WRAPPED_LAYER = {"extra_dim": "the wrapped user layer (an nn.Conv2d) receives x as given and raises its "
                                "own error"}
SKIPPED = {
    "batch.NormTestResult": "a NamedTuple result of norm_test (fuzzed through norm_test and norm_test_from_sums)",
    "batch.Regime": "a dataclass result of adapt_regime (fuzzed through adapt_regime)",
    "batch.apply_mup": "needs a regimen GPT (minutes of set-up per case); tests/batch/test_mup.py covers its checks",
    "batch.mup_hidden_parameters": "needs a regimen GPT; tests/batch/test_mup.py covers it",
    "batch.frozen_bn_statistics": "a context manager over a model (no scalar or tensor input to fuzz); "
                                  "tests/batch/test_sam.py checks it restores the statistics",
    "batch.per_sample_gradients": "torch.func.vmap over the user's model and loss: the inputs are the user's, "
                                  "tests/batch/test_adaptive.py compares it with a loop",
    "batch.sam_step": "takes closures; its scalars are sam_epsilon's, fuzzed there",
    "batch.batch_loss_sums": "iterates the user's batches through the user's model and loss; "
                             "tests/batch/test_hard_batches.py compares it with a loop",
    "batch.recompute_bn_statistics": "iterates the user's batches through the user's model; "
                                     "tests/batch/test_swa.py compares it with a loop",
}


def add(name, build, check=None, scalars=None, tensors=(), exempt=None):
    ENTRIES.append(Entry(f"batch.{name}", build, check, scalars or {}, tensors, exempt or {}))


def _check(condition, message="check failed"):
    if not condition:
        raise AssertionError(message)


def _bool_check(r, c):
    _check(isinstance(r, (list, tuple)) or r is None or isinstance(r, (bool, float, int, str, dict, nn.Module)))


# ---------------------------------------------------------------------------------- sequence length warm-up
add("seq_length_at", lambda d: Call(B.seq_length_at, {"progress": d(st.floats(0, 1)), "min_len": 8,
                                                       "max_len": d(st.integers(8, 256)),
                                                       "duration": d(st.floats(0.01, 1)),
                                                       "step_size": d(st.integers(1, 8))}),
    check=lambda r, c: _check(c.kwargs["min_len"] <= r <= c.kwargs["max_len"], f"L={r}"),
    scalars={"progress": "prob", "min_len": "count", "max_len": "count", "duration": "prob",
             "step_size": "count"})


def _truncate_build(d):
    n, t = d(st.integers(1, 4)), d(st.integers(1, 16))
    x = torch.randint(0, 50, (n, t), generator=torch.Generator().manual_seed(d(seeds)))
    return Call(B.truncate_sequences, {"inputs": x, "targets": x.roll(-1, 1), "length": d(st.integers(1, t))})


add("truncate_sequences", _truncate_build,
    check=lambda r, c: _check(torch.equal(r[0], c.kwargs["inputs"][:, :c.kwargs["length"]])),
    scalars={"length": "count"}, tensors=("inputs", "targets"))


# ------------------------------------------------------------------------------------------------ norms
def _bcn_build(d):
    c = d(st.sampled_from([2, 4, 8]))
    return Call(ModuleFn(B.BatchChannelNorm2d, ("x",)), {"num_features": c, "num_groups": d(st.sampled_from([1, 2])),
                                                        "x": tensor(d, (d(st.integers(2, 4)), c, 3, 3))})


add("BatchChannelNorm2d", _bcn_build, check=same_shape_as("x"),
    scalars={"num_features": "count", "num_groups": "count", "eps": "positive", "momentum": "prob",
             "estimate": "bool"}, tensors=("x",))


def _ghost_build(d):
    c = d(st.integers(1, 4))
    n = d(st.integers(1, 9))
    return Call(B.ghost_batch_norm, {"x": tensor(d, (n, c, 2, 2)), "ghost_batch_size": d(st.integers(1, 4)),
                                     "running_mean": torch.zeros(c), "running_var": torch.ones(c),
                                     "last_partial": d(st.sampled_from(["separate", "merge"]))})


def _ghost_check(result, c):
    x, g = c.kwargs["x"], c.kwargs["ghost_batch_size"]
    pieces = list(x.split(g))
    if c.kwargs["last_partial"] == "merge" and len(pieces) > 1 and pieces[-1].shape[0] < g:
        pieces = pieces[:-2] + [torch.cat(pieces[-2:])]
    expected = torch.cat([F.batch_norm(p, None, None, training=True, eps=1e-5) if p.shape[0] > 1 or p[0].numel() > 1
                          else p * 0 for p in pieces])  # one value per channel: BN of it is 0
    ok = [p.shape[0] * p[0, 0].numel() > 1 for p in pieces]
    if all(ok):
        _check(torch.allclose(result, expected, atol=1e-4), "ghost BN differs from F.batch_norm per ghost batch")


add("ghost_batch_norm", _ghost_build, check=_ghost_check,
    scalars={"ghost_batch_size": "count", "momentum": "prob", "eps": "positive", "last_partial": "str",
             "training": "bool"}, tensors=("x",))

for _cls, _shape in ((B.GhostBatchNorm1d, (3,)), (B.GhostBatchNorm2d, (3, 2, 2))):
    add(_cls.__name__, lambda d, cls=_cls, shape=_shape: Call(
        ModuleFn(cls, ("x",)), {"num_features": 3, "ghost_batch_size": d(st.integers(2, 4)), "last_partial": "merge",
                                "x": tensor(d, (d(st.integers(2, 9)), *shape))}),
        check=same_shape_as("x"),
        scalars={"num_features": "count", "ghost_batch_size": "count", "eps": "positive", "momentum": "prob",
                 "affine": "bool", "last_partial": "str"}, tensors=("x",))


def _ws_check(result, c):
    w = c.kwargs["weight"]
    flat = w.flatten(1)
    if c.kwargs["mode"] == "paper":
        expected = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + c.kwargs["eps"])
    else:
        expected = (flat - flat.mean(1, keepdim=True)) / (flat.var(1, unbiased=False, keepdim=True)
                                                          + c.kwargs["eps"]).sqrt()
    _check(torch.allclose(result.flatten(1), expected, atol=1e-4), "weight standardisation formula")


add("weight_standardize", lambda d: Call(B.weight_standardize, {
    "weight": tensor(d, (d(st.integers(1, 4)), d(st.integers(1, 3)), d(st.integers(1, 3)), 3)),
    "eps": d(st.floats(1e-6, 1e-3)), "mode": d(st.sampled_from(["paper", "bit"]))}),
    check=_ws_check, scalars={"eps": "positive", "mode": "str"}, tensors=("weight",),
    exempt={"empty": "an output channel count of 0 is a valid empty weight"})

add("WSConv2d", lambda d: Call(ModuleFn(B.WSConv2d, ("x",)), {
    "in_channels": 2, "out_channels": d(st.integers(1, 4)), "kernel_size": d(st.sampled_from([1, 3])),
    "padding": 1, "x": tensor(d, (d(st.integers(1, 3)), 2, 5, 5))}),
    scalars={"in_channels": "count", "out_channels": "count", "ws_eps": "positive", "ws_mode": "str"},
    tensors=("x",))


# ------------------------------------------------------------------------------------------------ blur pool
add("blur_filter", lambda d: Call(B.blur_filter, {"channels": d(st.integers(1, 5)),
                                                  "taps": d(st.sampled_from([(1.0,), (1.0, 2.0, 1.0),
                                                                             (1.0, 4.0, 6.0, 4.0, 1.0)]))}),
    check=lambda r, c: _check(r.shape[:2] == (c.kwargs["channels"], 1)
                              and torch.allclose(r.sum((1, 2, 3)), torch.ones(r.shape[0]), atol=1e-6)),
    scalars={"channels": "count", "taps": "str"})


def _blur_check(result, c):
    x = c.kwargs["x"]
    f = B.blur_filter(x.shape[1])
    pad = (f.shape[-1] - 1) // 2
    expected = F.conv2d(F.pad(x, (pad,) * 4), f, stride=c.kwargs["stride"], groups=x.shape[1])
    if c.kwargs["padding_mode"] == "zeros" and result.shape == expected.shape:
        _check(torch.allclose(result, expected, atol=1e-5), "blur differs from a depthwise conv2d")


add("blur_2d", lambda d: Call(B.blur_2d, {"x": images(d, hw=(2, 9)), "stride": d(st.integers(1, 3)),
                                          "padding_mode": d(st.sampled_from(["zeros", "reflect"]))}),
    check=_blur_check, scalars={"stride": "count", "padding_mode": "str"}, tensors=("x",))

add("BlurConv2d", lambda d: Call(ModuleFn(B.BlurConv2d, ("x",)), {
    "conv": nn.Conv2d(3, 4, 3, stride=2, padding=1), "blur_first": d(st.booleans()),
    "x": images(d, c=(3, 3), hw=(2, 9))}),
    scalars={"conv": "str", "blur_first": "bool", "padding_mode": "str"}, tensors=("x",))
ENTRIES[-1].tensor_exempt = WRAPPED_LAYER

add("MaxBlurPool2d", lambda d: Call(ModuleFn(B.MaxBlurPool2d, ("x",)), {
    "kernel_size": d(st.integers(1, 3)), "stride": d(st.integers(1, 3)), "x": images(d, hw=(3, 9))}),
    scalars={"kernel_size": "count", "stride": "count", "padding_mode": "str", "ceil_mode": "bool"},
    tensors=("x",))


def _surgery(fn, **extra):
    def build(d):
        return Call(fn, {"model": tiny_cnn(seed=d(seeds)), **extra})
    return build


add("apply_blurpool", _surgery(B.apply_blurpool, min_channels=1),
    scalars={"replace_convs": "bool", "replace_maxpools": "bool", "blur_first": "bool", "min_channels": "count",
             "padding_mode": "str"})
add("apply_squeeze_excite", _surgery(B.apply_squeeze_excite, min_channels=8, latent_channels=4),
    scalars={"latent_channels": "positive", "min_channels": "count", "preserve": "bool"})
add("apply_batch_channel_norm", _surgery(B.apply_batch_channel_norm, num_groups=2),
    scalars={"num_groups": "count", "estimate": "bool", "momentum": "prob"})
add("apply_ghost_batch_norm", _surgery(B.apply_ghost_batch_norm, ghost_batch_size=2),
    scalars={"ghost_batch_size": "count", "last_partial": "str"})
add("apply_weight_standardization", _surgery(B.apply_weight_standardization),
    scalars={"eps": "positive", "mode": "str"})
add("convs_followed_by_norm", _surgery(B.convs_followed_by_norm),
    check=lambda r, c: _check(r == ["0", "4"], f"{r}"), scalars={"model": "str"})
add("freezable_layers", lambda d: Call(B.freezable_layers, {"model": tiny_cnn(seed=d(seeds))}),
    scalars={"model": "str"})

add("SqueezeExcite2d", lambda d: Call(ModuleFn(B.SqueezeExcite2d, ("x",)), {
    "channels": 4, "latent_channels": d(st.integers(1, 8)), "x": tensor(d, (d(st.integers(1, 3)), 4, 3, 3))}),
    check=same_shape_as("x"), scalars={"channels": "count", "latent_channels": "count", "preserve": "bool"},
    tensors=("x",))
add("SqueezeExciteConv2d", lambda d: Call(ModuleFn(B.SqueezeExciteConv2d, ("x",)), {
    "conv": nn.Conv2d(3, 4, 3, padding=1), "latent_channels": d(st.integers(1, 8)),
    "x": images(d, c=(3, 3), hw=(2, 6))}),
    scalars={"conv": "str", "latent_channels": "count", "preserve": "bool"}, tensors=("x",))
ENTRIES[-1].tensor_exempt = WRAPPED_LAYER


# --------------------------------------------------------------------------------------- batch selection
add("HighLossBatchSelector", lambda d: Call(B.HighLossBatchSelector, {"fraction": d(st.floats(0.01, 1)),
                                                                      "min_batches": d(st.integers(1, 4))}),
    scalars={"fraction": "prob", "min_batches": "count", "eval_mode": "bool"})


def _select_high_check(result, c):
    losses = torch.as_tensor(c.kwargs["batch_losses"], dtype=torch.float64)
    n = losses.numel()
    k = min(n, max(c.kwargs["min_batches"], math.ceil(c.kwargs["fraction"] * n)))
    _check(result.numel() == k, f"{result.numel()} != {k}")
    _check(sorted(losses[result].tolist(), reverse=True) == sorted(losses.tolist(), reverse=True)[:k])


add("select_high_loss", lambda d: Call(B.select_high_loss, {"batch_losses": tensor(d, (d(st.integers(1, 12)),), 0, 5),
                                                            "fraction": d(st.floats(0.01, 1)),
                                                            "min_batches": d(st.integers(1, 3))}),
    check=_select_high_check, scalars={"fraction": "prob", "min_batches": "count"}, tensors=("batch_losses",))


def _selection_weights_check(result, c):
    losses, keep = c.kwargs["losses"], c.kwargs["keep"]
    n = losses.numel()
    ranks = losses.argsort().argsort().double()
    expected = ((ranks + 0.5) / n) ** (1 / keep - 1)
    _check(torch.allclose(result.double(), expected, rtol=1e-5), "selection weights formula")


add("selection_weights", lambda d: Call(B.selection_weights, {"losses": tensor(d, (d(st.integers(1, 12)),), 0, 5),
                                                              "keep": d(st.floats(0.05, 1))}),
    check=_selection_weights_check, scalars={"keep": "prob"}, tensors=("losses",))

add("select_by_loss_percentile", lambda d: Call(B.select_by_loss_percentile, {
    "losses": tensor(d, (d(st.integers(1, 12)),), 0, 5), "keep": d(st.floats(0.05, 1))}, d(seeds), "generator"),
    check=lambda r, c: _check(r.numel() == max(1, int(c.kwargs["keep"] * c.kwargs["losses"].numel()))
                              and torch.equal(r, r.sort().values)),
    scalars={"keep": "prob"}, tensors=("losses",))


def _lengths(d, n=(1, 30)):
    return torch.randint(1, 40, (d(st.integers(*n)),), generator=torch.Generator().manual_seed(d(seeds)))


def _batches(cls):
    def run(**kwargs):
        return list(cls(**kwargs))
    run.__qualname__ = cls.__name__
    run.target = cls
    return run


def _sampler_check(result, c):
    batches = list(result)
    flat = sorted(i for b in batches for i in b)
    n = len(c.kwargs["lengths"])
    _check(len(flat) == len(set(flat)) and all(0 <= i < n for i in flat), "batches index outside or twice")


add("LengthBucketBatchSampler", lambda d: Call(_batches(B.LengthBucketBatchSampler), {
    "lengths": _lengths(d), "batch_size": d(st.integers(1, 8)), "pool_batches": d(st.integers(1, 4))}),
    check=_sampler_check,
    scalars={"batch_size": "count", "pool_batches": "count", "shuffle": "bool", "drop_last": "bool", "seed": "int",
             "num_replicas": "count", "rank": "count0"}, tensors=("lengths",))
add("TokenBudgetBatchSampler", lambda d: Call(_batches(B.TokenBudgetBatchSampler), {
    "lengths": _lengths(d), "max_tokens": d(st.integers(40, 200)), "pool_size": d(st.integers(1, 40))}),
    check=_sampler_check,
    scalars={"max_tokens": "count", "max_batch_size": "count", "pool_size": "count", "shuffle": "bool",
             "drop_oversized": "bool", "seed": "int", "num_replicas": "count", "rank": "count0"},
    tensors=("lengths",))


def _padding_build(d):
    lengths = _lengths(d, (2, 12))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(d(seeds))).tolist()
    cut = d(st.integers(1, len(order) - 1))
    return Call(B.padding_fraction, {"batches": [order[:cut], order[cut:]], "lengths": lengths})


def _padding_check(result, c):
    lengths = c.kwargs["lengths"].tolist()
    slots = sum(len(b) * max(lengths[i] for i in b) for b in c.kwargs["batches"])
    _check(abs(result - (slots - sum(lengths)) / slots) < 1e-9, "padding fraction formula")


add("padding_fraction", _padding_build, check=_padding_check, tensors=("lengths",))


# ---------------------------------------------------------------------------------------------- optimizers
def _optimizer_build(cls, **extra):
    def build(d):
        torch.manual_seed(d(seeds))
        model = nn.Linear(4, 3)

        def run(**kwargs):
            optimizer = cls(model.parameters(), **kwargs)
            model(torch.randn(5, 4)).square().mean().backward()
            optimizer.step()
            return [p.detach().clone() for p in model.parameters()]

        run.__qualname__ = cls.__name__
        run.target = cls
        return Call(run, dict(extra))
    return build


add("LARS", _optimizer_build(B.LARS, lr=0.1),
    scalars={"lr": "nonneg", "momentum": "prob_open", "weight_decay": "nonneg", "trust_coefficient": "positive",
             "eps": "nonneg", "nesterov": "bool", "exclude_1d": "bool"})
add("LAMB", _optimizer_build(B.LAMB, lr=0.01),
    scalars={"lr": "nonneg", "betas": "str", "eps": "positive", "weight_decay": "nonneg", "bias_correction": "bool",
             "exclude_1d": "bool"})
add("excluded_from_trust_ratio", lambda d: Call(B.excluded_from_trust_ratio, {
    "group": {"exclude_1d": d(st.booleans())}, "param": tensor(d, (d(st.integers(1, 3)),) * d(st.integers(1, 2)))}),
    check=lambda r, c: _check(isinstance(r, bool)), tensors=("param",),
    exempt={v: "only the dimensionality of param is read" for v in ("nan", "inf", "huge", "meta", "int64",
                                                                     "bool", "float64", "empty", "noncontiguous",
                                                                     "expanded")})


def _agc_build(d):
    torch.manual_seed(d(seeds))
    layer = nn.Linear(4, 3)
    layer(torch.randn(5, 4)).square().mean().backward()

    def run(parameters, clipping, eps):
        adaptive_params = [p.detach().clone().requires_grad_() for p in parameters]
        for p, q in zip(adaptive_params, parameters):
            p.grad = q.grad.clone()
        B.adaptive_clip_grad_(adaptive_params, clipping, eps)
        return [p.grad for p in adaptive_params]

    run.__qualname__ = "adaptive_clip_grad_"
    return Call(run, {"parameters": list(layer.parameters()), "clipping": d(st.floats(1e-3, 1)),
                      "eps": d(st.floats(1e-4, 1e-2))})


def _agc_check(result, c):
    for p, g in zip(c.kwargs["parameters"], result):
        ratio = B.unitwise_norm(g) / B.unitwise_norm(p.detach()).clamp_min(c.kwargs["eps"])
        _check((ratio <= c.kwargs["clipping"] * (1 + 1e-4)).all(), "AGC left a ratio above the threshold")


add("adaptive_clip_grad_", _agc_build, check=_agc_check, scalars={"clipping": "positive", "eps": "nonneg"})


def _unitwise_check(result, c):
    x = c.kwargs["x"]
    expected = x.norm() if x.dim() <= 1 else x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    _check(torch.allclose(result, expected, atol=1e-5), "unitwise norm")


add("unitwise_norm", lambda d: Call(B.unitwise_norm, {"x": tensor(d, tuple(d(st.integers(1, 3)) for _ in
                                                                            range(d(st.integers(0, 4)))))}),
    check=_unitwise_check, tensors=("x",))


# -------------------------------------------------------------------------------------------- LR scaling
add("infer_scaling_rule", lambda d: Call(B.infer_scaling_rule, {"optimizer": d(st.sampled_from(
    ["sgd", "adam", "adamw", "lars", "lamb", torch.optim.SGD, torch.optim.Adam]))}),
    check=lambda r, c: _check(r in ("linear", "sqrt")), scalars={"optimizer": "int"})


def _scale_lr_check(result, c):
    k = c.kwargs["batch_size"] / c.kwargs["base_batch_size"]
    rule = c.kwargs["rule"]
    expected = c.kwargs["base_lr"] * (k if rule == "linear" else math.sqrt(k))
    _check(math.isclose(result, expected, rel_tol=1e-9), f"{result} != {expected}")


add("scale_lr", lambda d: Call(B.scale_lr, {"base_lr": d(st.floats(1e-5, 1)), "batch_size": d(st.integers(1, 4096)),
                                            "base_batch_size": d(st.integers(1, 512)),
                                            "rule": d(st.sampled_from(["linear", "sqrt"]))}),
    check=_scale_lr_check,
    scalars={"base_lr": "nonneg", "batch_size": "count", "base_batch_size": "count", "rule": "str"})


def _scale_opt_build(d):
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=d(st.floats(1e-4, 1)))
    return Call(B.scale_optimizer_lr, {"optimizer": optimizer, "batch_size": d(st.integers(1, 4096)),
                                       "base_batch_size": d(st.integers(1, 512))})


add("scale_optimizer_lr", _scale_opt_build, scalars={"batch_size": "count", "base_batch_size": "count",
                                                     "rule": "str", "optimizer": "str"})
add("regime_factor", lambda d: Call(B.regime_factor, {"batch_size": d(st.integers(1, 4096)),
                                                      "base_batch_size": d(st.integers(1, 512))}),
    check=lambda r, c: _check(math.isclose(r, c.kwargs["batch_size"] / c.kwargs["base_batch_size"])),
    scalars={"batch_size": "count", "base_batch_size": "count", "max_factor": "positive"})
add("adapt_regime", lambda d: Call(B.adapt_regime, {"regime": d(st.integers(1, 100)),
                                                    "batch_size": d(st.integers(1, 4096)),
                                                    "base_batch_size": d(st.integers(1, 512)),
                                                    "milestones": [0.5, 0.75]}),
    scalars={"batch_size": "count", "base_batch_size": "count", "max_factor": "positive",
             "milestone_unit": "str", "regime": "str"})


def _norm_test_check(result, c):
    g = c.kwargs["per_sample_grads"].double()
    b = g.shape[0]
    mean = g.mean(0)
    variance = ((g - mean) ** 2).sum(1).sum() / (b - 1)
    _check(math.isclose(result.variance, variance.item(), rel_tol=1e-4, abs_tol=1e-9), "norm-test variance")


add("norm_test", lambda d: Call(B.norm_test, {"per_sample_grads": tensor(d, (d(st.integers(2, 6)),
                                                                             d(st.integers(1, 8)))),
                                              "eta": d(st.floats(0.1, 2))}),
    check=_norm_test_check, scalars={"eta": "positive"}, tensors=("per_sample_grads",))


def _norm_sums_build(d):
    g = tensor(d, (d(st.integers(2, 6)), d(st.integers(1, 8))))
    return Call(B.norm_test_from_sums, {"grad_sum": g.sum(0), "sq_norm_sum": float(g.square().sum()),
                                        "count": g.shape[0], "eta": d(st.floats(0.1, 2))})


add("norm_test_from_sums", _norm_sums_build, scalars={"count": "count", "eta": "positive",
                                                      "sq_norm_sum": "nonneg"}, tensors=("grad_sum",))


# -------------------------------------------------------------------------------------- freezing, SAM, SWA
add("frozen_layer_count", lambda d: Call(B.frozen_layer_count, {
    "progress": d(st.floats(0, 1)), "num_layers": d(st.integers(0, 10)), "freeze_start": d(st.floats(0, 0.9)),
    "freeze_level": d(st.floats(0.01, 1))}),
    check=lambda r, c: _check(0 <= r <= c.kwargs["num_layers"]),
    scalars={"progress": "prob", "num_layers": "count0", "freeze_start": "prob_open", "freeze_level": "prob"})


def _sam_build(d):
    torch.manual_seed(d(seeds))
    layer = nn.Linear(3, 2)
    layer(torch.randn(4, 3)).square().mean().backward()
    return Call(B.sam_epsilon, {"params": list(layer.parameters()), "rho": d(st.floats(1e-3, 1)),
                                "adaptive": d(st.booleans())})


def _sam_check(result, c):
    if not c.kwargs["adaptive"]:
        norm = torch.sqrt(sum(e.square().sum() for e in result))
        _check(math.isclose(norm.item(), c.kwargs["rho"], rel_tol=1e-4), "‖ε‖ != rho")


add("sam_epsilon", _sam_build, check=_sam_check, scalars={"rho": "nonneg", "eta": "nonneg", "eps": "positive",
                                                          "adaptive": "str"})
add("swa_lr_factor", lambda d: Call(B.swa_lr_factor, {"t": d(st.floats(0, 10)), "anneal_epochs": d(st.floats(0, 5)),
                                                      "anneal": d(st.sampled_from(["cos", "linear"]))}),
    check=lambda r, c: _check(0 <= r <= 1), scalars={"t": "nonneg", "anneal_epochs": "nonneg", "anneal": "str"})


def _swa_build(d):
    torch.manual_seed(d(seeds))
    return Call(B.swa_update, {"average": tiny_cnn(), "model": tiny_cnn(seed=1), "n_averaged": d(st.integers(0, 5))})


add("swa_update", _swa_build, check=lambda r, c: _check(r == c.kwargs["n_averaged"] + 1),
    scalars={"n_averaged": "count0", "average": "str", "model": "str"})
