"""The fuzz registry: one Entry per public name of every pillar's ``__all__``, or a justified skip.

Every ``*Method`` class gets a generic entry (built from its defaults; every typed parameter is given values its
annotation never admits). Functions, Modules and other classes have hand-written entries in ``entries_<pillar>.py``.
"""

from __future__ import annotations

import importlib
import inspect

from regimen.method import Method
from tests.reliability import (
    entries_augment,
    entries_batch,
    entries_dropout,
    entries_local,
    entries_losses,
    entries_subnet,
)
from tests.reliability.strategies import method_entry

PILLARS = ("augment", "batch", "dropout", "local", "losses", "subnet")

ENTRIES = {}
SKIPPED: dict[str, str] = {}
for _module in (entries_augment, entries_batch, entries_dropout, entries_local, entries_losses, entries_subnet):
    for _entry in _module.ENTRIES:
        assert _entry.name not in ENTRIES, f"two fuzz entries for {_entry.name}"
        ENTRIES[_entry.name] = _entry
    SKIPPED.update(_module.SKIPPED)

for _pillar in PILLARS:
    _package = importlib.import_module(f"regimen.{_pillar}")
    for _name in _package.__all__:
        _obj = getattr(_package, _name)
        if inspect.isclass(_obj) and issubclass(_obj, Method) and f"{_pillar}.{_name}" not in ENTRIES:
            ENTRIES[f"{_pillar}.{_name}"] = method_entry(_pillar, _obj)
