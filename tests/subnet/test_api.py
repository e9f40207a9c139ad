"""The pillar's public names: every exported name imports, every registered Method is exported under a
``<Name>Method`` name, and the v1 names and keywords still work with a DeprecationWarning."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import regimen.subnet as subnet
from regimen.method import Method, get_method, list_methods
from regimen.models import MLP

SUBNET_RECIPES = ("hesso", "maestro", "nested_width", "nm_sparsity", "trp")


def test_every_name_in_all_imports_and_is_defined_once():
    assert len(set(subnet.__all__)) == len(subnet.__all__)
    for name in subnet.__all__:
        assert getattr(subnet, name) is not None, name
    namespace: dict = {}
    exec("from regimen.subnet import *", namespace)  # noqa: S102 - the star import is what is tested
    assert set(subnet.__all__) <= set(namespace)


def test_every_registered_subnet_method_is_exported_as_name_method():
    assert set(SUBNET_RECIPES) <= set(list_methods())
    for recipe_name in SUBNET_RECIPES:
        cls = get_method(recipe_name)
        assert issubclass(cls, Method) and cls.__name__.endswith("Method"), cls
        assert cls.__name__ in subnet.__all__ and getattr(subnet, cls.__name__) is cls


def test_submodules_export_what_they_define():
    for module in ("dependency", "hesso", "importance", "lowrank", "maestro", "measure", "modules", "nested", "nm",
                   "prune", "serialize", "graph"):
        mod = importlib.import_module(f"regimen.subnet.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"


@pytest.mark.parametrize("module, old, new", [
    ("regimen.subnet", "HESSO", "HESSOPruner"),
    ("regimen.subnet", "Maestro", "MaestroMethod"),
    ("regimen.subnet", "TrainedRankPruning", "TrainedRankPruningMethod"),
    ("regimen.subnet", "LowRankConv2d", "FactorizedConv2d"),
    ("regimen.subnet", "LowRankLinear", "FactorizedLinear"),
    ("regimen.subnet", "export", "export_nm_sparsity"),
    ("regimen.subnet.hesso", "HESSO", "HESSOPruner"),
    ("regimen.subnet.maestro", "Maestro", "MaestroMethod"),
    ("regimen.subnet.maestro", "LowRankConv2d", "OrderedLowRankConv2d"),
    ("regimen.subnet.maestro", "LowRankLinear", "OrderedLowRankLinear"),
    ("regimen.subnet.lowrank", "TrainedRankPruning", "TrainedRankPruningMethod"),
    ("regimen.subnet.lowrank", "LowRankConv2d", "FactorizedConv2d"),
    ("regimen.subnet.lowrank", "LowRankLinear", "FactorizedLinear"),
    ("regimen.subnet.nm", "export", "export_nm_sparsity"),
])
def test_old_names_warn_and_return_the_new_object(module, old, new):
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new):
        value = getattr(mod, old)
    assert value is getattr(mod, new)


def test_unknown_names_still_raise_attribute_error():
    with pytest.raises(AttributeError):
        subnet.NoSuchName  # noqa: B018


def test_v1_import_paths_keep_working():
    from regimen.subnet.graph import Group, UntraceableError, dependency_groups, normalize_inputs
    from regimen.subnet.prune import PrunedMultiheadAttention, PruneReport, count_macs

    assert Group is subnet.Group and UntraceableError is subnet.UntraceableError
    assert dependency_groups is subnet.dependency_groups and normalize_inputs is subnet.normalize_inputs
    assert PrunedMultiheadAttention is subnet.PrunedMultiheadAttention
    assert PruneReport is subnet.PruneReport and count_macs is subnet.count_macs


def test_maestro_exclude_and_export_are_deprecated_spellings_of_ignore_and_truncate_at_end():
    with pytest.warns(DeprecationWarning, match="ignore"):
        method = get_method("maestro")(exclude=["stages.0"])
    assert method.ignore == ["stages.0"]
    with pytest.warns(DeprecationWarning, match="truncate_at_end"):
        method = get_method("maestro")(export=False)
    assert method.truncate_at_end is False
    assert get_method("maestro")().truncate_at_end is True  # every *_at_end flag defaults to True
    with pytest.raises(TypeError, match="not both"):
        get_method("maestro")(ignore=["a"], exclude=["b"])
    model = MLP(in_features=8, hidden=(6,))
    with pytest.warns(DeprecationWarning, match="ignore"):
        subnet.apply_maestro(model, exclude=["stages.0"])
    assert isinstance(model.stages[0][1], nn.Linear) and isinstance(model.stages[1].fc, subnet.OrderedLowRankLinear)


def test_maestro_ignore_names_are_checked_like_everywhere_else():
    with pytest.raises(ValueError, match="ignore"):
        subnet.apply_maestro(MLP(in_features=8, hidden=(6,)), ignore=["stages.9"])


def test_nested_width_sort_by_none_is_the_string_none():
    model = MLP(in_features=8, hidden=(6,))
    example = torch.randn(2, 8)
    plain = subnet.NestedWidth(model, example, widths=(0.5, 1.0), sort_by="none")
    with pytest.warns(DeprecationWarning, match="'none'"):
        old = subnet.NestedWidth(MLP(in_features=8, hidden=(6,)), example, widths=(0.5, 1.0), sort_by=None)
    assert len(plain.groups) == len(old.groups)
    with pytest.raises(ValueError, match="sort_by"):
        subnet.NestedWidth(model, example, sort_by="random")
    assert get_method("nested_width")(sort_by="none").sort_by == "none"


def test_end_of_training_flags_share_one_spelling():
    import inspect

    flags = {}
    for recipe_name in SUBNET_RECIPES:
        parameters = inspect.signature(get_method(recipe_name).__init__).parameters
        flags[recipe_name] = {name: p.default for name, p in parameters.items() if name.endswith("_at_end")}
    assert flags == {"hesso": {"prune_at_end": True}, "maestro": {"truncate_at_end": True}, "nested_width": {},
                     "nm_sparsity": {"export_at_end": True}, "trp": {"factorize_at_end": True}}
