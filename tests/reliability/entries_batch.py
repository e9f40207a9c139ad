"""Fuzz entries of regimen.batch."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

import regimen.batch as B
from tests.reliability.fuzzlib import HOSTILE, Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, images, same_shape_as, seeds, tensor, tiny_cnn

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "batch")
HOSTILE["prob_or_none"] = [v for v in HOSTILE["prob"] if v is not None]  # None: a cumulative average
HOSTILE["regime"] = [None, b"x", "no-such-choice", 2.5, True]  # a recipe mapping or an epoch count: never these
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


def _bool_check(r, c):
    expect(isinstance(r, (list, tuple)) or r is None or isinstance(r, (bool, float, int, str, dict, nn.Module)))


# ---------------------------------------------------------------------------------- sequence length warm-up
add("seq_length_at", lambda d: Call(B.seq_length_at, {"progress": d(st.floats(0, 1)), "min_len": 8,
                                                       "max_len": d(st.integers(8, 256)),
                                                       "duration": d(st.floats(0.01, 1)),
                                                       "step_size": d(st.integers(1, 8))}),
    check=lambda r, c: expect(c.kwargs["min_len"] <= r <= c.kwargs["max_len"], f"L={r}"),
    scalars={"progress": "nonneg", "min_len": "count", "max_len": "count", "duration": "prob",
             "step_size": "count"})


def _truncate_build(d):
    n, t = d(st.integers(1, 4)), d(st.integers(1, 16))
    x = torch.randint(0, 50, (n, t), generator=torch.Generator().manual_seed(d(seeds)))
    return Call(B.truncate_sequences, {"inputs": x, "targets": x.roll(-1, 1), "length": d(st.integers(1, t))})


add("truncate_sequences", _truncate_build,
    check=lambda r, c: expect(torch.equal(r[0], c.kwargs["inputs"][:, :c.kwargs["length"]])),
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
        expect(torch.allclose(result, expected, atol=1e-4), "ghost BN differs from F.batch_norm per ghost batch")


add("ghost_batch_norm", _ghost_build, check=_ghost_check,
    scalars={"ghost_batch_size": "count", "momentum": "prob", "eps": "positive", "last_partial": "str",
             "training": "bool"}, tensors=("x",))

for _cls, _shape in ((B.GhostBatchNorm1d, (3,)), (B.GhostBatchNorm2d, (3, 2, 2))):
    add(_cls.__name__, lambda d, cls=_cls, shape=_shape: Call(
        ModuleFn(cls, ("x",)), {"num_features": 3, "ghost_batch_size": d(st.integers(2, 4)), "last_partial": "merge",
                                "x": tensor(d, (d(st.integers(2, 9)), *shape))}),
        check=same_shape_as("x"),
        scalars={"num_features": "count", "ghost_batch_size": "count", "eps": "positive",
                 "momentum": "prob_or_none", "affine": "bool", "last_partial": "str"}, tensors=("x",),
        # an expanded x has identical rows: variance 0 up to rounding, which 1/sqrt(var + eps) amplifies to ~1e-4
        # between layouts (a degenerate input, not a layout bug; non-contiguous x is still checked)
        exempt={"expanded": "identical rows: rounding of a zero variance amplified by 1/sqrt(eps)"})


def _ws_check(result, c):
    w = c.kwargs["weight"]
    flat = w.flatten(1)
    if c.kwargs["mode"] == "paper":
        expected = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, keepdim=True) + c.kwargs["eps"])
    else:
        expected = (flat - flat.mean(1, keepdim=True)) / (flat.var(1, unbiased=False, keepdim=True)
                                                          + c.kwargs["eps"]).sqrt()
    expect(torch.allclose(result.flatten(1), expected, atol=1e-4), "weight standardisation formula")


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
    check=lambda r, c: expect(r.shape[:2] == (c.kwargs["channels"], 1)
                              and torch.allclose(r.sum((1, 2, 3)), torch.ones(r.shape[0]), atol=1e-6)),
    scalars={"channels": "count", "taps": "str"})


def _blur_check(result, c):
    x = c.kwargs["x"]
    f = B.blur_filter(x.shape[1])
    pad = (f.shape[-1] - 1) // 2
    expected = F.conv2d(F.pad(x, (pad,) * 4), f, stride=c.kwargs["stride"], groups=x.shape[1])
    if c.kwargs["padding_mode"] == "zeros" and result.shape == expected.shape:
        expect(torch.allclose(result, expected, atol=1e-5), "blur differs from a depthwise conv2d")


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
    check=lambda r, c: expect(r == ["0", "4"], f"{r}"), scalars={"model": "str"})
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
    expect(result.numel() == k, f"{result.numel()} != {k}")
    expect(sorted(losses[result].tolist(), reverse=True) == sorted(losses.tolist(), reverse=True)[:k])


add("select_high_loss", lambda d: Call(B.select_high_loss, {"batch_losses": tensor(d, (d(st.integers(1, 12)),), 0, 5),
                                                            "fraction": d(st.floats(0.01, 1)),
                                                            "min_batches": d(st.integers(1, 3))}),
    check=_select_high_check, scalars={"fraction": "prob", "min_batches": "count"}, tensors=("batch_losses",))


def _selection_weights_check(result, c):
    losses, keep = c.kwargs["losses"], c.kwargs["keep"]
    n = losses.numel()
    ranks = losses.argsort().argsort().double()
    expected = ((ranks + 0.5) / n) ** (1 / keep - 1)
    expect(torch.allclose(result.double(), expected, rtol=1e-5), "selection weights formula")


add("selection_weights", lambda d: Call(B.selection_weights, {"losses": tensor(d, (d(st.integers(1, 12)),), 0, 5),
                                                              "keep": d(st.floats(0.05, 1))}),
    check=_selection_weights_check, scalars={"keep": "prob"}, tensors=("losses",))

add("select_by_loss_percentile", lambda d: Call(B.select_by_loss_percentile, {
    "losses": tensor(d, (d(st.integers(1, 12)),), 0, 5), "keep": d(st.floats(0.05, 1))}, d(seeds), "generator"),
    check=lambda r, c: expect(r.numel() == max(1, int(c.kwargs["keep"] * c.kwargs["losses"].numel()))
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
    expect(len(flat) == len(set(flat)) and all(0 <= i < n for i in flat), "batches index outside or twice")


add("LengthBucketBatchSampler", lambda d: Call(_batches(B.LengthBucketBatchSampler), {
    "lengths": _lengths(d), "batch_size": d(st.integers(1, 8)), "pool_batches": d(st.integers(1, 4))}),
    check=_sampler_check,
    scalars={"batch_size": "count", "pool_batches": "count0", "shuffle": "bool", "drop_last": "bool", "seed": "int",
             "num_replicas": "count", "rank": "count0"}, tensors=("lengths",))
add("TokenBudgetBatchSampler", lambda d: Call(_batches(B.TokenBudgetBatchSampler), {
    "lengths": _lengths(d), "max_tokens": d(st.integers(40, 200)), "pool_size": d(st.integers(1, 40))}),
    check=_sampler_check,
    scalars={"max_tokens": "count", "max_batch_size": "count", "pool_size": "count0", "shuffle": "bool",  # 0: all
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
    expect(abs(result - (slots - sum(lengths)) / slots) < 1e-9, "padding fraction formula")


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
    check=lambda r, c: expect(isinstance(r, bool)), tensors=("param",),
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
        expect((ratio <= c.kwargs["clipping"] * (1 + 1e-4)).all(), "AGC left a ratio above the threshold")


add("adaptive_clip_grad_", _agc_build, check=_agc_check, scalars={"clipping": "positive", "eps": "nonneg"})


def _unitwise_check(result, c):
    x = c.kwargs["x"]
    expected = x.norm() if x.dim() <= 1 else x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    expect(torch.allclose(result, expected, atol=1e-5), "unitwise norm")


add("unitwise_norm", lambda d: Call(B.unitwise_norm, {"x": tensor(d, tuple(d(st.integers(1, 3)) for _ in
                                                                            range(d(st.integers(0, 4)))))}),
    check=_unitwise_check, tensors=("x",))


# -------------------------------------------------------------------------------------------- LR scaling
add("infer_scaling_rule", lambda d: Call(B.infer_scaling_rule, {"optimizer": d(st.sampled_from(
    ["sgd", "adam", "adamw", "lars", "lamb", torch.optim.SGD, torch.optim.Adam]))}),
    check=lambda r, c: expect(r in ("linear", "sqrt")), scalars={"optimizer": "int"})


def _scale_lr_check(result, c):
    k = c.kwargs["batch_size"] / c.kwargs["base_batch_size"]
    rule = c.kwargs["rule"]
    expected = c.kwargs["base_lr"] * (k if rule == "linear" else math.sqrt(k))
    expect(math.isclose(result, expected, rel_tol=1e-9), f"{result} != {expected}")


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
    check=lambda r, c: expect(math.isclose(r, c.kwargs["batch_size"] / c.kwargs["base_batch_size"])),
    scalars={"batch_size": "count", "base_batch_size": "count", "max_factor": "positive"})
add("adapt_regime", lambda d: Call(B.adapt_regime, {"regime": d(st.integers(1, 100)),
                                                    "batch_size": d(st.integers(1, 4096)),
                                                    "base_batch_size": d(st.integers(1, 512)),
                                                    "milestones": [0.5, 0.75]}),
    scalars={"batch_size": "count", "base_batch_size": "count", "max_factor": "positive",
             "milestone_unit": "str", "regime": "regime"})


def _norm_test_check(result, c):
    g = c.kwargs["per_sample_grads"].double()
    b = g.shape[0]
    mean = g.mean(0)
    variance = ((g - mean) ** 2).sum(1).sum() / (b - 1)
    expect(math.isclose(result.variance, variance.item(), rel_tol=1e-4, abs_tol=1e-9), "norm-test variance")


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
    check=lambda r, c: expect(0 <= r <= c.kwargs["num_layers"]),
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
        expect(math.isclose(norm.item(), c.kwargs["rho"], rel_tol=1e-4), "‖ε‖ != rho")


add("sam_epsilon", _sam_build, check=_sam_check, scalars={"rho": "nonneg", "eta": "nonneg", "eps": "positive",
                                                          "adaptive": "str"})
add("swa_lr_factor", lambda d: Call(B.swa_lr_factor, {"t": d(st.floats(0, 10)), "anneal_epochs": d(st.floats(0, 5)),
                                                      "anneal": d(st.sampled_from(["cos", "linear"]))}),
    check=lambda r, c: expect(0 <= r <= 1), scalars={"t": "nonneg", "anneal_epochs": "nonneg", "anneal": "str"})


def _swa_build(d):
    torch.manual_seed(d(seeds))
    return Call(B.swa_update, {"average": tiny_cnn(), "model": tiny_cnn(seed=1), "n_averaged": d(st.integers(0, 5))})


add("swa_update", _swa_build, check=lambda r, c: expect(r == c.kwargs["n_averaged"] + 1),
    scalars={"n_averaged": "count0", "average": "str", "model": "str"})


# ==================================================================================================================
# Public since the suite's merge (issue 21 follow-up): ConAdv, AGVM, Lanczos LR, BatchFormer, P×K batches, SAR/Tent,
# FRUGAL, WTA-CRS, SeTa, co-teaching, selective backprop's scoring resize.
from tests.reliability.strategies import labels  # noqa: E402

HOSTILE.setdefault("text", [3, None, b"x", 2.5])  # a str parameter where any string is legal (a name)
HOSTILE.setdefault("names", [3, None, "head", b"x"])  # a sequence of names (one string is not a list)
HOSTILE.setdefault("module", ["model", 3, None])  # an nn.Module


def _mlp_bn(seed=0, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, classes))


# ---- ConAdv
def _stale_run(model, refresh=True):
    copy = B.StaleCopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    if refresh:
        copy.refresh()
    return [p.detach().clone() for p in copy.model.parameters()], before


_stale_run.target = B.StaleCopy


def _stale_check(result, c):
    stale, before = result
    live = [p.detach() for p in c.kwargs["model"].parameters()]
    expected = live if c.kwargs["refresh"] else before
    expect(all(torch.equal(a, b) for a, b in zip(stale, expected)), "the copy does not hold the expected weights")


add("StaleCopy", lambda d: Call(_stale_run, {"model": _mlp_bn(d(seeds)).eval(), "refresh": d(st.booleans())}),
    check=_stale_check, scalars={"model": "module"})


def _rol_build(d):
    c = d(st.integers(2, 6))
    return Call(B.random_other_labels, {"y": labels(d, d(st.integers(0, 8)), c), "num_classes": c}, d(seeds),
                "generator")


add("random_other_labels", _rol_build,
    check=lambda r, c: expect(r.shape == c.kwargs["y"].shape and bool((r != c.kwargs["y"]).all())
                              and bool(((r >= 0) & (r < c.kwargs["num_classes"])).all()), "not another class"),
    scalars={"num_classes": "count"}, tensors=("y",),
    exempt={v: "integer labels: NaN/inf/huge do not exist" for v in ("nan", "inf", "huge")})


def _fgsm_build(d):
    model = tiny_cnn(seed=d(seeds))
    model.eval()
    n = d(st.integers(1, 3))
    return Call(B.targeted_fgsm, {"model": model, "x": images(d, n=(n, n), c=(3, 3), hw=(4, 8)),
                                  "target": labels(d, n, 4), "epsilon": d(st.floats(0, 0.1)),
                                  "step_size": d(st.floats(0, 0.1)), "random_start": d(st.floats(0, 1))},
                d(seeds), "generator")


def _fgsm_check(result, c):
    x, eps = c.kwargs["x"], c.kwargs["epsilon"]
    expect(result.shape == x.shape, "shape")
    expect(bool(((result - x).abs() <= eps + 1e-6).all()), "left the epsilon ball")
    expect(bool(((result >= 0) & (result <= 1)).all()), "left the bounds")


add("targeted_fgsm", _fgsm_build, check=_fgsm_check,
    scalars={"epsilon": "nonneg", "step_size": "nonneg", "random_start": "prob"}, tensors=("x", "target"),
    exempt={"extra_dim": "the user's model receives x as given and raises its own error",
            "int64": "the user's model holds its own parameters' dtype",
            "float64": "the user's model holds its own parameters' dtype",
            "meta": "the user's model holds its own parameters' device"})


# ---- AGVM
def _agvm_factors_check(result, c):
    k = c.kwargs
    phis, ref = k["phis"], k["reference"]
    eps = 1e-6
    expected = [math.sqrt(min(max((phis[ref] + eps) / (p + eps), k["low"]), k["high"])) for p in phis]
    expect(all(abs(a - b) < 1e-9 for a, b in zip(result, expected)), f"{result} != {expected}")


def _agvm_factors_build(d):
    phis = d(st.lists(st.floats(0, 2), min_size=1, max_size=5))
    low = d(st.floats(0.1, 1))
    return Call(B.agvm_factors, {"phis": phis, "reference": d(st.integers(0, len(phis) - 1)), "low": low,
                                 "high": d(st.floats(low, 20))})


add("agvm_factors", _agvm_factors_build, check=_agvm_factors_check,
    scalars={"reference": "count0", "low": "positive", "high": "positive", "eps": "positive", "phis": "int"})


def _gvp_build(d):
    shapes = [(d(st.integers(1, 3)), 2), (3,)]
    return Call(B.gradient_variance_proxy, {"grad_a": [tensor(d, s) for s in shapes],
                                            "grad_b": [tensor(d, s) for s in shapes]})


def _gvp_check(result, c):
    a = torch.cat([g.flatten() for g in c.kwargs["grad_a"]]).double()
    b = torch.cat([g.flatten() for g in c.kwargs["grad_b"]]).double()
    expected = 1 - float(a @ b / (a.norm() * b.norm())) if a.norm() > 0 and b.norm() > 0 else 1.0
    expect(abs(result - expected) < 1e-5, f"{result} != 1 - cos = {expected}")


add("gradient_variance_proxy", _gvp_build, check=_gvp_check, scalars={"grad_a": "int", "grad_b": "int"})


def _mgo_check(result, c):
    name, prefixes = c.kwargs["name"], c.kwargs["prefixes"]
    best = None
    for i, p in enumerate(prefixes):
        if (name == p or name.startswith(p + ".")) and (best is None or len(p) > len(prefixes[best])):
            best = i
    expect(result == best, f"{result} != {best}")


add("module_group_of", lambda d: Call(B.module_group_of, {
    "name": d(st.sampled_from(["head.fc.weight", "header.weight", "stem.0.bias", "head.weight"])),
    "prefixes": d(st.lists(st.sampled_from(["head", "head.fc", "stem", "stem.0", "body"]), min_size=1,
                           max_size=4, unique=True))}),
    check=_mgo_check, scalars={"name": "text", "prefixes": "names"})


def _agvm_run(model, groups, momentum=0.97, low=0.5, high=10.0):
    optimizer = torch.optim.SGD(model.parameters() if isinstance(model, nn.Module) else [nn.Parameter(torch.ones(1))],
                                lr=0.1)
    agvm = B.AGVM(model, optimizer, groups, momentum=momentum, low=low, high=high)
    return [len(g["params"]) for g in agvm.optimizer.param_groups] if hasattr(agvm, "optimizer") else agvm


_agvm_run.target = B.AGVM
add("AGVM", lambda d: Call(_agvm_run, {"model": _mlp_bn(d(seeds)), "groups": ["0", "3"],
                                       "momentum": d(st.floats(0, 0.99))}),
    scalars={"momentum": "prob_open", "low": "positive", "high": "positive", "groups": "names", "model": "module"})


# ---- Lanczos LR
def _hvp_build(d):
    w = tensor(d, (3,)).requires_grad_(True)
    a = tensor(d, (3, 3))
    sym = a + a.T
    loss = 0.5 * w @ sym @ w
    grads = torch.autograd.grad(loss, [w], create_graph=True)
    return Call(B.hessian_vector_product, {"grads": list(grads), "params": [w], "vector": tensor(d, (3,)),
                                           "_sym": sym})


def _hvp_run(grads, params, vector, _sym=None):
    return B.hessian_vector_product(grads, params, vector)


_hvp_run.target = B.hessian_vector_product


def _hvp_build2(d):
    c = _hvp_build(d)
    return Call(_hvp_run, c.kwargs)


add("hessian_vector_product", _hvp_build2,
    check=lambda r, c: expect(torch.allclose(r, c.kwargs["_sym"] @ c.kwargs["vector"], atol=1e-4), "H v"),
    tensors=("vector",), exempt={"meta": "autograd of the user's graph: a meta vector is torch's device error",
                                 "float64": "autograd of the user's float32 graph decides the dtype",
                                 "int64": "autograd of the user's float32 graph decides the dtype",
                                 "bool": "autograd of the user's float32 graph decides the dtype"})


def _lanczos_build(d):
    n = d(st.integers(1, 6))
    a = tensor(d, (n, n), dtype=torch.float64)
    sym = a + a.T
    return Call(B.lanczos, {"matvec": lambda v: sym @ v, "dim": n, "iterations": d(st.integers(1, 8)), "_sym": sym},
                d(seeds), "generator")


def _lanczos_run(matvec, dim, iterations=20, _sym=None, **kw):
    return B.lanczos(matvec, dim, iterations, **kw)


_lanczos_run.target = B.lanczos


def _lanczos_check(result, c):
    eig = torch.linalg.eigvalsh(c.kwargs["_sym"])
    expect(bool((result[1:] >= result[:-1] - 1e-9).all()), "not ascending")
    expect(float(result.max()) <= float(eig.max()) + 1e-6 and float(result.min()) >= float(eig.min()) - 1e-6,
           "a Ritz value outside the spectrum")
    if c.kwargs["iterations"] >= c.kwargs["dim"]:
        expect(torch.allclose(result.max(), eig.max(), atol=1e-6), "full Lanczos misses the top eigenvalue")


add("lanczos", lambda d: Call(_lanczos_run, _lanczos_build(d).kwargs, d(seeds), "generator"), check=_lanczos_check,
    scalars={"dim": "count", "iterations": "count"})


def _lss_check(result, c):
    lr, momentum = result
    expect(math.isfinite(lr) and lr > 0, f"lr {lr}")
    expect(momentum is None or 0 <= momentum < 1, f"momentum {momentum}")


add("lanczos_step_size", lambda d: Call(B.lanczos_step_size, {"lambda_max": d(st.floats(0.01, 100)),
                                                              "lambda_min": d(st.floats(-10, 10)),
                                                              "rule": d(st.sampled_from(["polyak", "inverse"]))}),
    check=_lss_check, scalars={"lambda_max": "positive", "lambda_min": "finite", "rule": "str",
                               "min_ratio": "prob", "lr_scale": "positive"})


def _the_build(d):
    model = nn.Linear(3, 1)
    torch.manual_seed(d(seeds))
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    return Call(B.top_hessian_eigenvalues, {"model": model, "loss_fn": lambda m: F.mse_loss(m(x), y),
                                            "iterations": d(st.integers(1, 6)), "_x": x}, d(seeds), "generator")


def _the_run(model, loss_fn, iterations=20, _x=None, **kw):
    return B.top_hessian_eigenvalues(model, loss_fn, iterations, **kw)


_the_run.target = B.top_hessian_eigenvalues


def _the_check(result, c):
    x = c.kwargs["_x"]
    xb = torch.cat([x, torch.ones(8, 1)], 1).double()
    eig = torch.linalg.eigvalsh(2 * xb.T @ xb / 8)  # MSE Hessian of a linear model: 2 X^T X / n
    top, bottom = result
    expect(top <= float(eig.max()) + 1e-4 and bottom >= float(eig.min()) - 1e-4 and bottom <= top + 1e-9,
           f"{result} outside the spectrum {eig.tolist()}")
    if c.kwargs["iterations"] >= 4:
        expect(abs(top - float(eig.max())) < 1e-3 * max(1.0, float(eig.max())), f"{top} != {float(eig.max())}")


add("top_hessian_eigenvalues", lambda d: Call(_the_run, _the_build(d).kwargs, d(seeds), "generator"),
    check=_the_check, scalars={"iterations": "count", "model": "module"})


# ---- BatchFormer
def _bf_build(d):
    dim = d(st.sampled_from([4, 8]))
    return Call(ModuleFn(B.BatchFormer, ("x",)), {"dim": dim, "nhead": d(st.sampled_from([1, 2, 4])),
                                                  "dropout": 0.0, "x": tensor(d, (d(st.integers(1, 5)), dim))})


add("BatchFormer", _bf_build,
    check=lambda r, c: expect(r.shape == (2 * c.kwargs["x"].shape[0], c.kwargs["dim"])
                              and torch.equal(r[:c.kwargs["x"].shape[0]], c.kwargs["x"]), "[X; X'] in training"),
    scalars={"dim": "count", "nhead": "count", "dim_feedforward": "count", "dropout": "prob_open"}, tensors=("x",))
ENTRIES[-1].aliases = ("features",)  # the functional's name of the forward's x


def _bf_head_run(head, batchformer, x):
    return B.BatchFormerHead(head, batchformer)(x)


_bf_head_run.target = B.BatchFormerHead


def _bf_head_build(d):
    from regimen.models import ClassifierHead
    torch.manual_seed(d(seeds))
    return Call(_bf_head_run, {"head": ClassifierHead(8, 3), "batchformer": B.BatchFormer(8, 2, dropout=0.0),
                               "x": tensor(d, (d(st.integers(1, 4)), 8, 2, 2))})


add("BatchFormerHead", _bf_head_build,
    check=lambda r, c: expect(r.shape == (2 * c.kwargs["x"].shape[0], 3), "(2N, K) logits in training"),
    scalars={"head": "module", "batchformer": "module"}, tensors=("x",),
    exempt={v: "the user's head receives x as given (torch.nn's convention for its layers)"
            for v in ("extra_dim", "int64", "bool", "float64", "meta")})


def _apply_bf_build(d):
    from regimen.models import ClassifierHead
    torch.manual_seed(d(seeds))
    model = nn.Sequential(nn.Conv2d(3, 8, 3), ClassifierHead(8, 3))
    return Call(B.apply_batchformer, {"model": model, "nhead": d(st.sampled_from([1, 2, 4])), "dropout": 0.0,
                                      "module": "1"})


add("apply_batchformer", _apply_bf_build,
    check=lambda r, c: expect(c.kwargs["model"].train()(torch.rand(2, 3, 6, 6)).shape == (4, 3), "(2N, K) logits"),
    scalars={"nhead": "count", "dim_feedforward": "count", "dropout": "prob_open", "lr_mult": "positive",
             "module": "text", "model": "module"})


def _bfn_build(d):
    dim = d(st.sampled_from([4, 8]))
    torch.manual_seed(d(seeds))
    layer = nn.TransformerEncoderLayer(dim, 2, dim, dropout=0.0, batch_first=d(st.booleans()))
    return Call(B.batch_former, {"features": tensor(d, (d(st.integers(1, 5)), dim)), "layer": layer.eval()})


def _bfn_check(result, c):
    layer, x = c.kwargs["layer"], c.kwargs["features"]
    seq = x.unsqueeze(0) if layer.self_attn.batch_first else x.unsqueeze(1)
    expected = layer(seq).squeeze(0 if layer.self_attn.batch_first else 1)
    expect(torch.allclose(result, expected, atol=1e-5), "the batch as one sequence")


add("batch_former", _bfn_build, check=_bfn_check, scalars={"layer": "module"}, tensors=("features",),
    exempt={v: "the user's layer holds its own parameters' dtype and device" for v in ("float64", "meta")})


def _pk_indices_build(d):
    from regimen.losses import PKSampler
    p, k = d(st.integers(1, 4)), d(st.integers(1, 3))
    return Call(B.pk_batch_indices, {"sampler": PKSampler(torch.arange(12) % 4, p, k,
                                                          generator=torch.Generator().manual_seed(d(seeds)))})


def _pk_indices_check(result, c):
    s = c.kwargs["sampler"]
    expect(result.dtype == torch.int64 and result.shape == (s.p * s.k,), "P*K int64 indices")
    classes = (torch.arange(12) % 4)[result].view(s.p, s.k)
    expect(bool((classes == classes[:, :1]).all()) and len(set(classes[:, 0].tolist())) == s.p, "P classes x K")


add("pk_batch_indices", _pk_indices_build, check=_pk_indices_check, scalars={"sampler": "int"})


# ---- SAR / Tent
def _entropy_check(result, c):
    p = c.kwargs["logits"].double().softmax(1)
    expected = -(p * p.clamp_min(1e-300).log()).sum(1)
    expect(torch.allclose(result.double(), expected, atol=1e-5), "entropy formula")


add("softmax_entropy", lambda d: Call(B.softmax_entropy, {"logits": tensor(d, (d(st.integers(1, 5)),
                                                                               d(st.integers(1, 6))))}),
    check=_entropy_check, tensors=("logits",))


def _naff_build(d):
    return Call(B.norm_affine_parameters, {"model": _mlp_bn(d(seeds)), "ignore": d(st.sampled_from([(), ["1"]]))})


add("norm_affine_parameters", _naff_build,
    check=lambda r, c: expect([n for n, _ in r] == ([] if c.kwargs["ignore"] else ["1.weight", "1.bias"]), f"{r}"),
    scalars={"ignore": "names", "model": "module"})


def _adapter_run(cls, method_args, x):
    def run(model, x, **kwargs):
        adapter = cls(model, **kwargs)
        return adapter(x)
    return run


def _sar_run(model, x, **kwargs):
    return B.SAR(model, **kwargs)(x)


def _tent_run(model, x, **kwargs):
    return B.Tent(model, **kwargs)(x)


_sar_run.target, _tent_run.target = B.SAR, B.Tent
_ADAPT_EXEMPT = {v: "the user's model receives x as given (torch.nn's convention for its layers)"
                 for v in ("extra_dim", "int64", "bool", "float64", "meta", "empty")}
add("SAR", lambda d: Call(_sar_run, {"model": _mlp_bn(d(seeds)), "x": tensor(d, (d(st.integers(2, 6)), 5)),
                                     "lr": d(st.floats(1e-4, 0.1)), "rho": d(st.floats(0.01, 0.1))}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 3), "(N, C) predictions"),
    scalars={"lr": "positive", "momentum": "prob_open", "rho": "positive", "reset_constant": "nonneg",
             "ema_momentum": "prob_open", "ignore": "names", "copy": "bool", "model": "module"},
    tensors=("x",), exempt=_ADAPT_EXEMPT)
add("Tent", lambda d: Call(_tent_run, {"model": _mlp_bn(d(seeds)), "x": tensor(d, (d(st.integers(2, 6)), 5)),
                                       "lr": d(st.floats(1e-4, 0.1))}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 3), "(N, C) predictions"),
    scalars={"lr": "positive", "momentum": "prob_open", "ignore": "names", "copy": "bool", "model": "module"},
    tensors=("x",), exempt=_ADAPT_EXEMPT)


def _adapt_build(d):
    model = _mlp_bn(d(seeds))
    model.eval()
    return Call(B.adapt, {"model": model, "batches": [tensor(d, (3, 5)) for _ in range(d(st.integers(1, 3)))],
                          "method": d(st.sampled_from(["sar", "tent", "none"]))})


def _adapt_check(result, c):
    predictions, adapter = result
    expect(predictions.shape[0] == 3 * len(c.kwargs["batches"]), "one prediction per input")
    if c.kwargs["method"] == "none":
        expected = c.kwargs["model"](torch.cat(c.kwargs["batches"])).argmax(1)
        expect(adapter is None and torch.equal(predictions, expected), "method none predicts with the model itself")


add("adapt", _adapt_build, check=_adapt_check, scalars={"method": "str", "model": "module"})


# ---- FRUGAL
def _frugal_run(params, steps=2, **kwargs):
    torch.manual_seed(0)
    opt = B.FRUGAL(params, **kwargs)
    for _ in range(steps):
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
    return [p.detach().clone() for p in params]


_frugal_run.target = B.FRUGAL


def _frugal_build(d):
    torch.manual_seed(d(seeds))
    params = [nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4))]
    return Call(_frugal_run, {"params": params, "density": d(st.floats(0, 1)), "update_gap": d(st.integers(1, 3)),
                              "projection": d(st.sampled_from(["rows", "columns", "random"])) if False else "rows",
                              "free": d(st.sampled_from(["sign", "sgd"]))})


add("FRUGAL", _frugal_build,
    scalars={"lr": "positive", "eps": "positive", "weight_decay": "nonneg", "density": "prob", "update_gap": "count",
             "projection": "str", "free": "str", "free_lr_ratio": "nonneg", "seed": "int"})


def _osb_build(d):
    torch.manual_seed(d(seeds))
    p = nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    return Call(B.optimizer_state_bytes, {"optimizer": opt})


add("optimizer_state_bytes", _osb_build,
    check=lambda r, c: expect(r == sum(t.numel() * t.element_size() for s in c.kwargs["optimizer"].state.values()
                                       for t in s.values() if isinstance(t, torch.Tensor)), f"{r}"),
    scalars={"optimizer": "int"})


# ---- WTA-CRS
def _wta_linear_run(x, **kwargs):
    layer = B.WTACRSLinear(**kwargs)
    out = layer(x)
    out.sum().backward()
    return out, layer.weight.grad


_wta_linear_run.target = B.WTACRSLinear
add("WTACRSLinear", lambda d: Call(_wta_linear_run, {"in_features": 4, "out_features": 3,
                                                     "ratio": d(st.floats(0.1, 1)), "min_k": d(st.integers(1, 4)),
                                                     "x": tensor(d, (d(st.integers(1, 8)), 4))},
                                   d(seeds), "generator"),
    check=lambda r, c: expect(r[0].shape == (c.kwargs["x"].shape[0], 3) and r[1].shape == (3, 4), "shapes"),
    scalars={"in_features": "count", "out_features": "count", "bias": "bool", "ratio": "prob", "min_k": "count",
             "grad_norm": "str"}, tensors=("x",),
    exempt={"int64": "a layer with float32 parameters (torch.nn's dtype rule)",
            "bool": "a layer with float32 parameters (torch.nn's dtype rule)",
            "float64": "a layer with float32 parameters (torch.nn's dtype rule)",
            "meta": "a layer with float32 CPU parameters (torch.nn's device rule)",
            "not_a_tensor": "F.linear's own TypeError names its input, as nn.Linear's",
            "noncontiguous": "the sampled weight gradient depends on the row norms' last bits (another layout sums "
                             "in another order); the output is exact and checked by the valid-input property",
            "expanded": "identical rows: ties among the row norms, broken by their last bits (as noncontiguous)"})


def _apply_wta_build(d):
    torch.manual_seed(d(seeds))
    return Call(B.apply_wta_crs, {"model": nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(),
                                                         nn.Linear(5, 2)),
                                  "ratio": d(st.floats(0.1, 1)), "min_k": d(st.integers(1, 4)),
                                  "include_last": d(st.booleans())})


add("apply_wta_crs", _apply_wta_build,
    check=lambda r, c: expect(r == (["0", "2", "4"] if c.kwargs["include_last"] else ["0", "2"]), f"{r}"),
    scalars={"ratio": "prob", "min_k": "count", "ignore": "names", "include_last": "bool", "grad_norm": "str",
             "model": "module"})


def _crs_build(fn):
    def build(d):
        n = d(st.integers(1, 8))
        return Call(fn, {"scores": tensor(d, (n,), 0.0, 2.0), "k": d(st.integers(1, n))}, d(seeds), "generator")
    return build


def _crs_check(result, c):
    idx, w = result
    n, k = c.kwargs["scores"].numel(), c.kwargs["k"]
    expect(idx.shape == (k,) and w.shape == (k,), "k rows and weights")
    expect(bool(((idx >= 0) & (idx < n)).all()) and bool((w > 0).all()), "indices in range, positive weights")


def _wta_sample_check(result, c):
    _crs_check(result, c)
    scores = c.kwargs["scores"].double()
    g = torch.Generator().manual_seed(c.seed)
    # unbiasedness of sum_t w_t A_{i_t} for A = one-hot rows: the mean over many draws approaches 1 per row
    if scores.min() > 0.3 * scores.max():  # rare rows have a heavy-tailed weight: checked where 2000 draws suffice
        total = torch.zeros(scores.numel(), dtype=torch.float64)
        for _ in range(2000):
            i, w = B.wta_crs_sample(c.kwargs["scores"], c.kwargs["k"], generator=g)
            total.index_add_(0, i, w.double())
        expect(bool(((total / 2000 - 1).abs() < 0.3).all()), f"not unbiased: {(total / 2000).tolist()}")


add("crs_sample", _crs_build(B.crs_sample), check=_crs_check, scalars={"k": "count"}, tensors=("scores",))
add("wta_crs_sample", _crs_build(B.wta_crs_sample), check=_wta_sample_check, scalars={"k": "count"},
    tensors=("scores",))


def _wgrad_build(d):
    n = d(st.integers(1, 8))
    return Call(B.wta_crs_weight_grad, {"x": tensor(d, (n, 4)), "grad_output": tensor(d, (n, 3)),
                                        "ratio": d(st.sampled_from([0.3, 1.0])), "min_k": d(st.integers(1, 4))},
                d(seeds), "generator")


def _wgrad_check(result, c):
    k = c.kwargs
    expect(result.shape == (3, 4), "(out, in)")
    n = k["x"].shape[0]
    if k["ratio"] == 1.0 or k["min_k"] >= n:  # every row kept: exact
        expect(torch.allclose(result, k["grad_output"].T @ k["x"], atol=1e-4), "all rows: the exact gradient")


add("wta_crs_weight_grad", _wgrad_build, check=_wgrad_check, scalars={"ratio": "prob", "min_k": "count"},
    tensors=("x", "grad_output"))


# ---- SeTa
def _kmeans_build(d):
    n = d(st.integers(1, 12))
    return Call(B.kmeans_1d, {"values": tensor(d, (n,)), "num_groups": d(st.integers(1, n))})


def _kmeans_check(result, c):
    v, g = c.kwargs["values"], c.kwargs["num_groups"]
    expect(result.shape == v.shape and int(result.min()) >= 0 and int(result.max()) < g, "labels in range")
    means = [v[result == i].mean() for i in range(g) if (result == i).any()]
    expect(all(a <= b for a, b in zip(means, means[1:])), "groups not numbered by increasing mean")
    if len(set(v.tolist())) > 1:  # Lloyd's fixed point: each value is nearest its own group's mean
        centres = torch.stack(means)
        nearest = (v[:, None] - centres[None]).abs()
        own = nearest.gather(1, torch.bucketize(result, torch.tensor(
            [i for i in range(g) if (result == i).any()])).unsqueeze(1)).squeeze(1)
        expect(bool((own <= nearest.min(1).values + 1e-5).all()), "not a Lloyd fixed point")


add("kmeans_1d", _kmeans_build, check=_kmeans_check, scalars={"num_groups": "count", "iterations": "count0"},
    tensors=("values",))


def _seta_build(d):
    n = d(st.integers(10, 20))  # at least one score survives the largest prune (keep >= 0.1)
    epochs = d(st.integers(1, 6))
    prune = d(st.floats(0, 0.9))
    kept = int(n * min(1.0, max(0.1, 1.0 - prune)))
    return Call(B.seta_select, {"scores": tensor(d, (n,)), "epoch": d(st.integers(0, epochs - 1)), "epochs": epochs,
                                "prune_ratio": prune, "num_groups": d(st.integers(1, max(1, min(5, kept))))},
                d(seeds), "generator")


def _seta_check(result, c):
    n = c.kwargs["scores"].numel()
    expect(result.dim() == 1 and 1 <= result.numel() <= n, "kept indices")
    expect(bool((result[1:] > result[:-1]).all()) and int(result.min()) >= 0 and int(result.max()) < n, "sorted")


add("seta_select", _seta_build, check=_seta_check,
    scalars={"epoch": "count0", "epochs": "count", "prune_ratio": "prob_open", "num_groups": "count",
             "window_scale": "prob", "anneal": "prob"}, tensors=("scores",))


def _seta_window_build(d):
    g = d(st.integers(1, 10))
    return Call(B.seta_window, {"num_groups": g, "window_scale": d(st.floats(1 / g, 1))})


add("seta_window", _seta_window_build,
    check=lambda r, c: expect(r == max(1, round(c.kwargs["num_groups"] * c.kwargs["window_scale"])), f"{r}"),
    scalars={"num_groups": "count", "window_scale": "prob"})


def _sliding_build(d):
    g = d(st.integers(1, 10))
    return Call(B.sliding_window, {"num_groups": g, "window": d(st.integers(1, g)), "epoch": d(st.integers(0, 20))})


def _sliding_check(result, c):
    g, w, e = c.kwargs["num_groups"], c.kwargs["window"], c.kwargs["epoch"]
    start = 0 if e == 0 else e % (g - w + 1)
    expect(result == ((0, g) if e == 0 else (start, start + w)), f"{result}")


add("sliding_window", _sliding_build, check=_sliding_check,
    scalars={"num_groups": "count", "window": "count", "epoch": "count0"})


# ---- co-teaching
def _cte_run(first, second, x):
    return B.CoTeachingEnsemble(first, second)(x)


_cte_run.target = B.CoTeachingEnsemble


def _cte_build(d):
    a, b = _mlp_bn(d(seeds)).eval(), _mlp_bn(d(seeds)).eval()
    return Call(_cte_run, {"first": a, "second": b, "x": tensor(d, (d(st.integers(1, 4)), 5))})


add("CoTeachingEnsemble", _cte_build,
    check=lambda r, c: expect(torch.allclose(r, (c.kwargs["first"](c.kwargs["x"]) + c.kwargs["second"](
        c.kwargs["x"])) / 2, atol=1e-6), "mean of the two outputs"),
    scalars={"first": "module", "second": "module"})


def _ct_select_build(d):
    n = d(st.integers(1, 8))
    return Call(B.coteaching_select, {"loss_a": tensor(d, (n,), 0, 3), "loss_b": tensor(d, (n,), 0, 3),
                                      "forget_rate": d(st.floats(0, 0.95))})


def _ct_select_check(result, c):
    n = c.kwargs["loss_a"].numel()
    # the source's 1e-9 guard: (1 - R)·N computed as 6.999999999999999 keeps 7 (a forget rate below ~1e-9 keeps all)
    keep = max(1, math.floor((1 - c.kwargs["forget_rate"]) * n + 1e-9))
    for got, loss in zip(result, (c.kwargs["loss_a"], c.kwargs["loss_b"])):
        expected = sorted(range(n), key=lambda i: (float(loss[i]), i))[:keep]
        expect(got.tolist() == expected, f"{got.tolist()} != {expected}")


add("coteaching_select", _ct_select_build, check=_ct_select_check, scalars={"forget_rate": "prob_open"},
    tensors=("loss_a", "loss_b"))


def _ct_losses_build(d):
    n = d(st.integers(1, 8))
    return Call(B.coteaching_losses, {"output_a": tensor(d, (n, 3)), "output_b": tensor(d, (n, 3)),
                                      "target": labels(d, n, 3), "forget_rate": d(st.floats(0, 0.95))})


def _ct_losses_check(result, c):
    k = c.kwargs
    la = F.cross_entropy(k["output_a"], k["target"], reduction="none")
    lb = F.cross_entropy(k["output_b"], k["target"], reduction="none")
    keep_a, keep_b = B.coteaching_select(la.detach(), lb.detach(), k["forget_rate"])
    expect(torch.allclose(result[0], la[keep_b].mean(), atol=1e-5) and
           torch.allclose(result[1], lb[keep_a].mean(), atol=1e-5), "a learns on b's picks and b on a's")


add("coteaching_losses", _ct_losses_build, check=_ct_losses_check, scalars={"forget_rate": "prob_open"},
    tensors=("output_a", "output_b", "target"))


def _fra_check(result, c):
    k = c.kwargs
    t, tau, ramp, start = k["epoch"], k["forget_rate"], k["ramp_epochs"], k["start_epoch"]
    expected = 0.0 if t < start else (tau if ramp == 0 else tau * min(1.0, (t - start) / ramp))
    expect(abs(result - expected) < 1e-12, f"{result} != {expected}")


add("forget_rate_at", lambda d: Call(B.forget_rate_at, {"epoch": d(st.integers(0, 20)),
                                                        "forget_rate": d(st.floats(0, 0.95)),
                                                        "ramp_epochs": d(st.integers(0, 10)),
                                                        "start_epoch": d(st.integers(0, 5))}),
    check=_fra_check, scalars={"epoch": "count0", "forget_rate": "prob_open", "ramp_epochs": "count0",
                               "start_epoch": "count0"})


# ---- selective backprop's scoring resize
def _dfs_check(result, c):
    x, s = c.kwargs["x"], c.kwargs["scale_factor"]
    if s == 1.0:
        expect(result is x, "scale 1 returns x itself")
        return
    expected = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    expect(result.shape == expected.shape and torch.allclose(result, expected, atol=1e-6), "bilinear resize")


add("downsample_for_scoring", lambda d: Call(B.downsample_for_scoring, {
    "x": images(d, hw=(2, 12)), "scale_factor": d(st.sampled_from([0.5, 0.75, 1.0]))}),
    check=_dfs_check, scalars={"scale_factor": "prob"}, tensors=("x",))
