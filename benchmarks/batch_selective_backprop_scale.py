"""Selective backprop's ``scale_factor`` on this CPU: the cost of a training step with per-example selection (no-grad
scoring pass, then forward/backward/step on the kept half) at ``scale_factor`` 1 and ½ against a plain step on the
whole batch, in the same run.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/batch_selective_backprop_scale.py [--repeats 11] [--threads 1]``

Model: regimen's ResNet (widths [16, 32, 64], one block per stage, global pooling), batch 128 of 1×28×28 (the
Fashion-MNIST default), keep = ½. Timing: the three variants in interleaved rounds (each timed step right after an
untimed one), medians; ratios against the plain step. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from regimen.batch import SelectiveBackpropMethod
from regimen.method import Context
from regimen.models import build_model


def _variant(scale: float | None, batch: int = 128):
    torch.manual_seed(0)
    model = build_model("resnet", (1, 28, 28), 10, widths=[16, 32, 64], depths=[1, 1, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    ctx = Context(model, opt, epochs=1, steps_per_epoch=10**6)
    ctx.criterion = torch.nn.functional.cross_entropy
    method = None if scale is None else SelectiveBackpropMethod(keep=0.5, start=0.0, end=1.0, interrupt=0,
                                                                 scale_factor=scale)

    def step():
        xs, ys = (x, y) if method is None else method.transform_batch(x, y, ctx)
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(xs), ys).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, load average before {os.getloadavg()}")
    variants = {"plain step (whole batch)": _variant(None), "selective backprop, scale 1": _variant(1.0),
                "selective backprop, scale 0.5": _variant(0.5)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for key, fn in variants.items():
            fn()
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    base = statistics.median(times["plain step (whole batch)"])
    print("| variant | ms/step | ratio to plain |")
    print("|---|---|---|")
    for key, values in times.items():
        median = statistics.median(values)
        print(f"| {key} | {median * 1e3:.1f} | {median / base:.2f}x |")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
