import json
import math

import pytest
import torch

from regimen.method import Context, Method, register_method
from regimen.train import CheckpointError, fit, load_checkpoint, parse_recipe
from regimen.train.builtin import ema_update
from regimen.train.checkpoint import save_checkpoint
from regimen.train.optim import param_groups
from regimen.train.schedule import schedule_factor
from tests.helpers import reference_and_resumed_runs


@register_method
class RecordHooks(Method):
    """Test helper: records the hook calls it sees."""

    name = "_test_record_hooks"
    calls: list[str] = []

    def __init__(self, tag: str = "a") -> None:
        self.tag = tag

    def setup(self, ctx):
        RecordHooks.calls.append(f"setup:{self.tag}")

    def after_step(self, ctx):
        if ctx.step == 1:
            RecordHooks.calls.append(f"after_step:{self.tag}")


def test_fit_learns_digits_and_writes_metrics(tiny_recipe, tmp_path):
    result = fit(tiny_recipe, out_dir=tmp_path)
    assert result.summary["final_test_acc"] > 0.8  # 10 classes: chance is 0.1
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert {"train_loss", "val_acc", "test_acc", "lr", "samples_per_s"} <= set(lines[0])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["best_test_acc"] >= summary["final_test_acc"] - 1e-12 and summary["peak_memory_mb"] > 0


def test_same_seed_gives_same_weights(tiny_recipe):
    a, b = fit(tiny_recipe).model, fit(tiny_recipe).model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_interrupted_run_resumed_from_checkpoint_is_bitwise_identical(tiny_recipe, tmp_path):
    recipe = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [16], "head_dropout": 0.3}})
    recipe["train"] = dict(recipe["train"], epochs=3)
    recipe["methods"] = [{"name": "ema", "decay": 0.9}, {"name": "_test_interrupt_once", "epoch": 2}]
    reference, resumed = reference_and_resumed_runs(recipe, tmp_path, interrupted_epoch=2)
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.summary["final_test_acc"] == reference.summary["final_test_acc"]  # EMA state resumed too
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]


def test_gradient_accumulation_matches_the_large_batch(tiny_recipe):
    big = dict(tiny_recipe, train={"epochs": 1, "batch_size": 64})
    accumulated = dict(tiny_recipe, train={"epochs": 1, "batch_size": 32, "accumulation": 2})
    a, b = fit(big).model, fit(accumulated).model
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_methods_run_in_recipe_order_and_after_hooks_in_reverse(tiny_recipe):
    RecordHooks.calls = []
    recipe = dict(tiny_recipe, methods=[{"name": "_test_record_hooks", "tag": "a"},
                                        {"name": "_test_record_hooks", "tag": "b"}])
    recipe["train"] = dict(recipe["train"], epochs=1, max_steps_per_epoch=2)
    fit(recipe)
    assert RecordHooks.calls == ["setup:a", "setup:b", "after_step:b", "after_step:a"]


def test_resume_into_another_model_is_a_clear_error(tiny_recipe, tmp_path):
    fit(dict(tiny_recipe, train={"epochs": 1, "batch_size": 64}), out_dir=tmp_path / "a")
    other = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [8]}})
    with pytest.raises(CheckpointError, match="different model"):
        fit(other, out_dir=tmp_path / "a", resume=tmp_path / "a" / "checkpoint.pt")


def test_out_dir_with_a_run_is_not_overwritten(tiny_recipe, tmp_path):
    fit(dict(tiny_recipe, train={"epochs": 1, "batch_size": 64}), out_dir=tmp_path)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(ValueError, match="already holds a run"):
        fit(tiny_recipe, out_dir=tmp_path)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"format": "regimen-checkpoint-v1", "x": torch.ones(2)}, path)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"format": "regimen-checkpoint-v1", "x": torch.zeros(2)}, path)
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_foreign_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"a": 1}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a regimen checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def test_weight_decay_excludes_norm_and_bias():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(2, 2))
    decay, no_decay = param_groups(model, 0.1)
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4


def test_schedule_factors_follow_their_formulas():
    recipe = parse_recipe({"schedule": {"name": "cosine", "warmup_epochs": 1.0, "min_lr_ratio": 0.1}})
    assert schedule_factor(recipe.schedule, 0.05, 10) == pytest.approx(0.5)  # half of the warmup epoch
    # linear from the very start: 1 % of the warm-up is 1 % of the LR; only progress 0 is floored (at 1e-3)
    assert schedule_factor(recipe.schedule, 0.001, 10) == pytest.approx(0.01)
    assert schedule_factor(recipe.schedule, 0.0, 10) == pytest.approx(1e-3)
    q = (0.55 - 0.1) / 0.9
    assert schedule_factor(recipe.schedule, 0.55, 10) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * q)) / 2)
    step = parse_recipe({"schedule": {"name": "step", "milestones": [0.5, 0.75], "gamma": 0.1}}).schedule
    assert [schedule_factor(step, p, 10) for p in (0.4, 0.5, 0.8)] == pytest.approx([1.0, 0.1, 0.01])
    onecycle = parse_recipe({"schedule": {"name": "onecycle", "pct_start": 0.3}}).schedule
    assert schedule_factor(onecycle, 0.0, 10) == pytest.approx(1 / 25)
    assert schedule_factor(onecycle, 0.3, 10) == pytest.approx(1.0)


