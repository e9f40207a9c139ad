"""SGDW (decoupled weight decay, Loshchilov & Hutter 2019, Composer's DecoupledSGDW): the update against the formula
computed by hand in plain Python floats, equal to torch's SGD without decay, and wired into recipes and schedules."""

import pytest
import torch

from regimen.train.optim import SGDW, build_optimizer
from regimen.train.recipe import OptimConfig, ScheduleConfig
from regimen.train.schedule import ProgressSchedule


def _by_hand(w0, grads, lrs, initial_lr, momentum, dampening, wd, nesterov):
    """theta <- theta (1 - wd lr/lr0) - lr d, d from the momentum buffer (first step: buffer = g), per element."""
    w, buf = list(w0), None
    for g, lr in zip(grads, lrs):
        if momentum:
            buf = list(g) if buf is None else [momentum * b + (1 - dampening) * gi for b, gi in zip(buf, g)]
            d = [gi + momentum * b for gi, b in zip(g, buf)] if nesterov else buf
        else:
            d = g
        w = [wi * (1 - wd * lr / initial_lr) - lr * di for wi, di in zip(w, d)]
    return w


@pytest.mark.parametrize("momentum, dampening, nesterov", [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.0, True),
                                                           (0.8, 0.3, False)])
def test_sgdw_matches_the_decoupled_update_by_hand(momentum, dampening, nesterov):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(5, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]
    lrs = [0.1, 0.05, 0.02, 0.08]  # a schedule: the decay follows lr / initial_lr
    param = torch.nn.Parameter(w0.clone())
    opt = SGDW([param], lr=0.1, momentum=momentum, dampening=dampening, weight_decay=0.01, nesterov=nesterov)
    for grad, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        param.grad = grad.clone()
        opt.step()
    expected = _by_hand(w0.tolist(), [x.tolist() for x in grads], lrs, 0.1, momentum, dampening, 0.01, nesterov)
    assert param.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_without_decay_sgdw_is_torch_sgd():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.Parameter(torch.randn(7, generator=g))
    b = torch.nn.Parameter(a.detach().clone())
    ours = SGDW([a], lr=0.05, momentum=0.9, nesterov=True)
    theirs = torch.optim.SGD([b], lr=0.05, momentum=0.9, nesterov=True)
    for _ in range(3):
        grad = torch.randn(7, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_decay_stays_out_of_the_momentum_buffer():
    param = torch.nn.Parameter(torch.ones(3))
    opt = SGDW([param], lr=0.1, momentum=0.9, weight_decay=0.1)
    param.grad = torch.zeros(3)
    opt.step()
    assert torch.equal(opt.state[param]["momentum_buffer"], torch.zeros(3))
    torch.testing.assert_close(param.detach(), torch.full((3,), 0.9))


def test_recipe_name_sgdw_builds_it_with_norm_and_bias_undecayed_and_the_schedule_sets_initial_lr():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, OptimConfig(name="sgdw", lr=0.2, weight_decay=1e-4, nesterov=True))
    assert isinstance(opt, SGDW)
    assert [group["weight_decay"] for group in opt.param_groups] == [1e-4, 0.0]
    for group in opt.param_groups:  # a method (LR scaling) changed the LR in setup: the schedule's base counts
        group["lr"] *= 2
    schedule = ProgressSchedule(opt, ScheduleConfig(name="cosine"), epochs=1)
    assert [group["initial_lr"] for group in opt.param_groups] == [0.4, 0.4]
    schedule.update(0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    state = opt.state_dict()
    again = build_optimizer(model, OptimConfig(name="sgdw", lr=0.2, weight_decay=1e-4, nesterov=True))
    again.load_state_dict(state)  # a resume keeps the base
    assert [group["initial_lr"] for group in again.param_groups] == [0.4, 0.4]


def test_a_recipe_trains_with_sgdw():
    from regimen.train import fit

    result = fit({"task": "classification", "data": {"name": "digits"}, "optim": {"name": "sgdw", "lr": 0.1,
                  "weight_decay": 5e-5}, "train": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 5,
                                                   "threads": 1}})
    assert result.summary["steps"] == 5 and result.summary["final_test_acc"] > 0.2


@pytest.mark.parametrize("kwargs, match", [({"lr": 0.0}, "lr"), ({"lr": 0.1, "weight_decay": 1.0}, "weight_decay"),
                                           ({"lr": 0.1, "momentum": -0.1}, "momentum"),
                                           ({"lr": 0.1, "nesterov": True}, "nesterov")])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGDW([torch.nn.Parameter(torch.ones(1))], **kwargs)
