"""The v2 Method contract in the trainer: persistent logs, the three middleware chains, before_forward, tasks,
your own model and data, and the errors for what cannot work."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError, RegimenError
from regimen.method import Context, Method, compose_criterion, compose_forward_loss, register_method
from regimen.train import CheckpointError, RecipeError, fit, parse_recipe


@register_method
class LogEverywhere(Method):
    """Test helper: logs in setup, every epoch and at the end of training."""

    name = "_test_log_everywhere"

    def setup(self, ctx):
        self.log(ctx, "at_setup", 7)

    def on_epoch_end(self, ctx):
        self.log(ctx, "epoch", ctx.epoch)

    def on_train_end(self, ctx):
        self.log(ctx, "at_end", 3)


@register_method
class Trace(Method):
    """Test helper: records the order in which its chain links run."""

    name = "_test_trace"
    calls: list[str] = []

    def __init__(self, tag: str = "a", scale: float = 1.0) -> None:
        self.tag, self.scale = tag, scale

    def before_forward(self, x, y, ctx):
        Trace.calls.append(f"before_forward:{self.tag}")

    def forward_loss(self, model, x, y, next, ctx):
        Trace.calls.append(f"forward_loss:{self.tag}")
        return next(model, x, y)

    def criterion(self, output, target, next, ctx, reduction="mean"):
        Trace.calls.append(f"criterion:{self.tag}")
        return self.scale * next(output, target, reduction=reduction)

    def optimizer_step(self, closure, next, ctx):
        Trace.calls.append(f"optimizer_step:{self.tag}")
        next(closure)


@register_method
class ImagesOnly(Method):
    """Test helper: serves image inputs only."""

    name = "_test_images_only"
    inputs = ("image",)


@register_method
class FailsSetup(Method):
    """Test helper: its setup refuses the model."""

    name = "_test_fails_setup"

    def setup(self, ctx):
        raise ValueError("needs a model with stages")


def _rows(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_logs_persist_from_setup_to_the_first_row_and_from_train_end_to_the_summary(tiny_recipe, tmp_path):
    recipe = dict(tiny_recipe, methods=[{"name": "_test_log_everywhere"}])
    result = fit(recipe, out_dir=tmp_path)
    rows = _rows(tmp_path)
    assert rows[0]["_test_log_everywhere/at_setup"] == 7.0
    assert "_test_log_everywhere/at_setup" not in rows[1]
    assert [r["_test_log_everywhere/epoch"] for r in rows] == [0.0, 1.0]
    assert result.summary["methods"] == {"_test_log_everywhere/at_end": 3.0}


def test_chains_run_outermost_first_and_before_forward_runs_per_micro_batch(tiny_recipe):
    Trace.calls = []
    recipe = dict(tiny_recipe, methods=[{"name": "_test_trace", "tag": "a"}, {"name": "_test_trace", "tag": "b"}])
    recipe["train"] = dict(recipe["train"], epochs=1, max_steps_per_epoch=1, accumulation=2, batch_size=16)
    fit(recipe)
    per_micro = ["before_forward:a", "before_forward:b", "forward_loss:a", "forward_loss:b", "criterion:a",
                 "criterion:b"]
    assert Trace.calls == per_micro + per_micro + ["optimizer_step:a", "optimizer_step:b"]


def test_criterion_chain_equals_the_formula_by_hand():
    model = nn.Linear(5, 3)
    methods = [Trace("a", scale=2.0), Trace("b", scale=0.5)]
    ctx = Context(model, num_classes=3)
    ctx.criterion = compose_criterion(methods, F.cross_entropy, ctx)
    step = compose_forward_loss(methods, ctx)
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 1])
    loss, output = step(model, x, y)
    assert torch.allclose(loss, 2.0 * 0.5 * F.cross_entropy(model(x), y))
    per_sample = ctx.criterion(output, y, reduction="none")
    assert torch.allclose(per_sample, F.cross_entropy(output, y, reduction="none"))


@register_method
class SharpnessAware(Method):
    """Test helper: a SAM-like step through the closure (ascend rho along the gradient, recompute, restore)."""

    name = "_test_sam_like"

    def optimizer_step(self, closure, next, ctx):
        params = [p for p in ctx.model.parameters() if p.grad is not None]
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
        shifts = [0.05 * p.grad / norm for p in params]
        with torch.no_grad():
            for p, e in zip(params, shifts):
                p.add_(e)
        closure()
        with torch.no_grad():
            for p, e in zip(params, shifts):
                p.sub_(e)
        next(closure)


def test_optimizer_step_closure_recomputes_the_gradient_at_the_perturbed_point(tiny_recipe):
    recipe = dict(tiny_recipe, methods=[{"name": "_test_sam_like"}],
                  optim={"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0},
                  schedule={"name": "constant"})
    recipe["train"] = dict(recipe["train"], epochs=1, max_steps_per_epoch=1, batch_size=32)
    recipe["model"] = {"name": "mlp", "options": {"hidden": []}}
    trained = fit(recipe).model
    # by hand: the same first batch, initial weights, SAM step
    plain = dict(recipe, methods=[])
    plain["optim"] = dict(plain["optim"], lr=1e-12)  # a step too small to move: the initial weights
    initial = fit(plain).model
    from regimen.data import InMemoryLoader
    from regimen.tasks import ImageClassificationTask

    task = ImageClassificationTask(parse_recipe(recipe))
    data = task.load_data()
    x, y, _ = next(iter(InMemoryLoader(data.train, 32, seed=0)))
    x = task.normalizer(data, torch.device("cpu"))(x)
    weight, bias = [p.detach().clone().requires_grad_() for p in initial.parameters()]
    loss = F.cross_entropy(F.linear(x.flatten(1), weight, bias), y)
    gw, gb = torch.autograd.grad(loss, (weight, bias))
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())
    w2, b2 = (weight + 0.05 * gw / norm).detach().requires_grad_(), (bias + 0.05 * gb / norm).detach().requires_grad_()
    sw, sb = torch.autograd.grad(F.cross_entropy(F.linear(x.flatten(1), w2, b2), y), (w2, b2))
    expected = [weight - 0.1 * sw, bias - 0.1 * sb]
    for got, want in zip(trained.parameters(), expected):
        assert torch.allclose(got, want, atol=1e-6)


class OwnNet(nn.Module):
    """A user's model with no stages, blocks or head convention."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, x):
        return self.body(x)


