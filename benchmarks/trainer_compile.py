"""``train.compile``: training samples/s of the same recipe with and without ``torch.compile``, in one run.

Each measurement is a fresh process (compilation caches do not carry over), interleaved (eager, compiled, eager,
compiled, ...) so a change in the machine's load hits both alike. A run trains ``--epochs`` short epochs; the first
epoch pays the compilation, so the steady-state speed is the median samples/s of the later epochs, and the first
epoch's time is reported apart (compilation included).

    python benchmarks/trainer_compile.py --repeats 3                       # the speedrun recipe
    python benchmarks/trainer_compile.py --recipe baseline --repeats 3

Samples/s counts training only (the epoch loop), not evaluation.
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

_FIT = """
import json, torch
torch.set_num_threads({threads})
from regimen.train import fit, load_recipe
recipe = load_recipe({recipe!r}, {overrides!r})
result = fit(recipe)
print(json.dumps({{"epoch_s": [h["epoch_time"] for h in result.history],
                   "samples_per_s": [h["samples_per_s"] for h in result.history],
                   "test_acc": result.summary.get("final_test_acc")}}))
"""


def _run(recipe: str, overrides: list[str], threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(HERE / "src"))
    code = _FIT.format(recipe=recipe, overrides=overrides, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="speedrun")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "reports" / "speedrun" / "compile.json")
    args = parser.parse_args()
    common = [f"train.epochs={args.epochs}", f"train.max_steps_per_epoch={args.steps}", "data.test_subset=1000",
              "train.target=0.999", f"train.threads={args.threads}"]
    runs: dict[str, list[dict]] = {"eager": [], "compiled": []}
    for repeat in range(args.repeats):
        for variant in runs:
            result = _run(args.recipe, [*common, f"train.compile={str(variant == 'compiled').lower()}"], args.threads)
            runs[variant].append(result)
            print(f"repeat {repeat + 1} {variant}: first epoch {result['epoch_s'][0]:.1f} s, later epochs "
                  f"{[round(s) for s in result['samples_per_s'][1:]]} samples/s", flush=True)
    summary = {}
    for variant, results in runs.items():
        steady = statistics.median(s for r in results for s in r["samples_per_s"][1:])
        first = statistics.median(r["epoch_s"][0] for r in results)
        summary[variant] = {"steady_samples_per_s": steady, "first_epoch_s": first}
    ratio = summary["compiled"]["steady_samples_per_s"] / summary["eager"]["steady_samples_per_s"]
    summary["compiled_over_eager"] = ratio
    summary["setup"] = {"recipe": args.recipe, "repeats": args.repeats, "epochs": args.epochs, "steps": args.steps,
                        "threads": args.threads, "load_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2))
    print(f"eager {summary['eager']['steady_samples_per_s']:.0f} samples/s, compiled "
          f"{summary['compiled']['steady_samples_per_s']:.0f} samples/s (ratio {ratio:.2f}); first epoch "
          f"{summary['eager']['first_epoch_s']:.1f} s vs {summary['compiled']['first_epoch_s']:.1f} s")


if __name__ == "__main__":
    main()
