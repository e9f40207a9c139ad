"""Paired-seed runs of reports/lm sections 8-12 that ``regimen study`` cannot express, and their tables.

``regimen study`` adds one method to a base recipe at equal steps. Three comparisons here need more:

* sequence-length warm-up at **equal target tokens**: the warm-up arm trains on truncated sequences, so it gets the
  number of steps ``N`` whose truncated lengths sum to the base's tokens (its schedule stretches over those ``N``);
* verse (document) batching at **equal target tokens**: ``length_buckets`` / ``token_budget`` batches carry fewer
  real targets than a window batch, so each seed gets the number of steps whose batches (in that seed's order)
  first reach the base's target tokens;
* MoE with ``load_balance`` at coef 0 (which only logs the per-expert token shares) against coef 0.01: both arms
  carry the method, so neither is a method-free base.

The base of the first two is the ``base`` arm of the ``regimen study`` in ``reports/lm/studies/proxy`` (same
recipe, same seeds, same ``regimen train`` command), which must have run first::

    regimen study --base lm/proxy --methods ssa seq_length_warmup --seeds 3 --workers 2 --threads 1 \\
        --out reports/lm/studies/proxy
    python reports/lm/lm_evidence.py run --seeds 3 --workers 2          # trains the pending runs
    python reports/lm/lm_evidence.py collect                             # results.json + results.md

Each run is a fresh ``python -m regimen train`` process with ``--set seed=S --set train.threads=1`` (as a study's),
written to ``reports/lm/evidence/runs/<arm>-seed<S>`` (its recipe, summary and metrics are copied to
``reports/lm/evidence/<arm>-seed<S>`` so they can be committed; ``runs/`` is git-ignored). A run whose summary
exists is never redone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "reports" / "lm" / "evidence"
STUDY = ROOT / "reports" / "lm" / "studies" / "proxy"
ARMS = ("seq_length_warmup_equal_tokens", "length_buckets", "token_budget", "moe", "moe_load_balance", "ssa_local",
        "overhead")
STUDY_ARMS = ("ssa", "seq_length_warmup")  # the study's arms, at equal steps
SEQ_WARMUP = {"name": "seq_length_warmup", "duration": 0.3, "min_len": 8, "step_size": 8}  # lm/seq_length_warmup


def _recipe(name: str) -> dict[str, Any]:
    from regimen.recipes import find_recipe
    from regimen.train.recipe import read_recipe_file

    return read_recipe_file(find_recipe(name))


def base_tokens(raw: dict[str, Any]) -> int:
    """Target tokens of the window-batched base: steps x batch x seq_len (every window target is real)."""
    train = raw["train"]
    return train["epochs"] * train["max_steps_per_epoch"] * train["batch_size"] * raw["data"]["options"]["seq_len"]


def warmup_steps_for_tokens(tokens: int, batch: int, seq_len: int) -> tuple[int, int]:
    """The fewest steps ``N`` whose seq_length_warmup lengths ``L(step / N)`` (step = 0..N-1, as the method computes
    them) give at least ``tokens`` targets over batches of ``batch``; and those targets."""
    from regimen.batch import seq_length_at

    def total(steps: int) -> int:
        return batch * sum(seq_length_at(step / steps, SEQ_WARMUP["min_len"], seq_len, SEQ_WARMUP["duration"],
                                         SEQ_WARMUP["step_size"]) for step in range(steps))

    steps = math.ceil(tokens / (batch * seq_len))
    while total(steps) < tokens:
        steps += 1
    return steps, total(steps)


def batching_steps_for_tokens(raw: dict[str, Any], seed: int, tokens: int) -> tuple[int, int]:
    """The fewest steps of the first epoch's document batches (for ``seed``, in the trainer's order) whose real
    targets reach ``tokens``; and those targets."""
    from regimen.tasks import LanguageModelTask
    from regimen.train.recipe import parse_recipe

    recipe = parse_recipe(dict(raw, seed=seed))
    task = LanguageModelTask(recipe)
    data = task.load_data()
    loader = task.train_loader(data.train, recipe.train.batch_size, seed=seed)
    loader.set_epoch(0)
    lengths = loader.dataset.lengths
    for steps, seen in enumerate(itertools.accumulate(int(lengths[b].sum()) for b in loader._batches()), start=1):
        if seen >= tokens:
            return steps, seen
    raise RuntimeError(f"one epoch of {raw['data']['options']['batching']} batches has fewer than {tokens} targets")


def arm_recipe(arm: str, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The recipe an arm trains at ``seed`` and what was planned (steps, target tokens)."""
    proxy = _recipe("lm/proxy")
    tokens = base_tokens(proxy)
    raw = json.loads(json.dumps(proxy))
    train, options = raw["train"], raw["data"]["options"]
    if arm == "seq_length_warmup_equal_tokens":
        steps, planned = warmup_steps_for_tokens(tokens, train["batch_size"], options["seq_len"])
        raw["methods"] = [dict(SEQ_WARMUP)]
        train["max_steps_per_epoch"] = steps
    elif arm in ("length_buckets", "token_budget"):
        options["batching"] = arm
        if arm == "token_budget":
            options["max_tokens"] = train["batch_size"] * options["seq_len"]  # a window batch's slots
        steps, planned = batching_steps_for_tokens(raw, seed, tokens)
        train["max_steps_per_epoch"] = steps
    elif arm == "ssa_local":  # lm/ssa's settings with locality-biased sampling (tau = 16 positions)
        raw["methods"] = [{"name": "ssa", "ratio": 4.0, "dense_fraction": 0.1, "locality": 16.0}]
        steps, planned = train["max_steps_per_epoch"], tokens
    elif arm == "overhead":  # one step: start-up, data, evaluation (what every proxy run pays besides training)
        train["max_steps_per_epoch"] = steps = 1
        planned = train["batch_size"] * options["seq_len"]
    elif arm in ("moe", "moe_load_balance"):
        raw = _recipe("lm/proxy_moe")
        raw["methods"][0]["coef"] = 0.01 if arm == "moe_load_balance" else 0.0
        steps, planned = raw["train"]["epochs"] * raw["train"]["max_steps_per_epoch"], base_tokens(raw)
    else:
        raise ValueError(f"unknown arm {arm!r}; one of {', '.join(ARMS)}")
    raw["name"] = f"{raw['name']}+{arm}"
    return raw, {"steps": steps, "target_tokens": planned, "base_target_tokens": tokens}


