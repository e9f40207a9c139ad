"""Resource bounds (issue 21): a recipe cannot make regimen allocate unbounded memory before validation. Sizes are
checked against the data (batch size, sequence length) and the machine (the model's parameters, weights +
gradients + optimizer state, against ``os.sysconf`` page counts) with a one-line ConfigurationError naming the
recipe key, through ``fit`` and the command line. Each run happens under an address-space limit (``RLIMIT_AS``,
in a subprocess), so a missing check shows up as a MemoryError or an allocator error instead of swapping the
machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT_GIB = 3

_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
import torch
torch.set_num_threads(1)
from regimen.errors import RegimenError
reports = []
for how, recipe, argv in json.loads(sys.argv[1]):
    if how == "fit":
        from regimen.train.trainer import fit
        try:
            fit(recipe, out_dir=None, quiet=True)
            reports.append({{"outcome": "trained"}})
        except BaseException as error:
            reports.append({{"outcome": type(error).__name__, "message": str(error),
                            "user": isinstance(error, RegimenError)}})
    else:
        from regimen.cli import main
        reports.append({{"outcome": "exit", "code": main(argv)}})
print(json.dumps(reports))
"""


def _run(jobs: list[tuple[str, dict | None, list[str] | None]]) -> tuple[list[dict], str]:
    """Run the jobs in one subprocess under an address-space limit (one import of torch for all of them)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    script = _SCRIPT.format(limit=LIMIT_GIB * 2**30)
    result = subprocess.run([sys.executable, "-c", script, json.dumps(jobs)], capture_output=True,
                            text=True, timeout=900, env=env, cwd=ROOT)
    assert result.returncode == 0, f"the run died ({result.returncode}): {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def _tiny(**changes) -> dict:
    recipe = {"name": "tiny", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [8]}}, "optim": {"name": "sgd", "lr": 0.05},
              "train": {"epochs": 1, "batch_size": 64}}
    for key, value in changes.items():
        section, name = key.split("__")
        recipe[section] = {**recipe.get(section, {}), name: value}
    return recipe


OVERSIZED = [
    ({"train__batch_size": 10**12}, "train.batch_size"),
    ({"model__options": {"hidden": [10**9]}}, "model.options"),
    ({"model__options": {"hidden": [10**5, 10**5]}}, "model.options"),
]
LANGUAGE_MODEL = {"name": "lm", "seed": 0, "task": "language_model",
                  "data": {"name": "stdlib", "options": {"seq_len": 10**9}},
                  "optim": {"name": "adamw", "lr": 1e-3}, "train": {"epochs": 1, "batch_size": 8}}


def test_oversized_recipes_are_refused_before_allocating_through_fit_and_the_command_line(tmp_path):
    recipe = tmp_path / "big.toml"
    recipe.write_text('name = "big"\nseed = 0\n[data]\nname = "digits"\n[model]\nname = "mlp"\n'
                      '[optim]\nname = "sgd"\nlr = 0.05\n[train]\nepochs = 1\nbatch_size = 64\n')
    cli = ["train", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--quiet",
           "--set", "model.options.hidden=[1000000000]"]
    jobs = [("fit", _tiny(**changes), None) for changes, _ in OVERSIZED]
    jobs += [("fit", LANGUAGE_MODEL, None), ("cli", None, cli)]
    reports, stderr = _run(jobs)
    for (changes, key), report in zip(OVERSIZED, reports, strict=False):
        assert report["outcome"] != "trained", changes
        assert report["user"], f"{changes}: not a user error (an allocation was attempted?): {report}"
        assert key in report["message"] and "\n" not in report["message"], report["message"]
    assert reports[3]["user"] and "seq_len" in reports[3]["message"], reports[3]
    assert reports[4]["code"] == 1
    lines = [line for line in stderr.strip().splitlines() if line.startswith("regimen train")]
    assert len(lines) == 1 and "internal error" not in lines[0] and "model.options" in lines[0], stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir()), "a refused run wrote files"


def test_a_model_with_too_many_layers_is_refused_before_it_is_built(tiny_recipe, monkeypatch):
    # depth = 10**9 spent minutes registering modules on the meta device before any size check could run
    import pytest

    from regimen.errors import ConfigurationError
    from regimen.train import fit, trainer

    monkeypatch.setattr(trainer, "MAX_MODEL_MODULES", 3)
    recipe = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [8, 8, 8, 8]}})
    with pytest.raises(ConfigurationError, match=r"^model.options: .*registers more than 3 layers"):
        fit(recipe)


def test_a_weight_whose_size_overflows_is_refused_by_key(tiny_recipe):
    # on the meta device torch raised "Storage size calculation overflowed"; the probe then gave up silently and the
    # real build asked the allocator for the impossible size
    import pytest

    from regimen.errors import ConfigurationError
    from regimen.train import fit

    recipe = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [4 * 10**9, 4 * 10**9]}})
    with pytest.raises(ConfigurationError, match=r"^model.options: .*weight too large to allocate"):
        fit(recipe)
