"""BlurPool surgery on any model: layers equal Kornia's blur_pool2d / max_blur_pool2d (and an explicit reflect-padded
blur), parameters kept, bad input refused with the model unchanged."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import BlurConv2d, MaxBlurPool2d, apply_blurpool, blur_2d
from regimen.errors import ConfigurationError
from regimen.train import fit


def _kornia():
    """Kornia's blur pools (the reference; extra ``dev`` installs Kornia)."""
    filters = pytest.importorskip("kornia.filters")
    return filters.blur_pool2d, filters.max_blur_pool2d


def test_blur_2d_equals_kornia_blur_pool2d_and_an_explicit_reflect_blur():
    blur_pool2d, max_blur_pool2d = _kornia()
    x = torch.randn(2, 3, 9, 8)
    torch.testing.assert_close(blur_2d(x, 2), blur_pool2d(x, 3, stride=2))
    # reflect padding by hand: pad, then sum of the 3x3 binomial taps [1,2,1]x[1,2,1]/16 at every pixel
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    taps = torch.tensor([1.0, 2.0, 1.0])
    want = sum(taps[i] * taps[j] / 16 * padded[:, :, i:i + 9, j:j + 8] for i in range(3) for j in range(3))
    torch.testing.assert_close(blur_2d(x, 1, padding_mode="reflect"), want)


def test_surgery_on_any_model_keeps_parameters_and_matches_the_formulas():
    blur_pool2d, max_blur_pool2d = _kornia()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(2, 2), nn.Conv2d(16, 8, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1))
    conv = model[2]
    weight = conv.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 16, 16)
    replaced = apply_blurpool(model, optimizer, min_channels=16)
    assert replaced == ["1", "2"]  # the last conv has 8 < 16 input channels
    assert isinstance(model[1], MaxBlurPool2d) and isinstance(model[2], BlurConv2d)
    assert model[2].conv.weight is weight  # the optimizer stays bound
    h = max_blur_pool2d(F.conv2d(x, model[0].weight, model[0].bias, padding=1), 3, stride=2, max_pool_size=2)
    h = F.conv2d(blur_pool2d(h, 3, stride=1), weight, conv.bias, stride=2, padding=1)
    torch.testing.assert_close(model[:3](x), h)


def test_blur_after_conv_is_the_papers_conv_then_blurpool():
    blur_pool2d, max_blur_pool2d = _kornia()
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(1, 4, 10, 10)
    want = blur_pool2d(F.conv2d(x, conv.weight, conv.bias, padding=1), 3, stride=2)
    torch.testing.assert_close(BlurConv2d(conv, blur_first=False)(x), want)


def test_a_model_without_strided_layers_is_refused_and_left_unchanged():
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2))
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="no strided nn.Conv2d with in_channels >= min_channels=32"):
        apply_blurpool(model, min_channels=32)
    assert repr(model) == repr(before)
    with pytest.raises(ConfigurationError, match="blurpool.*no strided"):
        fit({"data": {"name": "digits"}, "model": {"name": "mlp"}, "methods": [{"name": "blurpool"}]})


def test_fit_with_blurpool_on_resnet_trains():
    recipe = {"name": "bp", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [16, 32], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 3, "threads": 1},
              "methods": [{"name": "blurpool"}]}
    result = fit(recipe)
    assert result.history[-1]["blurpool/replaced"] == 2  # the stride-2 conv and its 1x1 projection
