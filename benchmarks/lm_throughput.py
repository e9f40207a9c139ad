"""Language-model training speed: tokens/s of regimen's GPT through ``regimen.fit`` (recipe ``lm/default``) against
a plain PyTorch loop of the same model, data, optimizer, schedule and gradient clipping, in one run.

Every measurement runs in a fresh process, interleaved (plain, fit, plain, fit, ...), so a change in the machine's
load hits both alike; the table gives medians and the ratio. Tokens/s counts training only (data, forward,
backward, clipping, step), not evaluation or data loading.

    python benchmarks/lm_throughput.py --repeats 5 --steps 40 --threads 2
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
import json, torch
torch.set_num_threads({threads})
from regimen.train import fit, load_recipe
recipe = load_recipe("lm/default", {overrides!r})
result = fit(recipe)
print(json.dumps({{"tokens_per_s": result.summary["samples_per_s"] * recipe.data.options["seq_len"]}}))
"""

_PLAIN = """
import json, math, time, torch
import torch.nn.functional as F
torch.set_num_threads({threads})
from regimen.train import load_recipe
from regimen.tasks import LanguageModelTask
from regimen.models import GPT
recipe = load_recipe("lm/default", {overrides!r})
data = LanguageModelTask(recipe).load_data()
torch.manual_seed(0)
model = GPT(vocab_size=data.train.vocab_size, block_size=data.train.seq_len, **recipe.model.options)
decay = [p for p in model.parameters() if p.dim() >= 2]
rest = [p for p in model.parameters() if p.dim() < 2]
lr, steps, batch = recipe.optim.lr, {steps}, recipe.train.batch_size
optimizer = torch.optim.AdamW([{{"params": decay, "weight_decay": recipe.optim.weight_decay}},
                               {{"params": rest, "weight_decay": 0.0}}], lr=lr, betas=tuple(recipe.optim.betas))
order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
model.train()
started = time.perf_counter()
for step in range(steps):
    for group in optimizer.param_groups:
        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
    x, y = data.train.gather(order[step * batch:(step + 1) * batch])
    loss = F.cross_entropy(model(x).flatten(0, 1), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
elapsed = time.perf_counter() - started
print(json.dumps({{"tokens_per_s": steps * batch * data.train.seq_len / elapsed}}))
"""


def _run(code: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(HERE / "src"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps timed per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    overrides = ["train.epochs=1", f"train.max_steps_per_epoch={args.steps}", f"train.threads={args.threads}",
                 "data.test_subset=1", "schedule.warmup_epochs=0", "schedule.min_lr_ratio=0"]
    variants = {"plain PyTorch loop": _PLAIN.format(threads=args.threads, steps=args.steps, overrides=overrides),
                "regimen fit (lm/default)": _FIT.format(threads=args.threads, overrides=overrides)}
    results: dict[str, list[float]] = {name: [] for name in variants}
    load = os.getloadavg()
    for repeat in range(args.repeats):
        for name, code in variants.items():
            results[name].append(_run(code))
            print(f"repeat {repeat + 1}: {name}: {results[name][-1]:.0f} tokens/s", file=sys.stderr, flush=True)
    plain = statistics.median(results["plain PyTorch loop"])
    end_load = os.getloadavg()
    print(f"\n{args.steps} steps of 32 x 128 tokens, GPT 4x128 (lm/default) on the KJV Bible, {args.threads} "
          f"thread(s), {args.repeats} interleaved runs; load average {load[0]:.2f} at start, {end_load[0]:.2f} at "
          f"end, {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| variant | tokens/s median (min-max) | x plain loop |")
    print("|---|---|---|")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} ({min(values):.0f}-{max(values):.0f}) | {median / plain:.3f} |")
    if args.out is not None:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "load": [load, end_load],
                                        "tokens_per_s": results}, indent=2))


if __name__ == "__main__":
    main()