def _blobs(n=600, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0]])
    labels = torch.randint(0, 3, (n,), generator=generator)
    return centers[labels] + 0.5 * torch.randn(n, 4, generator=generator), labels


def test_fit_trains_your_own_model_on_your_own_tensors_and_leaves_your_module_unchanged(tmp_path):
    model = OwnNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = {"task": "classification", "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
              "train": {"epochs": 3, "batch_size": 32}, "methods": [{"name": "ema", "decay": 0.9}]}
    x, y = _blobs()
    result = fit(recipe, model=model, data={"train": (x[:500], y[:500]), "test": (x[500:], y[500:])},
                 out_dir=tmp_path)
    assert result.summary["final_test_acc"] > 0.9 and result.summary["task"] == "classification"
    assert isinstance(result.model, OwnNet) and result.model is not model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    spec = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model_spec"]
    assert spec["name"] == "user" and spec["class"].endswith("OwnNet")


def test_own_image_tensors_train_on_the_image_task():
    from regimen.data import load_digits

    digits = load_digits("train")
    recipe = {"model": {"name": "mlp", "options": {"hidden": [32]}}, "train": {"epochs": 2, "batch_size": 64}}
    result = fit(recipe, data=(digits.images, digits.labels))
    assert result.summary["final_val_acc"] > 0.8 and "final_test_acc" in result.summary
    assert result.summary["primary_metric"] == "val_acc"  # no test split given: validation is what counts


def test_tabular_task_reads_scikit_learn_sets():
    result = fit({"task": "classification", "data": {"name": "wine"}, "optim": {"name": "adamw", "lr": 0.01},
                  "model": {"options": {"hidden": [16]}}, "train": {"epochs": 4, "batch_size": 16}})
    assert result.summary["final_test_acc"] > 0.8


