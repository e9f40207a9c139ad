"""The augment pillar's public names: an explicit, complete ``__all__`` whose every name imports."""

import importlib

import regimen.augment as augment
from regimen.method import Method, get_method, list_methods

MODULES = ["functional", "invertible", "mix", "randaugment", "subset"]


def test_every_name_in_all_imports():
    assert len(augment.__all__) == len(set(augment.__all__))
    for name in augment.__all__:
        assert getattr(augment, name) is not None, name


def test_every_registered_method_of_the_pillar_is_exported_and_named_method():
    classes = [get_method(name) for name in list_methods()]
    mine = [cls for cls in classes if cls.__module__.startswith("regimen.augment.")]
    assert {cls.name for cls in mine} == {"randaugment", "trivialaugment", "cutmix", "mixup", "aug_subset"}
    for cls in mine:
        assert issubclass(cls, Method) and cls.__name__.endswith("Method")
        assert cls.__name__ in augment.__all__ and getattr(augment, cls.__name__) is cls


def test_the_public_names_of_every_module_are_exported_by_the_package():
    for module_name in MODULES:
        module = importlib.import_module(f"regimen.augment.{module_name}")
        for name in module.__all__:
            if module_name == "functional":  # the ops are used as ``regimen.augment.functional.<op>``
                assert hasattr(augment.functional, name), name
            else:
                assert name in augment.__all__ and getattr(augment, name) is getattr(module, name), name
