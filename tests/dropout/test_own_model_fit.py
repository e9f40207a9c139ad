"""The dropout Methods in ``fit`` on a user's own model: drop-path on named residual branches and multi-sample
dropout on the head found by convention train together; a model without what a method needs is a one-line user
error naming the method and the fix."""

import math

import pytest
import torch
from torch import nn

from regimen.dropout import DropPath, DropPathBranch, MultiSampleDropout
from regimen.errors import ConfigurationError
from regimen.train import fit


class ResidualMLP(nn.Module):
    """A user's residual MLP: x + body(x) blocks, then ``fc`` (no drop_path slot, no stages)."""

    def __init__(self, width: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"body": nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))})
            for _ in range(depth)
        )
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x.flatten(1)))
        for block in self.blocks:
            x = torch.relu(x + block["body"](x))
        return self.fc(x)


RECIPE = {
    "task": "classification",
    "data": {"name": "digits"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 20, "threads": 1},
}


def test_drop_path_on_named_branches_and_multi_sample_head_train_a_users_model(tmp_path):
    methods = [
        {"name": "drop_path", "max_rate": 0.2, "branches": ["blocks.0.body", "blocks.1.body"]},
        {"name": "multi_sample_dropout", "num_samples": 4, "p": 0.3},
    ]
    result = fit(dict(RECIPE, methods=methods), model=ResidualMLP(), out_dir=tmp_path)
    model = result.model
    assert isinstance(model.blocks[1]["body"], DropPathBranch) and isinstance(model.fc, MultiSampleDropout)
    assert model.blocks[1]["body"].drop.p == pytest.approx(0.2)
    assert list(model.state_dict()) == list(ResidualMLP().state_dict())
    first = result.history[0]
    assert first["drop_path/layers"] == 2
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    assert result.summary["final_test_acc"] > 0.5  # it learns (chance is 0.1)
    assert sum(isinstance(m, DropPath) for m in model.modules()) == 2


def test_a_model_without_blocks_or_head_is_a_user_error_naming_the_method():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigurationError, match=r"^method 'drop_path': drop_path needs residual blocks"):
        fit(dict(RECIPE, methods=[{"name": "drop_path"}]), model=plain)
    with pytest.raises(ConfigurationError, match=r"^method 'multi_sample_dropout': multi_sample_dropout needs the "
                                                 r"classifier head: pass module="):
        fit(dict(RECIPE, methods=[{"name": "multi_sample_dropout"}]), model=plain)
