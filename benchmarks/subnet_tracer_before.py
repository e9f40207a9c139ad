"""The new tracer zoo (tests/subnet/archs_real.py) run against any version of regimen's tracer: the zero-and-remove
test of tests/subnet/test_tracer_archs.py and ``prune(ratio=0.3, scope="uniform")``, one line per architecture.

The "before" column of reports/subnet/tracer.md (output: reports/subnet/tracer_before.txt) ran the tracer at the
branch point:

    git archive 12f1863 src | tar -x -C /tmp/base
    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base/src .venv/bin/python benchmarks/subnet_tracer_before.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regimen.subnet import prune, prune_groups, trace_dependencies, zero_units  # noqa: E402
from regimen.subnet._common import normalize_inputs  # noqa: E402
from tests.subnet.archs import randomize_norms  # noqa: E402
from tests.subnet.archs_real import REAL_ARCHS, output  # noqa: E402


def run(model: torch.nn.Module, x: object) -> torch.Tensor:
    args, kwargs = normalize_inputs(x)
    with torch.no_grad():
        return output(model(*args, **kwargs))


def main() -> int:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    print(sys.modules["regimen.subnet"].__file__)
    for name in REAL_ARCHS:
        torch.manual_seed(0)
        model, x = REAL_ARCHS[name]()
        randomize_norms(model)
        model.eval()
        try:
            graph = trace_dependencies(model, x)
            plan = {}
            for group in graph.groups:
                if group.lossless:
                    zero_units(model, group, torch.arange(1, group.size, 2))
                    plan[group] = torch.arange(0, group.size, 2)
            before = run(model, x)
            prune_groups(model, plan, example_inputs=x)
            diff = (run(model, x) - before).abs().max().item()
            line = f"groups={[(g.kind, g.size, g.lossless) for g in graph.groups]} zero-prune maxdiff={diff:.2e}"
        except Exception as error:  # noqa: BLE001
            line = f"{type(error).__name__}: {str(error)[:150]}"
        model, x = REAL_ARCHS[name]()
        model.eval()
        try:
            prune(model, x, ratio=0.3, scope="uniform")
            run(model, x)
            line += " | prune30 ok"
        except Exception as error:  # noqa: BLE001
            line += f" | prune30 {type(error).__name__}: {str(error)[:150]}"
        print(name, line.replace("\n", " "), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
