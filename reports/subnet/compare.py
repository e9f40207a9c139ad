"""Run the pruning comparison (issue 17) and render ``reports/subnet/README.md`` from every result present.

Usage (from the worktree root; every run in a fresh process, one after another)::

    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet/compare.py run --entries magnitude random_search \
        --keeps 0.5 0.25 --seeds 0 1 2
    PYTHONPATH=src python reports/subnet/compare.py render

Entries come from every ``entries_*.py`` in this folder (``entries_a.py``, ``entries_b.py``, ...): each defines
``ENTRIES: dict[str, Callable[[PruneSetting], nn.Module]]`` and may define ``CLAIMS: dict[str, str]`` (the paper's
claim, shown beside the entry) and ``PAPERS: dict[str, str]``. An entry returns a trained model, physically pruned to
``macs <= keep * dense_macs * 1.01``, or masked (zeros) to ``nonzero_params <= keep * dense_params * 1.01``. It may
attach a dict ``model.report_extra`` (JSON-serialisable) that is stored under ``"extra"``.

One JSON per run: ``results/<entry>__keep<keep>__seed<seed>.json`` with keys ``entry, keep, seed, test_accuracy,
dense_test_accuracy, val_accuracy, macs, dense_macs, effective_macs, params, dense_params, nonzero_params,
latency_ms, dense_latency_ms, wall_s, within_budget, extra, test_recall_per_class, dense_test_recall_per_class,
load_average``. ``macs`` is ``count_macs`` of the returned model;
``effective_macs`` counts only nonzero weights (conv/linear: nonzero weights × output positions), so that masked
(unstructured) entries compare at equal work; ``latency_ms`` is the median CPU forward time of a batch of 256 in eval
mode with one thread, after physical removal (masked entries get no speedup). A run whose JSON exists is skipped.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
README = HERE / "README.md"
PLOT = HERE / "accuracy_vs_macs.png"
BEGIN, END = "<!-- compare:begin -->", "<!-- compare:end -->"
BASELINE = "magnitude"
PROTECTED = 6  # the class the class-dependent entry protects


def load_entries() -> tuple[dict, dict, dict]:
    entries, claims, papers = {}, {}, {}
    for module_name in sorted(path.stem for path in HERE.glob("entries_*.py")):
        module = importlib.import_module(module_name)
        entries.update(module.ENTRIES)
        claims.update(getattr(module, "CLAIMS", {}))
        papers.update(getattr(module, "PAPERS", {}))
    return entries, claims, papers


def result_path(entry: str, keep: float, seed: int) -> Path:
    return RESULTS / f"{entry}__keep{keep:g}__seed{seed}.json"


def effective_macs(model, example_input) -> int:
    """MACs per sample counting only nonzero weights of conv and linear layers."""
    import torch
    from torch import nn

    total = [0]

    def hook(module, inputs, output):
        nonzero = int((module.weight != 0).sum())
        if isinstance(module, nn.modules.conv._ConvNd):  # batch of one: output (1, C, *spatial)
            total[0] += nonzero * math.prod(output.shape[2:])
        else:
            total[0] += nonzero * (output.numel() // output.shape[-1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total[0]


def recall_per_class(model, x, y) -> list[float]:
    """Test recall of every class (1 − false negatives / class count)."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return [float(((pred == c) & (y == c)).sum() / (y == c).sum().clamp_min(1)) for c in range(int(y.max()) + 1)]