def test_unknown_task_and_method_task_mismatch_are_one_line_errors():
    with pytest.raises(RecipeError, match=r"^task: unknown task 'nope'; known tasks: classification, "):
        parse_recipe({"task": "nope"})
    with pytest.raises(RecipeError, match=r"methods\.0 \(_test_images_only\): .*image inputs; task "
                                          r"'classification' has vector inputs"):
        parse_recipe({"task": "classification", "methods": [{"name": "_test_images_only"}]})
    with pytest.raises(RecipeError, match=r"data\.name: task 'classification' reads"):
        parse_recipe({"task": "classification", "data": {"name": "fashion_mnist"}})
    for bad in (0, -3):
        with pytest.raises(RecipeError, match=r"train\.checkpoint_every_steps: Input should be greater than 0"):
            parse_recipe({"train": {"checkpoint_every_steps": bad}})


def test_a_method_refusing_the_model_in_setup_is_a_user_error_naming_it(tiny_recipe):
    with pytest.raises(ConfigurationError, match=r"^method '_test_fails_setup': needs a model with stages$"):
        fit(dict(tiny_recipe, methods=[{"name": "_test_fails_setup"}]))
    assert issubclass(RecipeError, RegimenError) and issubclass(CheckpointError, RegimenError)


def test_checkpoint_of_another_task_is_refused_and_nothing_is_overwritten(tiny_recipe, tmp_path):
    fit(dict(tiny_recipe, train={"epochs": 1, "batch_size": 64}), out_dir=tmp_path)
    log = (tmp_path / "metrics.jsonl").read_text()
    checkpoint = (tmp_path / "checkpoint.pt").read_bytes()
    other = {"task": "classification", "data": {"name": "digits"}, "train": {"epochs": 2}}
    with pytest.raises(CheckpointError, match="checkpoint of task 'image_classification', not of the recipe's task "
                                              "'classification'"):
        fit(other, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    assert (tmp_path / "metrics.jsonl").read_text() == log
    assert (tmp_path / "checkpoint.pt").read_bytes() == checkpoint


def test_v1_context_fields_still_read_with_a_deprecation_warning():
    ctx = Context(nn.Linear(2, 2), num_classes=5, per_device_batch=8, world_size=2)
    with pytest.warns(DeprecationWarning, match="ctx.run.num_classes"):
        assert ctx.num_classes == 5
    assert ctx.run.global_batch == 16
    with pytest.warns(DeprecationWarning):
        ctx.log["old"] = 1.0
    assert ctx.log.drain() == {"old": 1.0}


def test_bad_user_data_is_a_data_error_naming_the_argument():
    from regimen.data import DataError

    x, y = _blobs(64)
    recipe = {"task": "classification", "train": {"epochs": 1, "batch_size": 16}}
    with pytest.raises(DataError, match=r"^data: inputs must be a floating-point tensor, got torch.int64"):
        fit(recipe, model=OwnNet(), data=(x.long(), y))
    with pytest.raises(DataError, match=r"^data\['test'\]: labels must be an int64 tensor"):
        fit(recipe, model=OwnNet(), data={"train": (x, y), "test": (x, y.float())})
    with pytest.raises(DataError, match=r"keys 'train' \(required\), 'val', 'test'; got \['tarin'\]"):
        fit(recipe, model=OwnNet(), data={"tarin": (x, y)})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        fit(recipe, model={"weights": 1}, data=(x, y))


def test_model_options_are_checked_against_the_constructor_while_parsing():
    with pytest.raises(RecipeError, match=r"^model\.options\.widths: unknown option of model 'mlp'; its options are "
                                          r"hidden, head_dropout$"):
        parse_recipe({"model": {"name": "mlp", "options": {"widths": [8]}}})
    with pytest.raises(RecipeError, match=r"model\.options\.num_classes: set by the task from the data"):
        parse_recipe({"model": {"name": "resnet", "options": {"num_classes": 3}}})
    parse_recipe({"model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}}})
