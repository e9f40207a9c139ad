import pytest
import torch
from torch import nn

from regimen.augment import FlipTTA, TTAFlipMethod, flip_tta
from regimen.method import Context
from regimen.train import RecipeError, parse_recipe
from regimen.train.builtin import EMAMethod


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model(torch.randn(16, 1, 8, 8))  # BN running statistics that are not the defaults
    return model.eval()


def test_flip_tta_equals_the_mean_of_two_explicit_forwards():
    model, x = _model(), torch.randn(5, 1, 8, 8)
    mirrored = torch.stack([img[..., torch.arange(7, -1, -1)] for img in x])  # reverse the columns by index
    with torch.no_grad():
        expected = (model(x) + model(mirrored)) / 2
        torch.testing.assert_close(flip_tta(model, x), expected)
        torch.testing.assert_close(FlipTTA(model)(x), expected)


def test_flip_tta_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        flip_tta(_model(), torch.randn(1, 8, 8))
    with pytest.raises(TypeError, match="module"):
        FlipTTA(lambda x: x)


def test_tta_flip_wraps_the_ema_copy_in_the_trainers_eval_chain():
    from regimen.train.trainer import _Hooks

    model = _model()
    ema, tta = EMAMethod(decay=0.9), TTAFlipMethod()
    ctx = Context(model, num_classes=3)
    evaluated = _Hooks([ema, tta]).eval_model(model, ctx)
    assert isinstance(evaluated, FlipTTA) and evaluated.module is ema.ema.module
    assert TTAFlipMethod.paper_id and TTAFlipMethod.claim and TTAFlipMethod.claimed_effect == "better"


def test_tta_flip_before_ema_is_refused_by_the_recipe():
    recipe = {"data": {"name": "digits"}, "methods": [{"name": "tta_flip"}, {"name": "ema"}]}
    with pytest.raises(RecipeError, match="'ema' must be listed before 'tta_flip'"):
        parse_recipe(recipe)
