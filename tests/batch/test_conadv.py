"""ConAdv: the targeted signed-gradient step against a linear-softmax model's input gradient written by hand, the
ε-box and image bounds, targets never the label, the attack uses the previous step's weights, named errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import ConAdvMethod, StaleCopy, random_other_labels, targeted_fgsm
from regimen.method import Context, compose_optimizer_step


def test_targeted_step_matches_the_hand_gradient_of_a_linear_softmax_model():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4).double()
    x = torch.rand(5, 6, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 0])
    eps, alpha = 0.05, 0.03
    got = targeted_fgsm(lin, x, t, eps, alpha, random_start=0.0)
    p = (x @ lin.weight.T + lin.bias).softmax(1)
    grad = (p - F.one_hot(t, 4).double()) @ lin.weight / len(x)  # ∇_x of the mean CE, by hand
    expected = (x - alpha * grad.sign()).clamp(x - eps, x + eps).clamp(0, 1)
    assert torch.allclose(got, expected)
    assert lin.weight.grad is None


def test_adversarial_images_stay_in_the_box_and_in_bounds_and_targets_differ():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(32, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    t = random_other_labels(y, 3, g)
    assert (t != y).all() and ((t >= 0) & (t < 3)).all()
    adv = targeted_fgsm(model, x, t, 0.1, 0.5, random_start=1.0, generator=g)
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def test_attack_uses_the_previous_steps_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ctx = Context(model, opt, num_classes=3, criterion=F.cross_entropy)
    method = ConAdvMethod(epsilon=0.1, step_size=0.1, random_start=0.0, staleness=1)
    method.setup(ctx)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    step = compose_optimizer_step([method], lambda closure: opt.step(), ctx)
    before = [p.detach().clone() for p in model.parameters()]
    xb, yb = method.transform_batch(x, y, ctx)  # step 0: the copy starts at w_0
    assert xb.shape[0] == 16 and torch.equal(yb, torch.cat([y, y]))
    F.cross_entropy(model(xb), yb).backward()
    step(lambda: None)  # w_0 -> w_1; the copy now holds w_0
    assert all(torch.equal(s, b) for s, b in zip(method.stale.model.parameters(), before))
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    state = ctx.generator.get_state()
    xb2, _ = method.transform_batch(x, y, ctx)  # step 1: attack with w_0
    ctx.generator.set_state(state)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        for r, b in zip(reference.parameters(), before):
            r.copy_(b)
    t = random_other_labels(y, 3, ctx.generator)
    assert torch.allclose(xb2[8:], targeted_fgsm(reference, x, t, 0.1, 0.1, random_start=0.0,
                                                 generator=ctx.generator))


def test_stale_copy_refresh_copies_parameters_and_buffers():
    live = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    stale = StaleCopy(live)
    with torch.no_grad():
        live[0].weight.add_(1.0)
        live[1].running_mean.add_(2.0)
    stale.refresh()
    assert torch.equal(stale.model[0].weight, live[0].weight)
    assert torch.equal(stale.model[1].running_mean, live[1].running_mean)
    assert not stale.model[0].weight.requires_grad


@pytest.mark.parametrize("kwargs, match", [
    ({"epsilon": -0.1}, "epsilon must be a finite float >= 0"), ({"step_size": -1.0}, "step_size"),
    ({"random_start": 1.5}, "random_start"), ({"staleness": 2}, "staleness"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConAdvMethod(**kwargs)
    if "epsilon" in kwargs or "step_size" in kwargs:
        with pytest.raises(ValueError, match=match):
            targeted_fgsm(nn.Linear(2, 2), torch.rand(1, 2), torch.tensor([0]), kwargs.get("epsilon", 0.1),
                          kwargs.get("step_size", 0.1))
