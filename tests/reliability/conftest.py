"""Hypothesis profiles of the reliability suite and the count of generated cases.

``REGIMEN_FUZZ`` unset: the bounded default profile (derandomized, so the default suite is deterministic and fits
its time budget). ``REGIMEN_FUZZ=large``: many more examples, random seeds; ``REGIMEN_FUZZ=large-triage``: the same
without shrinking (a failure is reported as first found: for listing failures over the whole registry in less CPU
time). The terminal summary prints how many cases ran, by kind.
"""

from __future__ import annotations

import os

import torch._dynamo  # noqa: F401 - imported now: a lazy first import inside a timed case could be interrupted
from hypothesis import HealthCheck, Phase, settings

from tests.reliability import fuzzlib

_COMMON = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture, HealthCheck.differing_executors])
settings.register_profile("regimen-default", max_examples=3, derandomize=True, **_COMMON)
settings.register_profile("regimen-large", max_examples=150, derandomize=False, **_COMMON)
settings.register_profile("regimen-triage", max_examples=6, derandomize=True, phases=[Phase.explicit, Phase.generate],
                          **_COMMON)  # no shrinking: for listing failures fast while fixing them
settings.register_profile("regimen-large-triage", max_examples=150, derandomize=False,
                          phases=[Phase.explicit, Phase.generate], **_COMMON)  # the large profile, no shrinking
settings.load_profile({"large": "regimen-large", "triage": "regimen-triage", "large-triage": "regimen-large-triage"}
                      .get(os.environ.get("REGIMEN_FUZZ", ""), "regimen-default"))


def pytest_terminal_summary(terminalreporter):
    if fuzzlib.COUNTS:
        total = sum(fuzzlib.COUNTS.values())
        parts = ", ".join(f"{kind}: {n}" for kind, n in sorted(fuzzlib.COUNTS.items()))
        terminalreporter.write_line(f"regimen fuzz: {total} generated cases ({parts}); profile "
                                    f"{settings().max_examples} examples per property")
