"""Every metric of a `regimen study` folder, per arm: median [min, max] over seeds, and the paired differences.

`regimen study` tables the primary metric only; the task reports (neural_field: SSIM; sequence_classification: ECE,
MC-dropout variance, NLL) need the others too. Usage:

    python reports/tasks/study_metrics.py STUDY_FOLDER final_test_psnr final_test_ssim ...

The same table as `tabulate.py` (`regimen.bench.studies.metric_table`), with 4 decimals and no time column.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # this checkout's regimen

from regimen.bench.studies import metric_table  # noqa: E402


def main(folder: str, keys: list[str]) -> None:
    print(metric_table(folder, keys or None, digits=4, time_column=False))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
