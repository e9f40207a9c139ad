"""Per-call cost of ``regimen.method.checked_arguments`` on hot paths: decorated vs undecorated, in the same run.

Run: ``PYTHONPATH=src python benchmarks/checked_arguments_overhead.py [--repeats 41] [--calls 50] [--threads 1]``

The guard checks each argument against its annotation before the body runs (issue 21). The functions below run once
per forward (or per step) in a training loop; each is timed decorated (as shipped) and undecorated
(``fn.__wrapped__``, the same body without the guard) on realistic CPU sizes. Contenders run in interleaved rounds
(each timed block of ``--calls`` calls right after one untimed warm-up call of the same contender), so drift on a
shared machine hits both alike; the table gives medians over rounds, the ratio decorated / undecorated and the
guard's absolute cost per call. A last row times the guard alone on a function with an empty body (the pure
per-call overhead of binding and checking four arguments).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from regimen.batch import ghost_batch_norm
from regimen.dropout import drop_block2d, drop_path, temporal_dropout
from regimen.losses import classification_loss, z_loss
from regimen.method import checked_arguments


@checked_arguments
def _empty(x: torch.Tensor, p: float = 0.1, *, training: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    return x


def cases() -> list[tuple[str, object, tuple, dict]]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(64, 197, 192, generator=g)  # a ViT-Tiny block's residual branch, batch 64
    fmap = torch.randn(32, 64, 16, 16, generator=g)  # a ResNet stage's feature map
    small = torch.randn(128, 16, generator=g)  # a tiny MLP's hidden layer (the guard matters most here)
    seq = torch.randn(32, 64, 128, generator=g)  # (N, T, D) sequence features
    bn_x = torch.randn(256, 64, 8, 8, generator=g)
    gamma, beta = torch.ones(64), torch.zeros(64)
    logits, target = torch.randn(256, 100, generator=g), torch.randint(0, 100, (256,), generator=g)
    lm_logits, lm_target = torch.randn(8 * 128, 512, generator=g), torch.randint(0, 512, (8 * 128,), generator=g)
    return [
        ("drop_path (64x197x192)", drop_path, (tokens, 0.1), {"generator": g}),
        ("drop_path (128x16, tiny)", drop_path, (small, 0.1), {"generator": g}),
        ("drop_block2d (32x64x16x16)", drop_block2d, (fmap, 0.1, 3), {"generator": g}),
        ("temporal_dropout (32x64x128)", temporal_dropout, (seq, 0.1), {"generator": g}),
        ("ghost_batch_norm (256x64x8x8, ghost 32)", ghost_batch_norm, (bn_x, 32), {"weight": gamma, "bias": beta}),
        ("classification_loss (256x100)", classification_loss, (logits, target), {"label_smoothing": 0.1}),
        ("z_loss (1024x512)", z_loss, (lm_logits, lm_target), {}),
        ("empty body (guard alone)", _empty, (small, 0.1), {"training": True, "generator": g}),
    ]


def time_block(fn, args, kwargs, calls: int) -> float:
    fn(*args, **kwargs)
    start = time.perf_counter()
    for _ in range(calls):
        fn(*args, **kwargs)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, threads {args.threads}, "
          f"load average before {os.getloadavg()[0]:.1f}")
    print("| function (size) | undecorated median µs | decorated median µs | ratio | guard µs/call |")
    print("|---|---|---|---|---|")
    with torch.no_grad():
        for name, fn, fargs, kwargs in cases():
            bare = fn.__wrapped__
            plain, guarded = [], []
            for _ in range(args.repeats):
                plain.append(time_block(bare, fargs, kwargs, args.calls))
                guarded.append(time_block(fn, fargs, kwargs, args.calls))
            p, q = statistics.median(plain) * 1e6, statistics.median(guarded) * 1e6
            print(f"| {name} | {p:.1f} | {q:.1f} | {q / p:.3f} | {q - p:.2f} |")
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
