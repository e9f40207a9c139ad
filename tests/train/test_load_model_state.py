"""``load_model_state``: one-line errors for another model's state, and modules with non-tensor extra state."""

import pytest
import torch
from torch import nn

from regimen.train.checkpoint import CheckpointError, load_model_state


class WithExtraState(nn.Module):
    """A layer whose ``get_extra_state`` returns a plain dict (allowed by ``nn.Module``), like a counter or a config."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.calls = 0

    def get_extra_state(self):
        return {"calls": self.calls}

    def set_extra_state(self, state) -> None:
        self.calls = state["calls"]


def test_non_tensor_extra_state_loads():
    source, target = WithExtraState(), WithExtraState()
    source.calls = 7
    load_model_state(target, source.state_dict())
    assert target.calls == 7
    torch.testing.assert_close(target.linear.weight, source.linear.weight)


def test_shape_mismatch_is_named_and_leaves_model_unchanged():
    model = nn.Linear(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(4, 3\) vs model \(2, 3\)"):
        load_model_state(model, nn.Linear(3, 4).state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_tensor_where_extra_state_expected_is_a_mismatch():
    state = WithExtraState().state_dict()
    state["_extra_state"] = torch.zeros(2)
    with pytest.raises(CheckpointError, match="_extra_state: checkpoint \\(2,\\) vs model dict"):
        load_model_state(WithExtraState(), state)
