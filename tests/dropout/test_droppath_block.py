"""Stochastic depth 'block' mode (one draw per batch) and the rate warm-up, beside the per-sample DropPath."""

import pytest
import torch

from regimen.dropout import DropPathMethod, drop_path
from regimen.method import Context
from regimen.models import resnet


def test_block_mode_keeps_or_drops_the_whole_batch_with_probability_p():
    x = torch.ones(8, 3, 2, 2)
    g = torch.Generator().manual_seed(0)
    kept = 0
    for _ in range(2000):
        y = drop_path(x, 0.3, mode="block", generator=g)
        assert torch.equal(y, torch.zeros_like(x)) or torch.allclose(y, x / 0.7)
        kept += int(y.abs().sum() > 0)
    assert abs(kept / 2000 - 0.7) < 0.04
    with pytest.raises(ValueError, match="mode"):
        drop_path(x, 0.3, mode="batch")


def test_method_warms_the_rates_up_linearly_then_holds_them():
    model = resnet(1, 10, widths=[4, 8], depths=[1, 1])
    ctx = Context(model, epochs=2, steps_per_epoch=10)
    method = DropPathMethod(max_rate=0.2, mode="block", warmup=0.5)
    method.setup(ctx)
    rates = [layer.p for layer in method._layers]
    assert rates == pytest.approx([0.1, 0.2]) and all(layer.mode == "block" for layer in method._layers)
    for step, factor in [(0, 0.0), (5, 0.5), (10, 1.0), (15, 1.0)]:
        ctx.step = step
        method.before_forward(None, None, ctx)
        assert [layer.p for layer in method._layers] == pytest.approx([r * factor for r in rates])
    with pytest.raises(ValueError, match="warmup"):
        DropPathMethod(warmup=1.0)
