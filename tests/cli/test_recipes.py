"""The shipped recipes: found by name from anywhere, listed with their descriptions, printed for copying."""

import sys
from pathlib import Path

import pytest

from regimen.recipes import describe, family, find_recipe, folder, list_recipes
from regimen.train.recipe import RecipeError, load_recipe
from tests.cli.helpers import run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CHECKOUT_RECIPES = Path(__file__).parents[2] / "recipes"  # the top-level symlink kept for README and report paths


def _on_disk() -> dict[str, Path]:
    return {p.relative_to(CHECKOUT_RECIPES).with_suffix("").as_posix(): p for p in CHECKOUT_RECIPES.rglob("*.toml")}


def test_the_top_level_recipes_folder_is_the_package_folder():
    assert CHECKOUT_RECIPES.is_symlink() and CHECKOUT_RECIPES.resolve() == folder().resolve()


def test_list_recipes_names_every_toml_file_top_level_first_then_by_family():
    listed = [name for name, _ in list_recipes()]
    assert sorted(listed) == sorted(_on_disk())
    assert listed == sorted(listed, key=lambda name: (family(name), name))
    assert listed[:3] == ["baseline", "default", "smoke"] and "augment/cutmix" in listed


def test_every_shipped_recipe_parses_and_has_a_description():
    for name, description in list_recipes():
        assert description, f"recipe {name} has neither a description key nor a leading comment"
        assert load_recipe(find_recipe(name)).name  # validates: a shipped recipe that does not load is a bug


def test_description_is_the_key_else_the_first_comment_line(tmp_path):
    assert dict(list_recipes())["default"] == "Reference ResNet with label smoothing 0.1 and weight EMA"
    assert dict(list_recipes())["smoke"] == ("Smoke test: a tiny MLP on scikit-learn digits, seconds to run. "
                                             "Used by the tests.")
    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n#  first comment  \n# second\ndescription = "the key"\n')
    assert describe(recipe) == "the key"
    recipe.write_text('name = "r"\n#  first comment  \n# second\n')
    assert describe(recipe) == "first comment"
    recipe.write_text('name = "r"\n')
    assert describe(recipe) == ""


@pytest.mark.parametrize("name, expected", [
    ("default", "default"), ("default.toml", "default"), ("augment/cutmix", "augment/cutmix"),
    ("augment/cutmix.toml", "augment/cutmix"), ("recipes/augment/cutmix.toml", "augment/cutmix"),
    ("recipes/default.toml", "default"),
])
def test_find_recipe_resolves_names_inside_the_package_from_any_folder(monkeypatch, tmp_path, name, expected):
    monkeypatch.chdir(tmp_path)
    path = find_recipe(name)
    assert path == _on_disk()[expected].resolve() and path.is_relative_to(folder())
    assert tomllib.loads(path.read_text()) == tomllib.loads(_on_disk()[expected].read_text())


def test_an_existing_path_wins_over_a_shipped_name(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default.toml").write_text('name = "mine"\n')
    assert find_recipe("default.toml") == Path("default.toml")
    assert find_recipe(tmp_path / "default.toml") == tmp_path / "default.toml"
    assert find_recipe("default") == _on_disk()["default"].resolve()  # no file called "default" here


@pytest.mark.parametrize("name, suggested", [
    ("cutmx", ["augment/cutmix"]), ("mixup", ["augment/mixup"]), ("augment/cutmix2", ["augment/cutmix"]),
    ("lars.toml", ["batch/lars"]), ("baseline2", ["baseline", "augment/baseline"]),
])
def test_an_unknown_name_lists_close_matches(monkeypatch, tmp_path, name, suggested):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="recipe file not found") as caught:
        find_recipe(name)
    hint = str(caught.value).split("did you mean ", 1)[1].split("?")[0].split(", ")
    assert set(suggested) <= set(hint)


def test_a_name_cannot_leave_the_recipes_folder(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError, match="neither a file nor a shipped recipe"):
        find_recipe("../recipes/default")


def test_a_folder_is_not_a_recipe(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(RecipeError, match="is a folder"):
        find_recipe(tmp_path / "mine")


def test_regimen_recipes_prints_every_recipe_one_line_grouped_by_family(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    groups = [block.splitlines() for block in out.split("\n\n")]
    printed = [tuple(line.split(None, 1)) if " " in line else (line, "") for group in groups for line in group]
    assert printed == list_recipes()
    families = [{family(line.split()[0]) for line in group} for group in groups]
    assert all(len(f) == 1 for f in families)  # one family per group
    assert [f.pop() for f in families] == list(dict.fromkeys(family(name) for name, _ in list_recipes()))


def test_regimen_recipes_family_lists_only_that_family(capsys):
    code, out, _ = run_cli(capsys, "recipes", "augment")
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [n for n, _ in list_recipes() if family(n) == "augment"]
    code, _, err = run_cli(capsys, "recipes", "augmnt")
    assert code == 1 and "no recipe family 'augmnt'; families: augment, batch" in err


def test_regimen_recipes_show_prints_the_toml(capsys):
    code, out, _ = run_cli(capsys, "recipes", "--show", "augment/cutmix")
    assert code == 0 and out == _on_disk()["augment/cutmix"].read_text()
    code, _, err = run_cli(capsys, "recipes", "--show", "cutmx")
    assert code == 1 and "did you mean augment/cutmix" in err and len(err.strip().splitlines()) == 1
