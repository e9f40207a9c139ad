"""``prune`` on regimen's ViT removes whole attention heads; the attention's output reshape follows the head count."""

import torch

from regimen.models.vit import ViT
from regimen.subnet import prune


def _vit() -> tuple[ViT, torch.Tensor]:
    torch.manual_seed(0)
    return ViT(image_size=(8, 8), patch=4, dim=16, depth=2, heads=4, mlp_ratio=2.0).eval(), torch.randn(4, 1, 8, 8)


def test_pruning_heads_leaves_a_running_smaller_vit():
    model, x = _vit()
    report = prune(model, x, ratio=0.5)
    heads = [m.heads for m in model.modules() if type(m).__name__ == "CausalSelfAttention"]
    assert report.params_after < report.params_before and min(heads) < 4
    assert model(x).shape == (4, 10) and torch.isfinite(model(x)).all()


def test_lossless_only_pruning_runs_on_the_vit():  # raised "does not run on example_inputs" before the fix
    model, x = _vit()
    prune(model, x, ratio=0.5, lossless_only=True)
    assert model(x).shape == (4, 10)

