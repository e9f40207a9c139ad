"""Fuzz entries of regimen.subnet's Once-for-All (ofa.py) and ElasticViT samplers (elastic_samplers.py)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from regimen.models import resnet
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import seeds, tensor

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "subnet")
SKIPPED = {
    "subnet.SubnetSetting": "a frozen dataclass of values (built and validated by OnceForAll.setting, fuzzed there)",
}

_DTYPES = {v: "a module's dtype is the user's model's; torch reports the mismatch" for v in ("int64", "bool",
                                                                                             "float64")}


def _kernels(d):
    return d(st.sampled_from([(1, 3), (3, 5), (1, 3, 5), (3, 5, 7)]))


# ----------------------------------------------------------------------------------------------------- functional
def _crop_build(d):
    size = d(st.sampled_from([1, 3, 5, 7]))
    kernel = d(st.sampled_from([k for k in (1, 3, 5, 7) if k <= size]))
    return Call(S.centre_crop_kernel, {"weight": tensor(d, (d(st.integers(1, 3)), d(st.integers(1, 3)), size, size)),
                                       "kernel": kernel})


add("centre_crop_kernel", _crop_build,
    check=lambda r, c: expect(r.shape[-1] == c.kwargs["kernel"]), scalars={"kernel": "count"}, tensors=("weight",),
    exempt={"extra_dim": "a leading dimension is a valid batch of kernels",
            "empty": "an empty channel dimension is a valid empty weight"})


def _transform_build(d):
    kernels = _kernels(d)
    weight = tensor(d, (d(st.integers(1, 3)), d(st.integers(1, 3)), kernels[-1], kernels[-1]))
    matrices = [torch.eye(k * k) + 0.1 * tensor(d, (k * k, k * k)) for k in kernels[:-1]]
    return Call(S.transform_kernel, {"weight": weight, "kernels": kernels, "kernel": d(st.sampled_from(kernels)),
                                     "matrices": matrices})


def _transform_check(result, c):
    k = c.kwargs["kernel"]
    expect(result.shape == (*c.kwargs["weight"].shape[:-2], k, k))
    if k == c.kwargs["kernels"][-1]:
        expect(torch.equal(result, c.kwargs["weight"]))


add("transform_kernel", _transform_build, check=_transform_check, scalars={"kernel": "count", "kernels": "str"},
    tensors=("weight",),
    exempt={"extra_dim": "a leading dimension is a valid batch of kernels",
            "empty": "an empty channel dimension is a valid empty weight"})

add("check_kernels", lambda d: Call(S.check_kernels, {"kernels": _kernels(d)}),
    check=lambda r, c: expect(r == tuple(c.kwargs["kernels"])), scalars={"kernels": "str"})

add("progressive_phases",
    lambda d: Call(S.progressive_phases, {"phase_epochs": [d(st.integers(0, 3)) for _ in range(4)],
                                          "kernels": _kernels(d), "depths": (1, 2, 3), "widths": (0.5, 1.0)}),
    check=lambda r, c: expect(len(r) == len(c.kwargs["kernels"]) - 1 + 2 + 1
                              and [e[0] for e in r] == sorted(e[0] for e in r)),
    scalars={"phase_epochs": "str"})


def _recal_build(d):
    torch.manual_seed(d(seeds))
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3))
    return Call(S.recalibrate_batch_norm, {"model": model, "batches": [tensor(d, (d(st.integers(2, 4)), 2, 4, 4))]})


add("recalibrate_batch_norm", _recal_build,
    check=lambda r, c: expect(torch.isfinite(r[1].running_mean).all() and (r[1].running_var >= 0).all()))


def _apply_build(d):
    return Call(S.apply_elastic_kernel, {"model": resnet(widths=(2, 4), depths=(1, 1), kernel_size=5),
                                         "kernels": d(st.sampled_from([(3, 5), (1, 3, 5), (1, 5)]))})


add("apply_elastic_kernel", _apply_build, check=lambda r, c: expect(len(r) == 5), scalars={"kernels": "str"})


# --------------------------------------------------------------------------------------------------------- modules
def _conv_run(kernels, in_channels, x, active, seed):
    torch.manual_seed(seed)
    conv = S.ElasticKernelConv2d(in_channels, 2, kernels)
    conv.active_kernel = active
    return conv(x)


_conv_run.target = S.ElasticKernelConv2d


def _conv_build(d):
    kernels = _kernels(d)
    c = d(st.integers(1, 3))
    return Call(_conv_run, {"kernels": kernels, "in_channels": c, "active": d(st.sampled_from(kernels)),
                            "seed": d(seeds),
                            "x": tensor(d, (d(st.integers(1, 3)), c, d(st.integers(1, 8)), d(st.integers(1, 8))))})


add("ElasticKernelConv2d", _conv_build,
    check=lambda r, c: expect(r.shape[-2:] == c.kwargs["x"].shape[-2:] and r.shape[1] == 2),
    scalars={"kernels": "str", "in_channels": "count"}, tensors=("x",),
    exempt={**_DTYPES, "meta": "a meta input against CPU weights is torch's device error",
            "extra_dim": "a 5-d input is torch's conv2d shape error", "empty": "torch's conv2d takes an empty batch",
            "not_a_tensor": "nn.Conv2d's own forward: torch's type error"})


def _ofa_run(x, depth, width, kernel, seed):
    torch.manual_seed(seed)
    supernet = S.OnceForAll(resnet(widths=(2, 4), depths=(2, 2), kernel_size=5), torch.zeros(1, 1, 8, 8),
                            kernels=(3, 5), depths=(1, 2), widths=(0.5, 1.0))
    return supernet(x, depth=depth, width=width, kernel=kernel)


_ofa_run.target = S.OnceForAll


add("OnceForAll",
    lambda d: Call(_ofa_run, {"x": tensor(d, (d(st.integers(1, 3)), 1, 8, 8)), "depth": d(st.sampled_from([1, 2])),
                              "width": d(st.sampled_from([0.5, 1.0])), "kernel": d(st.sampled_from([3, 5])),
                              "seed": d(seeds)}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 10)),
    scalars={"depth": "count_or_none", "kernel": "count_or_none"}, tensors=("x",),  # forward's None: the largest
    exempt={**_DTYPES, "meta": "a meta input against CPU weights is torch's device error",
            "extra_dim": "a 5-d input is torch's conv2d shape error", "empty": "torch's conv2d takes an empty batch",
            "not_a_tensor": "the wrapped model's forward: torch's type error"})


# -------------------------------------------------------------------------------------------------------- samplers
add("adjacent_bucket_step",
    lambda d: Call(S.adjacent_bucket_step, {"bucket": 0, "buckets": d(st.integers(1, 6))}, d(seeds), "generator"),
    check=lambda r, c: expect(0 <= r <= 1), scalars={"bucket": "count0", "buckets": "count"})


def _costs(d):
    return d(st.lists(st.floats(0, 1e9), min_size=1, max_size=12))


def _buckets_build(d):
    costs = _costs(d)
    return Call(S.cost_buckets, {"costs": costs, "buckets": d(st.integers(1, len(costs)))})


add("cost_buckets", _buckets_build,
    check=lambda r, c: expect(sorted(i for b in r for i in b) == list(range(len(c.kwargs["costs"])))
                              and all(r)),
    scalars={"buckets": "count"})


def _sampler_run(cls, costs, buckets, n, seed, **kwargs):
    sampler = cls(costs, buckets, generator=torch.Generator().manual_seed(seed), **kwargs)
    return sampler, sampler.sample(n)


def _complexity_run(costs, buckets, n, seed):
    return _sampler_run(S.ComplexityAwareSampler, costs, buckets, n, seed)


def _performance_run(costs, buckets, n, seed, bank_size, bank_prob):
    return _sampler_run(S.PerformanceAwareSampler, costs, buckets, n, seed, bank_size=bank_size, bank_prob=bank_prob)


_complexity_run.target = S.ComplexityAwareSampler
_performance_run.target = S.PerformanceAwareSampler


def _sampler_check(result, c):
    sampler, picked = result
    expect(len(picked) == c.kwargs["n"] and all(sampler.bucket_of(i) == sampler.bucket for i in picked))


def _sampler_build(d, performance=False):
    costs = _costs(d)
    kwargs = {"costs": costs, "buckets": d(st.integers(1, len(costs))), "n": d(st.integers(1, 4)), "seed": d(seeds)}
    if performance:
        kwargs.update(bank_size=d(st.integers(1, 10)), bank_prob=d(st.floats(0, 1)))
    return Call(_performance_run if performance else _complexity_run, kwargs)


add("ComplexityAwareSampler", _sampler_build, check=_sampler_check, scalars={"buckets": "count", "n": "count"})
add("PerformanceAwareSampler", lambda d: _sampler_build(d, True), check=_sampler_check,
    scalars={"buckets": "count", "n": "count", "bank_size": "count", "bank_prob": "prob"})
