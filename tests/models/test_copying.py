"""copy_module: a deep copy that survives removing the original's parametrizations."""

import torch
from torch import nn
from torch.nn.utils import parametrize

from regimen.models import copy_module


class _Halve(nn.Module):
    def forward(self, weight):
        return weight / 2


def test_copy_keeps_its_parametrization_when_the_original_is_exported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    parametrize.register_parametrization(model[0], "weight", _Halve())
    x = torch.randn(5, 3)
    replica = copy_module(model)
    expected = model(x)
    parametrize.remove_parametrizations(model[0], "weight", leave_parametrized=True)
    torch.testing.assert_close(replica(x), expected)  # the copy still halves its own weight
    assert parametrize.is_parametrized(replica[0]) and not parametrize.is_parametrized(model[0])
    assert torch.equal(model(x), expected)  # the export kept the parametrized values
    assert replica[0].parametrizations.weight.original is not model[0].weight  # independent tensors
