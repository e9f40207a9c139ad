"""Tables of reports/subnet_elastic/lowrank.md from lowrank_runs/*.jsonl, and the plot points results/*.json.

    PYTHONPATH=src python reports/subnet_elastic/lowrank_summary.py
"""

from __future__ import annotations

import collections
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUNS = HERE / "lowrank_runs"
POINTS = HERE / "results"


def _rows(name):
    path = RUNS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _fmt(values, digits=4):
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def _point(method, task, setting, seed, params, metric_name, metric, macs=None):
    POINTS.mkdir(exist_ok=True)
    record = {"method": method, "task": task, "setting": setting, "seed": seed, "macs": macs, "params": params,
              "metric_name": metric_name, "metric": metric}
    (POINTS / f"{method}__{setting}__seed{seed}.json").write_text(json.dumps(record, indent=1) + "\n")


def lora():
    rows = _rows("lora")
    if not rows:
        return
    groups = collections.defaultdict(list)
    for r in rows:
        groups[(r["arm"], r["lr"])].append(r)
    print("### LoRA / ALLoRA / full fine-tuning: every learning rate (test accuracy on classes 5-9 after 200 steps)\n")
    print("| arm | lr | trainable params | val acc median | test acc median [min, max] | test acc after 50 steps |")
    print("|---|---|---|---|---|---|")
    for (arm, lr), rs in sorted(groups.items()):
        print(f"| {arm} | {lr:g} | {rs[0]['trainable_params']} | {statistics.median(r['val_acc'] for r in rs):.4f} "
              f"| {_fmt([r['test_acc'] for r in rs])} | {_fmt([r['test_acc_curve'][0] for r in rs])} |")
    print("\n### Each arm at its learning rate chosen on validation (median val accuracy over seeds)\n")
    print("| arm | chosen lr | trainable params | test acc median [min, max] | after 50 / 100 / 150 steps (median) |")
    print("|---|---|---|---|---|")
    arms = sorted({arm for arm, _ in groups}, key=lambda a: ["full_ft", "lora", "lora_nodrop", "allora_eta2",
                                                            "allora_eta8", "allora_eta32"].index(a))
    for arm in arms:
        best = max((lr for a, lr in groups if a == arm),
                   key=lambda lr: statistics.median(r["val_acc"] for r in groups[(arm, lr)]))
        rs = groups[(arm, best)]
        curve = " / ".join(f"{statistics.median(r['test_acc_curve'][k] for r in rs):.4f}" for k in range(3))
        print(f"| {arm} | {best:g} | {rs[0]['trainable_params']} | {_fmt([r['test_acc'] for r in rs])} | {curve} |")
        for r in rs:
            _point(arm, "image_classification", "fmnist_mlp_pretrain0to4_adapt5to9_r4", r["seed"],
                   r["trainable_params"], "accuracy", r["test_acc"], macs=784 * 256 + 256 * 256 + 256 * 10)
    print()


def _lm_macs(arm):
    """Multiply-accumulates per token of the weight matrices (the tied read-out counted once, attention scores and
    norms left out): the sum of the 2-D weights' sizes of the model as the run built it."""
    import torch

    from regimen.models.gpt import GPT
    from regimen.subnet import apply_lost
    model = GPT(vocab_size=256, block_size=64, dim=80 if arm == "dense_d80" else 128, depth=2, heads=4,
                positions="rope", tie_embeddings=True)
    options = {"low_rank": (0.29, 0.0, "l2"), "lost": (0.25, 0.05, "l2"), "lost_random": (0.25, 0.05, "random")}
    if arm in options:
        rank, channels, selection = options[arm]
        apply_lost(model, rank, channels, selection=selection, generator=torch.Generator().manual_seed(0))
    return sum(p.numel() for p in model.parameters() if p.dim() == 2)


