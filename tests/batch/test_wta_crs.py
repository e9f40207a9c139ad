"""WTA-CRS (Liu et al. 2023): unbiasedness (the mean of many draws -> the exact gradient), variance below plain CRS,
the winner count by the paper's rule, the layer's gradients against nn.Linear, stored rows, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import WTACRSLinear, apply_wta_crs, crs_sample, wta_crs_sample, wta_crs_weight_grad


def _heavy_tailed(n=64, d_in=6, d_out=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=generator, dtype=torch.float64)
    x = x * torch.logspace(0, 2, n, dtype=torch.float64).unsqueeze(1)  # row norms spread over two decades
    g = torch.randn(n, d_out, generator=generator, dtype=torch.float64)
    return x, g


def test_the_mean_of_many_draws_is_the_exact_gradient():
    x, g = _heavy_tailed()
    exact = g.t() @ x
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([wta_crs_weight_grad(x, g, ratio=0.25, min_k=4, generator=generator) for _ in range(1500)])
    error = (draws.mean(0) - exact).norm() / exact.norm()
    spread = (draws.std(0) / 1500 ** 0.5).norm() / exact.norm()  # the standard error of the mean
    assert error < 4 * spread and error < 0.05


def test_variance_is_below_plain_crs_at_equal_k():
    x, g = _heavy_tailed(seed=3)
    scores = x.norm(dim=1) * g.norm(dim=1)
    exact, k = g.t() @ x, 16

    def estimate(sampler, generator):
        indices, weights = sampler(scores, k, generator)
        return g[indices].t() @ (x[indices] * weights.unsqueeze(1))

    generator = torch.Generator().manual_seed(2)
    wta = torch.stack([estimate(wta_crs_sample, generator) for _ in range(1500)])
    crs = torch.stack([estimate(crs_sample, generator) for _ in range(1500)])
    assert ((wta - exact) ** 2).sum(dim=(1, 2)).mean() < 0.85 * ((crs - exact) ** 2).sum(dim=(1, 2)).mean()


def test_winner_count_follows_the_papers_rule():
    p = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01])
    k = 4
    indices, weights = wta_crs_sample(p, k, torch.Generator().manual_seed(0))
    # |C| = argmin over m = 0..k-1 of (1 - sum of the m largest) / (k - m), by hand
    values = [(1 - float(p.sort(descending=True).values[:m].sum())) / (k - m) for m in range(k)]
    winners = min(range(k), key=lambda m: values[m])
    assert winners == 2 and indices[:winners].tolist() == [0, 1]
    assert torch.all(weights[:winners] == 1)
    sampled = indices[winners:]
    assert not set(sampled.tolist()) & {0, 1}
    p64 = p.double() / p.double().sum()
    torch.testing.assert_close(weights[winners:], (1 - p64[:2].sum()) / ((k - winners) * p64[sampled]), rtol=1e-4,
                               atol=0)  # the probabilities carry an epsilon of 1e-8


def test_layer_gradients_input_and_bias_exact_weight_unbiased():
    torch.manual_seed(0)
    exact_layer = nn.Linear(6, 4).double()
    layer = WTACRSLinear(6, 4, ratio=0.5, min_k=2, grad_norm="none",
                         generator=torch.Generator().manual_seed(0)).double()
    layer.load_state_dict(exact_layer.state_dict())
    x = torch.randn(3, 10, 6, dtype=torch.float64)
    upstream = torch.randn(3, 10, 4, dtype=torch.float64)
    x1 = x.clone().requires_grad_()
    (exact_layer(x1) * upstream).sum().backward()
    x2 = x.clone().requires_grad_()
    out = layer(x2)
    torch.testing.assert_close(out, exact_layer(x))
    (out * upstream).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    torch.testing.assert_close(layer.bias.grad, exact_layer.bias.grad)
    assert layer.last_kept == 15 and not torch.allclose(layer.weight.grad, exact_layer.weight.grad)


def test_only_the_sampled_rows_are_stored():
    layer = WTACRSLinear(32, 16, ratio=0.25, min_k=1)
    x = torch.randn(256, 32, requires_grad=True)
    stored = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: stored.append(t) or t, lambda t: t):
        layer(x).sum()
    activation_rows = [t for t in stored if t.dim() == 2 and t.shape[1] == 32 and t is not layer.weight]
    assert [t.shape[0] for t in activation_rows] == [64]


def test_eval_and_no_grad_are_exact_linear():
    layer = WTACRSLinear(5, 3, ratio=0.1)
    x = torch.randn(20, 5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.3])
def test_ratio_outside_0_1_is_refused_and_the_model_left_unchanged(ratio):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = repr(model)
    with pytest.raises(ValueError, match="ratio"):
        apply_wta_crs(model, ratio=ratio)
    assert repr(model) == before
    with pytest.raises(ValueError, match="ratio"):
        WTACRSLinear(4, 4, ratio=ratio)


def test_surgery_replaces_all_but_the_head_and_keeps_parameters():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    weight = model[0].weight
    keys = list(model.state_dict())
    assert apply_wta_crs(model, 0.5, ignore=["2"]) == ["0"]
    assert isinstance(model[0], WTACRSLinear) and model[0].weight is weight
    assert type(model[2]) is nn.Linear and type(model[4]) is nn.Linear
    assert list(model.state_dict()) == keys