def _train(arm: str, seed: int) -> str:
    from regimen.train.recipe import dump_recipe

    folder = OUT / "runs" / f"{arm}-seed{seed}"
    scratch = OUT / "runs" / f"{arm}-seed{seed}.recipe"
    if not (folder / "summary.json").exists():
        raw, plan = arm_recipe(arm, seed)
        scratch.mkdir(parents=True, exist_ok=True)
        (scratch / "recipe.toml").write_text(dump_recipe(raw), encoding="utf-8")
        (scratch / "plan.json").write_text(json.dumps(plan, indent=2))
        command = [sys.executable, "-m", "regimen", "train", "--recipe", str(scratch / "recipe.toml"), "--out",
                   str(folder), "--overwrite", "--quiet", "--set", f"seed={seed}", "--set", "train.threads=1"]
        completed = subprocess.run(command, capture_output=True, text=True,
                                   env=os.environ | {"OMP_NUM_THREADS": "1"})
        if completed.returncode != 0:
            return f"{arm} seed {seed}: FAILED {completed.stderr.strip().splitlines()[-1:]}"
    plan = json.loads((scratch / "plan.json").read_text())
    keep = OUT / f"{arm}-seed{seed}"
    keep.mkdir(parents=True, exist_ok=True)
    for name in ("recipe.toml", "plan.json"):
        shutil.copy(scratch / name, keep / name)
    for name in ("summary.json", "metrics.jsonl"):
        shutil.copy(folder / name, keep / name)
    return f"{arm} seed {seed}: done, {plan}"


def run(arms: list[str], seeds: list[int], workers: int) -> None:
    jobs = [(arm, seed) for arm in arms for seed in seeds]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for message in pool.map(lambda job: _train(*job), jobs):
            print(message, flush=True)


# --------------------------------------------------------------------------------------------------- tables


def _load(folder: Path) -> dict[str, Any] | None:
    if not (folder / "summary.json").exists():
        return None
    run = {"summary": json.loads((folder / "summary.json").read_text())}
    metrics = folder / "metrics.jsonl"
    run["history"] = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    plan = folder / "plan.json"
    run["plan"] = json.loads(plan.read_text()) if plan.exists() else {}
    return run


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    s = run["summary"]
    return {"val_bpb": s.get("final_val_bits_per_byte"), "test_bpb": s.get("final_test_bits_per_byte"),
            "steps": s.get("steps"), "train_time_s": s.get("train_time"), "process_cpu_s": s.get("process_cpu_time"),
            **run["plan"]}


def _pairs(base: dict[int, dict], arm: dict[int, dict], key: str) -> dict[str, Any]:
    from regimen.bench.study import paired_interval

    seeds = sorted(set(base) & set(arm))
    diffs = [arm[s][key] - base[s][key] for s in seeds]
    mean, low, high = paired_interval(diffs)
    return {"seeds": seeds, "differences": diffs, "mean": mean, "ci95": [low, high],
            "base_mean": sum(base[s][key] for s in seeds) / max(len(seeds), 1),
            "arm_mean": sum(arm[s][key] for s in seeds) / max(len(seeds), 1)}


