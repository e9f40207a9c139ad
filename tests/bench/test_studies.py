"""regimen.bench.studies (the one reader of committed studies) against hand-computed tables, the evidence index
(reports/evidence/index.toml + index.py) and the cards' reading of every indexed study."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from regimen.bench.studies import (
    find_studies,
    format_delta,
    load_index,
    median_spread,
    metric_table,
    read_results,
    resolve_metric,
    run_summaries,
)
from regimen.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]

BASE = {0: 0.80, 1: 0.82, 2: 0.79}
ARM = {0: 0.83, 1: 0.81, 2: 0.84}


def _results(rows=(), metric="test_acc", runs=(), higher=True):
    return {"title": "t", "command": "", "spec": {"base": "evidence/base", "seeds": 3, "arms": []},
            "first_seed": 0, "primary_metric": metric, "higher_is_better": higher,
            "base": {"runs": 3, "mean": 0.8, "train_time": 1.0, "epochs": 2}, "rows": list(rows), "runs": list(runs),
            "pending": 0}


def _study(folder: Path, with_runs: bool = True) -> Path:
    """A study folder with two arms over three seeds: runs/<arm>-seed<s>/summary.json and results.json."""
    runs = []
    for arm, values in (("base", BASE), ("cutmix:alpha=0.5", ARM)):
        for seed, acc in values.items():
            summary = {"final_test_acc": acc, "final_test_loss": 1 - acc, "train_time": 10.0 + seed,
                       "process_cpu_time": 12.0 + seed, "primary_metric": "test_acc"}
            if with_runs:
                run = folder / "runs" / f"{arm.replace(':', '_')}-seed{seed}"
                run.mkdir(parents=True)
                (run / "summary.json").write_text(json.dumps(summary))
            runs.append({"arm": arm, "seed": seed, "final_test_acc": acc, "train_time": 10.0 + seed})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text("{}")
    row = {"label": "cutmix:alpha=0.5", "method": "cutmix", "paper_id": "arXiv:1905.04899", "claim": "c",
           "claimed_effect": "better", "pairs": 3, "mean_difference": 0.0233, "ci_low": -0.01, "ci_high": 0.0567,
           "verdict": "not detected at this budget", "time_ratio": 1.1, "memory_ratio": 1.0}
    (folder / "results.json").write_text(json.dumps(_results([row], runs=runs)))
    return folder


def _cell(values, digits, base=None):
    """The expected cell, computed by an explicit loop: median [min, max], then the median paired difference."""
    ordered = sorted(values.values())
    middle = ordered[len(ordered) // 2] if len(ordered) % 2 else (ordered[len(ordered) // 2 - 1]
                                                                   + ordered[len(ordered) // 2]) / 2
    text = f"{middle:.{digits}f} [{ordered[0]:.{digits}f}, {ordered[-1]:.{digits}f}]"
    if base is not None:
        diffs = sorted(values[s] - base[s] for s in values)
        text += f" (Δ median {diffs[len(diffs) // 2]:+.{digits}f})"
    return text


def test_metric_table_matches_a_table_computed_by_hand(tmp_path):
    folder = _study(tmp_path / "study")
    lines = metric_table(folder, ["acc"], digits=4).splitlines()
    assert lines[0] == "| arm | seeds | acc | train s (median) |"
    assert lines[2] == f"| `base` | 3 | {_cell(BASE, 4)} | 11 |"
    assert lines[3] == f"| `cutmix_alpha=0.5` | 3 | {_cell(ARM, 4, BASE)} | 11 |"
    default = metric_table(folder, time_column=False).splitlines()  # every final_test_* metric of the base
    assert default[0] == "| arm | seeds | final_test_acc | final_test_loss |"


def test_run_summaries_fall_back_to_the_runs_in_results_json(tmp_path):
    with_runs = metric_table(_study(tmp_path / "a"), ["acc"])
    without = metric_table(_study(tmp_path / "b", with_runs=False), ["acc"])
    assert with_runs == without  # same primary-metric table from a checkout without the git-ignored runs/
    assert list(run_summaries(tmp_path / "b")) == ["base", "cutmix_alpha=0.5"]
    with pytest.raises(ConfigurationError, match="no finished runs"):
        run_summaries(tmp_path / "empty")


def test_resolve_metric_takes_the_key_or_the_test_metric_of_that_name():
    summaries = [{"final_test_acc": 1.0, "process_cpu_time": 2.0, "final_val_mae": 3.0}]
    assert resolve_metric("acc", summaries) == "final_test_acc"
    assert resolve_metric("final_test_acc", summaries) == "final_test_acc"
    assert resolve_metric("process_cpu_time", summaries) == "process_cpu_time"
    assert resolve_metric("final_val_mae", summaries) == "final_val_mae"


def test_median_spread_skips_missing_values_and_scales():
    assert median_spread([0.5, None, math.nan, 0.25, 1.0], "{:.1f}", scale=100) == "50.0 [25.0, 100.0]"
    assert median_spread([0.1, 0.2], "{:.2f}") == f"{statistics.median([0.1, 0.2]):.2f} [0.10, 0.20]"
    assert median_spread([None, math.inf]) == "–"
    with pytest.raises(TypeError, match="template"):
        median_spread([1.0], "%f")


def test_find_studies_and_read_results(tmp_path):
    _study(tmp_path / "tasks" / "x" / "study-a")
    _study(tmp_path / "evidence" / "image")
    bench = tmp_path / "batch" / "large"  # a regimen bench folder: results.json without study.json
    bench.mkdir(parents=True)
    (bench / "results.json").write_text(json.dumps({"title": "b", "recipes": []}))
    assert find_studies(tmp_path) == [tmp_path / "evidence" / "image", tmp_path / "tasks" / "x" / "study-a"]
    assert read_results(tmp_path / "evidence" / "image")["primary_metric"] == "test_acc"
    with pytest.raises(ConfigurationError, match="not the results of a `regimen study`"):
        read_results(bench)
    with pytest.raises(ConfigurationError, match="results.json is missing"):
        read_results(tmp_path)
    with pytest.raises(TypeError, match="root"):
        find_studies(3)


def test_format_delta_in_percentage_points_for_accuracies_only():
    row = {"mean_difference": 0.0096, "ci_low": 0.0007, "ci_high": 0.0185}
    assert format_delta(row, _results()) == "+0.96 pp [+0.07, +1.85]"
    row = {"mean_difference": -0.0123, "ci_low": None, "ci_high": math.nan}
    assert format_delta(row, _results(metric="test_w2", higher=False)) == "-0.0123 [–, –]"


def test_load_index_names_what_is_wrong(tmp_path):
    _study(tmp_path / "image")
    (tmp_path / "r.md").write_text("# r")
    (tmp_path / "index.toml").write_text('[[tasks]]\nname = "image"\nstudies = ["image"]\n'
                                         'reports = [["r.md", "a report"]]\n')
    (task,) = load_index(tmp_path)
    assert task.studies == [tmp_path / "image"] and task.reports == [(tmp_path / "r.md", "a report")]
    for body, message in [('[[tasks]]\nname = "x"\nstudies = ["nowhere"]\n', "study 'nowhere' has no results"),
                          ('[[tasks]]\nname = "x"\nreports = [["gone.md", "?"]]\n', "report 'gone.md' does not exist"),
                          ('[[tasks]]\nname = "x"\nreports = ["r.md"]\n', r"a report is \[path, what it holds\]"),
                          ('[[tasks]]\nname = "x"\nstudy = []\n', "unknown key 'study'"),
                          ('title = 1\n', "unknown key 'title'")]:
        (tmp_path / "index.toml").write_text(body)
        with pytest.raises(ConfigurationError, match=message):
            load_index(tmp_path / "index.toml")


def test_cards_read_every_study_the_index_names(tmp_path):
    from regimen.commands.cards import _measured, load_evidence

    evidence = tmp_path / "reports" / "evidence"
    _study(evidence / "image")
    _study(tmp_path / "reports" / "tasks" / "x" / "study-a")
    (evidence / "index.toml").write_text('[[tasks]]\nname = "x"\nstudies = ["../tasks/x/study-a", "image"]\n')
    rows = load_evidence(evidence)
    assert [row["study"] for row in rows] == ["image", "../tasks/x/study-a"]  # each study once
    lines = _measured(rows, "../../reports/evidence")
    assert "| [tasks/x/study-a](../../reports/tasks/x/study-a/results.md) |" in lines[3]
    assert "| [image](../../reports/evidence/image/results.md) |" in lines[2]
    assert lines[-1].startswith("- tasks/x/study-a: 3 paired seeds")


def test_the_committed_evidence_index_is_current():
    done = subprocess.run([sys.executable, str(ROOT / "reports" / "evidence" / "index.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + " (regenerate: python reports/evidence/index.py)"


def test_report_scripts_print_the_shared_table(tmp_path):
    folder = _study(tmp_path / "study")
    for script, digits, time_column in (("tabulate.py", 3, True), ("study_metrics.py", 4, False)):
        done = subprocess.run([sys.executable, str(ROOT / "reports" / "tasks" / script), str(folder), "acc"],
                              capture_output=True, text=True, check=True)
        assert done.stdout == metric_table(folder, ["acc"], digits=digits, time_column=time_column) + "\n"


def test_a_tasks_folders_add_every_study_found_under_them(tmp_path):
    _study(tmp_path / "tasks" / "x" / "b")
    _study(tmp_path / "tasks" / "x" / "a")
    (tmp_path / "index.toml").write_text('[[tasks]]\nname = "x"\nstudies = ["tasks/x/b"]\nfolders = ["tasks/x"]\n')
    (task,) = load_index(tmp_path / "index.toml")
    assert task.studies == [tmp_path / "tasks" / "x" / "b", tmp_path / "tasks" / "x" / "a"]  # named first, once
    (tmp_path / "index.toml").write_text('[[tasks]]\nname = "x"\nfolders = ["nowhere"]\n')
    with pytest.raises(ConfigurationError, match="folder 'nowhere' does not exist"):
        load_index(tmp_path / "index.toml")
