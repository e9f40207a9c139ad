"""Fuzz entries of regimen.subnet."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import regimen.subnet as S
from tests.reliability.fuzzlib import Call, Entry, entry_adder, expect
from tests.reliability.strategies import ModuleFn, images, mlp, seeds, tensor, tiny_cnn

ENTRIES: list[Entry] = []
add = entry_adder(ENTRIES, "subnet")
SKIPPED = {
    "subnet.DependencyGraph": "a dataclass result of trace_dependencies (fuzzed there)",
    "subnet.Group": "a dataclass of the dependency graph (built by dependency_groups, fuzzed there)",
    "subnet.Slice": "a dataclass of the dependency graph (built by dependency_groups, fuzzed there)",
    "subnet.UntraceableError": "an exception type (raised, not called)",
    "subnet.IMPORTANCES": "a constant tuple of importance names; group_scores is fuzzed with each",
    "subnet.Importance": "a typing alias (Literal of importance names), not a callable",
    "subnet.PruneReport": "a dataclass result of prune (fuzzed there)",
    "subnet.to_semi_structured": "CUDA only (refuses CPU models by design); tests/subnet/test_nm.py checks the "
                                 "refusal",
    "subnet.load_pruned": "reads files: fuzzed with hostile files in test_hostile_files.py",
    "subnet.save_pruned": "writes files: fuzzed with hostile files (its output) in test_hostile_files.py",
}


def _mlp(seed=0):
    return mlp(seed, (6, 8, 8, 3))


def _example(n=2):
    return torch.randn(n, 6)


# ------------------------------------------------------------------------------------------- attention
def _ssa_build(d):
    b, h, t, dim = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(1, 8)), d(st.integers(1, 4))
    keep = d(st.integers(1, t))
    kept = S.sample_kept_positions(b, t, keep, torch.Generator().manual_seed(d(seeds)))
    return Call(S.subsampled_causal_attention, {"q": tensor(d, (b, h, t, dim)), "k": tensor(d, (b, h, t, dim)),
                                                "v": tensor(d, (b, h, t, dim)), "kept": kept})


def _ssa_check(result, c):
    q, k, v, kept = (c.kwargs[n] for n in ("q", "k", "v", "kept"))
    b, h, t, dim = q.shape
    scale = 1 / math.sqrt(dim)
    expected = torch.empty_like(q)
    for i in range(b):  # the loop reference: each query attends to the kept earlier keys and itself
        for j in range(t):
            keys = [p for p in kept[i].tolist() if p < j] + [j]
            logits = (q[i, :, j:j + 1] @ k[i, :, keys].transpose(-1, -2)) * scale
            expected[i, :, j] = (logits.softmax(-1) @ v[i, :, keys])[:, 0]
    expect(torch.allclose(result, expected, atol=1e-5), "subsampled attention differs from the loop")


add("subsampled_causal_attention", _ssa_build, check=_ssa_check, scalars={"scale": "finite"},
    tensors=("q", "k", "v", "kept"))
add("sample_kept_positions", lambda d: Call(S.sample_kept_positions, {
    "batch": d(st.integers(0, 3)), "length": (t := d(st.integers(1, 10))), "keep": d(st.integers(1, t))},
    d(seeds), "generator"),
    check=lambda r, c: expect(r.shape == (c.kwargs["batch"], c.kwargs["keep"]) and all(
        len(set(row)) == len(row) and row == sorted(row) for row in r.tolist())),
    scalars={"batch": "count0", "length": "count", "keep": "count"})


def _pmha_build(d):
    e = d(st.sampled_from([4, 8]))
    return Call(ModuleFn(S.PrunedMultiheadAttention, ("query", "key", "value")), {
        "embed_dim": e, "num_heads": d(st.integers(1, 3)), "head_dim": d(st.integers(1, 4)), "batch_first": True,
        "query": (x := tensor(d, (d(st.integers(1, 3)), d(st.integers(1, 5)), e))), "key": x, "value": x})


add("PrunedMultiheadAttention", _pmha_build,
    check=lambda r, c: expect(r[0].shape == c.kwargs["query"].shape),
    scalars={"embed_dim": "count", "num_heads": "count", "head_dim": "count", "dropout": "prob_open",
             "bias": "bool", "batch_first": "bool"}, tensors=("query",))


# ------------------------------------------------------------------------------------------- dependency
def _graph_build(fn):
    def build(d):
        return Call(fn, {"model": _mlp(d(seeds)), "example_inputs": _example()})
    return build


add("dependency_groups", _graph_build(S.dependency_groups), check=lambda r, c: expect(len(r) == 2),
    scalars={"tracer": "str", "model": "str"})
add("trace_dependencies", _graph_build(S.trace_dependencies), check=lambda r, c: expect(len(r.groups) == 2),
    scalars={"tracer": "str", "model": "str"})
add("normalize_inputs", lambda d: Call(S.normalize_inputs, {"example_inputs": d(st.sampled_from(
    [torch.zeros(1), (torch.zeros(1), torch.ones(2)), {"x": torch.zeros(1)}, [torch.zeros(2)]]))}),
    check=lambda r, c: expect(isinstance(r[0], tuple) and isinstance(r[1], dict)),
    scalars={"example_inputs": "int"})


def _units_build(fn, **extra):
    def build(d):
        model = _mlp(d(seeds))
        group = S.dependency_groups(model, _example())[0]
        units = sorted(set(d(st.lists(st.integers(0, group.size - 1), min_size=1, max_size=3))))
        return Call(fn, {"model": model, "group": group, "units": units, **extra})
    return build


add("zero_units", _units_build(S.zero_units),
    check=lambda r, c: expect(bool((c.kwargs["model"][0].weight[c.kwargs["units"]] == 0).all())),
    scalars={"units": "str", "roles": "int", "group": "str"})
add("scale_units", _units_build(S.scale_units, factor=0.5),
    scalars={"units": "str", "factor": "finite", "roles": "int", "group": "str"})


# --------------------------------------------------------------------------------------------- pruning
add("count_params", lambda d: Call(S.count_params, {"model": _mlp(d(seeds))}),
    check=lambda r, c: expect(r == sum(p.numel() for p in c.kwargs["model"].parameters())),
    scalars={"model": "str"})
add("count_macs", lambda d: Call(S.count_macs, {"model": _mlp(d(seeds)), "example_inputs": _example()}),
    check=lambda r, c: expect(r == 6 * 8 + 8 * 8 + 8 * 3, f"{r}"), scalars={"model": "str"})
add("layer_widths", lambda d: Call(S.layer_widths, {"model": _mlp(d(seeds))}),
    check=lambda r, c: expect(list(r.values()) == [8, 8, 3], f"{r}"), scalars={"model": "str"})


def _scores_build(fn):
    def build(d):
        model = _mlp(d(seeds))
        group = S.dependency_groups(model, _example())[0]
        return Call(fn, {"model": model, "group": group,
                         "importance": d(st.sampled_from([i for i in S.IMPORTANCES if i != "taylor"]))})
    return build


add("group_scores", _scores_build(S.group_scores), check=lambda r, c: expect(r.shape == (c.kwargs["group"].size,)),
    scalars={"importance": "str", "group": "str"})
add("normalized_scores", _scores_build(S.normalized_scores),
    check=lambda r, c: expect(r.shape == (c.kwargs["group"].size,)), scalars={"importance": "str", "group": "str"})


def _plan_build(d):
    model = _mlp(d(seeds))
    return Call(S.plan_pruning, {"model": model, "groups": S.dependency_groups(model, _example()),
                                 "ratio": d(st.floats(0, 0.9)), "scope": d(st.sampled_from(["global", "uniform"]))})


add("plan_pruning", _plan_build, check=lambda r, c: expect(all(len(v) >= 1 for v in r.values())),
    scalars={"ratio": "prob_open", "importance": "str", "scope": "str", "round_to": "count", "groups": "int"})


def _prune_check(result, c):
    out = c.kwargs["model"](_example())
    expect(out.shape == (2, 3) and result.params_after <= result.params_before)


add("prune", lambda d: Call(S.prune, {"model": _mlp(d(seeds)), "example_inputs": _example(),
                                      "ratio": d(st.floats(0, 0.9))}),
    check=_prune_check, scalars={"ratio": "prob_open", "importance": "str", "scope": "str", "round_to": "count",
                                 "ignore": "int", "model": "str"})


def _prune_groups_build(d):
    model = _mlp(d(seeds))
    groups = S.dependency_groups(model, _example())
    return Call(S.prune_groups, {"model": model, "plan": {groups[0]: [0, 2, 3]}})


add("prune_groups", _prune_groups_build, check=lambda r, c: expect(c.kwargs["model"][0].out_features == 3),
    scalars={"plan": "str", "model": "str"})


def _spec_build(d):
    from regimen.models.mlp import MLP
    torch.manual_seed(d(seeds))
    return MLP(in_features=6, num_classes=3, hidden=[d(st.integers(1, 8))])


add("architecture_spec", lambda d: Call(S.architecture_spec, {"model": _spec_build(d)}),
    check=lambda r, c: expect(r is not None and r["class"] == "MLP"), scalars={"model": "str"})
add("build_from_spec", lambda d: Call(S.build_from_spec, {"spec": S.architecture_spec(_spec_build(d))}),
    check=lambda r, c: expect(isinstance(r, nn.Module)), scalars={"spec": "str"})


def _restore_build(d):
    model = _spec_build(d)
    pruned = _spec_build(d)
    S.prune(pruned, _example(), ratio=0.5)
    return Call(S.restore_pruned, {"model": model, "state_dict": pruned.state_dict()})


add("restore_pruned", _restore_build, scalars={"state_dict": "int", "model": "str"})


def _hesso_run(model, example_inputs, steps=3, **kwargs):
    pruner = S.HESSOPruner(model, example_inputs, **kwargs)
    for _ in range(steps):
        pruner.step()
    return [p.detach().clone() for p in model.parameters()]


_hesso_run.target = S.HESSOPruner
add("HESSOPruner", lambda d: Call(_hesso_run, {"model": _mlp(d(seeds)), "example_inputs": _example(),
                                              "ratio": d(st.floats(0, 0.9)), "period_steps": d(st.integers(1, 3)),
                                              "warmup_steps": d(st.integers(0, 2))}),
    scalars={"ratio": "prob_open", "importance": "str", "warmup_steps": "count0", "period_steps": "count",
             "periods": "count", "scope": "str"})
add("hesso_factor", lambda d: Call(S.hesso_factor, {"t": (t := d(st.integers(0, 20))),
                                                    "period": d(st.integers(t + 1, 30))}),
    check=lambda r, c: expect(math.isclose(r, (c.kwargs["period"] - c.kwargs["t"] - 1) /
                                           (c.kwargs["period"] - c.kwargs["t"]))),
    scalars={"t": "count0", "period": "count"})


# ------------------------------------------------------------------------------------------------- N:M
def _nm(d):
    m = d(st.sampled_from([2, 4, 8]))
    n = d(st.integers(1, m))
    return n, m


def _nm_mask_build(d):
    n, m = _nm(d)
    return Call(S.nm_mask, {"weight": tensor(d, (d(st.integers(1, 4)), m * d(st.integers(1, 3)))), "n": n, "m": m})


def _nm_mask_check(result, c):
    w, n, m = c.kwargs["weight"], c.kwargs["n"], c.kwargs["m"]
    groups = w.abs().reshape(w.shape[0], -1, m)
    kept = result.reshape(groups.shape)
    expect(bool((kept.sum(-1) == n).all()), "not n kept of every m")
    kept_min = torch.where(kept, groups, torch.inf).amin(-1)
    dropped_max = torch.where(kept, -torch.inf, groups).amax(-1)
    expect(bool((kept_min >= dropped_max).all()), "a dropped weight is larger than a kept one")


add("nm_mask", _nm_mask_build, check=_nm_mask_check, scalars={"n": "count", "m": "count"}, tensors=("weight",))
def _nm_sparsify_build(d):
    c = _nm_mask_build(d)
    return Call(S.nm_sparsify, c.kwargs)


add("nm_sparsify", _nm_sparsify_build,
    check=lambda r, c: expect(torch.equal(r, c.kwargs["weight"] * S.nm_mask(c.kwargs["weight"], c.kwargs["n"],
                                                                             c.kwargs["m"]))),
    scalars={"n": "count", "m": "count", "decay": "nonneg"}, tensors=("weight",))
add("NMSparsity", lambda d: Call(ModuleFn(S.NMSparsity, ("weight",)), {"weight": tensor(d, (3, 8)),
                                                                      "n": 2, "m": 4}),
    scalars={"n": "count", "m": "count", "decay": "nonneg"}, tensors=("weight",))


def _nm_apply_run(model, export=False, **kwargs):
    names = S.apply_nm_sparsity(model, **kwargs)
    if export:
        S.export_nm_sparsity(model)
    return names


add("apply_nm_sparsity", lambda d: Call(S.apply_nm_sparsity, {"model": _mlp(d(seeds)), "n": 1, "m": 2}),
    scalars={"n": "count", "m": "count", "decay": "nonneg", "ignore": "int", "model": "str"})
def _nm_model(d):
    model = _mlp(d(seeds))
    S.apply_nm_sparsity(model, 1, 2)
    return model


add("export_nm_sparsity", lambda d: Call(S.export_nm_sparsity, {"model": _nm_model(d)}),
    check=lambda r, c: expect(bool((r[0].weight.reshape(8, -1, 2) != 0).sum(-1).le(1).all())),
    scalars={"model": "str"})


# ---------------------------------------------------------------------------------------------- low rank
def _factorized(cls, inputs, **ctor):
    def build(d):
        return Call(ModuleFn(cls, ("x",)), {**{k: v(d) if callable(v) else v for k, v in ctor.items()},
                                            "x": inputs(d)})
    return build


add("FactorizedLinear", _factorized(S.FactorizedLinear, lambda d: tensor(d, (d(st.integers(1, 4)), 6)),
                                    in_features=6, out_features=5, rank=lambda d: d(st.integers(1, 5))),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 5)),
    scalars={"in_features": "count", "out_features": "count", "rank": "count", "bias": "bool"}, tensors=("x",))
add("FactorizedConv2d", _factorized(S.FactorizedConv2d, lambda d: images(d, c=(3, 3), hw=(3, 8)), in_channels=3,
                                    out_channels=4, rank=lambda d: d(st.integers(1, 4)), kernel_size=3, padding=1),
    check=lambda r, c: expect(r.shape[:2] == (c.kwargs["x"].shape[0], 4)),
    scalars={"in_channels": "count", "out_channels": "count", "rank": "count", "bias": "bool"}, tensors=("x",))
add("conv_to_matrix", lambda d: Call(S.conv_to_matrix, {"weight": tensor(d, (d(st.integers(1, 4)),
                                                                             d(st.integers(1, 3)), 3, 3))}),
    check=lambda r, c: expect(torch.equal(S.matrix_to_conv(r, c.kwargs["weight"].shape), c.kwargs["weight"])),
    tensors=("weight",))
add("matrix_to_conv", lambda d: Call(S.matrix_to_conv, {"matrix": S.conv_to_matrix(w := tensor(d, (3, 2, 3, 3))),
                                                        "shape": w.shape}),
    check=lambda r, c: expect(r.shape == c.kwargs["shape"]), scalars={"shape": "int"}, tensors=("matrix",))


def _sv(d):
    return tensor(d, (d(st.integers(1, 8)),), 0, 5).sort(descending=True).values


def _energy_check(result, c):
    s2 = c.kwargs["singular_values"].double() ** 2
    e = c.kwargs["energy"]
    cums = s2.cumsum(0)
    expected = next((i + 1 for i, v in enumerate(cums.tolist()) if v >= e * s2.sum().item() - 1e-12), len(s2))
    expect(result == max(1, expected), f"{result} != {expected}")


add("energy_rank", lambda d: Call(S.energy_rank, {"singular_values": _sv(d), "energy": d(st.floats(0.01, 1))}),
    check=_energy_check, scalars={"energy": "prob"}, tensors=("singular_values",))
add("truncate_weight", lambda d: Call(S.truncate_weight, {"weight": tensor(d, (4, 3, 3, 3)),
                                                          "energy": d(st.floats(0.01, 1))}),
    check=lambda r, c: expect(r[0].shape == c.kwargs["weight"].shape and 1 <= r[1] <= 9),
    scalars={"energy": "prob"}, tensors=("weight",))
add("nuclear_subgradient", lambda d: Call(S.nuclear_subgradient, {"weight": tensor(d, (4, d(st.integers(1, 3)), 3,
                                                                                       3))}),
    check=lambda r, c: expect(r.shape == c.kwargs["weight"].shape), scalars={"tol": "nonneg"}, tensors=("weight",))
add("factorize", lambda d: Call(S.factorize, {"model": tiny_cnn(seed=d(seeds)), "energy": d(st.floats(0.01, 1))}),
    scalars={"energy": "prob", "include_linear": "bool", "ignore": "int", "rule": "str", "model": "str"})


def _restore_lowrank_build(d):
    model = tiny_cnn(seed=d(seeds))
    factored = tiny_cnn(seed=0)
    S.factorize(factored, energy=0.3)
    return Call(S.restore_lowrank, {"model": model, "state_dict": factored.state_dict()})


add("restore_lowrank", _restore_lowrank_build, scalars={"state_dict": "int", "model": "str"})


def _olr(cls, inputs, **ctor):
    return _factorized(cls, inputs, **ctor)


add("OrderedLowRankLinear", _olr(S.OrderedLowRankLinear, lambda d: tensor(d, (d(st.integers(1, 4)), 6)),
                                 in_features=6, out_features=5, rank=lambda d: d(st.integers(1, 5))),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 5)),
    scalars={"in_features": "count", "out_features": "count", "rank": "count", "bias": "bool"}, tensors=("x",))
add("OrderedLowRankConv2d", _olr(S.OrderedLowRankConv2d, lambda d: images(d, c=(3, 3), hw=(3, 8)), in_channels=3,
                                 out_channels=4, kernel_size=3, padding=1, rank=lambda d: d(st.integers(1, 4))),
    check=lambda r, c: expect(r.shape[:2] == (c.kwargs["x"].shape[0], 4)),
    scalars={"in_channels": "count", "out_channels": "count", "rank": "count"}, tensors=("x",))


def _uv(d, out=5, inp=6):
    r = d(st.integers(1, 5))
    return tensor(d, (out, r)), tensor(d, (r, inp))


def _lrl_build(d):
    u, v = _uv(d)
    return Call(S.low_rank_linear, {"x": tensor(d, (d(st.integers(1, 4)), 6)), "u": u, "v": v,
                                    "rank": d(st.integers(1, u.shape[1]))})


add("low_rank_linear", _lrl_build,
    check=lambda r, c: expect(torch.allclose(r, c.kwargs["x"] @ (c.kwargs["u"][:, :c.kwargs["rank"]] @
                                                                  c.kwargs["v"][:c.kwargs["rank"]]).T, atol=1e-5)),
    scalars={"rank": "count"}, tensors=("x", "u", "v"))


def _lrc_build(d):
    r = d(st.integers(1, 4))
    return Call(S.low_rank_conv2d, {"x": images(d, c=(3, 3), hw=(3, 8)), "u": tensor(d, (4, r)),
                                    "v": tensor(d, (r, 3, 3, 3)), "rank": d(st.integers(1, r)), "padding": 1})


def _lrc_check(result, c):
    k = c.kwargs
    r = k["rank"]
    expected = torch.nn.functional.conv2d(torch.nn.functional.conv2d(k["x"], k["v"][:r], padding=1),
                                          k["u"][:, :r, None, None])
    expect(torch.allclose(result, expected, atol=1e-4), "low-rank conv differs from two convs")


add("low_rank_conv2d", _lrc_build, check=_lrc_check, scalars={"rank": "count"}, tensors=("x", "u", "v"))


def _hgl_check(result, c):
    u, v = c.kwargs["u"], c.kwargs["v"]
    r = c.kwargs["rank"] or u.shape[1]
    expected = sum(v[b:r].norm() + u[:, b:r].norm() for b in range(r))
    expect(torch.allclose(result, expected, atol=1e-4), "hierarchical group lasso formula")


add("hierarchical_group_lasso", lambda d: Call(S.hierarchical_group_lasso, dict(zip(("u", "v"), _uv(d)), rank=None)),
    check=_hgl_check, scalars={"rank": "count"}, tensors=("u", "v"))
add("rank_importance", lambda d: Call(S.rank_importance, dict(zip(("u", "v"), _uv(d)))),
    check=lambda r, c: expect(r.shape == (c.kwargs["u"].shape[1],) and bool((r[:-1] >= r[1:] - 1e-6).all())),
    tensors=("u", "v"))
add("sample_rank", lambda d: Call(S.sample_rank, {"max_rank": (m := d(st.integers(1, 10))),
                                                  "min_rank": d(st.integers(1, m))}, d(seeds), "generator"),
    check=lambda r, c: expect(c.kwargs["min_rank"] <= r <= c.kwargs["max_rank"]),
    scalars={"max_rank": "count", "min_rank": "count"})
add("svd_factors", lambda d: Call(S.svd_factors, {"weight": tensor(d, (5, 4)), "rank": d(st.integers(1, 4))}),
    check=lambda r, c: expect(r[0].shape == (5, c.kwargs["rank"]) and r[1].shape == (c.kwargs["rank"], 4)),
    scalars={"rank": "count"}, tensors=("weight",))
ENTRIES[-1].aliases = ("rank",)  # an empty weight has no rank to keep: the error names rank


def _maestro_model(d):
    model = _mlp(d(seeds))
    S.apply_maestro(model)
    return model


add("apply_maestro", lambda d: Call(S.apply_maestro, {"model": _mlp(d(seeds)), "rank_ratio": d(st.floats(0.1, 1))}),
    scalars={"rank_ratio": "prob", "layers": "str", "ignore": "int", "model": "str"})
add("low_rank_layers", lambda d: Call(S.low_rank_layers, {"model": _maestro_model(d)}),
    check=lambda r, c: expect(len(r) == 3), scalars={"model": "str"})
add("set_rank_fraction", lambda d: Call(S.set_rank_fraction, {"model": _maestro_model(d),
                                                              "fraction": d(st.floats(0.01, 1))}),
    scalars={"fraction": "prob", "model": "str"})
add("truncate_model", lambda d: Call(S.truncate_model, {"model": _maestro_model(d)}),
    check=lambda r, c: expect(r(_example()).shape == (2, 3)), scalars={"dense_when_cheaper": "bool", "model": "str"})


# ------------------------------------------------------------------------------------------------ nested
def _nested_run(model, example_inputs, x, width, **kwargs):
    nested = S.NestedWidth(model, example_inputs, **kwargs)
    return nested(x, width=width)


_nested_run.target = S.NestedWidth
add("NestedWidth", lambda d: Call(_nested_run, {"model": _mlp(d(seeds)), "example_inputs": _example(),
                                                "x": tensor(d, (d(st.integers(1, 4)), 6)),
                                                "width": d(st.sampled_from([0.25, 0.5, 0.75, 1.0]))}),
    check=lambda r, c: expect(r.shape == (c.kwargs["x"].shape[0], 3)),
    scalars={"widths": "str"}, tensors=("x",),
    exempt={**{v: "the user's model decides its dtypes" for v in ("int64", "bool", "float64")},
            "meta": "the user's model receives x as given (another device is torch's error, as for torch.nn)",
            "not_a_tensor": "forward(*args) passes any inputs to the user's model, whose own error names them"})


def _widths(d):
    return sorted(set(d(st.lists(st.floats(0.01, 1), min_size=1, max_size=5))))


add("check_widths", lambda d: Call(S.check_widths, {"widths": _widths(d)}),
    check=lambda r, c: expect(list(r) == c.kwargs["widths"]), scalars={"widths": "str"})
add("sandwich_widths", lambda d: Call(S.sandwich_widths, {"widths": _widths(d), "n_random": d(st.integers(0, 3))},
                                      d(seeds), "generator"),
    check=lambda r, c: expect(r[0] == max(c.kwargs["widths"]) and set(r) <= set(c.kwargs["widths"])),
    scalars={"n_random": "count0", "widths": "str"})
add("units_at_width", lambda d: Call(S.units_at_width, {"size": d(st.integers(1, 64)), "width": d(st.floats(0.01, 1))}),
    check=lambda r, c: expect(1 <= r <= c.kwargs["size"] and r >= math.ceil(c.kwargs["width"] * c.kwargs["size"]
                                                                             - 1e-9) - 0),
    scalars={"size": "count", "width": "prob"})


def _distill_build(d):
    n, k = d(st.integers(1, 5)), d(st.integers(2, 5))
    return Call(S.inplace_distillation_loss, {"student_logits": tensor(d, (n, k)), "teacher_logits": tensor(d, (n, k)),
                                              "temperature": d(st.floats(0.1, 5))})


def _distill_check(result, c):
    s, t, temp = c.kwargs["student_logits"], c.kwargs["teacher_logits"], c.kwargs["temperature"]
    expected = temp ** 2 * -(torch.softmax(t / temp, 1) * torch.log_softmax(s / temp, 1)).sum(1).mean()
    expect(torch.allclose(result, expected, atol=1e-5), "in-place distillation formula")


add("inplace_distillation_loss", _distill_build, check=_distill_check, scalars={"temperature": "positive"},
    tensors=("student_logits", "teacher_logits"))


# ==================================================================================================================
# Public since the suite's merge (issue 21 follow-up)
def _sa_build(d):
    b, h, t, dim = d(st.integers(1, 2)), d(st.integers(1, 2)), d(st.integers(1, 8)), d(st.integers(1, 4))
    keep = d(st.integers(1, t))
    kept = S.sample_kept_positions(b, t, keep, torch.Generator().manual_seed(d(seeds)))
    return Call(S.subsampled_attention, {"q": tensor(d, (b, h, t, dim)), "k": tensor(d, (b, h, t, dim)),
                                         "v": tensor(d, (b, h, t, dim)), "kept": kept, "causal": d(st.booleans())})


def _sa_check(result, c):
    q, k, v, kept, causal = (c.kwargs[n] for n in ("q", "k", "v", "kept", "causal"))
    b, h, t, dim = q.shape
    scale = 1 / math.sqrt(dim)
    expected = torch.empty_like(q)
    for i in range(b):  # the loop reference: each query attends to the visible kept keys and itself
        for j in range(t):
            keys = [p for p in kept[i].tolist() if (p < j if causal else p != j)] + [j]
            logits = (q[i, :, j:j + 1] @ k[i, :, keys].transpose(-1, -2)) * scale
            expected[i, :, j] = (logits.softmax(-1) @ v[i, :, keys])[:, 0]
    expect(torch.allclose(result, expected, atol=1e-5), "subsampled attention differs from the loop")


add("subsampled_attention", _sa_build, check=_sa_check, scalars={"scale": "finite", "causal": "bool"},
    tensors=("q", "k", "v", "kept"))
