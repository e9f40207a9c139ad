"""Shared by the CLI tests: run ``regimen.cli.main`` in-process and capture what it printed."""

from regimen.cli import main


def run_cli(capsys, *args):
    """``(exit code, stdout, stderr)`` of ``regimen *args``."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
