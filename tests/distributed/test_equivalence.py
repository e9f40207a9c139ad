"""2 processes (gloo) at per-device batch b train what 1 process trains at 2b, for every method that depends on the
global batch or synchronises state; the methods that are per device by design say so in their docstrings.

All cases share one pair of worker processes (started once, ~1 s per case after start-up) while the one-process
runs train in this process; ``scripts/distributed_equivalence.py`` prints the same comparison as a table
(reports/reliability/README.md).
"""

from __future__ import annotations

import importlib
import os
import socket

import pytest

from tests.distributed import harness
from tests.distributed.launch import reserved_port


def _selected() -> list[harness.Case]:
    """``$REGIMEN_EQUIVALENCE_ONLY`` (comma-separated parts of case names) runs only those cases (mutation runs)."""
    only = [part for part in os.environ.get("REGIMEN_EQUIVALENCE_ONLY", "").split(",") if part]
    return [c for c in harness.CASES if not only or any(part in c.name for part in only)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cases = _selected()
    folder = tmp_path_factory.mktemp("equivalence")
    workers, holder = harness.start_two_processes(cases, folder)
    try:
        harness.run_one_process(cases, folder)
    finally:
        harness.finish_two_processes(workers, holder)
    return cases, folder


@pytest.fixture(scope="module")
def compared(trained):
    cases, folder = trained
    return {case.name: harness.compare(case, folder) for case in cases}


@pytest.mark.slow
def test_each_rank_draws_its_own_random_stream(trained):
    """Dropout and other global draws are per process: rank r's torch stream is seeded with seed + 1 + r, so the
    two ranks never draw the same masks (a shared seed would correlate every rank's dropout)."""
    cases, folder = trained
    run = folder / harness.slug(cases[0].name) / "two"
    seeds = [int((run / f"torch_seed_rank{r}.txt").read_text()) for r in (0, 1)]
    assert seeds == [1, 2]  # recipe seed 0


@pytest.mark.slow
@pytest.mark.parametrize("name", harness.CASE_NAMES)
def test_two_processes_at_b_equal_one_process_at_2b(compared, name):
    if name not in compared:
        pytest.skip("not selected by REGIMEN_EQUIVALENCE_ONLY")
    case, result = harness.case_named(name), compared[name]
    assert result["error"] is None, result["error"]
    assert result["steps"][0] == result["steps"][1]
    worst = harness.worst(result, case)
    if case.expect == "equal":
        assert worst <= case.tol, f"{name}: max difference {worst:.3g} > {case.tol:g} ({result})"
    else:  # documented as per device: the difference is real, so the documentation is not vacuous
        assert worst > case.tol, f"{name}: documented as per device but equal within {case.tol:g} ({result})"


@pytest.mark.parametrize("case", [c for c in harness.CASES if c.doc], ids=lambda c: c.name)
def test_per_device_semantics_are_documented(case):
    module, phrase = case.doc
    text = " ".join((importlib.import_module(module).__doc__ or "").split())
    assert phrase in text, f"{module}'s docstring does not state its DDP semantics ({phrase!r})"


def test_every_global_batch_method_of_the_issue_has_a_case():
    methods = {m["name"] for case in harness.CASES for m in case.methods}
    assert {"ghost_bn", "lr_scaling", "adaptive_batch", "high_loss_batches", "load_balance", "local_learning",
            "nested_width", "sam", "swa", "ema", "selective_backprop"} <= methods


def test_a_reserved_port_is_not_handed_out_but_a_server_can_listen_on_it():
    """The race the reservation closes: while held, ``bind(0)`` never returns the port; the rendezvous server (which
    binds with SO_REUSEADDR, like torch's TCPStore) can still listen on it."""
    with reserved_port() as port:
        others = []
        try:
            for _ in range(200):
                other = socket.socket()
                other.bind(("127.0.0.1", 0))
                others.append(other)
                assert other.getsockname()[1] != port
        finally:
            for other in others:
                other.close()
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
