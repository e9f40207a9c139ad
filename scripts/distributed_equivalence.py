"""The distributed equivalence table: 2 processes (gloo) at per-device batch b vs 1 process at 2b, same seed.

    PYTHONPATH=src:. python scripts/distributed_equivalence.py [--out reports/reliability/README.md] [--steps N]

Runs every case of ``tests/distributed/harness.py`` (the same cases the test asserts), prints the table and writes
it between the ``<!-- equivalence -->`` markers of ``--out``. ``--steps`` sets ``train.max_steps_per_epoch`` (the
test uses the harness's default, 4 steps per epoch).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

BEGIN, END = "<!-- equivalence -->", "<!-- /equivalence -->"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="Markdown file whose table section is rewritten")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps_per_epoch for every case")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from tests.distributed import harness

    if args.steps is not None:
        os.environ["REGIMEN_EQUIVALENCE_STEPS"] = str(args.steps)
    cases = harness.CASES
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="equivalence-") as tmp:
        folder = Path(tmp)
        workers, holder = harness.start_two_processes(cases, folder)
        harness.run_one_process(cases, folder)
        harness.finish_two_processes(workers, holder)
        results = {case.name: harness.compare(case, folder) for case in cases}
    elapsed = time.perf_counter() - started
    table = render(cases, results, elapsed, args.steps)
    print(table)
    if args.out is not None:
        text = args.out.read_text() if args.out.exists() else f"{BEGIN}\n{END}\n"
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        args.out.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    failed = [name for name, r in results.items() if r["error"] or (
        harness.case_named(name).expect == "equal" and harness.worst(r, harness.case_named(name))
        > harness.case_named(name).tol)]
    if failed:
        print(f"NOT EQUIVALENT within tolerance: {failed}", file=sys.stderr)
    return 1 if failed else 0


def render(cases, results, elapsed: float, steps: int | None) -> str:
    from tests.distributed import harness

    load = os.getloadavg()[0]
    lines = [
        f"Command: `PYTHONPATH=src:. python scripts/distributed_equivalence.py --out reports/reliability/README.md"
        f"{'' if steps is None else f' --steps {steps}'}` "
        f"({elapsed:.0f} s wall on the shared 2-core machine, load average {load:.1f} at the end; torch "
        f"{__import__('torch').__version__}, gloo). Per-device batch b = {harness.PER_DEVICE}, one process at "
        f"2b = {2 * harness.PER_DEVICE}; {'4' if steps is None else steps} steps per epoch, 2 epochs (adaptive_batch: "
        f"3); max |difference| after training.",
        "",
        "| method | expected | steps (1 / 2 proc) | max diff params | buffers | method state | metrics (rel.) | "
        "tolerance | verdict | why this tolerance / semantics |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        r = results[case.name]
        if r["error"]:
            lines.append(f"| {case.name} | {case.expect} | - | - | - | - | - | - | ERROR | "
                         f"{r['error'].strip().splitlines()[-1][:200]} |")
            continue
        worst = harness.worst(r, case)
        if case.expect == "equal":
            verdict = "equal" if worst <= case.tol else "**NOT equal**"
        else:
            verdict = "per device (documented)" if worst > case.tol else "equal here"
        tolerance = f"{case.tol:g} ({', '.join(case.compare)})" if case.expect == "equal" else "-"
        steps_text = f"{r['steps'][0]} / {r['steps'][1]}"
        lines.append(f"| {case.name} | {case.expect} | {steps_text} | {r['params']:.2e} | {r['buffers']:.2e} | "
                     f"{r['methods']:.2e} | {r['metrics']:.2e} | {tolerance} | {verdict} | {case.why} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
