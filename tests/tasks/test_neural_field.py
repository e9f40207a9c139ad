"""The neural_field task: SSIM equals scikit-image's, PSNR is the split's total squared error by hand, the pixel split
is disjoint and fixed, training lowers the error, S3IM inside the trainer is MSE + weight · s3im_loss, and bad
recipes are refused naming the key."""

import math

import numpy as np
import pytest
import torch

from regimen.errors import ConfigurationError
from regimen.losses import S3IMMethod, s3im_loss
from regimen.method import Context, compose_criterion
from regimen.models import CoordinateMLP, FourierFeatures
from regimen.tasks import NeuralFieldTask, field_mse, image_ssim
from regimen.tasks.neural_field import PHOTOS, PixelSet, load_photo, pixel_coordinates, psnr, split_pixels
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe

skimage_metrics = pytest.importorskip("skimage.metrics")


def field_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-field", "task": "neural_field", "seed": 0,
        "data": {"name": "skimage", "val_fraction": 0.1,
                 "options": {"photo": "astronaut", "size": 32, "train_fraction": 0.5}},
        "model": {"name": "coordinate_mlp", "options": {"width": 32, "depth": 2, "num_frequencies": 16,
                                                        "sigma": 3.0}},
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 3, "batch_size": 128, "eval_batch_size": 256, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


@pytest.mark.parametrize("channels", [1, 3])
def test_image_ssim_equals_scikit_image_structural_similarity(channels):
    generator = torch.Generator().manual_seed(channels)
    reference = torch.rand(40, 33, channels, generator=generator, dtype=torch.float64)
    noisy = (reference + 0.2 * torch.randn(40, 33, channels, generator=generator, dtype=torch.float64)).clamp(0, 1)
    expected = skimage_metrics.structural_similarity(
        noisy.numpy(), reference.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, channel_axis=-1)
    assert image_ssim(noisy, reference).item() == pytest.approx(expected, abs=1e-10)
    if channels == 1:  # a (H, W) image too
        assert image_ssim(noisy[..., 0], reference[..., 0]).item() == pytest.approx(expected, abs=1e-10)
    assert image_ssim(reference, reference).item() == pytest.approx(1.0)


def test_image_ssim_refuses_images_smaller_than_the_window_and_mismatched_shapes():
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        image_ssim(torch.rand(8, 8), torch.rand(8, 8))
    with pytest.raises(ValueError, match="one shape"):
        image_ssim(torch.rand(16, 16, 3), torch.rand(16, 16, 1))


def test_psnr_is_ten_log10_of_one_over_mse():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(0.0) == math.inf
    with pytest.raises(ValueError, match="mse"):
        psnr(-1.0)


def test_fourier_features_are_sin_and_cos_of_two_pi_b_v():
    layer = FourierFeatures(2, 5, sigma=3.0, generator=torch.Generator().manual_seed(0))
    v = torch.rand(7, 2)
    b = layer.frequencies
    expected = [[math.sin(2 * math.pi * float(b[j] @ v[i])) for j in range(5)]
                + [math.cos(2 * math.pi * float(b[j] @ v[i])) for j in range(5)] for i in range(7)]
    assert torch.allclose(layer(v), torch.tensor(expected), atol=1e-5)
    assert layer.frequencies.std().item() == pytest.approx(3.0, rel=0.8)
    assert "frequencies" in layer.state_dict()


def test_pixel_split_is_disjoint_covers_the_image_and_is_the_same_for_every_run():
    image = torch.rand(20, 30, 3)
    train, val, test = split_pixels(image, 0.25, 0.1)
    everything = torch.cat([train.pixels, val.pixels, test.pixels])
    assert sorted(everything.tolist()) == list(range(600))
    assert len(train) == 150 and len(val) == 45 and len(test) == 405
    again = split_pixels(image, 0.25, 0.1)[0]
    assert torch.equal(again.pixels, train.pixels)
    coords = pixel_coordinates(20, 30)
    assert torch.equal(train.inputs, coords[train.pixels])
    assert torch.equal(test.targets, image.reshape(-1, 3)[test.pixels])
    row, col = divmod(int(test.pixels[0]), 30)  # coordinates are (row, column) in [0, 1]
    assert test.inputs[0].tolist() == pytest.approx([row / 19, col / 29])


def test_photos_load_offline_downsampled_to_size():
    image = load_photo("camera", 64)
    assert image.shape == (64, 64, 1) and 0.0 <= image.min() and image.max() <= 1.0
    assert load_photo("astronaut", 32).shape == (32, 32, 3)
    assert set(PHOTOS) >= {"astronaut", "camera"}


