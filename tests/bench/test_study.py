"""regimen study: the statistics against scipy, verdicts by hand, planning, resuming and bad input (training is
replaced by a fake for most tests; one test trains for real)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats

from regimen.bench import study
from regimen.bench.study import Arm, StudySpec, load_study, paired_interval, parse_method_spec, run_study, verdict
from regimen.errors import ConfigurationError
from regimen.method import list_methods


def test_paired_interval_equals_scipy_t_interval():
    diffs = [0.012, -0.004, 0.021, 0.008, 0.015, 0.002]
    mean, low, high = paired_interval(diffs)
    expected = stats.t.interval(0.95, len(diffs) - 1, loc=sum(diffs) / len(diffs), scale=stats.sem(diffs))
    assert mean == pytest.approx(sum(diffs) / len(diffs))
    assert (low, high) == pytest.approx(expected)


def test_paired_interval_of_one_pair_has_no_bounds():
    mean, low, high = paired_interval([0.3])
    assert mean == 0.3 and math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("low, high, effect, expected", [
    (0.001, 0.02, "better", "confirmed"),
    (-0.001, 0.02, "better", "not detected at this budget"),
    (-0.03, -0.001, "better", "contradicted"),
    (-0.004, 0.01, "no_worse", "confirmed"),          # above -margin (0.005)
    (-0.006, 0.01, "no_worse", "not detected at this budget"),
    (-0.02, -0.006, "no_worse", "contradicted"),
    (0.01, 0.02, "", "no claim"),
])
def test_verdicts(low, high, effect, expected):
    assert verdict(low, high, effect, margin=0.005) == expected


def test_parse_method_spec():
    assert parse_method_spec("ema") == Arm("ema", "ema", {})
    arm = parse_method_spec("cutmix:alpha=0.5,prob=1.0")
    assert arm.label == "cutmix:alpha=0.5,prob=1.0" and arm.params == {"alpha": 0.5, "prob": 1.0}
    with pytest.raises(ConfigurationError, match="param=value"):
        parse_method_spec("cutmix:alpha")


def test_every_method_states_its_paper_and_claim():
    for name, cls in list_methods().items():
        if not cls.__module__.startswith("regimen."):
            continue  # a method some test registered
        assert cls.paper_id and cls.claim, f"{name}: set paper_id and claim"
        assert cls.claimed_effect in ("better", "no_worse"), f"{name}: claimed_effect {cls.claimed_effect!r}"


SMOKE_OVERRIDES = ["data.train_subset=200", "data.test_subset=100", "train.epochs=1"]


def _fake_execute(calls: list):
    """Stands in for a training process: a summary whose accuracy depends on the arm and seed."""

    def execute(command, folder):
        recipe = Path(command[command.index("--recipe") + 1]).read_text()
        seed = int(command[command.index("--set") + 1].split("=")[1])
        calls.append((Path(command[command.index("--recipe") + 1]).stem, seed))
        gain = 0.02 if "ema" in recipe else 0.0
        acc = 0.8 + 0.01 * seed + gain + (0.001 * (seed % 2) if gain else 0.0)
        summary = {"primary_metric": "test_acc", "higher_is_better": True, "final_test_acc": acc,
                   "train_time": 10.0 * (1.5 if gain else 1.0), "process_cpu_time": 20.0 * (2.0 if gain else 1.0),
                   "peak_memory_mb": 100.0, "time_to_target": None,
                   "epochs": 1}
        return {"process_time": 1.0, "summary": json.dumps(summary), "metrics": "{}\n"}

    return execute


def test_study_pairs_seeds_and_resumes_without_redoing_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "_execute", _fake_execute(calls))
    spec = StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=3, overrides=SMOKE_OVERRIDES)
    results = run_study(spec, tmp_path / "s", quiet=True)
    assert sorted(calls) == sorted([(arm, seed) for arm in ("base", "ema") for seed in (0, 1, 2)])
    row = results["rows"][0]
    assert row["pairs"] == 3 and row["differences"] == pytest.approx([0.02, 0.021, 0.02])
    assert row["verdict"] == "confirmed" and row["time_ratio"] == pytest.approx(1.5)
    assert row["cpu_time_ratio"] == pytest.approx(2.0)
    assert row["paper_id"] == list_methods()["ema"].paper_id
    assert (tmp_path / "s" / "results.md").read_text().count("| `ema` |") == 1
    assert (tmp_path / "s" / "differences.png").stat().st_size > 0

    # a run that never finished (killed) is redone; finished ones are not; more seeds extend the study
    (tmp_path / "s" / "runs" / "ema-seed1" / "summary.json").unlink()
    calls.clear()
    run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=4, overrides=SMOKE_OVERRIDES),
              tmp_path / "s", quiet=True)
    assert sorted(calls) == [("base", 3), ("ema", 1), ("ema", 3)]


def test_study_refuses_bad_input_before_training(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "_execute", _fake_execute(calls))
    with pytest.raises(ConfigurationError, match="seeds must be an int >= 2"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=1), tmp_path / "a")
    with pytest.raises(ConfigurationError, match=r"methods \(nope\).*unknown method"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("nope")]), tmp_path / "b")
    with pytest.raises(ConfigurationError, match=r"methods \(ema\): the base recipe 'default' already has 'ema'"):
        run_study(StudySpec(base="default", arms=[parse_method_spec("ema")]), tmp_path / "c")
    with pytest.raises(ConfigurationError, match=r"methods \(multi_sample_dropout\) on base .*cannot share"):
        run_study(StudySpec(base="local/local_dgl_k2", arms=[parse_method_spec("multi_sample_dropout")]),
                  tmp_path / "c")
    with pytest.raises(ConfigurationError, match="appear twice"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema"), parse_method_spec("ema")]), tmp_path)
    assert not calls and not (tmp_path / "a").exists() and not (tmp_path / "c").exists()

    run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=2, overrides=SMOKE_OVERRIDES),
              tmp_path / "d", quiet=True)
    with pytest.raises(ConfigurationError, match="holds another study .its base recipe differs"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=2,
                            overrides=SMOKE_OVERRIDES + ["optim.lr=0.3"]), tmp_path / "d", quiet=True)
    with pytest.raises(ConfigurationError, match="holds another study .its 'ema' recipe differs"):
        run_study(StudySpec(base="smoke", arms=[Arm("ema", "ema", {"decay": 0.5})], seeds=2,
                            overrides=SMOKE_OVERRIDES), tmp_path / "d", quiet=True)
    with pytest.raises(ConfigurationError, match="holds another study .its first seed is 0, not 3"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=2, first_seed=3,
                            overrides=SMOKE_OVERRIDES), tmp_path / "d", quiet=True)
    calls.clear()  # a new arm extends the study: only its runs train
    run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema"), parse_method_spec("cutmix")], seeds=2,
                        overrides=SMOKE_OVERRIDES), tmp_path / "d", quiet=True)
    assert sorted(calls) == [("cutmix", 0), ("cutmix", 1)]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigurationError, match="not empty and holds no study"):
        run_study(StudySpec(base="smoke", arms=[parse_method_spec("ema")], seeds=2), tmp_path / "e", quiet=True)
    assert (tmp_path / "e" / "mine.txt").read_text() == "keep me"


def test_study_file(tmp_path):
    (tmp_path / "s.toml").write_text(
        'title = "t"\nbase = "smoke"\nseeds = 3\noverrides = ["train.epochs=1"]\n\n'
        '[[methods]]\nname = "cutmix"\nlabel = "cutmix-half"\nalpha = 0.5\neffect = "no_worse"\n')
    spec = load_study(tmp_path / "s.toml")
    assert spec.seeds == 3 and spec.arms == [Arm("cutmix-half", "cutmix", {"alpha": 0.5}, "no_worse")]
    (tmp_path / "bad.toml").write_text('base = "smoke"\nseed = 3\n')
    with pytest.raises(ConfigurationError, match="unknown key 'seed'"):
        load_study(tmp_path / "bad.toml")


def test_study_trains_for_real_and_reports(tmp_path):
    """Two paired seeds of the smoke recipe with and without EMA, through the command line."""
    out = tmp_path / "study"
    command = [sys.executable, "-m", "regimen", "study", "--base", "smoke", "--methods", "ema:decay=0.9",
               "--seeds", "2", "--workers", "2", "--threads", "1", "--out", str(out), "--quiet",
               *[arg for o in SMOKE_OVERRIDES for arg in ("--set", o)]]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=1200)
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    assert row["label"] == "ema:decay=0.9" and row["pairs"] == 2 and results["pending"] == 0
    runs = {(r["arm"], r["seed"]): r for r in results["runs"]}
    expected = [runs[("ema:decay=0.9", s)]["final_test_acc"] - runs[("base", s)]["final_test_acc"] for s in (0, 1)]
    assert row["differences"] == pytest.approx(expected)
    # the same seed trains the same base run: the study's runs are reproducible
    again = subprocess.run([sys.executable, "-m", "regimen", "train", "--recipe", str(out / "recipes" / "base.toml"),
                            "--set", "seed=1", "--set", "train.threads=1", "--out", str(tmp_path / "again"),
                            "--quiet"], check=True, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert summary["final_test_acc"] == runs[("base", 1)]["final_test_acc"]


def test_study_on_ray_returns_the_runs_files(tmp_path):
    """The Ray executor: runs as Ray tasks in temporary folders, their files written back here."""
    pytest.importorskip("ray")
    spec = StudySpec(base="smoke", arms=[parse_method_spec("ema:decay=0.9")], seeds=2, overrides=SMOKE_OVERRIDES)
    results = run_study(spec, tmp_path / "ray", executor="ray", threads=1, quiet=True)
    assert results["pending"] == 0 and results["rows"][0]["pairs"] == 2
    assert (tmp_path / "ray" / "runs" / "base-seed1" / "metrics.jsonl").read_text().strip()


def test_wall_time_ratios_pair_only_runs_timed_in_the_same_generation():
    from regimen.bench.study import _timed_together

    old = {"train_time": 200.0}  # predates the CPU-time record: timed in an earlier session
    new = {"train_time": 30.0, "process_cpu_time": 40.0}
    assert _timed_together(old, dict(old)) and _timed_together(new, dict(new))
    assert not _timed_together(new, old) and not _timed_together(old, new)