def test_train_loss_is_the_sample_weighted_mean_of_the_epochs_micro_batch_losses(tiny_recipe):
    """One optimizer step of two micro-batches: both losses are taken at the initial weights, so the logged
    train_loss is their mean, computed here by hand from the seed, the loader and the normalisation."""
    from regimen.data import InMemoryLoader, load_data
    from regimen.losses import classification_loss
    from regimen.models import build_model

    recipe = dict(tiny_recipe, train={"epochs": 1, "batch_size": 16, "accumulation": 2, "max_steps_per_epoch": 1})
    data = load_data("digits", val_fraction=0.1, seed=0)
    logged = fit(recipe, data=data).history[0]["train_loss"]
    cfg = parse_recipe(recipe)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.train.input_shape, data.train.num_classes, **cfg.model.options)
    loader = InMemoryLoader(data.train, 16, shuffle=True, drop_last=True, seed=cfg.seed)
    loader.set_epoch(0)
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    batches = iter(loader)
    with torch.no_grad():
        losses = [classification_loss(model((x - mean) / std), y).item() for x, y, _ in (next(batches),
                                                                                     next(batches))]
    assert logged == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_ema_update_matches_its_formula():
    ema, model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [0.9 * e.detach().clone() + 0.1 * p.detach() for e, p in zip(ema.parameters(), model.parameters())]
    ema_update(ema, model, 0.9)
    assert all(torch.allclose(e, x) for e, x in zip(ema.parameters(), expected))


def test_ema_copy_survives_removing_the_models_parametrizations():
    """A deep copy shares torch's per-module parametrization class; the EMA copy must not lose its weights when the
    trained model's parametrizations are removed (N:M sparsity exports that way at the end of training)."""
    from torch.nn.utils import parametrize

    from regimen.train.builtin import ModelEMA

    class Halve(torch.nn.Module):
        def forward(self, weight):
            return weight / 2

    model = torch.nn.Linear(3, 2)
    parametrize.register_parametrization(model, "weight", Halve())
    ema = ModelEMA(model, decay=0.5)
    x = torch.randn(4, 3)
    before = ema(x)
    parametrize.remove_parametrizations(model, "weight", leave_parametrized=True)
    assert torch.equal(ema(x), before) and parametrize.is_parametrized(ema.module)
    ema.update(model)  # parameters still pair up: the copy's original weight with the model's exported weight


def test_ema_listed_before_surgery_averages_the_model_after_surgery():
    """EMA copies the model at the start of training, not in its setup: a method listed after it that replaces
    layers in setup (here weight standardization) is part of the averaged copy that evaluation uses."""
    from regimen.method import get_method
    from regimen.models import build_model

    model = build_model("resnet", (1, 8, 8), 10, widths=[4, 8], depths=[1, 1])
    ctx = Context(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  criterion=torch.nn.functional.cross_entropy, num_classes=10, per_device_batch=8)
    ema, weight_std = get_method("ema")(decay=0.9), get_method("weight_std")()
    ema.setup(ctx)  # recipe order: ema, then weight_std
    weight_std.setup(ctx)
    ema.on_epoch_start(ctx)
    replaced = {type(m) for m in ctx.model.modules()} - {type(m) for m in build_model(
        "resnet", (1, 8, 8), 10, widths=[4, 8], depths=[1, 1]).modules()}
    assert replaced and replaced <= {type(m) for m in ema.ema.module.modules()}


def test_ema_method_evaluates_the_averaged_model(tiny_recipe):
    recipe = dict(tiny_recipe, methods=[{"name": "ema", "decay": 0.99}])
    plain, averaged = fit(tiny_recipe), fit(recipe)
    assert all(torch.equal(p, q) for p, q in zip(plain.model.parameters(), averaged.model.parameters()))
    assert plain.summary["final_test_acc"] != averaged.summary["final_test_acc"]


def test_training_in_rounds_with_stop_epoch_equals_one_run(tiny_recipe, tmp_path):
    recipe = dict(tiny_recipe, train={"epochs": 3, "batch_size": 64})
    reference = fit(recipe)
    first = fit(recipe, out_dir=tmp_path, stop_epoch=1)
    assert first.summary["epochs"] == 1 and load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    resumed = fit(recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    for key, value in reference.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    with pytest.raises(ValueError, match="stop_epoch"):
        fit(recipe, stop_epoch=0)


def test_eval_every_and_test_subset_evaluate_less(tiny_recipe):
    recipe = dict(tiny_recipe, train={"epochs": 3, "batch_size": 64, "eval_every": 2},
                  data={"name": "digits", "test_subset": 100})
    history = fit(recipe).history
    assert ["test_acc" in h for h in history] == [False, True, True]  # every 2nd epoch and the last
    assert all(abs(h["test_acc"] * 100 - round(h["test_acc"] * 100)) < 1e-9 for h in history if "test_acc" in h)


def test_best_of_a_secondary_metric_follows_its_own_direction():
    from regimen.tasks import get_task

    for name, metric, higher in [("image_classification", "acc", True), ("image_classification", "loss", False),
                                 ("metric_learning", "map_at_r", True), ("metric_learning", "compat_recall_at_2", True),
                                 ("flow_matching", "mode_coverage", True), ("flow_matching", "w2_euler_1", False),
                                 ("neural_field", "ssim", True), ("sequence_classification", "ece", False),
                                 ("regression", "mae_few", False), ("node_classification", "acc_low_degree", True)]:
        task = get_task(name).__new__(get_task(name))
        assert task.metric_higher_is_better(metric) is higher, (name, metric)
