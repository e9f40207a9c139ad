"""Gyro dropout: each example uses the active mask of its group (explicit loop), the active masks change only every
``interval`` steps and come from a fixed pool; models without dropout are refused unchanged; state round-trips."""

import pytest
import torch
from torch import nn

from regimen.dropout import GyroDropout, GyroDropoutMethod, apply_gyro_dropout
from regimen.errors import ConfigurationError
from regimen.train import fit


def test_each_example_uses_its_groups_mask_and_the_pool_is_fixed():
    layer = GyroDropout(p=0.4, sigma=6, tau=3, interval=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 5, 2)
    seen = []
    for _ in range(5):
        y = layer(x)
        active = layer.active.clone()
        seen.append(active)
        for i in range(7):  # example i: group floor(i * 3 / 7) (sizes 3, 2, 2)
            mask = layer.masks[active[i * 3 // 7]]
            torch.testing.assert_close(y[i], x[i] * mask[:, None] / 0.6)
    assert torch.equal(seen[0], seen[1]) and torch.equal(seen[2], seen[3])  # re-selected every 2 steps
    assert layer.masks.shape == (6, 5)
    layer.eval()
    assert torch.equal(layer(x), x)


def test_model_without_dropout_is_refused_and_unchanged():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no nn.Dropout"):
        apply_gyro_dropout(model)
    assert isinstance(model[0], nn.Linear)
    with pytest.raises(ValueError, match="tau"):
        GyroDropoutMethod(sigma=4, tau=8)
    with pytest.raises(ConfigurationError, match="no nn.Dropout"):
        fit({"data": {"name": "digits"}, "model": {"name": "mlp"}, "methods": [{"name": "gyro_dropout"}]})


def test_fit_with_gyro_dropout_on_the_head():
    recipe = {"name": "gyro", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "mlp", "options": {"hidden": [32], "head_dropout": 0.5}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1},
              "methods": [{"name": "gyro_dropout", "sigma": 8, "tau": 2}]}
    result = fit(recipe)
    assert result.history[0]["gyro_dropout/interval"] == 2  # floor(8 steps / 8) * 2
    layer = next(m for m in result.model.modules() if isinstance(m, GyroDropout))
    assert layer.step == 8
