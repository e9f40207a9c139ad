"""Experiments of reports/subnet_elastic/lowrank.md: LoRA vs ALLoRA vs full fine-tuning, LOST at matched parameters
on the language-model task, a-priori CP conv kernels on a wave-equation U-Net surrogate.

    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet_elastic/lowrank_experiments.py lora --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet_elastic/lowrank_experiments.py lost --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet_elastic/lowrank_experiments.py wave --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet_elastic/lowrank_experiments.py lost_gamma --seeds 0 1 2 \
        --gammas 0.25 0.5 0.75

Each run appends one JSON line to reports/subnet_elastic/lowrank_runs/<experiment>.jsonl and (LOST, LoRA) writes
the plot points reports/subnet_elastic/results/<method>__<setting>__seed<seed>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, get_method

HERE = Path(__file__).resolve().parent
RUNS = HERE / "lowrank_runs"
POINTS = HERE / "results"


def _write(experiment: str, record: dict) -> None:
    RUNS.mkdir(exist_ok=True)
    with open(RUNS / f"{experiment}.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def _point(method: str, task: str, setting: str, seed: int, macs: int | None, params: int, metric_name: str,
           metric: float) -> None:
    POINTS.mkdir(exist_ok=True)
    record = {"method": method, "task": task, "setting": setting, "seed": seed, "macs": macs, "params": params,
              "metric_name": metric_name, "metric": metric}
    (POINTS / f"{method}__{setting}__seed{seed}.json").write_text(json.dumps(record, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ LoRA / ALLoRA
def _fmnist(classes, split, limit, seed):
    from regimen.data import load_fashion_mnist
    data = load_fashion_mnist(split=split)
    x = data.images.float().div(255.0).flatten(1)
    y = data.labels
    keep = torch.isin(y, torch.tensor(classes))
    x, y = x[keep], y[keep]
    if limit is not None and limit < len(y):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))[:limit]
        x, y = x[order], y[order]
    return (x - 0.2860) / 0.3530, y


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def _train(model, method, ctx, x, y, steps, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        xb, yb = x[idx], y[idx]

        def closure(xb=xb, yb=yb):
            ctx.optimizer.zero_grad()
            loss = F.cross_entropy(ctx.model(xb), yb)
            loss.backward()
            if method is not None:
                method.after_backward(ctx)
            return loss
        closure()
        if method is not None:
            method.optimizer_step(closure, lambda c: ctx.optimizer.step(), ctx)
        else:
            ctx.optimizer.step()


def run_lora(seeds, steps, pretrain_steps, adapt_samples, rank, lrs):
    old = [0, 1, 2, 3, 4]
    new = [5, 6, 7, 8, 9]
    arms = {
        "full_ft": (None, {}),
        "lora": ("lora", {"rank": rank, "dropout": 0.1}),
        "lora_nodrop": ("lora", {"rank": rank, "dropout": 0.0}),
        "allora_eta2": ("allora", {"rank": rank, "eta": 2.0}),
        "allora_eta8": ("allora", {"rank": rank, "eta": 8.0}),
        "allora_eta32": ("allora", {"rank": rank, "eta": 32.0}),
    }
    for seed in seeds:
        x_pre, y_pre = _fmnist(old, "train", 20000, seed)
        x_all, y_all = _fmnist(new, "train", adapt_samples + 2000, seed)
        x_new, y_new = x_all[:adapt_samples], y_all[:adapt_samples]
        x_val, y_val = x_all[adapt_samples:], y_all[adapt_samples:]
        x_test, y_test = _fmnist(new, "test", None, seed)
        x_old_test, y_old_test = _fmnist(old, "test", None, seed)
        base = _mlp(seed)
        opt = torch.optim.Adam(base.parameters(), lr=1e-3)
        _train(base, None, Context(base, opt, num_classes=10), x_pre, y_pre, pretrain_steps, 128, seed)
        pre_acc = _accuracy(base, x_old_test, y_old_test)
        for arm, (name, kwargs) in arms.items():
            for lr in lrs:
                model = copy.deepcopy(base)
                opt = torch.optim.Adam(model.parameters(), lr=lr)
                ctx = Context(model, opt, generator=torch.Generator().manual_seed(seed), num_classes=10)
                method = get_method(name)(**kwargs) if name else None
                if method is not None:
                    method.setup(ctx)
                trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
                start = time.perf_counter()
                curve = []
                for chunk in range(4):
                    _train(model, method, ctx, x_new, y_new, steps // 4, 64, seed * 100 + chunk)
                    curve.append(round(_accuracy(model, x_test, y_test), 4))
                seconds = time.perf_counter() - start
                record = {"experiment": "lora", "arm": arm, "seed": seed, "lr": lr, "steps": steps, "rank": rank,
                          "adapt_samples": adapt_samples, "trainable_params": trainable,
                          "pretrain_acc_old": round(pre_acc, 4), "val_acc": round(_accuracy(model, x_val, y_val), 4),
                          "test_acc_curve": curve, "test_acc": curve[-1], "seconds": round(seconds, 2)}
                _write("lora", record)


# ------------------------------------------------------------------------------------------------ LOST on the LM
def _lm_recipe(seed, steps, dim, depth, methods):
    return {
        "name": "lost-lm", "task": "language_model", "seed": seed,
        "data": {"name": "auto", "val_fraction": 0.02, "test_fraction": 0.05, "test_subset": 100,
                 "options": {"seq_len": 64, "tokenizer": "bytes"}},
        "model": {"name": "gpt", "options": {"dim": dim, "depth": depth, "heads": 4, "positions": "rope",
                                             "norm": "layernorm", "activation": "gelu", "tie_embeddings": True}},
        "optim": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"name": "cosine", "warmup_epochs": 0.3, "min_lr_ratio": 0.1},
        "train": {"epochs": 4, "max_steps_per_epoch": steps // 4, "batch_size": 16, "eval_batch_size": 64,
                  "grad_clip": 1.0, "threads": 1, "checkpoint_every": 0},
        "methods": methods,
    }


def run_lost(seeds, steps, dim, depth, rank, channels, matched_rank, matched_dim, gammas=None, low_rank_gamma1=False):
    from regimen.train import fit
    if gammas is not None:  # the gamma sweep: LOST at the same rank and channels (same parameter count) per gamma
        arms = {f"lost_g{g:g}": ([{"name": "lost", "rank": rank, "channels": channels, "gamma": g}], dim)
                for g in gammas}
        if low_rank_gamma1:  # the low-rank comparator without the 0.5 factor on its only path
            arms["low_rank_g1"] = ([{"name": "lost", "rank": matched_rank, "channels": 0.0, "gamma": 1.0}], dim)
        experiment = "lost_gamma"
    else:
        experiment = "lost"
        arms = {
            "full_rank": ([], dim),
            f"dense_d{matched_dim}": ([], matched_dim),
            "low_rank": ([{"name": "lost", "rank": matched_rank, "channels": 0.0}], dim),
            "lost_random": ([{"name": "lost", "rank": rank, "channels": channels, "selection": "random"}], dim),
            "lost": ([{"name": "lost", "rank": rank, "channels": channels}], dim),
        }
    for seed in seeds:
        for arm, (methods, width) in arms.items():
            recipe = _lm_recipe(seed, steps, width, depth, methods)
            start = time.perf_counter()
            result = fit(recipe, out_dir=str(RUNS / "lm" / f"{arm}_s{seed}"))
            seconds = time.perf_counter() - start
            model = result.model
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            final = result.history[-1]
            record = {"experiment": experiment, "arm": arm, "seed": seed, "steps": steps, "dim": width, "depth": depth,
                      "trainable_params": trainable, "seconds": round(seconds, 1),
                      **{k: v for k, v in final.items() if isinstance(v, int | float)}}
            _write(experiment, record)
            if gammas is not None:
                continue
            metric = final.get("val_bits_per_byte", final.get("val_loss"))
            name = "val_bits_per_byte" if "val_bits_per_byte" in final else "val_loss"
            _point({"full_rank": "dense", f"dense_d{matched_dim}": "dense_matched"}.get(arm, arm), "language_model",
                   f"kjv_gpt_d{dim}_L{depth}_{steps}steps", seed, None, trainable, name, float(metric))


# ------------------------------------------------------------------------------------ CP kernels: wave surrogate
class UNet(nn.Module):
    """Two-level U-Net: (u_{k-1}, u_k) -> u_{k+1} - u_k (residual), all convs k x k with padding k // 2."""

    def __init__(self, width=16, kernel=3):
        super().__init__()
        p = kernel // 2

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, kernel, padding=p), nn.GELU(), nn.Conv2d(o, o, kernel, padding=p),
                                 nn.GELU())
        self.enc1, self.enc2 = block(2, width), block(width, 2 * width)
        self.down = nn.AvgPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.dec1 = block(3 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.down(e1))
        d1 = self.dec1(torch.cat([e1, self.up(e2)], 1))
        return x[:, 1:2] + self.out(d1)


