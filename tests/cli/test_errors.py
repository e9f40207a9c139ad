"""What the command line calls a user error (one line, exit 1) and what it calls a bug (the exception type, where it
was raised, and how to get the traceback)."""

import errno

import pytest

import regimen.cli
from regimen.cli import build_parser, main
from regimen.errors import ConfigurationError, RegimenError
from tests.cli.helpers import run_cli


def _raise_from_report(monkeypatch, error):
    """``regimen report`` raises ``error`` from inside the library call it makes."""
    import regimen.bench

    def write_report(folder):
        raise error

    monkeypatch.setattr(regimen.bench, "write_report", write_report)


def test_an_internal_value_error_is_a_bug_not_a_user_error(capsys, monkeypatch):
    import regimen.method

    def list_methods():
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(regimen.method, "list_methods", list_methods)
    code, _, err = run_cli(capsys, "methods")
    assert code == 1
    first, second = err.strip().splitlines()
    assert first.startswith("regimen methods: internal error: ValueError: an internal invariant broke (at regimen/")
    assert "test_errors.py" not in first and first.endswith(".py:" + first.rsplit(":", 1)[1])
    assert second == "this is a bug in regimen; run with REGIMEN_DEBUG=1 for the traceback"
    assert "Traceback" not in err


def test_an_internal_key_error_is_a_bug_and_prints_its_key(capsys, monkeypatch):
    _raise_from_report(monkeypatch, KeyError("summary"))
    code, _, err = run_cli(capsys, "report", "anywhere")
    assert code == 1 and "internal error: KeyError: summary" in err and "bug in regimen" in err


def test_regimen_debug_shows_the_traceback_of_a_bug_and_of_a_user_error(capsys, monkeypatch):
    monkeypatch.setenv("REGIMEN_DEBUG", "1")
    _raise_from_report(monkeypatch, ValueError("internal"))
    with pytest.raises(ValueError, match="internal"):
        main(["report", "anywhere"])
    with pytest.raises(ConfigurationError, match="needs --recipe"):
        main(["train"])
    monkeypatch.setenv("REGIMEN_DEBUG", "0")  # 0 means off
    assert main(["train"]) == 1


@pytest.mark.parametrize("error", [RegimenError("bad input"), ConfigurationError("bad input")])
def test_regimen_errors_are_user_errors(capsys, monkeypatch, error):
    _raise_from_report(monkeypatch, error)
    code, _, err = run_cli(capsys, "report", "anywhere")
    assert code == 1 and err == "regimen report: error: bad input\n"


def test_the_library_error_types_are_regimen_errors():
    """The command line reports these in one line because they derive from RegimenError."""
    from regimen.data import DataError
    from regimen.method import MethodConflictError
    from regimen.tasks import UnknownTaskError
    from regimen.train import CheckpointError, RecipeError

    for kind in (RecipeError, DataError, CheckpointError, MethodConflictError, UnknownTaskError, ConfigurationError):
        assert issubclass(kind, RegimenError), kind


def test_pydantic_validation_errors_are_user_errors(capsys, monkeypatch):
    from pydantic import BaseModel, ValidationError

    class Settings(BaseModel):
        epochs: int

    with pytest.raises(ValidationError) as caught:
        Settings(epochs="many")
    _raise_from_report(monkeypatch, caught.value)
    code, _, err = run_cli(capsys, "report", "anywhere")
    assert code == 1 and err.startswith("regimen report: error: 1 validation error") and "internal" not in err


@pytest.mark.parametrize("kind", [FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError])
@pytest.mark.parametrize("where, user", [("{folder}", True), ("{folder}/results.md", True), ("{parent}", True),
                                         ("/usr/lib/regimen-internal/kernel.so", False)])
def test_file_errors_are_user_errors_only_for_paths_the_user_named(capsys, monkeypatch, tmp_path, kind, where, user):
    folder = tmp_path / "a" / "b"
    filename = where.format(folder=folder, parent=tmp_path / "a")  # {parent}: creating a/b fails at a
    _raise_from_report(monkeypatch, kind(errno.EACCES, "cannot", filename))
    code, _, err = run_cli(capsys, "report", str(folder))
    assert code == 1
    assert ("internal error" not in err) == user
    assert len(err.strip().splitlines()) == (1 if user else 2)


def test_a_file_error_regimen_raises_with_a_message_is_a_user_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", str(tmp_path / "empty"))
    assert code == 1 and err.strip() == (f"regimen report: error: {tmp_path / 'empty' / 'results.json'} not found: "
                                         f"run `regimen bench --out {tmp_path / 'empty'}` first")


def test_a_file_error_about_a_set_override_path_is_a_user_error(capsys, monkeypatch, tmp_path):
    import regimen.train

    def fit(recipe, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No such file", str(tmp_path / "data" / "x.npz"))

    monkeypatch.setattr(regimen.train, "fit", fit)
    code, _, err = run_cli(capsys, "train", "--recipe", "smoke", "--set", f'data.root="{tmp_path / "data"}"')
    assert code == 1 and "internal error" not in err


def test_the_cli_own_argument_errors_are_configuration_errors(monkeypatch):
    monkeypatch.setenv("REGIMEN_DEBUG", "1")
    with pytest.raises(ConfigurationError):
        main(["train"])
    with pytest.raises(ConfigurationError, match="--repeats"):
        main(["bench", "--recipes", "smoke", "--repeats", "0", "--out", "unused"])


def test_interrupt_exits_130_with_a_resume_hint_for_train_only(capsys, monkeypatch):
    import regimen.train

    def fit(recipe, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(regimen.train, "fit", fit)
    code, _, err = run_cli(capsys, "train", "--recipe", "smoke")
    assert code == 130 and "--resume" in err
    _raise_from_report(monkeypatch, KeyboardInterrupt())
    code, _, err = run_cli(capsys, "report", "anywhere")
    assert code == 130 and err == "regimen report: interrupted\n"


def test_a_missing_command_module_is_an_error_not_a_missing_command(monkeypatch):
    monkeypatch.setattr(regimen.cli, "COMMAND_MODULES", (*regimen.cli.COMMAND_MODULES, "regimen.commands.nope"))
    with pytest.raises(ModuleNotFoundError, match="regimen.commands.nope"):
        build_parser()


def test_importing_a_command_does_not_import_its_optional_extra():
    import subprocess
    import sys

    code = "import sys, regimen.cli; regimen.cli.build_parser(); print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_misspelt_set_key_is_one_line_with_the_nearest_key(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--recipe", "smoke", "--set", "data.path=\"x\"", "--set",
                             "methods=[{name=\"ema\", decai=0.9}]", "--out", str(tmp_path / "r"))
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("regimen train: error: data.path: unknown key; did you mean root? valid keys: name, root, ")
    assert not (tmp_path / "r").exists()  # refused while parsing, before any data is loaded
