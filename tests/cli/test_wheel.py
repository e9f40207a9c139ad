"""A wheel install, with no checkout anywhere near, runs the shipped recipes by name."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _build_wheel(tmp_path: Path) -> Path:
    """Build regimen's wheel from a copy of the sources (the build writes build/ and *.egg-info next to them)."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "--disable-pip-version-check", "-w", str(wheels), str(project)], check=True, timeout=120)
    (wheel,) = wheels.glob("regimen-*.whl")
    return wheel


def test_a_wheel_install_lists_and_trains_shipped_recipes_by_name_outside_a_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)], check=True, timeout=120)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}  # the installed copy, not the checkout's src/
    regimen = [str(site / "bin" / "regimen")]  # the console script the wheel declares

    def run(*args):
        return subprocess.run([*regimen, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import regimen; print(regimen.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site)

    listed = run("recipes")
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    on_disk = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
                     for p in (ROOT / "recipes").rglob("*.toml"))
    assert sorted(names) == on_disk

    trained = run("train", "--recipe", "smoke", "--set", "train.epochs=1", "--out", "run", "--quiet")
    assert trained.returncode == 0, trained.stderr
    assert json.loads((elsewhere / "run" / "summary.json").read_text())["epochs"] == 1
