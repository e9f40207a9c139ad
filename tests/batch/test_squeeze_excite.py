"""Squeeze-Excite surgery on any model: the gate equals the paper's formula by hand, preserve=True keeps the function
exactly, the optimizer gets the new parameters, bad input leaves the model unchanged."""

import copy

import pytest
import torch
from torch import nn

from regimen.batch import SqueezeExcite2d, SqueezeExciteConv2d, apply_squeeze_excite
from regimen.errors import ConfigurationError
from regimen.train import fit


def test_gate_is_sigmoid_of_the_bottleneck_of_the_pooled_features():
    se = SqueezeExcite2d(6, 3)
    x = torch.randn(2, 6, 5, 4)
    pooled = x.sum(dim=(2, 3)) / 20
    s = torch.sigmoid(torch.relu(pooled @ se.reduce.weight.T + se.reduce.bias) @ se.expand.weight.T + se.expand.bias)
    torch.testing.assert_close(se(x), x * s[:, :, None, None])


def test_preserve_keeps_the_function_and_the_optimizer_trains_the_gates():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 2))
    x = torch.randn(4, 3, 9, 9)
    before = model(x)
    optimizer = torch.optim.SGD([{"params": list(model.parameters()), "weight_decay": 1e-4},
                                 {"params": [], "weight_decay": 0.0}], lr=0.1)
    gated = apply_squeeze_excite(model, optimizer, latent_channels=0.5, min_channels=8, preserve=True)
    assert gated == ["0", "2"] and isinstance(model[2], SqueezeExciteConv2d)
    assert model[2].se.reduce.out_features == 8  # 0.5 of 16 channels
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_groups for p in model.parameters())
    assert all(p.ndim == 1 for p in optimizer.param_groups[1]["params"])


def test_a_model_without_wide_convs_is_refused_and_left_unchanged():
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    before = repr(model)
    with pytest.raises(ValueError, match="min_channels=128"):
        apply_squeeze_excite(model)
    assert repr(model) == before
    with pytest.raises(ValueError, match="latent_channels"):
        apply_squeeze_excite(copy.deepcopy(model), latent_channels=0)
    with pytest.raises(ConfigurationError, match="squeeze_excite"):
        fit({"data": {"name": "digits"}, "model": {"name": "mlp"}, "methods": [{"name": "squeeze_excite"}]})
