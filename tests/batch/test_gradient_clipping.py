"""Gradient clipping: AGC equals an explicit per-unit loop of the paper's rule; value clipping equals torch's; the
method clips the gradient the step applies (after SAM) and refuses bad input."""

import pytest
import torch
from torch import nn

from regimen.batch import GradientClippingMethod, adaptive_clip_grad_
from regimen.errors import ConfigurationError
from regimen.method import Context, check_method_order, get_method
from regimen.train import fit


def _agc_loop(w, g, lam, eps):
    out = g.clone()
    rows = [w] if w.ndim <= 1 else list(range(w.shape[0]))
    for i in rows if w.ndim > 1 else [None]:
        wi, gi = (w, g) if i is None else (w[i], g[i])
        w_norm = max(float(torch.sqrt((wi ** 2).sum())), eps)
        g_norm = float(torch.sqrt((gi ** 2).sum()))
        if g_norm / w_norm > lam:
            clipped = gi * (lam * w_norm / g_norm)
            if i is None:
                out = clipped
            else:
                out[i] = clipped
    return out


@pytest.mark.parametrize("shape", [(6, 4, 3, 3), (5, 7), (9,)])
def test_agc_matches_the_papers_rule_unit_by_unit(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(*shape, generator=g, dtype=torch.float64)
    w[0] = 0.0  # a zero unit: the eps floor applies
    p = nn.Parameter(w.clone())
    p.grad = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.rand(shape[0], *([1] * (len(shape) - 1)),
                                                                               generator=g, dtype=torch.float64)
    want = _agc_loop(w, p.grad, 0.05, 1e-3)
    adaptive_clip_grad_([p], 0.05, 1e-3)
    torch.testing.assert_close(p.grad, want)


def test_value_mode_equals_torch_and_ignore_leaves_parameters_alone():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 3
    head = model[1].weight.grad.clone()
    want = model[0].weight.grad.clamp(-0.5, 0.5)
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.0))
    GradientClippingMethod("value", 0.5, ignore=["1.*"]).optimizer_step(None, lambda closure: None, ctx)
    assert torch.equal(model[0].weight.grad, want) and torch.equal(model[1].weight.grad, head)


def test_listed_before_sam_is_refused_and_bad_input_named():
    check_method_order([get_method("sam")(), GradientClippingMethod()])
    with pytest.raises(ValueError, match="'sam' must be listed before 'gradient_clipping'"):
        check_method_order([GradientClippingMethod(), get_method("sam")()])
    with pytest.raises(ValueError, match="threshold"):
        GradientClippingMethod(threshold=0.0)
    with pytest.raises(ConfigurationError, match="mode"):
        fit({"task": "classification", "data": {"name": "iris"},
             "methods": [{"name": "gradient_clipping", "mode": "bogus"}]})
