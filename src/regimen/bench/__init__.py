"""Benchmark harness, method report and studies: run recipes, compare with the baseline (paired seeds and
confidence intervals in a study), table + plot."""

from regimen.bench.harness import run_bench
from regimen.bench.report import aggregate, write_report
from regimen.bench.study import StudySpec, load_study, run_study, write_study_report

__all__ = ["StudySpec", "aggregate", "load_study", "run_bench", "run_study", "write_report", "write_study_report"]
