"""The ViT: bidirectional attention against an explicit softmax, one token per patch, stages, and a run on digits."""

import math

import pytest
import torch

from regimen.models import CausalSelfAttention, ViT, build_model
from regimen.train import fit


def test_bidirectional_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, 2, causal=False).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    q, k, v = attn.qkv(x).view(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    expected = attn.proj(((q @ k.transpose(-1, -2) / math.sqrt(4)).softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), expected)


def test_vit_tokens_stages_and_errors():
    model = build_model("vit", (1, 28, 28), 10, dim=32, depth=2, heads=4, patch=4)
    assert isinstance(model, ViT) and len(model.stages) == 4
    tokens = model.stages[0](torch.zeros(3, 1, 28, 28))
    assert tokens.shape == (3, 49, 32)
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    with pytest.raises(ValueError, match="patch"):
        ViT(image_size=(28, 28), patch=5)
    with pytest.raises(ValueError, match="heads"):
        ViT(dim=30, heads=4)


def test_vit_trains_on_digits(tiny_recipe):
    tiny_recipe["model"] = {"name": "vit", "options": {"patch": 2, "dim": 16, "depth": 1, "heads": 2}}
    tiny_recipe["optim"] = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0}
    tiny_recipe["train"] = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 5, "threads": 1}
    result = fit(tiny_recipe)
    assert math.isfinite(result.summary["final_test_acc"])


@pytest.mark.parametrize("name", ["vit", "local/local_vit_recon_k2"])
def test_the_shipped_vit_recipes_train_on_digits(name):
    from regimen.train.recipe import load_recipe

    recipe = load_recipe(name).model_dump(mode="python")
    recipe["data"] = {"name": "digits", "val_fraction": 0.1}
    recipe["model"]["options"].update(dim=16, depth=2, heads=2, patch=2)
    recipe["train"].update(epochs=1, max_steps_per_epoch=3, batch_size=32, threads=1)
    result = fit(recipe)
    assert math.isfinite(result.summary["final_test_acc"])
    assert [m["name"] for m in recipe.get("methods", [])] == (["local_learning"] if "local" in name else [])
