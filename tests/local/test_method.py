"""The `local_learning` recipe method: setup swaps in the wrapper and extends the optimizer; the step backpropagates
once per module through ctx.backward; after_step updates MAN; recipe parameters are validated."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.local import LocalLearning, LocalLearningMethod
from regimen.losses import classification_loss
from regimen.method import Context, Method, MethodConflictError, check_exclusive_hooks, get_method
from regimen.models import resnet


def _context(model, optimizer, calls, mean=0.5, std=0.25, accumulation=1, examples=None):
    """A v2 context on 12 x 12 one-channel images; ``examples`` records the example_batch calls."""
    normalize = lambda x: (x - mean) / std  # noqa: E731

    def example_batch(n):
        if examples is not None:
            examples.append(n)
        return normalize(torch.rand(n, 1, 12, 12)), torch.randint(0, 10, (n,))

    return Context(
        model, optimizer, classification_loss, num_classes=10, per_device_batch=4, accumulation=accumulation,
        data_mean=torch.tensor([mean]), data_std=torch.tensor([std]), example_batch=example_batch,
        backward=lambda loss: (calls.append(float(loss.detach())), loss.backward()), normalize=normalize,
    )


def test_method_is_registered_under_its_recipe_name():
    assert get_method("local_learning") is LocalLearningMethod


def test_setup_wraps_the_model_and_adds_auxiliary_param_groups_with_the_same_hyperparameters():
    model = resnet(widths=(4, 8), depths=(1, 1))
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=0.05, momentum=0.9, nesterov=True)
    calls, examples = [], []
    ctx = _context(model, optimizer, calls, examples=examples)
    method = LocalLearningMethod(num_modules=3, aux="infopro")
    method.setup(ctx)
    wrapper = ctx.model
    assert examples == [2]  # the feature shapes come from ctx.example_batch
    assert isinstance(wrapper, LocalLearning) and wrapper.num_modules == 3
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) in held for p in wrapper.parameters() if p.requires_grad)
    new_groups = optimizer.param_groups[2:]
    assert new_groups and all(g["lr"] == 0.05 and g["momentum"] == 0.9 and g["nesterov"] for g in new_groups)
    for g in new_groups:
        assert all(p.ndim <= 1 for p in g["params"]) == (g["weight_decay"] == 0.0)
    # the de-normalisation was read off ctx.normalize
    assert torch.allclose(wrapper.data_mean, torch.tensor([0.5]))
    assert torch.allclose(wrapper.data_std, torch.tensor([0.25]))
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    loss, logits = method.training_step(wrapper, x, y, ctx)
    assert len(calls) == 3  # one backward per module
    assert not loss.requires_grad and logits.shape == (4, 10)
    assert ctx.log["local_learning/aux0_loss"] > 0 and "local_learning/aux1_loss" in ctx.log
    assert all(p.grad is not None for p in wrapper.auxiliary_parameters())


def test_training_step_divides_each_local_loss_by_the_accumulation():
    model = resnet(widths=(4, 8), depths=(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []
    ctx = _context(model, optimizer, calls, accumulation=4)
    method = LocalLearningMethod(num_modules=2, aux="dgl")
    method.setup(ctx)
    ctx.model.eval()
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    loss, _ = method.training_step(ctx.model, x, y, ctx)
    assert calls[-1] == pytest.approx(float(loss) / 4, rel=1e-5)


def test_after_step_updates_the_man_ema_copy():
    model = resnet(widths=(4, 8), depths=(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx = _context(model, optimizer, [])
    method = LocalLearningMethod(num_modules=2, aux="man", balance="blocks")
    method.setup(ctx)
    aux = ctx.model.auxiliaries[0]
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    method.training_step(ctx.model, x, y, ctx)
    ctx.optimizer.step()
    before = [p.clone() for p in aux.ema.parameters()]
    method.after_step(ctx)
    for old, new, live in zip(before, aux.ema.parameters(), aux.source[0].parameters(), strict=True):
        assert torch.allclose(new, 0.995 * old + 0.005 * live, atol=1e-7)


def test_method_rejects_bad_parameters():
    with pytest.raises(ValueError, match="aux"):
        LocalLearningMethod(aux="greedy")
    with pytest.raises(ValueError, match="num_modules"):
        LocalLearningMethod(num_modules=0)
    with pytest.raises(ValueError, match="momentum"):
        LocalLearningMethod(aux="man", momentum=2.0)


class _NoStages(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.body(x)


def test_a_model_without_stages_is_refused_with_how_to_provide_them():
    model = _NoStages()
    ctx = _context(model, torch.optim.SGD(model.parameters(), lr=0.1), [])
    with pytest.raises(ConfigurationError, match="`stages`.*split_points"):
        LocalLearningMethod(num_modules=2).setup(ctx)
    assert ctx.model is model


def test_own_model_without_stages_is_a_user_error_naming_the_method():
    from regimen.train import fit

    x, y = torch.rand(200, 1, 12, 12), torch.randint(0, 10, (200,))
    recipe = {"task": "image_classification", "train": {"epochs": 1, "batch_size": 32},
              "methods": [{"name": "local_learning", "num_modules": 2}]}
    with pytest.raises(ConfigurationError, match="method 'local_learning'.*stages"):
        fit(recipe, model=_NoStages(), data={"train": (x, y), "test": (x[:20], y[:20])})


def test_the_local_step_is_exclusive():
    class OtherStep(Method):
        name = "other_step"

        def training_step(self, model, x, y, ctx):
            raise NotImplementedError

    assert LocalLearningMethod.exclusive == ("training_step",)
    with pytest.raises(MethodConflictError, match="local_learning"):
        check_exclusive_hooks([LocalLearningMethod(), OtherStep()])


def test_recipe_trains_through_fit_with_the_aux_losses_in_the_metrics(tiny_recipe):
    from regimen.train import fit

    recipe = dict(tiny_recipe, model={"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}},
                  methods=[{"name": "local_learning", "num_modules": 2, "aux": "dgl"}])
    recipe["train"] = dict(recipe["train"], epochs=1, max_steps_per_epoch=3)
    result = fit(recipe)
    assert isinstance(result.model, LocalLearning)
    assert result.history[0]["local_learning/aux0_loss"] > 0 and result.history[0]["train_loss"] > 0
