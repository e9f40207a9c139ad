"""Co-teaching (Han et al. 2018; stage 2 of Chen et al. 2022): selection by a hand loop, the schedule, the method."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import CoTeachingMethod, coteaching_losses, coteaching_select, forget_rate_at
from regimen.train import fit


def test_each_network_trains_on_the_peers_small_loss_samples():
    torch.manual_seed(0)
    a, b, y = torch.randn(10, 4), torch.randn(10, 4), torch.randint(0, 4, (10,))
    loss_a, loss_b = coteaching_losses(a, b, y, forget_rate=0.3)
    per_a = [float(F.cross_entropy(a[i:i + 1], y[i:i + 1])) for i in range(10)]
    per_b = [float(F.cross_entropy(b[i:i + 1], y[i:i + 1])) for i in range(10)]
    keep = 7  # floor((1 - 0.3) * 10)
    small_a = sorted(range(10), key=lambda i: per_a[i])[:keep]
    small_b = sorted(range(10), key=lambda i: per_b[i])[:keep]
    assert loss_a.item() == pytest.approx(sum(per_a[i] for i in small_b) / keep, rel=1e-5)
    assert loss_b.item() == pytest.approx(sum(per_b[i] for i in small_a) / keep, rel=1e-5)


def test_forget_rate_schedule_ramps_after_the_start_epoch():
    assert forget_rate_at(0, 0.2, ramp_epochs=0, start_epoch=2) == 0.0
    assert forget_rate_at(2, 0.2, ramp_epochs=0, start_epoch=2) == 0.2
    assert [forget_rate_at(e, 0.4, ramp_epochs=4) for e in (0, 2, 4, 9)] == pytest.approx([0.0, 0.2, 0.4, 0.4])


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1])
def test_forget_rate_outside_0_1_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match="forget_rate"):
        CoTeachingMethod(forget_rate=rate)
    with pytest.raises(ValueError, match="forget_rate"):
        coteaching_select(torch.ones(4), torch.ones(4), rate)


RECIPE = {"seed": 0, "data": {"name": "digits", "options": {"label_noise": 0.3}},
          "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
          "optim": {"name": "sgd", "lr": 0.05},
          "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3, "threads": 1},
          "methods": [{"name": "nested_dropout", "sigma": 4.0}, {"name": "co_teaching", "forget_rate": 0.25,
                                                                  "start_epoch": 1}]}


@pytest.mark.slow
def test_co_teaching_resumes_bit_identically(tmp_path):
    whole = fit(RECIPE)
    fit(RECIPE, out_dir=tmp_path, stop_epoch=1)
    resumed = fit(RECIPE, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert whole.summary["final_test_acc"] == resumed.summary["final_test_acc"]
    assert whole.history[-1]["co_teaching/forget_rate"] == 0.25


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _stage_one(tmp_path, name, seed):
    from regimen.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    net = _net(seed)
    return str(save_checkpoint({"format": CHECKPOINT_FORMAT, "model": net.state_dict()}, tmp_path / name)), net


def test_stage_two_starts_each_network_from_its_stage_one_checkpoint_with_frozen_bn(tmp_path):
    """The paper's second stage (reference ``--resumePthList a b --freeze-bn``): network f from run a, the peer from
    run b; BatchNorm in evaluation mode while both train (running statistics unchanged)."""
    from regimen.method import Context

    path_a, net_a = _stage_one(tmp_path, "a.pt", 1)
    path_b, net_b = _stage_one(tmp_path, "b.pt", 2)
    model = _net(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, criterion=nn.functional.cross_entropy, generator=torch.Generator().manual_seed(0))
    method = CoTeachingMethod(forget_rate=0.25, init_from=[path_a, path_b], freeze_bn=True)
    method.setup(ctx)
    for p, q in zip(model.state_dict().values(), net_a.state_dict().values()):
        assert torch.equal(p, q)
    for p, q in zip(method.peer.state_dict().values(), net_b.state_dict().values()):
        assert torch.equal(p, q)
    running = [model[1].running_mean.clone(), method.peer[1].running_mean.clone()]
    model.train()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def inner(m, x, y):
        out = m(x)
        return nn.functional.cross_entropy(out, y), out

    loss, _ = method.forward_loss(model, x, y, inner, ctx)
    loss.backward()
    assert not model[1].training and not method.peer[1].training
    assert torch.equal(model[1].running_mean, running[0]) and torch.equal(method.peer[1].running_mean, running[1])
    assert model[0].weight.grad is not None and method.peer[0].weight.grad is not None


def test_stage_two_refuses_missing_or_foreign_checkpoints_leaving_the_model_unchanged(tmp_path):
    from regimen.errors import ConfigurationError
    from regimen.method import Context

    path_a, _ = _stage_one(tmp_path, "a.pt", 1)
    from regimen.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    foreign = str(save_checkpoint({"format": CHECKPOINT_FORMAT, "model": nn.Linear(4, 3).state_dict()},
                                  tmp_path / "f.pt"))
    for paths, match in (([path_a, str(tmp_path / "missing.pt")], "not a file"), ([path_a, foreign], "another")):
        model = _net(0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.functional.cross_entropy,
                      generator=torch.Generator().manual_seed(0))
        with pytest.raises(ConfigurationError, match=match):
            CoTeachingMethod(init_from=paths).setup(ctx)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="init_from"):
        CoTeachingMethod(init_from=[path_a])
