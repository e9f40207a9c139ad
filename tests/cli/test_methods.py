"""``regimen methods`` and ``regimen methods NAME``."""

import inspect
import sys

import pytest

from regimen.method import Method, list_methods, register_method
from regimen.tasks import incompatibility, list_tasks
from regimen.train import parse_recipe
from tests.cli.helpers import run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _block(out: str) -> str:
    """The TOML block that ends ``regimen methods NAME``'s output."""
    return out[out.index("[[methods]]"):]


def _serving_task(cls) -> str:
    return next(name for name, task in list_tasks().items() if incompatibility(cls, task) is None)


@pytest.mark.parametrize("name", list(list_methods()))
def test_every_methods_toml_block_parses_and_validates_as_a_recipe(capsys, name):
    cls = list_methods()[name]
    code, out, err = run_cli(capsys, "methods", name)
    assert code == 0, err
    raw = tomllib.loads(_block(out))
    assert raw["methods"][0]["name"] == name
    recipe = parse_recipe({"task": _serving_task(cls), **raw})
    # every parameter with a non-None default is written out, at that default (None defaults are commented out)
    defaults = {p: list(d) if isinstance(d, tuple) else d for p, _, d in _parameters(cls) if d is not None}
    assert recipe.method_params(0) == defaults
    for parameter, _, default in _parameters(cls):
        if default is None:
            assert f"# {parameter} = ..." in _block(out)


def _parameters(cls):
    signature = inspect.signature(cls.__init__)
    return [(p.name, p.annotation, p.default) for p in signature.parameters.values() if p.name != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_describe_shows_parameters_docstring_paper_kinds_and_order(capsys):
    code, out, _ = run_cli(capsys, "methods", "randaugment")
    assert code == 0
    lines = out.splitlines()
    assert "  num_ops             int, default 2" in lines
    assert "  interpolation       str, default \"nearest\"" in lines
    assert any(line.startswith("paper: Cubuk, Zoph, Shlens, Le") for line in lines)
    assert "inputs: image   targets: any" in lines
    assert "RandAugment with per-image ops and magnitudes on each training batch (Cubuk et al. 2019)." in lines
    assert 'interpolation = "nearest"' in lines and "quantize = true" in lines and "magnitude = 9.0" in lines

    code, out, _ = run_cli(capsys, "methods", "z_loss")
    order = next(line for line in out.splitlines() if line.startswith("order: "))
    assert order.startswith("order: after logit_z_loss; conflicts with cutmix, mixup, mix (")
    assert "inputs: any   targets: labels" in out.splitlines()
    code, out, _ = run_cli(capsys, "methods", "hesso")  # a long declaration wraps under its label
    assert "order: after trp, multi_sample_dropout; before weight_std, nm_sparsity; conflicts with maestro (" in out
    assert all(len(line) <= 116 for line in out.splitlines() if line.startswith(("order: ", "       ")))
    code, out, _ = run_cli(capsys, "methods", "ema")
    assert "order: any (no after/before/conflicts declarations)" in out.splitlines()
    assert "paper: see the description above" in out.splitlines()  # no Paper: line in its module

    code, out, _ = run_cli(capsys, "methods", "drop_path")
    assert "  blocks    list[str] | None, default None" in out.splitlines()
    assert "# blocks = ...  # list[str] | None, default None" in out.splitlines()


@register_method
class _NoDocs(Method):
    name = "_test_methods_cli_bare"

    def __init__(self, rate: float = 0.5, required_thing: int = 1, mode: str = 'say "hi"\\now') -> None:
        pass


def test_describe_without_docstrings_or_paper_and_with_escapes(capsys):
    code, out, _ = run_cli(capsys, "methods", "_test_methods_cli_bare")
    assert code == 0
    assert "(no docstring)" in out and "paper: (not named)" in out and "Base class" not in out
    assert tomllib.loads(_block(out))["methods"][0]["mode"] == 'say "hi"\\now'


def test_unknown_name_is_one_line_with_close_matches(capsys):
    code, out, err = run_cli(capsys, "methods", "randaugmnt")
    assert code == 1 and out == ""
    assert err.startswith("regimen methods: error: unknown method 'randaugmnt'; did you mean randaugment or "
                          "trivialaugment")  # (or a third close name, such as augmix)
    assert err.endswith("? `regimen methods` lists them all\n") and err.count("\n") == 1
    code, _, err = run_cli(capsys, "methods", "qqqqqq")
    assert code == 1 and err == "regimen methods: error: unknown method 'qqqqqq'; `regimen methods` lists them all\n"


def test_list_has_a_parameter_hint_column_truncated_at_a_parameter(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["randaugment"].split("  ", 1)[1].strip().startswith("num_ops=2, magnitude=9.0, ...")
    assert "decay=0.999, warmup=true " in lines["ema"]  # short: complete, no "..."
    hint_start = lines["ema"].index("decay=")
    summary_start = lines["ema"].index("Exponential moving average")
    assert summary_start - hint_start <= 40 + 2  # the hint column is at most 40 wide
    methods = list_methods()
    starts = {line.index(methods[name].summary()) for name, line in lines.items() if methods[name].summary()}
    assert len(starts) == 1  # the summaries form one column


def test_a_closed_pipe_on_stdout_is_silent():
    """``regimen methods | head -1``: the reader leaves early; no 'internal error', no traceback."""
    import os
    import subprocess
    from pathlib import Path

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write: every write is EPIPE
    src = str(Path(__file__).resolve().parents[2] / "src")
    result = subprocess.run([sys.executable, "-c", "import sys; from regimen.cli import main; sys.exit(main())",
                             "methods"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": src})
    os.close(write_end)
    assert result.stderr == "" and result.returncode == 1
