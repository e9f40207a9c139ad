"""``linear_ce`` on the real model: a GPT with a large vocabulary, one training step with the chunked linear
cross-entropy (method ``linear_ce``) against the materialised head (logits ``(B·T, V)`` then cross-entropy), in one run.

Each variant runs in a fresh process (interleaved, repeated): the peak-memory figure is the growth of the process's
resident high-water mark (``ru_maxrss``) during the first training step, above what the model, its gradients, the
optimizer state and the batch already held; time is the median time of the following steps.

    python benchmarks/lm_linear_ce.py --vocab 8192 --batch 16 --seq-len 256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

_STEP = """
import json, resource, time, torch
torch.set_num_threads({threads})
from regimen.losses import linear_cross_entropy
from regimen.models import GPT
from regimen.tasks import lm_cross_entropy
torch.manual_seed(0)
model = GPT(vocab_size={vocab}, block_size={seq_len}, dim={dim}, depth={depth}, heads=4)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(0, {vocab}, ({batch}, {seq_len} + 1), generator=torch.Generator().manual_seed(0))
x, y = ids[:, :-1], ids[:, 1:]

def step():
    if {chunked}:
        loss = linear_cross_entropy(model(x, return_hidden=True), model.output_weight, y)
    else:
        loss = lm_cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return loss.item()

# gradients and optimizer state first (a zero-LR step on zero gradients), so the first real step's growth of the
# resident high-water mark is the step's own peak: activations, logits, their gradients
for p in model.parameters():
    p.grad = torch.zeros_like(p)
for group in optimizer.param_groups:
    group["lr"] = 0.0
optimizer.step()
for group in optimizer.param_groups:
    group["lr"] = 1e-3
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range({steps}):
    started = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - started)
print(json.dumps({{"step_s": sorted(times)[len(times) // 2], "peak_mb": (after - before) / 1024, "loss": loss}}))
"""


def _run(code: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE / "src"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    settings = dict(vocab=args.vocab, batch=args.batch, seq_len=args.seq_len, dim=args.dim, depth=args.depth,
                    steps=args.steps, threads=args.threads)
    variants = {"materialised logits + cross-entropy": _STEP.format(chunked=False, **settings),
                "linear_ce (chunked, no logits)": _STEP.format(chunked=True, **settings)}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    load = os.getloadavg()
    for repeat in range(args.repeats):
        for name, code in variants.items():
            results[name].append(_run(code))
            print(f"repeat {repeat + 1}: {name}: {results[name][-1]}", file=sys.stderr, flush=True)
    tokens = args.batch * args.seq_len
    print(f"\nGPT {args.depth}x{args.dim}, vocab {args.vocab}, {args.batch} x {args.seq_len} = {tokens} tokens per "
          f"step (logits {tokens * args.vocab * 4 / 2**20:.0f} MB in fp32), {args.threads} thread(s), {args.repeats} "
          f"interleaved runs; load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end\n")
    print("| variant | step time s, median (min-max) | peak extra memory MB, median (min-max) | loss |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        times, peaks = [r["step_s"] for r in runs], [r["peak_mb"] for r in runs]
        print(f"| {name} | {statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f}) | "
              f"{statistics.median(peaks):.0f} ({min(peaks):.0f}-{max(peaks):.0f}) | {runs[0]['loss']:.4f} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "load": load,
                                        "results": results}, indent=2))


if __name__ == "__main__":
    main()