def test_training_raises_psnr_and_the_metrics_are_the_split_by_hand(tmp_path):
    result = fit(field_recipe(), out_dir=tmp_path / "run")
    summary, history = result.summary, result.history
    assert summary["primary_metric"] == "test_psnr" and summary["higher_is_better"] is True
    assert {"final_test_psnr", "final_test_ssim", "final_val_loss"} <= set(summary)
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    # by hand: predictions on the test pixels, PSNR of their MSE, SSIM of the photo with them pasted in
    task = NeuralFieldTask(parse_recipe(field_recipe()))
    data = task.load_data()
    model = result.model.eval()
    with torch.no_grad():
        predictions = model(data.test.inputs).double()
    mse = ((predictions.clamp(0, 1) - data.test.targets.double()) ** 2).mean().item()
    assert summary["final_test_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    image = data.test.image.double()
    composite = image.reshape(-1, 3).clone()
    composite[data.test.pixels] = predictions.clamp(0, 1)
    expected = skimage_metrics.structural_similarity(
        composite.view(32, 32, 3).numpy(), image.numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=-1)
    assert summary["final_test_ssim"] == pytest.approx(expected, abs=1e-6)


def test_s3im_in_the_trainer_is_mse_plus_weight_times_s3im_loss():
    method = S3IMMethod(weight=0.5, repeats=3, patch_height=8)
    ctx = Context(torch.nn.Identity(), generator=torch.Generator().manual_seed(4))
    criterion = compose_criterion([method], field_mse, ctx)
    output, target = torch.rand(37, 3), torch.rand(37, 3)  # 37 = 4 x 8 + 5: the first 32 points build the patches
    reference_generator = torch.Generator().manual_seed(4)
    expected = field_mse(output, target) + 0.5 * s3im_loss(output[:32], target[:32], 3, 4, 4, 8, reference_generator)
    assert criterion(output, target).item() == pytest.approx(expected.item(), rel=1e-6)
    state = ctx.generator.get_state()
    per_row = criterion(output, target, reduction="none")
    ctx.generator.set_state(state)
    summed = criterion(output, target, reduction="sum")
    assert per_row.shape == (37,)
    assert per_row.mean().item() == pytest.approx(summed.item() / 37, rel=1e-5)
    assert ctx.log["s3im/value"] > 0


def test_s3im_trains_on_the_field_and_is_refused_on_classification():
    result = fit(field_recipe(train={"epochs": 1}, methods=[{"name": "s3im", "patch_height": 64}]))
    assert "s3im/value" in result.history[-1]
    with pytest.raises(RecipeError, match="method 's3im' needs values targets; task 'image_classification'"):
        parse_recipe({"name": "x", "data": {"name": "digits"}, "methods": [{"name": "s3im"}]})
    with pytest.raises(ConfigurationError, match="method 's3im': train.batch_size = 32 is smaller than patch_height"):
        fit(field_recipe(train={"batch_size": 32}, methods=[{"name": "s3im"}]))


@pytest.mark.parametrize("options, match", [
    ({"train_fraction": 1.5}, r"data.options.train_fraction must be in \(0, 1\), got 1.5"),
    ({"train_fraction": 0.0}, r"data.options.train_fraction must be in \(0, 1\)"),
    ({"photo": "lena"}, "data.options.photo: unknown photo 'lena'; scikit-image's bundled photos: astronaut"),
    ({"size": 8}, "data.options.size must be >= 16"),
    ({"colour": True}, "data.options.colour: unknown option of task 'neural_field'"),
    ({"size": "big"}, "data.options.size: expected int"),
])
def test_bad_data_options_are_one_line_errors_naming_the_key(options, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(field_recipe(data={"options": options}))


def test_a_size_larger_than_the_photo_and_a_bad_model_option_are_refused():
    with pytest.raises(Exception, match="data.options.size = 4096 is larger than the photo"):
        fit(field_recipe(data={"options": {"size": 4096}}))
    with pytest.raises(RecipeError, match="model.options.out_features: set by the task"):
        parse_recipe(field_recipe(model={"options": {"out_features": 3}}))
    with pytest.raises(RecipeError, match="model.options.heads: unknown option"):
        parse_recipe(field_recipe(model={"options": {"heads": 3}}))


def test_a_users_image_is_split_and_fitted():
    image = torch.rand(24, 24)
    result = fit(field_recipe(train={"epochs": 1}), data=image)
    assert math.isfinite(result.summary["final_test_psnr"])
    with pytest.raises(Exception, match=r"image values must lie in \[0, 1\]"):
        fit(field_recipe(), data=image * 3)
    assert isinstance(CoordinateMLP(out_features=1), CoordinateMLP)
    assert isinstance(split_pixels(image.unsqueeze(-1), 0.5, 0.0)[0], PixelSet)
    assert split_pixels(image.unsqueeze(-1), 0.5, 0.0)[1] is None
    assert np.isclose(0.5 * 576, len(split_pixels(image.unsqueeze(-1), 0.5, 0.0)[0]))
