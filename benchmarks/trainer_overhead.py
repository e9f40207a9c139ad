"""Trainer speed: samples/s of a recipe through ``regimen.fit`` against a plain PyTorch loop of the same model, and
(optionally) against an earlier checkout of regimen, in one run.

Every measurement runs in a fresh process, interleaved (plain, current, earlier, plain, current, ...), so a change in
the machine's load hits every variant alike; the table gives medians and ratios.

    python benchmarks/trainer_overhead.py --repeats 5                         # plain loop vs fit (baseline recipe)
    python benchmarks/trainer_overhead.py --before /path/to/old/checkout/src  # also: the earlier trainer

Samples/s counts training only (the epoch loop: data, hooks, forward, backward, step), not evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_FIT = """
import json, sys, torch
torch.set_num_threads({threads})
from regimen.train import fit, load_recipe
recipe = load_recipe({recipe!r}, {overrides!r})
result = fit(recipe)
print(json.dumps({{"samples_per_s": result.summary["samples_per_s"]}}))
"""

_PLAIN = """
import json, math, time, torch
import torch.nn.functional as F
torch.set_num_threads({threads})
from regimen.data import load_data
from regimen.models import build_model
steps, batch, epochs = {steps}, {batch}, 1
data = load_data("auto", None, 0.1, None, 0)
torch.manual_seed(0)
model = build_model("resnet", data.train.input_shape, 10, widths=[16, 32, 64], depths=[1, 1, 1])
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
images, labels = data.train.images, data.train.labels
order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
model.train()
started = time.perf_counter()
for step in range(steps):
    for group in optimizer.param_groups:
        group["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
    index = order[step * batch:(step + 1) * batch]
    x = (images[index].float().div_(255.0) - mean) / std
    loss = F.cross_entropy(model(x), labels[index], label_smoothing={smoothing})
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
elapsed = time.perf_counter() - started
print(json.dumps({{"samples_per_s": steps * batch / elapsed}}))
"""


def _run(code: str, src: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps timed per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", type=Path, help="the src/ folder of an earlier regimen checkout")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    overrides = ["train.epochs=1", f"train.max_steps_per_epoch={args.steps}", f"train.threads={args.threads}"]
    root = HERE / "recipes"
    variants = {
        "plain PyTorch loop": (_PLAIN.format(threads=args.threads, steps=args.steps, batch=128, smoothing=0.0),
                               HERE / "src"),
        "fit: baseline recipe": (_FIT.format(threads=args.threads, recipe=str(root / "baseline.toml"),
                                             overrides=overrides), HERE / "src"),
        "fit: default recipe": (_FIT.format(threads=args.threads, recipe=str(root / "default.toml"),
                                            overrides=overrides), HERE / "src"),
    }
    if args.before is not None:
        for name in ("baseline", "default"):
            variants[f"earlier fit: {name} recipe"] = (
                _FIT.format(threads=args.threads, recipe=str(root / f"{name}.toml"), overrides=overrides),
                args.before)
    results: dict[str, list[float]] = {name: [] for name in variants}
    load = os.getloadavg()
    for repeat in range(args.repeats):
        for name, (code, src) in variants.items():
            results[name].append(_run(code, src))
            print(f"repeat {repeat + 1}: {name}: {results[name][-1]:.0f} samples/s", file=sys.stderr, flush=True)
    plain = statistics.median(results["plain PyTorch loop"])
    print(f"\n{args.steps} steps of batch 128, ResNet [16, 32, 64] on Fashion-MNIST (digits without it), "
          f"{args.threads} thread(s), {args.repeats} interleaved runs; load average at start "
          f"{load[0]:.2f} {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| variant | samples/s median (min-max) | x plain loop |")
    print("|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / plain:.3f} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": load,
                                        "samples_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
