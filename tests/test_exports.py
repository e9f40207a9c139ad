"""Every public name is importable, and every registered Method is exported by its pillar under ``<Name>Method``."""

import importlib

import pytest

import regimen
from regimen.method import list_methods

PACKAGES = ["regimen", "regimen.method", "regimen.errors", "regimen.tasks", "regimen.data", "regimen.models",
            "regimen.train", "regimen.augment", "regimen.dropout", "regimen.batch", "regimen.losses",
            "regimen.local", "regimen.subnet"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_imports(package):
    module = importlib.import_module(package)
    names = module.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    for name in names:
        assert getattr(module, name) is not None, f"{package}.{name}"


def test_every_registered_method_is_exported_by_its_package_as_name_method():
    exported = {}
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            exported.setdefault(id(getattr(module, name)), []).append(f"{package}.{name}")
    for recipe_name, cls in list_methods().items():
        if recipe_name.startswith("_test"):
            continue
        assert cls.__name__.endswith("Method"), f"{recipe_name}: {cls.__name__} should be named <Name>Method"
        assert id(cls) in exported, f"{recipe_name}: {cls.__module__}.{cls.__name__} is in no package's __all__"


def test_fit_is_lazy():
    import subprocess
    import sys

    code = "import sys, regimen; print('lightning_fabric' in sys.modules, 'pydantic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert regimen.fit is importlib.import_module("regimen.train").fit
