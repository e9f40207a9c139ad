"""Per-arm median and spread (min-max) over seeds of final test metrics of a `regimen study` folder, and the median
paired difference against the base arm: `python reports/tasks/tabulate.py STUDY_DIR [metric ...]`.

A metric is a summary key (`final_test_recall_at_1`, `final_val_mae`, `process_cpu_time`) or a test metric's short
name (`acc` means `final_test_acc`); none means every `final_test_*` metric. The table comes from
`regimen.bench.studies.metric_table` (shared with `study_metrics.py`, which prints 4 decimals and no time column).
Without the git-ignored `runs/` folder it falls back to the runs recorded in `results.json` (primary metric only).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # this checkout's regimen

from regimen.bench.studies import metric_table  # noqa: E402


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    print(metric_table(argv[0], argv[1:] or None, digits=3, time_column=True))


if __name__ == "__main__":
    main(sys.argv[1:])
