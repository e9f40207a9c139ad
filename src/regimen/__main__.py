"""``python -m regimen`` = the ``regimen`` command."""

from regimen.cli import run

run()
