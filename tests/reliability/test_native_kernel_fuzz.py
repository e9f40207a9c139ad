"""The compiled augmentation kernel fuzzed in a subprocess (native_fuzz_worker.py): a segfault or an abort fails
this test with the exit signal instead of killing the suite. REGIMEN_FUZZ=large runs 25 times more cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.reliability import fuzzlib

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("native_fuzz_worker.py")


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _check(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, (f"the kernel fuzz worker died with exit code {result.returncode} (negative: "
                                    f"killed by signal {-result.returncode}); stderr: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_crash_in_the_worker_fails_the_test_instead_of_the_suite():
    crashed = _run(["-c", "import ctypes; ctypes.string_at(0)"])
    assert crashed.returncode != 0
    try:
        _check(crashed)
    except AssertionError as error:
        assert "signal" in str(error)
    else:
        raise AssertionError("a crashed worker was not reported")


def test_compiled_kernel_survives_hostile_arrays_and_matches_the_torch_path():
    cases = 5000 if os.environ.get("REGIMEN_FUZZ", "").startswith("large") else 240
    report = _check(_run([str(WORKER), str(cases), "21"]))
    fuzzlib.COUNTS["native kernel"] += report["cases"]
    assert not report["failures"], report["failures"]
