"""The `high_loss_batches` recipe method (Sahayam et al. 2023) and the trainer's `select_batches` hook."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from regimen.batch import HighLossBatchesMethod
from regimen.data import InMemoryLoader, load_data
from regimen.losses import classification_loss
from regimen.method import Method, register_method
from regimen.models import build_model
from regimen.train import fit, load_checkpoint, parse_recipe
from regimen.train.optim import build_optimizer
from regimen.train.schedule import ProgressSchedule
from tests.distributed.launch import ROOT, clean_env, finish, regimen_train, reserved_port, start
from tests.helpers import reference_and_resumed_runs


@register_method
class _SelectPositions(Method):
    """Test helper: returns fixed positions from select_batches."""

    name = "_test_select_positions"

    def __init__(self, positions: list[int] = (0,)) -> None:  # noqa: B006
        self.positions = list(positions)

    def select_batches(self, batches, ctx):
        return self.positions


def recipe_with(tiny_recipe, methods, epochs=3, **train):
    recipe = dict(tiny_recipe, methods=methods)
    recipe["train"] = dict(tiny_recipe["train"], epochs=epochs, **train)
    return recipe


def weights_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def hand_loop(recipe: dict, data, fraction: float, start_epoch: int):
    """An explicit loop written from the method's definition: score every batch (eval, no grad), keep the
    ceil(fraction * n) highest mean losses (ties: earlier batch first), train on them in loader order."""
    cfg = parse_recipe(recipe)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, data.train.input_shape, data.train.num_classes, **cfg.model.options)
    optimizer = build_optimizer(model, cfg.optim)
    schedule = ProgressSchedule(optimizer, cfg.schedule, cfg.train.epochs)
    loader = InMemoryLoader(data.train, cfg.train.batch_size, shuffle=True, drop_last=True, seed=cfg.seed)
    torch.manual_seed(cfg.seed + 1)
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    chosen_per_epoch = []
    for epoch in range(cfg.train.epochs):
        loader.set_epoch(epoch)
        batches = list(loader)
        if epoch >= start_epoch:
            model.eval()
            with torch.no_grad():
                losses = [F.cross_entropy(model((x - mean) / std), y).item() for x, y, _ in batches]
            model.train()
            keep = math.ceil(fraction * len(batches))
            chosen = sorted(sorted(range(len(batches)), key=lambda i: (-losses[i], i))[:keep])
        else:
            chosen = list(range(len(batches)))
        chosen_per_epoch.append(chosen)
        for step, position in enumerate(chosen):
            schedule.update((epoch + (step + 1) / len(chosen)) / cfg.train.epochs)
            x, y, _ = batches[position]
            loss = classification_loss(model((x - mean) / std), y, cfg.train.label_smoothing)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return model, chosen_per_epoch


@pytest.mark.parametrize("fraction, start_epoch", [(0.5, 1), (0.3, 0)])
def test_trainer_trains_exactly_on_the_hand_selected_batches(tiny_recipe, fraction, start_epoch):
    recipe = recipe_with(tiny_recipe, [{"name": "high_loss_batches", "fraction": fraction,
                                        "start_epoch": start_epoch}])
    data = load_data("digits", val_fraction=0.1, seed=0)
    result = fit(recipe, data=data)
    reference, chosen = hand_loop(recipe, data, fraction, start_epoch)
    n = len(data.train) // recipe["train"]["batch_size"]
    assert [len(c) for c in chosen] == [n if e < start_epoch else math.ceil(fraction * n) for e in range(3)]
    assert result.summary["steps"] == sum(len(c) for c in chosen)
    for (name, p), q in zip(result.model.named_parameters(), reference.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), name
    kept = [h["high_loss_batches/kept_fraction"] for h in result.history]
    assert kept == [1.0 if e < start_epoch else len(chosen[e]) / n for e in range(3)]


def test_fraction_one_is_identical_to_no_method(tiny_recipe):
    plain = fit(recipe_with(tiny_recipe, []))
    selected = fit(recipe_with(tiny_recipe, [{"name": "high_loss_batches", "fraction": 1.0, "start_epoch": 0}]))
    assert weights_equal(plain.model, selected.model)
    assert [h["train_loss"] for h in plain.history] == [h["train_loss"] for h in selected.history]


def test_scoring_has_no_side_effects_when_every_batch_is_kept(tiny_recipe):
    """min_batches above the batch count keeps everything after a real scoring pass: training is unchanged, so
    scoring touched neither the weights, nor BN statistics, nor any random stream (dropout in the head)."""
    base = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [16], "head_dropout": 0.3}})
    plain = fit(recipe_with(base, []))
    scored = fit(recipe_with(base, [{"name": "high_loss_batches", "fraction": 0.1, "min_batches": 10_000,
                                     "start_epoch": 0}]))
    assert weights_equal(plain.model, scored.model)
    assert all(h["high_loss_batches/kept_fraction"] == 1.0 for h in scored.history)
    assert all("high_loss_batches/loss_all" in h for h in scored.history)


def test_schedule_spans_the_epochs_whatever_fraction_is_kept(tiny_recipe):
    recipe = recipe_with(tiny_recipe, [{"name": "high_loss_batches", "fraction": 0.25, "start_epoch": 0}])
    recipe["schedule"] = {"name": "cosine", "warmup_epochs": 0.0, "min_lr_ratio": 0.0}
    history = fit(recipe).history
    assert history[-1]["lr_factor"] == pytest.approx(0.0, abs=1e-12)  # the cosine reached its end at the last step
    assert history[0]["lr_factor"] == pytest.approx((1 + math.cos(math.pi / 3)) / 2)  # progress 1/3 after epoch 1


def test_accumulation_keeps_whole_optimizer_steps(tiny_recipe):
    recipe = recipe_with(tiny_recipe, [{"name": "high_loss_batches", "fraction": 0.5, "start_epoch": 0}],
                         epochs=1, batch_size=16, accumulation=2)
    result = fit(recipe)
    micro = len(load_data("digits", val_fraction=0.1, seed=0).train) // 16
    assert result.summary["steps"] == math.ceil(0.5 * (micro // 2))


def test_resumed_run_is_bitwise_identical(tiny_recipe, tmp_path):
    base = dict(tiny_recipe, model={"name": "mlp", "options": {"hidden": [16], "head_dropout": 0.3}})
    recipe = recipe_with(base, [{"name": "high_loss_batches", "fraction": 0.5},
                                {"name": "_test_interrupt_once", "epoch": 2}])
    reference, resumed = reference_and_resumed_runs(recipe, tmp_path, interrupted_epoch=2)
    assert weights_equal(reference.model, resumed.model)
    assert resumed.summary["steps"] == reference.summary["steps"]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in reference.history]


@pytest.mark.parametrize("params, argument", [
    ({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"min_batches": 0}, "min_batches"),
    ({"start_epoch": -1}, "start_epoch"),
])
def test_bad_params_name_the_argument(params, argument):
    with pytest.raises(ValueError, match=argument):
        HighLossBatchesMethod(**params)


def test_two_selecting_methods_conflict(tiny_recipe):
    recipe = recipe_with(tiny_recipe, [{"name": "high_loss_batches"}, {"name": "_test_select_positions"}])
    with pytest.raises(ValueError, match="high_loss_batches.*_test_select_positions.*select_batches"):
        fit(recipe)


@pytest.mark.parametrize("positions, message", [
    ([], "no batches"), ([3, 1], "strictly increasing"), ([0, 0], "strictly increasing"), ([10_000], r"\[0, "),
])
def test_trainer_rejects_a_bad_selection(tiny_recipe, positions, message):
    recipe = recipe_with(tiny_recipe, [{"name": "_test_select_positions", "positions": positions}], epochs=1)
    with pytest.raises(ValueError, match=message):
        fit(recipe)


def test_selection_must_keep_whole_accumulation_steps(tiny_recipe):
    recipe = recipe_with(tiny_recipe, [{"name": "_test_select_positions", "positions": [0, 1, 2]}], epochs=1,
                         batch_size=16, accumulation=2)
    with pytest.raises(ValueError, match="multiple of train.accumulation=2"):
        fit(recipe)


@pytest.mark.slow
def test_two_processes_select_and_train_like_one_process(tmp_path):
    """Each rank scores its half of every global batch; the all-reduced losses give both ranks the selection one
    process makes at the same global batch, and the same weights."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text((ROOT / "recipes/smoke.toml").read_text() + '\n[[methods]]\nname = "high_loss_batches"\n'
                      'fraction = 0.5\nstart_epoch = 0\n')

    def train(out, *extra):  # a reserved rendezvous port, a timeout that kills both ranks with a message
        regimen_train(out, "--recipe", str(recipe), "--set", "train.epochs=2", *extra)
        return load_checkpoint(out / "checkpoint.pt")

    single = train(tmp_path / "one", "--set", "train.batch_size=32")
    double = train(tmp_path / "two", "--set", "train.batch_size=16", "--devices", "2")
    assert double["step"] == single["step"]
    assert [h["high_loss_batches/loss_kept"] for h in double["history"]] == pytest.approx(
        [h["high_loss_batches/loss_kept"] for h in single["history"]], rel=1e-6)
    for key, value in single["model"].items():
        assert torch.allclose(value, double["model"][key], atol=1e-6), key


_DISAGREEING_SCRIPT = """
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from regimen.method import Method, register_method
from regimen.train import fit


@register_method
class RankDependent(Method):
    name = "_test_rank_dependent"

    def select_batches(self, batches, ctx):
        return [ctx.rank]  # a different batch on every rank: a bug the trainer must report, not deadlock on


recipe = tomllib.loads(open(sys.argv[1]).read())
recipe["methods"] = [{"name": "_test_rank_dependent"}]
recipe["train"].update(epochs=1, batch_size=16, devices=2)
try:
    fit(recipe)
except RuntimeError as error:
    print("ERROR:", error)
    sys.exit(3)
"""


@pytest.mark.slow
def test_ranks_that_select_different_batches_get_a_clear_error(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(_DISAGREEING_SCRIPT)
    with reserved_port() as port:
        process = start([sys.executable, str(script), str(ROOT / "recipes/smoke.toml")], clean_env(port))
        with pytest.raises(pytest.fail.Exception, match="exit code") as failed:
            finish(process, what="two ranks selecting different batches")
    assert "selected different batches on different ranks" in str(failed.value)
