"""SSA's attention cost: full attention (``F.scaled_dot_product_attention``) against stochastically subsampled
attention (``regimen.subnet.subsampled_attention`` on ``⌈T/ρ⌉`` gathered keys), forward + backward of one layer's
attention, in one run (interleaved repeats, medians, ratio of medians).

The paper (arXiv 2306.01705) claims 4-8x lower self-attention memory and compute in training. The score matrix
shrinks from ``T × T`` to ``T × (T/ρ + 1)`` per head (the MACs ratio printed); the measured time ratio also pays the
gather, the mask and the sampling, and competes with a fused kernel.

    python benchmarks/ssa_attention.py --lengths 196,1024 --ratio 4 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from regimen.subnet import sample_kept_positions, subsampled_attention


def _time(fn, repeats_inner: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats_inner):
        fn()
    return (time.perf_counter() - started) / repeats_inner


def measure(length: int, ratio: float, batch: int, heads: int, dim: int, causal: bool, repeats: int,
            locality: float) -> dict:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator, requires_grad=True) for _ in range(3))
    keep = max(1, math.ceil(length / ratio))

    def full():
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    def sub():
        kept = sample_kept_positions(batch, length, keep, generator, locality=locality)
        subsampled_attention(q, k, v, kept, causal=causal).sum().backward()

    inner = max(1, 2048 // length)
    full(), sub()  # warm-up
    times = {"full": [], "ssa": []}
    for _ in range(repeats):
        times["full"].append(_time(full, inner))
        times["ssa"].append(_time(sub, inner))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {"length": length, "keep": keep, "score_macs_ratio": length / (keep + 1),
            "full_ms": 1e3 * medians["full"], "ssa_ms": 1e3 * medians["ssa"],
            "speedup": medians["full"] / medians["ssa"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="196,1024")
    parser.add_argument("--ratio", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=16, help="per-head width")
    parser.add_argument("--locality", type=float, default=0.0)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(int(n), args.ratio, args.batch, args.heads, args.dim, args.causal, args.repeats, args.locality)
            for n in args.lengths.split(",")]
    print("| T | kept K | score MACs ratio (T / (K+1)) | full ms | SSA ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['length']} | {r['keep']} | {r['score_macs_ratio']:.2f} | {r['full_ms']:.2f} | {r['ssa_ms']:.2f} "
              f"| {r['speedup']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
