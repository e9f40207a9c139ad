"""EMA's buffers: BatchNorm running statistics of the averaged model are the trained model's, copied at every update.

The mutant that survived the whole suite (issue 21): ``ema_update`` no longer copying buffers. The averaged model then
evaluates with the running statistics it was created with (mean 0, variance 1): the "EMA accuracy collapses" that
timm users reported. These tests kill it at the function, the ModelEMA and the trainer level.
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.train import fit, load_checkpoint
from regimen.train.builtin import ModelEMA, ema_update


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _train_statistics(model: nn.Module, steps: int = 3) -> None:
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 4) * 3 + 2)


def test_ema_update_copies_the_buffers_and_interpolates_only_the_parameters():
    model, ema = _bn_net(), _bn_net()
    _train_statistics(model)
    bn = model[1]
    assert not torch.allclose(bn.running_mean, torch.zeros(6))  # the statistics moved away from their start
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    expected = [0.75 * e.detach().clone() + 0.25 * p.detach() for e, p in zip(ema.parameters(), model.parameters())]
    ema_update(ema, model, 0.75)
    for (name, b_ema), b_model in zip(ema.named_buffers(), model.buffers()):
        assert torch.equal(b_ema, b_model), name  # copied, not averaged
    assert int(ema[1].num_batches_tracked) == 3
    for e, x in zip(ema.parameters(), expected):
        torch.testing.assert_close(e, x)


def test_model_ema_evaluates_with_the_trained_models_statistics():
    """With decay -> weights equal, the averaged model's eval output equals the trained model's: it uses the same
    running statistics (without the copy it would normalise with mean 0 / variance 1 and differ)."""
    model = _bn_net()
    ema = ModelEMA(model, decay=0.5, warmup=False)
    _train_statistics(model)
    ema.update(model)
    x = torch.randn(5, 4) * 3 + 2
    model.eval()
    for _ in range(30):  # the weights converge to the (unchanged) model's, the buffers are copied each time
        ema.update(model)
    torch.testing.assert_close(ema(x), model(x), rtol=1e-5, atol=1e-5)


def test_model_ema_warmup_decay_follows_its_formula():
    ema = ModelEMA(_bn_net(), decay=0.99, warmup=True)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.updates += 1
    assert decays == [min(0.99, (1 + t) / (10 + t)) for t in range(4)]
    assert ModelEMA(_bn_net(), decay=0.99, warmup=False).current_decay() == 0.99


def test_trainer_ema_keeps_the_trained_batchnorm_statistics(tiny_recipe, tmp_path):
    """In a run, the averaged model's BatchNorm statistics (in the checkpoint's EMA state) are the trained model's
    after the last step, not the initial ones."""
    recipe = dict(tiny_recipe, model={"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}},
                  methods=[{"name": "ema", "decay": 0.9}])
    recipe["train"] = {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 4}
    fit(recipe, out_dir=tmp_path)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    averaged, trained = state["methods"][0]["module"], state["model"]
    statistics = [k for k in trained if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for key in statistics:
        assert torch.equal(averaged[key], trained[key]), key
    assert any(not torch.allclose(averaged[k], torch.zeros_like(averaged[k])) for k in statistics
               if k.endswith("running_mean"))