def _rel_l2(pred, target):
    return ((pred - target).flatten(1).norm(dim=1) / target.flatten(1).norm(dim=1).clamp_min(1e-12)).mean().item()


def run_wave(seeds, size, epochs, train_traj, arms):
    from regimen.data.wave import wave_pairs, wave_trajectories
    from regimen.subnet import apply_cp_kernels
    data_gen = torch.Generator().manual_seed(12345)
    train = wave_trajectories(train_traj, size=size, frames=12, stride=4, generator=data_gen)
    test = wave_trajectories(16, size=size, frames=24, stride=4, generator=data_gen)
    x_train, y_train = wave_pairs(train)
    x_test, y_test = wave_pairs(test[:, :12])
    scale = float(train.std())
    for seed in seeds:
        for arm in arms:
            kernel, rank = arm
            torch.manual_seed(seed)
            model = UNet(8, kernel)
            if rank:
                apply_cp_kernels(model, rank, generator=torch.Generator().manual_seed(seed), only_if_smaller=False)
            params = sum(p.numel() for p in model.parameters())
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            total = epochs * (len(x_train) // 32)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
            gen = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            for _ in range(epochs):
                order = torch.randperm(len(x_train), generator=gen)
                for b in range(len(x_train) // 32):
                    idx = order[b * 32:(b + 1) * 32]
                    loss = F.mse_loss(model(x_train[idx] / scale), y_train[idx] / scale)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
            seconds = time.perf_counter() - start
            model.eval()
            with torch.no_grad():
                one_step = _rel_l2(model(x_test / scale) * scale, y_test)
                prev, cur = test[:, 0:1] / scale, test[:, 1:2] / scale
                for _ in range(20):
                    nxt = model(torch.cat([prev, cur], 1))
                    prev, cur = cur, nxt
                rollout = _rel_l2(cur * scale, test[:, 21:22])
            setting = f"{kernel}x{kernel}" + (f"_rank{rank}" if rank else "_full")
            _write("wave", {"experiment": "wave", "arm": setting, "seed": seed, "params": params, "size": size,
                            "epochs": epochs, "train_pairs": len(x_train), "one_step_rel_l2": round(one_step, 5),
                            "rollout20_rel_l2": round(rollout, 5), "seconds": round(seconds, 1)})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", choices=["lora", "lost", "lost_gamma", "wave"])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--low-rank-gamma1", action="store_true", help="lost_gamma: add low rank at gamma = 1")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.experiment == "lora":
        run_lora(args.seeds, args.steps or 200, pretrain_steps=600, adapt_samples=1000, rank=4, lrs=args.lrs)
    elif args.experiment in ("lost", "lost_gamma"):
        run_lost(args.seeds, args.steps or 400, dim=128, depth=2, rank=0.25, channels=0.05, matched_rank=0.29,
                 matched_dim=80, gammas=args.gammas if args.experiment == "lost_gamma" else None,
                 low_rank_gamma1=args.low_rank_gamma1)
    else:
        run_wave(args.seeds, size=32, epochs=args.steps or 16, train_traj=48, arms=[(3, 0), (3, 1), (5, 0), (5, 1)])


if __name__ == "__main__":
    main()
