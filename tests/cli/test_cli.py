import json
import os
import subprocess
import sys

import pytest

from regimen.cli import build_parser, main
from regimen.recipes import find_recipe
from tests.cli.helpers import run_cli

SMOKE = ["--recipe", "recipes/smoke.toml", "--set", "train.epochs=1", "--quiet"]


def test_methods_lists_every_registered_method_one_line_each(capsys):
    from regimen.method import list_methods

    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == list(list_methods())
    assert any(line.startswith("ema ") for line in out.splitlines())


def test_train_writes_run_and_resume_continues(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *SMOKE, "--out", str(tmp_path / "r"))
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["epochs"] == 1
    code, _, err = run_cli(capsys, "train", "--resume", str(tmp_path / "r" / "checkpoint.pt"), "--set",
                           "train.epochs=2", "--quiet")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs"] == 2


def test_train_takes_a_shipped_recipe_by_name_outside_the_checkout(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipes/ folder here: the name resolves inside the package
    code, _, err = run_cli(capsys, "train", "--recipe", "smoke", "--set", "train.epochs=1", "--quiet")
    assert code == 0, err
    summary = json.loads((tmp_path / "runs" / "smoke" / "summary.json").read_text())
    assert summary["epochs"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--recipe", "no/such.toml"], "recipe file not found: 'no/such.toml'"),
        (["--recipe", "smok"], "did you mean smoke"),
        (["--recipe", "recipes/smoke.toml", "--set", "train.batch_size=-1"], "train.batch_size"),
        (["--recipe", "recipes/smoke.toml", "--set", "methods=[{name=\"nope\"}]"], "unknown method 'nope'"),
        (["--recipe", "recipes/smoke.toml", "--set", "data.name=\"idx\"", "--set", "data.root=\"/nonexistent\""],
         "missing file"),
        ([], "needs --recipe"),
    ],
)
def test_user_errors_are_one_line_and_exit_non_zero(capsys, tmp_path, args, message):
    code, _, err = run_cli(capsys, "train", *args, "--out", str(tmp_path / "x"), "--quiet")
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error" not in err
    assert not (tmp_path / "x").exists()  # a failed run writes nothing


def test_bad_toml_is_one_line(capsys, tmp_path):
    (tmp_path / "bad.toml").write_text("name = ")
    code, _, err = run_cli(capsys, "train", "--recipe", str(tmp_path / "bad.toml"))
    assert code == 1 and "invalid TOML" in err and len(err.strip().splitlines()) == 1


def test_checkpoint_from_another_model_is_refused_and_run_untouched(capsys, tmp_path):
    assert run_cli(capsys, "train", *SMOKE, "--out", str(tmp_path / "r"))[0] == 0
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    code, _, err = run_cli(capsys, "train", *SMOKE, "--set", "model.options.hidden=[8]", "--resume",
                           str(tmp_path / "r" / "checkpoint.pt"))
    assert code == 1 and "different model" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


def test_python_dash_m_regimen_works():
    completed = subprocess.run([sys.executable, "-m", "regimen", "--version"], capture_output=True, text=True,
                               env=dict(os.environ))
    assert completed.returncode == 0 and completed.stdout.strip()


def test_bench_takes_names_and_paths_and_writes_json_table_and_plot(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--recipes", "smoke", "recipes/smoke.toml", "--set",
                           "train.epochs=1", "--target", "0.5", "--out", str(tmp_path), "--quiet")
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["recipes"] == ["smoke", "smoke#2"] and all("summary" in r for r in results["runs"])
    # the name reached the train subprocess as the shipped file, the path as given
    assert [r["path"] for r in results["runs"]] == [str(find_recipe("smoke")), "recipes/smoke.toml"]
    table = (tmp_path / "results.md").read_text()
    assert "| smoke#2 |" in table and "time to target" in table
    assert (tmp_path / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_refuses_zero_repeats_before_running(capsys, tmp_path):
    code, _, err = run_cli(capsys, "bench", "--recipes", "smoke", "--repeats", "0", "--out", str(tmp_path / "b"))
    assert code == 1 and "--repeats must be >= 1, got 0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_info_reports_versions_data_the_kernel_and_the_recipes(capsys, tmp_path, monkeypatch):
    import torch

    from regimen import recipes
    from regimen.augment import native

    monkeypatch.setenv("REGIMEN_DATA", str(tmp_path))  # an empty folder: the data is reported missing
    assert main(["info"]) == 0
    facts = capsys.readouterr().out.split("\n\n")[0]  # the facts; the tasks follow after a blank line
    lines = dict(line.split(":", 1) for line in facts.splitlines())
    assert lines["torch"].strip() == torch.__version__
    assert "missing" in lines["fashion-mnist"] and str(tmp_path) in lines["fashion-mnist"]
    assert lines["uint8 augmentation kernel"].strip().startswith("built" if native.available() else "unavailable")
    assert lines["recipes"].strip().startswith(f"{len(recipes.list_recipes())} shipped in {recipes.folder()}")


def _subcommands():
    parser, runners = build_parser()
    return parser, runners


def test_help_lists_every_command_and_each_command_has_its_own_help(capsys):
    parser, runners = _subcommands()
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.split("COMMAND\n", 1)[1].split("\noptions:")[0].splitlines()
              if line.startswith("    ") and not line.startswith("     ")}
    assert listed == set(runners)
    for name in runners:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: regimen {name}")


@pytest.mark.parametrize("command, option", [("train", "--recipe"), ("bench", "--recipes")])
def test_help_says_recipes_go_by_name_or_file(capsys, command, option):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert option in out and "name" in out and "TOML file" in out


def test_a_diverging_run_is_a_one_line_user_error_not_a_bug(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", *SMOKE, "--set", "optim.lr=1e30", "--out", str(tmp_path / "r"),
                           "--quiet")
    assert code == 1 and "loss is" in err and "lower optim.lr" in err
    assert len(err.strip().splitlines()) == 1 and "internal error" not in err
