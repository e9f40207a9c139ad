"""The channel-dependency tracer (hesso, nested_width, structured pruning) on models other pillars changed first.

Ghost batch norm subclasses ``nn.BatchNorm2d`` with its per-channel structure, so the tracer maps it as batch norm;
DropPath blocks ask ``is_floating_point``, which the tracer ignores. Pruning such a model must still be lossless.
Weight-standardized convs are *not* mapped as convs (pruning their input channels changes every filter's
statistics), so the tracer refuses them and the recipe orders hesso/nested_width before weight_std.
"""

import pytest
import torch
import torch.nn.functional as F

from regimen.batch.ghost_bn import apply_ghost_batchnorm
from regimen.dropout.dropblock import apply_dropblock
from regimen.dropout.droppath import apply_drop_path
from regimen.models import resnet
from regimen.subnet import HESSOPruner

SURGERY = {
    "ghost_bn": lambda model: apply_ghost_batchnorm(model, 2),
    "drop_path": lambda model: apply_drop_path(model, 0.2),
    "dropblock": lambda model: apply_dropblock(model, p=0.2, block_size=3),
}


@pytest.mark.parametrize("surgery", sorted(SURGERY))
def test_hesso_prunes_a_model_another_pillar_changed_losslessly(surgery):
    torch.manual_seed(0)
    model = resnet(1, 10, widths=[8, 16], depths=[1, 1])
    SURGERY[surgery](model)
    x = torch.randn(4, 1, 8, 8)
    pruner = HESSOPruner(model, x, ratio=0.4, warmup_steps=1, period_steps=2, periods=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    for _ in range(pruner.total_steps + 1):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 1, 8, 8, generator=generator)),
                        torch.randint(0, 10, (8,), generator=generator)).backward()
        optimizer.step()
        pruner.step()
    assert sum(len(u) for u in pruner.zeroed.values()) > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
    report = pruner.prune(example_inputs=x)
    with torch.no_grad():
        after = model(x)
    assert report.params_after < report.params_before
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_weight_standardized_convs_are_refused_by_the_tracer():
    from regimen.batch.weight_std import apply_weight_standardization
    from regimen.subnet.graph import UntraceableError

    model = resnet(1, 10, widths=[8, 16], depths=[1, 1])
    apply_weight_standardization(model)
    with pytest.raises(UntraceableError):
        HESSOPruner(model, torch.randn(2, 1, 8, 8), ratio=0.4)
