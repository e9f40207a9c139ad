"""The dropout pillar's public names: an explicit, complete ``__all__`` whose every name imports."""

import importlib

import regimen.dropout as dropout
from regimen.method import Method, get_method, list_methods

MODULES = ["concrete", "dropblock", "droppath", "mc", "multisample", "nested", "temporal"]


def test_every_name_in_all_imports():
    assert len(dropout.__all__) == len(set(dropout.__all__))
    for name in dropout.__all__:
        assert getattr(dropout, name) is not None, name


def test_every_registered_method_of_the_pillar_is_exported_and_named_method():
    classes = [get_method(name) for name in list_methods()]
    mine = [cls for cls in classes if cls.__module__.startswith("regimen.dropout.")]
    assert {cls.name for cls in mine} == {"multi_sample_dropout", "drop_path", "dropblock"}
    for cls in mine:
        assert issubclass(cls, Method) and cls.__name__.endswith("Method")
        assert cls.__name__ in dropout.__all__ and getattr(dropout, cls.__name__) is cls


def test_the_public_names_of_every_module_are_exported_by_the_package():
    for module_name in MODULES:
        module = importlib.import_module(f"regimen.dropout.{module_name}")
        for name in module.__all__:
            assert name in dropout.__all__ and getattr(dropout, name) is getattr(module, name), f"{module_name}.{name}"
