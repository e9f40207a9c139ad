"""SAR (Niu et al. 2023) and Tent: entropy by hand, one SAR step against an explicit re-derivation, the reliable
filter, model recovery, the source model untouched, a model without norm layers refused."""

import copy
import math

import pytest
import torch
from torch import nn

from regimen.batch import SAR, Tent, adapt, norm_affine_parameters, softmax_entropy


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 4))


def test_entropy_by_hand():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    p = torch.tensor([1.0, math.exp(3.0)]) / (1 + math.exp(3.0))
    expected = [math.log(2), -float((p * p.log()).sum())]
    torch.testing.assert_close(softmax_entropy(logits), torch.tensor(expected))


def test_one_sar_step_matches_the_formula_derived_by_hand():
    model, x = _model(), torch.randn(16, 5) * 3
    rho, lr = 0.05, 0.1
    with torch.no_grad():
        margin = float(softmax_entropy(model(x)).quantile(0.75))  # about 3/4 of the samples are reliable
    adapter = SAR(model, lr=lr, momentum=0.0, rho=rho, margin=margin)
    out = adapter(x)
    # by hand on a second copy: filter, ascent to θ + ε̂, re-filter, gradient there, step at θ
    ref = copy.deepcopy(model)
    w, b = ref[1].weight, ref[1].bias
    torch.testing.assert_close(out, ref(x))
    e = -(ref(x).log_softmax(1).exp() * ref(x).log_softmax(1)).sum(1)
    keep = e < margin
    assert 0 < int(keep.sum()) < 16
    gw, gb = torch.autograd.grad(e[keep].mean(), [w, b])
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    with torch.no_grad():
        w += rho * gw / norm
        b += rho * gb / norm
    logp = ref(x).log_softmax(1)
    e2 = -(logp.exp() * logp).sum(1)[keep]
    gw2, gb2 = torch.autograd.grad(e2[e2 < margin].mean(), [w, b])
    with torch.no_grad():
        w -= rho * gw / norm + lr * gw2
        b -= rho * gb / norm + lr * gb2
    torch.testing.assert_close(adapter.model[1].weight, w)
    torch.testing.assert_close(adapter.model[1].bias, b)
    torch.testing.assert_close(adapter.model[0].weight, model[0].weight)  # only norm parameters move


def test_unreliable_batch_is_not_used_and_collapse_resets():
    model, x = _model(), torch.randn(8, 5)
    adapter = SAR(model, margin=1e-6)  # no sample is that confident
    adapter(x)
    assert adapter.updates == 0
    adapter = SAR(model, margin=10.0, reset_constant=100.0)  # every EMA is "collapsed": reset after the step
    adapter(x)
    assert adapter.updates == 1 and adapter.resets == 1 and adapter.ema is None
    torch.testing.assert_close(adapter.model[1].weight, model[1].weight)


def test_tent_step_is_sgd_on_mean_entropy_and_the_source_is_untouched():
    model, x = _model(), torch.randn(8, 5)
    before = copy.deepcopy(model.state_dict())
    tent = Tent(model, lr=0.5, momentum=0.0)
    tent(x)
    ref = copy.deepcopy(model)
    logp = ref(x).log_softmax(1)
    gw, = torch.autograd.grad(-(logp.exp() * logp).sum(1).mean(), [ref[1].weight])
    torch.testing.assert_close(tent.model[1].weight, ref[1].weight - 0.5 * gw)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_batchnorm_uses_test_batch_statistics():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(4, 1, 6, 6))
    adapter = Tent(model)
    bn = adapter.model[1]
    assert bn.running_mean is None and not bn.track_running_stats
    assert [n for n, _ in norm_affine_parameters(model)] == ["1.weight", "1.bias"]


def test_a_model_without_norm_layers_is_refused_and_left_unchanged():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    flags = [p.requires_grad for p in model.parameters()]
    for cls in (SAR, Tent):
        with pytest.raises(ValueError, match="no BatchNorm/GroupNorm/LayerNorm"):
            cls(model)
    assert [p.requires_grad for p in model.parameters()] == flags and model.training
    with pytest.raises(ValueError, match="rho"):
        SAR(_model(), rho=-0.1)


def test_adapt_returns_the_predictions_made_before_each_update():
    model = _model()
    batches = [torch.randn(4, 5) for _ in range(3)]
    predictions, adapter = adapt(model, batches, "none")
    assert adapter is None and predictions.shape == (12,)
    predictions, adapter = adapt(model, batches, "tent", lr=0.1)
    assert adapter.updates == 3
