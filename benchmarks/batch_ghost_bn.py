"""Ghost BN speed: regimen's vectorised GhostBatchNorm vs a chunk loop vs plain BatchNorm, in one run.

Setup: CPU, ``torch.set_num_threads(--threads)`` (default 1: the machine is shared, one thread is less noisy),
float32, training mode. For each shape, three implementations are timed *interleaved* (round-robin, so load
changes hit all of them alike): ``bn`` = ``nn.BatchNorm`` on the whole batch (one statistic set — the lower bound),
``ghost`` = ``regimen.batch.GhostBatchNorm`` with 16 ghost batches, ``loop`` = the same ``nn.BatchNorm`` module
applied to ``x.split(ghost)`` chunk by chunk and concatenated (Composer's approach; identical numbers to ``ghost``).
Each timing is forward + backward of ``out.sum()`` (``fwd+bwd``) or forward under ``no_grad`` (``fwd``).
Medians over ``--repeats`` runs; ratios are medians of the same run. The default clock is this thread's CPU time
(``time.thread_time``; with one torch thread every kernel runs on the calling thread), because wall time on a
machine shared by several jobs mostly measures the scheduler; ``--clock wall`` gives wall time.

Run: ``.venv/bin/python benchmarks/batch_ghost_bn.py [--repeats 30] [--threads 1] [--clock cpu|wall]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from regimen.batch import GhostBatchNorm1d, GhostBatchNorm2d

GHOSTS = 16
SHAPES = [  # (N, C, spatial...) with N = 16 ghost batches
    (128, 16, 8, 8),
    (256, 32, 8, 8),
    (512, 64, 8, 8),
    (1024, 16, 14, 14),
    (2048, 64, 4, 4),
    (4096, 256),
    (1024, 128),
    (256, 64),
]


def make(shape: tuple[int, ...]):
    n, c = shape[:2]
    ghost = n // GHOSTS
    two_d = len(shape) == 4
    bn = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(c)
    gbn = (GhostBatchNorm2d if two_d else GhostBatchNorm1d)(c, ghost)
    loop_bn = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(c)

    def loop(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([loop_bn(chunk) for chunk in x.split(ghost)])

    return {"bn": bn, "ghost": gbn, "loop": loop}


def time_once(fn, x: torch.Tensor, backward: bool, clock=time.thread_time) -> float:
    start = clock()
    if backward:
        fn(x).sum().backward()
    else:
        with torch.no_grad():
            fn(x)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: this thread's CPU time (robust on a shared machine, needs --threads 1); wall")
    args = parser.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {GHOSTS} ghost batches, "
          f"median of {args.repeats} interleaved repeats, {args.clock} time in ms")
    # loop/bn: the chunk loop against one native BatchNorm over the whole batch (same memory passes, one call). Where it
    # is ~1, the loop already runs at native BatchNorm's speed, and "2x faster than the loop" would mean 2x faster than
    # the native kernel on the same data.
    print("| shape | mode | bn | ghost | loop | loop/ghost | ghost/bn | loop/bn |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        fns = make(shape)
        x = torch.randn(*shape, requires_grad=True)
        for backward in (True, False):
            times: dict[str, list[float]] = {name: [] for name in fns}
            for fn in fns.values():  # warm-up
                time_once(fn, x, backward, clock)
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    times[name].append(time_once(fn, x, backward, clock))
            med = {name: statistics.median(values) * 1e3 for name, values in times.items()}
            mode = "fwd+bwd" if backward else "fwd"
            print(f"| {tuple(shape)} | {mode} | {med['bn']:.3f} | {med['ghost']:.3f} | {med['loop']:.3f} | "
                  f"{med['loop'] / med['ghost']:.2f}x | {med['ghost'] / med['bn']:.2f}x | "
                  f"{med['loop'] / med['bn']:.2f}x |")


if __name__ == "__main__":
    main()
