"""``train.channels_last`` on this CPU: a training step (forward, backward, SGD step) of regimen's ResNet with the
model and the batch in ``torch.channels_last`` (NHWC) against the default contiguous (NCHW) layout, in the same run.

Run: ``PYTHONPATH=src .venv/bin/python benchmarks/trainer_channels_last.py [--repeats 15] [--threads 1]``

Shapes: the Fashion-MNIST default (1×28×28, widths [16, 32, 64], batch 128) and a CIFAR-like one (3×32×32, widths
[64, 128, 256], batch 64). Timing: the two layouts run in interleaved rounds (each timed step right after an untimed
one of the same layout), medians over rounds; the ratio is channels_last / contiguous time (below 1: NHWC faster).
The load average is printed before and after: read the ratio within one run. Channels-last mostly pays on GPUs
(tensor cores) and on CPUs where oneDNN has NHWC kernels for the shapes; on small channel counts it can be slower.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from regimen.models import build_model


def _step_fn(shape, widths, batch, channels_last, seed=0):
    torch.manual_seed(seed)
    model = build_model("resnet", shape, 10, widths=widths, depths=[1] * len(widths))
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 10, (batch,))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"load average before {os.getloadavg()}")
    cases = [("1x28x28 widths [16,32,64] batch 128", (1, 28, 28), [16, 32, 64], 128),
             ("3x32x32 widths [64,128,256] batch 64", (3, 32, 32), [64, 128, 256], 64)]
    print("| case | contiguous (ms/step) | channels_last (ms/step) | ratio |")
    print("|---|---|---|---|")
    for name, shape, widths, batch in cases:
        steps = {"contiguous": _step_fn(shape, widths, batch, False),
                 "channels_last": _step_fn(shape, widths, batch, True)}
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.repeats):
            for key, fn in steps.items():
                fn()
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        a, b = (statistics.median(times[k]) for k in ("contiguous", "channels_last"))
        print(f"| {name} | {a * 1e3:.1f} | {b * 1e3:.1f} | {b / a:.2f}x |")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
