"""Every public name is importable, and every registered Method is exported by its pillar under ``<Name>Method``."""

import importlib
import pkgutil

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


PILLARS = ["regimen.augment", "regimen.dropout", "regimen.batch", "regimen.losses", "regimen.local", "regimen.subnet"]
#: Modules whose names are reached through the module, not the pillar: namespaces of ops
#: (``regimen.augment.functional.<op>``), the kernel's loader and references, the tracer's internals, and
#: ``regimen.subnet.graph`` (the v1 import path of the tracer).
MODULE_NAMESPACES = {"regimen.augment.functional", "regimen.augment.native", "regimen.augment.pillow_reference",
                     "regimen.augment.op_groups", "regimen.subnet.graph", "regimen.subnet.dependency"}


@pytest.mark.parametrize("pillar", PILLARS)
def test_every_public_name_of_a_pillars_modules_is_exported_by_the_pillar(pillar):
    package = importlib.import_module(pillar)
    for info in pkgutil.iter_modules(package.__path__, pillar + "."):
        if info.name in MODULE_NAMESPACES or info.name.rpartition(".")[2].startswith("_"):
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            assert name in package.__all__ and getattr(package, name) is getattr(module, name), f"{info.name}.{name}"


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