def expert_shares(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per epoch and MoE layer: the experts' shares of token assignments, max/min and coefficient of variation."""
    pattern = re.compile(r"load_balance/share_l(\d+)_e(\d+)$")
    rows = []
    for record in history:
        layers: dict[int, dict[int, float]] = {}
        for key, value in record.items():
            match = pattern.match(key)
            if match:
                layers.setdefault(int(match[1]), {})[int(match[2])] = value
        for layer, shares in sorted(layers.items()):
            values = [shares[e] for e in sorted(shares)]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
            rows.append({"epoch": record["epoch"], "step": record["step"], "layer": layer, "shares": values,
                         "max_share": max(values), "min_share": min(values),
                         "max_over_min": max(values) / min(values) if min(values) > 0 else math.inf,
                         "cv": sd / mean, "aux_loss": record.get("load_balance/aux_loss")})
    return rows


def collect(seeds: int) -> dict[str, Any]:
    runs: dict[str, dict[int, dict]] = {}
    for seed in range(seeds):
        for arm in ("base", *STUDY_ARMS):
            found = _load(STUDY / "runs" / f"{arm}-seed{seed}")
            if found is not None:
                runs.setdefault(arm, {})[seed] = found
        for arm in ARMS:
            found = _load(OUT / f"{arm}-seed{seed}")
            if found is not None:
                runs.setdefault(arm, {})[seed] = found
    brief = {arm: {seed: _brief(run) for seed, run in by_seed.items()} for arm, by_seed in runs.items()}
    results: dict[str, Any] = {"runs": brief, "comparisons": {}}
    for arm, base in (("ssa", "base"), ("ssa_local", "base"), ("seq_length_warmup", "base"),
                      ("seq_length_warmup_equal_tokens", "base"),
                      ("length_buckets", "base"), ("token_budget", "base"), ("moe_load_balance", "moe")):
        if arm in brief and base in brief:
            results["comparisons"][f"{arm} - {base}"] = {
                key: _pairs(brief[base], brief[arm], key) for key in ("val_bpb", "test_bpb", "process_cpu_s")}
    results["expert_shares"] = {arm: {seed: expert_shares(run["history"]) for seed, run in runs[arm].items()}
                                for arm in ("moe", "moe_load_balance") if arm in runs}
    (OUT / "results.json").write_text(json.dumps(results, indent=2, default=_nan) + "\n")
    (OUT / "results.md").write_text(markdown(results) + "\n")
    return results


def _nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(repr(value))


def _ci(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"


def markdown(results: dict[str, Any]) -> str:
    lines = ["| comparison | seeds | base val bpb | arm val bpb | Δ val bpb (95 % CI) | Δ test bpb (95 % CI) | "
             "CPU s base → arm |", "|---|---|---|---|---|---|---|"]
    for name, entry in results["comparisons"].items():
        val, test, cpu = entry["val_bpb"], entry["test_bpb"], entry["process_cpu_s"]
        lines.append(f"| {name} | {len(val['seeds'])} | {val['base_mean']:.4f} | {val['arm_mean']:.4f} | {_ci(val)} | "
                     f"{_ci(test)} | {cpu['base_mean']:.0f} → {cpu['arm_mean']:.0f} |")
    lines += ["", "| arm | seed | steps | target tokens | val bpb | test bpb | train wall s | process CPU s |",
              "|---|---|---|---|---|---|---|---|"]
    for arm, by_seed in results["runs"].items():
        for seed, run in sorted(by_seed.items()):
            tokens = run.get("target_tokens", "")
            lines.append(f"| {arm} | {seed} | {run['steps']} | {tokens} | {run['val_bpb']:.4f} | "
                         f"{run['test_bpb']:.4f} | {run['train_time_s']:.0f} | {run['process_cpu_s']:.0f} |")
    shares = results.get("expert_shares", {})
    if shares:
        lines += ["", "| arm | seed | epoch (step) | layer | expert shares | max/min | CV |",
                  "|---|---|---|---|---|---|---|"]
        for arm, by_seed in shares.items():
            for seed, rows in sorted(by_seed.items()):
                for row in rows:
                    lines.append(f"| {arm} | {seed} | {row['epoch']} ({row['step']}) | {row['layer']} | "
                                 f"{', '.join(f'{v:.3f}' for v in row['shares'])} | {row['max_over_min']:.2f} | "
                                 f"{row['cv']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("run", "collect", "plan"))
    parser.add_argument("--arms", default=",".join(a for a in ARMS if a not in ("overhead", "token_budget")),
                        help=f"comma-separated, of {', '.join(ARMS)} (overhead: one 1-step run, --seeds 1)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-list", help="comma-separated seeds to run (default: 0 .. seeds - 1)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    arms = [a for a in args.arms.split(",") if a]
    if args.action == "plan":
        for arm in arms:
            for seed in range(args.seeds):
                print(arm, seed, arm_recipe(arm, seed)[1])
    elif args.action == "run":
        seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
        run(arms, seeds, args.workers)
    else:
        print(markdown(collect(args.seeds)))


if __name__ == "__main__":
    main()
