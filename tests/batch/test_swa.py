"""SWA equals torch.optim.swa_utils (AveragedModel + update_bn) on a small BatchNorm model; the SWA LR; bad input;
a trainer run evaluates and returns the averaged model."""

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from regimen.batch import SWAMethod, recompute_bn_statistics, swa_lr_factor, swa_update
from regimen.data import TensorDataset
from regimen.errors import ConfigurationError
from regimen.method import Context
from regimen.train import fit


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def test_swa_method_equals_torch_averaged_model_and_update_bn():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    data = TensorDataset(x, y, "toy", 3)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    epochs = 8
    method = SWAMethod(start=0.5, bn_batch_size=32)
    ctx = Context(model, optimizer, train_data=data, epochs=epochs, steps_per_epoch=3)
    reference = AveragedModel(model)
    for epoch in range(epochs):
        ctx.epoch = epoch
        for i in range(3):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32]).backward()
            method.optimizer_step(lambda: None, lambda closure: optimizer.step(), ctx)
            ctx.step += 1
        method.on_epoch_end(ctx)
        if epoch >= 4:  # floor(0.5 * 8)
            reference.update_parameters(model)
    update_bn([(x[i * 32:(i + 1) * 32], y[i * 32:(i + 1) * 32]) for i in range(3)], reference)
    ours = method.eval_model(model, ctx)
    assert method.n_averaged == 4 == reference.n_averaged.item()
    want = reference.module.state_dict()
    for key, value in ours.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-6, msg=key)
    ours.eval()
    reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    method.on_train_end(ctx)  # export: the live model becomes the average
    torch.testing.assert_close(model.eval()(x), reference(x), rtol=1e-5, atol=1e-5)


def test_swa_update_is_the_running_mean():
    a, b, c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)
    average = nn.Linear(3, 2)
    n = 0
    for m in (a, b, c):
        n = swa_update(average, m, n)
    torch.testing.assert_close(average.weight, (a.weight + b.weight + c.weight) / 3)
    with pytest.raises(ValueError, match="n_averaged"):
        swa_update(average, a, -1)


def test_swa_lr_anneals_to_the_constant_and_stays():
    assert swa_lr_factor(0.0, 2.0) == 0.0 and swa_lr_factor(1.0, 2.0) == pytest.approx(0.5)
    assert swa_lr_factor(5.0, 2.0, "linear") == 1.0 and swa_lr_factor(0.0, 0.0) == 1.0
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, epochs=4, steps_per_epoch=2)
    method = SWAMethod(start=0.5, swa_lr=0.01, anneal_epochs=1.0, anneal="linear")
    seen = []
    for step in range(8):
        ctx.epoch, ctx.step = step // 2, step
        optimizer.param_groups[0]["lr"] = 0.1  # what the trainer's schedule sets before each step
        method.optimizer_step(None, lambda closure: seen.append(optimizer.param_groups[0]["lr"]), ctx)
    assert seen[:4] == [0.1] * 4  # before the SWA phase: the schedule's LR
    assert seen[4:] == pytest.approx([0.1, 0.055, 0.01, 0.01])


@pytest.mark.parametrize("start", [1.0, 1.5, -0.1])
def test_swa_start_at_or_after_the_end_of_training_is_refused(start):
    with pytest.raises(ValueError, match="start must be"):
        SWAMethod(start=start)
    with pytest.raises(ConfigurationError, match="start"):
        fit({"task": "classification", "data": {"name": "iris"}, "methods": [{"name": "swa", "start": start}]})


def test_recompute_bn_statistics_refuses_no_batches_and_ignores_models_without_bn():
    assert recompute_bn_statistics(nn.Linear(2, 2), []) is False
    with pytest.raises(ValueError, match="batches"):
        recompute_bn_statistics(_model(), [])


def test_fit_with_swa_returns_the_averaged_model_with_its_bn_statistics():
    recipe = {"name": "swa", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "schedule": {"name": "cosine"},
              "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 3, "threads": 1},
              "methods": [{"name": "swa", "start": 0.3, "swa_lr": 0.02, "bn_batches": 4}]}
    result = fit(recipe)
    assert result.history[-1]["swa/n_averaged"] == 3
    assert result.summary["exported_after_training"]
    assert result.summary["final_test_acc"] == result.history[-1]["test_acc"]  # evaluated: the same average
