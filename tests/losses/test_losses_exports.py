"""regimen.losses exports: every name in __all__ imports, and every Method the pillar registers is in __all__."""

import importlib
import inspect
import pkgutil

import regimen.losses as pillar
from regimen.method import Method, list_methods


def test_every_name_in_all_imports_and_every_public_name_is_listed():
    assert len(pillar.__all__) == len(set(pillar.__all__))
    for name in pillar.__all__:
        assert getattr(pillar, name) is not None, name
    defined_here = {name for name, value in vars(pillar).items() if not name.startswith("_")
                    and not inspect.ismodule(value) and getattr(value, "__module__", pillar.__name__).startswith(
                        pillar.__name__)}
    assert defined_here == set(pillar.__all__)
    for info in pkgutil.iter_modules(pillar.__path__, pillar.__name__ + "."):
        module = importlib.import_module(info.name)
        assert set(getattr(module, "__all__", ())) <= set(pillar.__all__), info.name


def test_every_registered_method_of_the_pillar_is_exported_under_a_method_name():
    ours = [cls for cls in list_methods().values() if cls.__module__.startswith("regimen.losses.")]
    assert ours
    for cls in ours:
        assert issubclass(cls, Method) and cls.__name__.endswith("Method"), cls
        assert getattr(pillar, cls.__name__) is cls
        assert getattr(importlib.import_module(cls.__module__), cls.__name__) is cls