def lost():
    rows = _rows("lost")
    if not rows:
        return
    for stale in POINTS.glob("*__kjv_gpt_*.json"):
        stale.unlink()
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["arm"]].append(r)
    print("### LOST on the language-model task (validation / test bits per byte after 400 steps)\n")
    print("| arm | trainable params | val bits/byte median [min, max] | test bits/byte median [min, max] | seeds "
          "| seconds (median) |")
    print("|---|---|---|---|---|---|")
    for arm in ["full_rank", "dense_d80", "low_rank", "lost_random", "lost"]:
        rs = groups.get(arm, [])
        if not rs:
            continue
        print(f"| {arm} | {rs[0]['trainable_params']} | {_fmt([r['val_bits_per_byte'] for r in rs])} | "
              f"{_fmt([r['test_bits_per_byte'] for r in rs])} | {len(rs)} | "
              f"{statistics.median(r['seconds'] for r in rs):.0f} |")
        macs = _lm_macs(arm)
        for r in rs:
            method = {"full_rank": "dense", "dense_d80": "dense_matched"}.get(arm, arm)
            _point(method, "language_model", "kjv_gpt_d128_L2_400steps", r["seed"], r["trainable_params"],
                   "val_bits_per_byte", r["val_bits_per_byte"], macs)
    print()


def lost_gamma():
    """The gamma sweep: LOST at rank 0.25, 5 % channels (same parameters for every gamma); gamma = 0.5 seeds that
    the sweep did not rerun are the ``lost`` arm of lost.jsonl (the same recipe; a rerun of seed 0 checked that the
    runs are deterministic)."""
    rows = _rows("lost_gamma")
    if not rows:
        return
    groups = collections.defaultdict(dict)
    for r in rows:
        groups[r["arm"]][r["seed"]] = r
    for r in _rows("lost"):
        if r["arm"] == "lost":
            groups["lost_g0.5"].setdefault(r["seed"], r)
    reference = groups.get("lost_g0.5", {})
    print("### LOST gamma sweep (validation / test bits per byte after 400 steps)\n")
    print("| arm | gamma | trainable params | val bits/byte median [min, max] | test bits/byte median [min, max] "
          "| seeds | val minus gamma 0.5, per seed |")
    print("|---|---|---|---|---|---|---|")

    def order(arm):
        return (arm.startswith("low_rank"), float(arm.rsplit("_g", 1)[1]))
    for arm in sorted(groups, key=order):
        by_seed = groups[arm]
        rs = [by_seed[k] for k in sorted(by_seed)]
        gamma = arm.rsplit("_g", 1)[1]
        diffs = ", ".join(f"s{k}: {by_seed[k]['val_bits_per_byte'] - reference[k]['val_bits_per_byte']:+.3f}"
                          for k in sorted(by_seed) if k in reference) if arm != "lost_g0.5" else "-"
        print(f"| {arm} | {gamma} | {rs[0]['trainable_params']} | {_fmt([r['val_bits_per_byte'] for r in rs])} | "
              f"{_fmt([r['test_bits_per_byte'] for r in rs])} | {len(rs)} | {diffs} |")
    print()


def wave():
    rows = _rows("wave")
    if not rows:
        return
    groups = collections.defaultdict(list)
    for r in rows:
        groups[r["arm"]].append(r)
    print("### CP kernels: U-Net surrogate of the 2-D wave equation (relative L2 error on 16 held-out trajectories)\n")
    print("| kernels | params | one-step rel. L2 median [min, max] | 20-step rollout rel. L2 median [min, max] "
          "| seeds |")
    print("|---|---|---|---|---|")
    for arm, rs in sorted(groups.items()):
        print(f"| {arm} | {rs[0]['params']} | {_fmt([r['one_step_rel_l2'] for r in rs])} | "
              f"{_fmt([r['rollout20_rel_l2'] for r in rs])} | {len(rs)} |")
    # parameter-free references on the same held-out data (the generator calls of lowrank_experiments.run_wave)
    import torch

    from regimen.data.wave import wave_pairs, wave_trajectories
    gen = torch.Generator().manual_seed(12345)
    wave_trajectories(48, size=32, frames=12, stride=4, generator=gen)
    test = wave_trajectories(16, size=32, frames=24, stride=4, generator=gen)
    x, y = wave_pairs(test[:, :12])

    def rel(pred, target):
        return float(((pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1)).mean())
    persist = rel(x[:, 1:2], y)
    linear = rel(2 * x[:, 1:2] - x[:, 0:1], y)
    print(f"| reference: persistence u_(k+1) = u_k | 0 | {persist:.4f} | {rel(test[:, 1:2], test[:, 21:22]):.4f} | - |")
    print(f"| reference: linear extrapolation 2u_k - u_(k-1) | 0 | {linear:.4f} | - | - |")
    print()


if __name__ == "__main__":
    lora()
    lost()
    lost_gamma()
    wave()
