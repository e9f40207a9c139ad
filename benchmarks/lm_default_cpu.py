"""Time-to-quality of ``recipes/lm/default.toml``: validation/test bits per byte per epoch against the training
time, measured as wall time *and* as the CPU time of the process during the training epochs (evaluation excluded).

On a machine shared with other jobs the wall time says more about the load than about the recipe; the CPU time
(``time.process_time``) is what the training itself costs: with ``train.threads = 1`` it is the wall time the run
would take on one idle core, an upper bound for two.

    python benchmarks/lm_default_cpu.py --threads 1 [--set train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from regimen.method import Method, register_method


@register_method
class _CPUClock(Method):
    """Adds ``cpu/train_s`` (process CPU seconds spent in training epochs so far) to every epoch's record."""

    name = "_lm_cpu_clock"
    paper_id, claim, claimed_effect = "-", "benchmark helper", ""

    def __init__(self) -> None:
        self.total, self.started = 0.0, 0.0

    def on_epoch_start(self, ctx) -> None:
        self.started = time.process_time()

    def on_epoch_end(self, ctx) -> None:
        self.total += time.process_time() - self.started
        ctx.log("cpu/train_s", self.total)


def main() -> None:
    from regimen.train import fit
    from regimen.train.recipe import apply_overrides, parse_recipe, read_recipe_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="lm/default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="write the history as JSON here")
    args = parser.parse_args()
    raw = apply_overrides(read_recipe_file(args.recipe), [f"train.threads={args.threads}", *args.overrides])
    raw.setdefault("methods", []).append({"name": "_lm_cpu_clock"})
    recipe = parse_recipe(raw)
    load = os.getloadavg()
    result = fit(recipe, quiet=False)
    print(f"\nrecipe {args.recipe} {' '.join(args.overrides)}, {args.threads} thread(s); load average {load[0]:.1f} at "
          f"start, {os.getloadavg()[0]:.1f} at end; {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| epoch | steps | train CPU s | train wall s | val bits/byte | test bits/byte |")
    print("|---|---|---|---|---|---|")
    for h in result.history:
        print(f"| {h['epoch']} | {h['step']} | {h['cpu/train_s']:.0f} | {h['wall_time']:.0f} | "
              f"{h.get('val_bits_per_byte', float('nan')):.3f} | {h.get('test_bits_per_byte', float('nan')):.3f} |")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "load": load, "history": result.history, "summary": result.summary},
                      handle, indent=2)


if __name__ == "__main__":
    main()