def latency_ms(model, example_input, repeats: int = 30) -> float:
    import torch

    torch.set_num_threads(1)
    batch = example_input[:1].expand(256, *example_input.shape[1:]).contiguous()
    model.eval()
    times = []
    with torch.no_grad():
        for _ in range(5):
            model(batch)
        for _ in range(repeats):
            start = time.perf_counter()
            model(batch)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run_one(entry: str, keep: float, seed: int) -> dict:
    import torch

    from regimen.subnet import count_macs, count_params
    from setting import build_setting, evaluate

    torch.set_num_threads(1)
    entries, _, _ = load_entries()
    if entry not in entries:
        raise SystemExit(f"unknown entry {entry!r}; known: {sorted(entries)}")
    setting = build_setting(seed, keep)
    dense = setting.dense
    dense_macs, dense_params = count_macs(dense, setting.example_input), count_params(dense)
    dense_test = evaluate(dense, *setting.test)
    dense_latency = latency_ms(copy.deepcopy(dense), setting.example_input)
    setting.dense = copy.deepcopy(dense)
    test = setting.test
    setting.test = None  # entries never see the test split
    start = time.perf_counter()
    model = entries[entry](setting)
    wall = time.perf_counter() - start
    macs = count_macs(model, setting.example_input)
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    eff = effective_macs(model, setting.example_input)
    within = min(macs, eff) <= keep * dense_macs * 1.01  # physically pruned, or masked to equal effective MACs
    result = {
        "entry": entry, "keep": keep, "seed": seed,
        "test_accuracy": evaluate(model, *test), "dense_test_accuracy": dense_test,
        "val_accuracy": evaluate(model, *setting.val),
        "macs": macs, "dense_macs": dense_macs, "effective_macs": eff,
        "params": count_params(model), "dense_params": dense_params, "nonzero_params": nonzero,
        "latency_ms": latency_ms(model, setting.example_input), "dense_latency_ms": dense_latency,
        "wall_s": wall, "within_budget": bool(within),
        "extra": getattr(model, "report_extra", {}),
        "test_recall_per_class": recall_per_class(model, *test),
        "dense_test_recall_per_class": recall_per_class(dense, *test),
        "load_average": os.getloadavg()[0],
    }
    return result


def cmd_run(args) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for keep in args.keeps:
            for entry in args.entries:
                path = result_path(entry, keep, seed)
                if path.exists():
                    print(f"skip {path.name} (exists)", flush=True)
                    continue
                print(f"run {entry} keep={keep:g} seed={seed}", flush=True)
                cmd = [sys.executable, str(Path(__file__).resolve()), "one", entry, repr(keep), str(seed)]
                env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
                done = subprocess.run(cmd, env=env)
                if done.returncode != 0:
                    print(f"FAILED {entry} keep={keep:g} seed={seed} (exit {done.returncode})", flush=True)
    cmd_render(args)


def cmd_one(args) -> None:
    result = run_one(args.entry, float(args.keep), int(args.seed))
    path = result_path(args.entry, float(args.keep), int(args.seed))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True))
    os.replace(tmp, path)
    print(json.dumps({k: v for k, v in result.items() if k != "extra"}), flush=True)


def _fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    if not values:
        return "–"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} [{min(values) * scale:.{digits}f}, {max(values) * scale:.{digits}f}]"


