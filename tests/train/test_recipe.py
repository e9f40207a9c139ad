from typing import Literal

import pytest

from regimen.method import Method, register_method
from regimen.train.recipe import RecipeError, apply_overrides, build_methods, load_recipe, parse_recipe


@register_method
class OwnsLoss(Method):
    """Test helper: replaces compute_loss."""

    name = "_test_owns_loss"

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def compute_loss(self, model, x, y, ctx):
        return ctx.criterion(model(x), y) * self.weight, None


@register_method
class OwnsStep(Method):
    """Test helper: replaces training_step."""

    name = "_test_owns_step"

    def training_step(self, model, x, y, ctx):
        raise NotImplementedError


def test_shipped_recipes_validate():
    for name in ("baseline", "default", "smoke"):
        assert load_recipe(f"recipes/{name}.toml").name == name


def test_unknown_key_names_its_path():
    with pytest.raises(RecipeError, match=r"train\.batchsize: unknown key"):
        parse_recipe({"train": {"batchsize": 3}})


def test_unknown_key_suggests_the_nearest_key_and_lists_the_table():
    from regimen.train.recipe import DataConfig, TrainConfig

    data_keys = ", ".join(DataConfig.model_fields)
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"data": {"path": "x"}})  # a synonym difflib cannot see
    assert str(caught.value) == f"data.path: unknown key; did you mean root? valid keys: {data_keys}"
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"train": {"epoch": 3}})
    assert str(caught.value).startswith("train.epoch: unknown key; did you mean epochs? valid keys: epochs, batch_size")
    assert str(caught.value).endswith(", ".join(TrainConfig.model_fields))
    with pytest.raises(RecipeError, match=r"^optimizer: unknown key; did you mean optim\? valid keys: name, "):
        parse_recipe({"optimizer": {"lr": 0.1}})
    with pytest.raises(RecipeError) as caught:  # nothing close: no guess, still the valid keys
        parse_recipe({"data": {"zzzz": 1}})
    assert str(caught.value) == f"data.zzzz: unknown key; valid keys: {data_keys}"


def test_unknown_method_parameter_suggests_the_nearest_parameter():
    with pytest.raises(RecipeError) as caught:
        parse_recipe({"methods": [{"name": "ema"}, {"name": "randaugment", "magnitud": 5}]})
    assert str(caught.value) == (
        "methods.1.magnitud: unknown key; did you mean magnitude? valid keys: num_ops, magnitude, "
        "num_magnitude_bins, magnitude_std, fill, interpolation, quantize")
    with pytest.raises(RecipeError, match=r"methods\.0\.dcay: unknown key; did you mean decay\? valid keys: decay, "
                                          r"warmup$"):
        parse_recipe({"methods": [{"name": "ema", "dcay": 0.9}]})


def test_wrong_type_and_negative_batch_name_their_path():
    with pytest.raises(RecipeError, match=r"optim\.lr:"):
        parse_recipe({"optim": {"lr": "fast"}})
    with pytest.raises(RecipeError, match=r"train\.batch_size: Input should be greater than 0"):
        parse_recipe({"train": {"batch_size": -4}})


def test_overrides_parse_toml_values_and_index_lists():
    raw = {"train": {"epochs": 1}, "methods": [{"name": "ema", "decay": 0.9}]}
    out = apply_overrides(raw, ["train.epochs=3", "methods.0.decay=0.5", "model.name=mlp", "data.name=\"digits\""])
    assert out["train"]["epochs"] == 3 and out["methods"][0]["decay"] == 0.5
    assert out["model"]["name"] == "mlp" and out["data"]["name"] == "digits"
    assert raw["train"]["epochs"] == 1  # the input is not modified
    with pytest.raises(RecipeError, match="key.path=value"):
        apply_overrides(raw, ["train.epochs"])
    with pytest.raises(RecipeError, match="not an index"):
        apply_overrides(raw, ["methods.3.decay=1"])


def test_unknown_method_lists_known_ones():
    with pytest.raises(RecipeError, match=r"methods\.0\.name: unknown method 'nope'; known methods: .*ema"):
        parse_recipe({"methods": [{"name": "nope"}]})


def test_method_parameters_are_validated_against_the_signature():
    with pytest.raises(RecipeError, match=r"methods\.0\.decai: unknown key"):
        parse_recipe({"methods": [{"name": "ema", "decai": 0.9}]})
    with pytest.raises(RecipeError, match=r"methods\.0\.decay:"):
        parse_recipe({"methods": [{"name": "ema", "decay": "high"}]})
    with pytest.raises(RecipeError, match=r"methods\.0 \(ema\): decay must be in \(0, 1\)"):
        parse_recipe({"methods": [{"name": "ema", "decay": 2.0}]})


def test_two_owners_of_the_step_are_named_in_the_error():
    recipe = parse_recipe({"methods": [{"name": "_test_owns_loss"}]})
    assert build_methods(recipe)[0].weight == 1.0
    with pytest.raises(RecipeError, match="'_test_owns_loss' \\(compute_loss\\) and '_test_owns_step'"):
        parse_recipe({"methods": [{"name": "_test_owns_loss"}, {"name": "_test_owns_step"}]})


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("[train\nepochs = ")
    with pytest.raises(RecipeError, match="invalid TOML"):
        load_recipe(tmp_path / "bad.toml")


class _Annotated(Method):
    """Test helper: string annotations with a module-level alias, as under `from __future__ import annotations`."""

    name = "_test_string_annotations"

    def __init__(self, rule: "RuleAlias" = "linear", scale: "float" = 1.0) -> None:  # noqa: F821
        self.rule, self.scale = rule, scale


RuleAlias = Literal["linear", "sqrt"]
register_method(_Annotated)


def test_string_annotations_and_aliases_are_resolved():
    assert build_methods(parse_recipe({"methods": [{"name": "_test_string_annotations", "rule": "sqrt"}]}))[0].rule \
        == "sqrt"
    with pytest.raises(RecipeError, match=r"methods\.0\.rule"):
        parse_recipe({"methods": [{"name": "_test_string_annotations", "rule": "cubic"}]})
    with pytest.raises(RecipeError, match=r"methods\.0\.scale"):
        parse_recipe({"methods": [{"name": "_test_string_annotations", "scale": "big"}]})
