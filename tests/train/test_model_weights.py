"""``model.weights``: a recipe starts from another run's trained weights (a regimen checkpoint or a plain
``state_dict`` file), loaded before the methods' surgery; wrong files are one-line errors naming the key."""

import pytest
import torch

from regimen.errors import ConfigurationError
from regimen.train import fit


def _frozen(recipe: dict) -> dict:
    """Training that cannot move the weights measurably: the model after fit is the model it started from."""
    return dict(recipe, optim={"name": "sgd", "lr": 1e-12, "momentum": 0.0, "weight_decay": 0.0},
                train=dict(recipe["train"], epochs=1))


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One short pre-training run: its checkpoint, a plain state_dict file of its model, and the model's state."""
    folder = tmp_path_factory.mktemp("pretrain")
    recipe = {"name": "tiny", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [16]}}, "train": {"epochs": 1, "batch_size": 64}}
    trained = fit(recipe, out_dir=folder / "run")  # conftest's tiny_recipe model, so its weights load there
    torch.save(trained.model.state_dict(), folder / "weights.pt")
    return folder, trained.model.state_dict(), trained.summary["final_test_acc"]


@pytest.mark.parametrize("file", ["run/checkpoint.pt", "weights.pt"])
def test_starts_from_trained_weights(tiny_recipe, pretrained, file):
    folder, state, accuracy = pretrained
    result = fit(_frozen(dict(tiny_recipe, model=dict(tiny_recipe["model"], weights=str(folder / file)))))
    _close(result.model.state_dict(), state)
    assert result.summary["final_test_acc"] == pytest.approx(accuracy, abs=1e-3)


def test_weights_of_another_model_are_refused_by_key(tiny_recipe, tmp_path):
    torch.save(torch.nn.Linear(3, 2).state_dict(), tmp_path / "other.pt")
    recipe = dict(tiny_recipe, model=dict(tiny_recipe["model"], weights=str(tmp_path / "other.pt")))
    with pytest.raises(ConfigurationError, match=r"^model.weights: .*different model"):
        fit(recipe)


@pytest.mark.parametrize("content", [b"not a torch file", None])
def test_missing_or_foreign_file_is_refused_by_key(tiny_recipe, tmp_path, content):
    path = tmp_path / "weights.pt"
    if content is not None:
        path.write_bytes(content)
    recipe = dict(tiny_recipe, model=dict(tiny_recipe["model"], weights=str(path)))
    with pytest.raises(ConfigurationError, match=r"^model.weights: "):
        fit(recipe)


def test_a_pickled_object_is_not_executed(tiny_recipe, tmp_path):
    torch.save({"model": object()}, tmp_path / "evil.pt")
    recipe = dict(tiny_recipe, model=dict(tiny_recipe["model"], weights=str(tmp_path / "evil.pt")))
    with pytest.raises(ConfigurationError, match=r"^model.weights: .*not a readable weights file"):
        fit(recipe)
