import numpy as np
import pytest
import torch
from torch import nn

from regimen.models import PatchWhitening2d, SpeedNet, build_model, image_patches, patch_whitening
from regimen.train.optim import param_groups

pytestmark = pytest.mark.usefixtures("one_thread")


def _correlated_images(n: int = 64, channels: int = 1, size: int = 12, seed: int = 0) -> torch.Tensor:
    """Smooth (strongly correlated neighbouring pixels) random images with a non-zero mean."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, channels, size + 2, size + 2, generator=g)
    smooth = nn.functional.avg_pool2d(noise, 3, stride=1)
    return smooth * 2.0 + 0.5 + 0.1 * torch.randn(n, channels, size, size, generator=g)


def test_image_patches_match_an_explicit_loop():
    images = torch.arange(2 * 2 * 4 * 5, dtype=torch.float32).reshape(2, 2, 4, 5)
    k = 2
    rows = [images[n, :, i:i + k, j:j + k].reshape(-1)
            for n in range(2) for i in range(4 - k + 1) for j in range(5 - k + 1)]
    torch.testing.assert_close(image_patches(images, k), torch.stack(rows))


@pytest.mark.parametrize("channels, k", [(1, 2), (1, 3), (2, 2)])
def test_whitening_conv_output_covariance_is_identity_on_training_patches(channels, k):
    images = _correlated_images(channels=channels)
    layer = PatchWhitening2d(channels, k, eps=1e-7).fit(images)
    with torch.no_grad():
        out = layer(images).double()
    d = layer.directions
    rows = out[:, :d].permute(0, 2, 3, 1).reshape(-1, d).numpy()
    covariance = np.cov(rows, rowvar=False, bias=True)  # numpy's covariance: an independent reference
    np.testing.assert_allclose(covariance, np.eye(d), atol=2e-3)
    np.testing.assert_allclose(rows.mean(axis=0), np.zeros(d), atol=1e-4)
    torch.testing.assert_close(out[:, d:], -out[:, :d])  # the [W; -W] pair


def test_patch_whitening_rows_are_scaled_eigenvectors_of_the_patch_covariance():
    images = _correlated_images(n=16)
    weight, bias = patch_whitening(images, 2, eps=1e-3)
    patches = image_patches(images, 2).double().numpy()
    cov = np.cov(patches, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(cov)
    w = weight.reshape(4, 4).double().numpy()
    expected = (vectors / np.sqrt(values + 1e-3)).T[::-1]  # largest eigenvalue first
    np.testing.assert_allclose(np.abs(w), np.abs(expected), rtol=1e-4, atol=1e-4)  # eigenvector signs are free
    np.testing.assert_allclose(bias.double().numpy(), -w @ patches.mean(axis=0), rtol=1e-4, atol=1e-4)


def test_speednet_whitening_is_frozen_and_fitted_by_build_model():
    images = _correlated_images(n=8, size=28)
    model = build_model("speednet", (1, 28, 28), 10, example_inputs=images, widths=[8, 16, 16])
    expected, _ = patch_whitening(images, 2)
    torch.testing.assert_close(model.whitening.weight[:4], expected)
    assert not model.whitening.weight.requires_grad and model.whitening.bias.requires_grad
    grouped = {id(p) for group in param_groups(model, 5e-4) for p in group["params"]}
    assert id(model.whitening.weight) not in grouped
    assert model(images).shape == (8, 10)
    assert len(model.stages) == 5  # stem, three groups, head


def test_speednet_options_and_bad_input():
    assert SpeedNet(1, 10, widths=[8], whiten=False).whitening is None
    trainable = SpeedNet(1, 10, widths=[8], whiten_trainable=True)
    assert trainable.whitening.weight.requires_grad
    with pytest.raises(ValueError, match="whiten=False"):
        SpeedNet(1, 10, widths=[8], whiten=False).fit_whitening(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="widths"):
        SpeedNet(1, 10, widths=[])
    with pytest.raises(ValueError, match="bn_momentum"):
        SpeedNet(1, 10, bn_momentum=0.0)
    with pytest.raises(ValueError, match="eps"):
        patch_whitening(torch.rand(2, 1, 8, 8), 2, eps=0.0)
    with pytest.raises(ValueError, match="kernel_size"):
        image_patches(torch.rand(2, 1, 8, 8), 9)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        PatchWhitening2d(1, 2).fit(torch.rand(2, 3, 8, 8))


def test_speednet_recipe_with_flips_ema_and_tta_trains_and_resumes_exactly(tmp_path):
    """The speedrun's parts in one short fit on 8x8 digits; stop after epoch 1 and resume: same result as one run."""
    from regimen.train import apply_overrides, fit, parse_recipe
    from regimen.train.recipe import read_recipe_file

    raw = apply_overrides(read_recipe_file("speedrun"), [
        "data.name=digits", "data.val_fraction=0.1", "model.options.widths=[8, 16]", "train.epochs=2",
        "train.batch_size=64", "train.max_steps_per_epoch=4", "train.target=0.5"])
    raw["methods"] = [{"name": "hflip"}, *raw["methods"], {"name": "tta_flip"}]
    recipe = parse_recipe(raw)
    reference = fit(recipe)
    fit(recipe, out_dir=tmp_path, stop_epoch=1)
    resumed = fit(recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]
    for key, value in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value)
    assert [m.name for m in recipe.methods] == ["hflip", "ema", "tta_flip"]
