"""Norm test: torch.func per-sample gradients equal an explicit per-sample loop; the test formula by hand; growth."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.batch
from regimen.batch import AdaptiveBatchMethod, norm_test, per_sample_gradients
from regimen.method import Context


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


def test_per_sample_gradients_equal_explicit_loop():
    model = _model()
    model.train()
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 4, (5,))
    got = per_sample_gradients(model, F.cross_entropy, x, y)
    assert model.training  # mode restored
    model.eval()  # the reference loop uses the same (eval-mode BN) convention
    rows = []
    for i in range(5):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(got, torch.stack(rows), atol=1e-5, rtol=1e-4)


def test_norm_test_matches_formula_by_hand():
    torch.manual_seed(1)
    grads = torch.randn(6, 10) * 0.5 + 0.2
    b = 6
    mean = [sum(float(grads[i, j]) for i in range(b)) / b for j in range(10)]
    variance = sum(sum((float(grads[i, j]) - mean[j]) ** 2 for j in range(10)) for i in range(b)) / (b - 1)
    norm_sq = sum(m * m for m in mean)
    for eta in (0.1, 1.0, 10.0):
        result = norm_test(grads, eta)
        assert result.variance == pytest.approx(variance, rel=1e-9)
        assert result.grad_norm_sq == pytest.approx(norm_sq, rel=1e-9)
        assert result.passed == (variance / b <= eta**2 * norm_sq)
        assert result.suggested_batch == math.ceil(variance / (eta**2 * norm_sq))
    with pytest.raises(ValueError, match="at least 2"):
        norm_test(grads[:1])
    with pytest.raises(ValueError, match="eta"):
        norm_test(grads, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        norm_test(torch.full((3, 2), float("nan")))


def test_method_grows_batch_monotonically_and_capped():
    model = _model()
    sizes = []
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), F.cross_entropy, num_classes=4,
                  per_device_batch=8, train_data=list(range(100)), set_batch_size=sizes.append)
    method = AdaptiveBatchMethod(eta=0.01, interval=1, max_samples=8, max_batch_size=40, max_growth=2.0)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 4, (8,))
    for _ in range(4):
        assert method.before_forward(x, y, ctx) is None
        assert method.last is not None and not method.last.passed  # eta tiny: the test fails
        method.on_epoch_end(ctx)
    assert sizes == [16, 32, 40]  # doubling, then capped at max_batch_size, never shrinking
    assert ctx.run.per_device_batch == 40
    assert ctx.log["adaptive_batch/batch_size"] == 40.0
    state = method.state_dict()
    fresh = AdaptiveBatchMethod()
    fresh.load_state_dict(state)
    assert fresh.global_batch == 40
    assert AdaptiveBatchMethod(eta=1.0).next_global_batch(64, 1000) == 64  # nothing suggested: unchanged
    with pytest.raises(ValueError, match="max_growth"):
        AdaptiveBatchMethod(max_growth=0.5)
    with pytest.warns(DeprecationWarning, match="AdaptiveBatchMethod"):
        assert regimen.batch.AdaptiveBatch is AdaptiveBatchMethod


def test_epoch_record_shows_the_batch_the_epoch_trained_at(tiny_recipe):
    """adaptive_batch grows the batch at the end of an epoch; that epoch's metrics line keeps the batch it used."""
    from regimen.train import fit

    recipe = dict(tiny_recipe, methods=[{"name": "adaptive_batch", "eta": 0.01, "interval": 1, "max_samples": 8,
                                         "max_batch_size": 128, "max_growth": 2.0}])
    recipe["train"] = dict(tiny_recipe["train"], epochs=2, batch_size=16)
    history = fit(recipe).history
    assert history[0]["global_batch"] == 16
    assert history[0]["adaptive_batch/batch_size"] == history[1]["global_batch"] > 16