def render() -> str:
    _, claims, papers = load_entries()
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    by = {}
    for r in rows:
        by.setdefault((r["entry"], r["keep"]), {})[r["seed"]] = r
    keeps = sorted({r["keep"] for r in rows}, reverse=True)
    entries = sorted({r["entry"] for r in rows}, key=lambda e: (e != BASELINE, e != "random_search", e))
    lines = [
        BEGIN,
        "## Pruning methods compared at equal MACs (issue 17)",
        "",
        "Generated by `reports/subnet/compare.py render` from `reports/subnet/results/*.json` (one file per run).",
        "Setting (`reports/subnet/setting.py`): `SmallCNN` (4 conv-BN-ReLU layers 16/32/64/64, GAP, linear; "
        "3.73 M MACs, 61 k params), Fashion-MNIST 8k-image training subset, 2k validation, first 5k official test "
        "images; dense model trained 8 epochs; every entry gets the trained dense model (or trains from scratch) and "
        "3 further epochs of budget. `keep` = fraction of the dense model's MACs kept. Accuracy: test top-1 %, median "
        "[min, max] over seeds; Δ vs magnitude: paired (same seed) difference in points, median [min, max]. MACs: "
        "effective MACs (nonzero weights only) / dense MACs. Latency: median forward ms of a batch of 256 with one "
        "thread after physical removal, ratio to the dense model measured in the same process — the machine was "
        "shared by ~7 jobs on 2 cores, so latency is indicative only.",
        "",
    ]
    for keep in keeps:
        lines += [f"### keep = {keep:g} of the dense MACs", "",
                  "| entry | seeds | test acc % | Δ vs magnitude (pts) | dense acc % | MACs kept | nonzero params kept "
                  "| latency vs dense | wall s | within budget | paper's claim |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        base = by.get((BASELINE, keep), {})
        for entry in entries:
            runs = by.get((entry, keep))
            if not runs:
                continue
            rs = [runs[s] for s in sorted(runs)]
            acc = [r["test_accuracy"] for r in rs]
            diffs = [runs[s]["test_accuracy"] - base[s]["test_accuracy"] for s in sorted(runs) if s in base]
            delta = "(baseline)" if entry == BASELINE else _fmt(diffs)
            macs = [r["effective_macs"] / r["dense_macs"] for r in rs]
            nz = [r["nonzero_params"] / r["dense_params"] for r in rs]
            lat = [r["latency_ms"] / r["dense_latency_ms"] for r in rs]
            wall = [r["wall_s"] for r in rs]
            within = sum(min(r["macs"], r["effective_macs"]) <= r["keep"] * r["dense_macs"] * 1.01 for r in rs)
            claim = claims.get(entry, "")
            if papers.get(entry):
                claim = f"{papers[entry]}: {claim}"
            lines.append(
                f"| {entry} | {len(rs)} | {_fmt(acc)} | {delta} | {_fmt([r['dense_test_accuracy'] for r in rs])} "
                f"| {_fmt(macs, 1, 3)} | {_fmt(nz, 1, 3)} | {_fmt(lat, 1, 2)} | {statistics.median(wall):.0f} "
                f"| {within}/{len(rs)} | {claim} |")
        lines.append("")
    lines += [f"### Test recall of the protected class {PROTECTED} (Shirt), the class-dependent entry's target", "",
              "| entry | " + " | ".join(f"keep {k:g}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
    dense_recall = [r["dense_test_recall_per_class"][PROTECTED] for r in rows if "dense_test_recall_per_class" in r]
    for entry in entries:
        cells = []
        for keep in keeps:
            rs = [r for r in by.get((entry, keep), {}).values() if "test_recall_per_class" in r]
            cells.append(_fmt([r["test_recall_per_class"][PROTECTED] for r in rs]))
        lines.append(f"| {entry} | " + " | ".join(cells) + " |")
    lines += [f"| dense | {_fmt(dense_recall)} (all runs) |" + " |" * (len(keeps) - 1), ""]
    lines += ["![test accuracy vs MACs kept](accuracy_vs_macs.png)", "", "### What each entry does", ""]
    functions, _, _ = load_entries()
    for entry in entries:
        doc = " ".join((getattr(functions.get(entry), "__doc__", "") or "").split())
        lines.append(f"- **{entry}**: {doc}")
    lines += ["", END]
    return "\n".join(lines)


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    entries = sorted({r["entry"] for r in rows})
    markers = "os^vD<>pP*hX"
    for i, entry in enumerate(entries):
        rs = [r for r in rows if r["entry"] == entry]
        ax.scatter([r["effective_macs"] / r["dense_macs"] for r in rs], [100 * r["test_accuracy"] for r in rs],
                   label=entry, marker=markers[i % len(markers)], alpha=0.75)
    dense = [100 * r["dense_test_accuracy"] for r in rows]
    ax.axhline(statistics.median(dense), color="gray", ls="--", lw=1, label="dense (median)")
    ax.set_xlabel("effective MACs / dense MACs")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Fashion-MNIST SmallCNN: pruning at equal MACs (each point one seed)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def cmd_render(args=None) -> None:
    section = render()
    text = README.read_text() if README.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:  # insert after the title line
        first, _, rest = text.partition("\n")
        text = f"{first}\n\n{section}\n{rest}" if text else section + "\n"
    README.write_text(text)
    plot()
    print(f"rendered {README}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--entries", nargs="+", required=True)
    run.add_argument("--keeps", nargs="+", type=float, default=[0.5, 0.25])
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run.set_defaults(func=cmd_run)
    one = sub.add_parser("one")
    one.add_argument("entry")
    one.add_argument("keep")
    one.add_argument("seed")
    one.set_defaults(func=cmd_one)
    sub.add_parser("render").set_defaults(func=cmd_render)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
