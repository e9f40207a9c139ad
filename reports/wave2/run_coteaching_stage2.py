"""Co-teaching as the paper's separate second stage (issue 16): stage 1 = reports/wave2/run_arms.py's ``nested`` arm
(recipe noisy/nested) at seeds 0-5; stage 2 = recipe noisy/coteaching_stage2 with network f from stage-1 seed s and
the peer from seed s + 3 (s = 0, 1, 2), run at seed s (seed s's data and noise draw), and a control with forget rate
0 (the same two networks fine-tuned together on every sample: ensembling and extra epochs without the small-loss
selection).

    PYTHONPATH=src python reports/wave2/run_arms.py --out reports/wave2/noisy_stage2 --seeds 0 3 1 4 2 5 \
        --arm nested=noisy/nested
    PYTHONPATH=src python reports/wave2/run_coteaching_stage2.py [--pairs 0 1 2] [--arms stage2 stage2_forget0]
    PYTHONPATH=src python reports/wave2/run_arms.py --out reports/wave2/noisy_stage2 --table
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

OUT = Path("reports/wave2/noisy_stage2")
FORGET = {"stage2": 0.2, "stage2_forget0": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(FORGET))
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="src")
    for seed in args.pairs:
        a, b = OUT / f"nested-seed{seed}" / "checkpoint.pt", OUT / f"nested-seed{seed + 3}" / "checkpoint.pt"
        for arm in args.arms:
            folder = OUT / f"{arm}-seed{seed}"
            if (folder / "summary.json").exists():
                continue
            methods = ('[{name="nested_dropout", sigma=10.0, select_every=4}, {name="co_teaching", '
                       f'forget_rate={FORGET[arm]}, freeze_bn=true, init_from=["{a}", "{b}"]}}]')
            command = [sys.executable, "-m", "regimen", "train", "--recipe", "noisy/coteaching_stage2", "--out",
                       str(folder), "--overwrite", "--quiet", "--set", f"seed={seed}", "--set", "train.threads=1",
                       "--set", f"methods={methods}"]
            print(" ".join(command), flush=True)
            subprocess.run(command, check=True, env=env)


if __name__ == "__main__":
    main()
