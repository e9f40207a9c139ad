"""Population based training: checkpoint retargeting, round splitting, bad input, and a 2-trial Ray PBT run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from regimen.train import fit, load_checkpoint, parse_recipe, save_checkpoint
from regimen.tune import Mutation, objective, parse_mutation, retarget_checkpoint, run_population
from regimen.tune.pbt import _train_round

TINY = {
    "name": "tiny", "seed": 0,
    "data": {"name": "digits", "val_fraction": 0.2},
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine"},
    "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "eval_batch_size": 512},
}


@pytest.fixture(scope="module")
def data():
    from regimen.data import load_data

    return load_data("digits", None, 0.2, None, 0)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_rounds_resume_into_the_same_run_as_one_uninterrupted_fit(tmp_path, data):
    straight = fit(parse_recipe(TINY), out_dir=tmp_path / "straight", data=data)
    _train_round(TINY, tmp_path / "rounds", None, 1, data)
    assert [r["epoch"] for r in _records(tmp_path / "rounds")] == [1]
    _train_round(TINY, tmp_path / "rounds", tmp_path / "rounds" / "checkpoint.pt", 2, data)
    rounds = load_checkpoint(tmp_path / "rounds" / "checkpoint.pt")
    # the cosine schedule spans both rounds: same LRs and bitwise-equal weights as the uninterrupted run
    assert [r["lr"] for r in _records(tmp_path / "rounds")] == [r["lr"] for r in straight.history]
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, rounds["model"][key]), key


def test_clone_continues_with_the_mutated_lr_and_weight_decay_not_the_donors(tmp_path, data):
    raw = copy.deepcopy(TINY)
    raw["schedule"] = {"name": "constant"}
    _train_round(raw, tmp_path / "donor", None, 1, data)
    donor = load_checkpoint(tmp_path / "donor" / "checkpoint.pt")
    mutated = copy.deepcopy(raw)
    mutated["optim"].update(lr=0.01, weight_decay=3e-4)
    recipe = parse_recipe(mutated)

    # the pitfall: resuming the donor state as-is brings the donor's LR back
    save_checkpoint(donor, tmp_path / "as_is.pt")
    _train_round(mutated, tmp_path / "as_is", tmp_path / "as_is.pt", 2, data)
    assert _records(tmp_path / "as_is")[-1]["lr"] == pytest.approx(0.05)

    state = retarget_checkpoint(donor, recipe)
    groups = state["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.01])
    assert [g["weight_decay"] for g in groups] == [3e-4, 0.0]  # norm/bias group keeps no decay
    assert donor["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05)  # input untouched
    for key, value in donor["model"].items():  # the clone starts from the donor's weights
        assert torch.equal(state["model"][key], value)
    save_checkpoint(state, tmp_path / "clone.pt")
    _train_round(mutated, tmp_path / "clone", tmp_path / "clone.pt", 2, data)
    record = _records(tmp_path / "clone")[-1]
    assert record["epoch"] == 2 and record["lr"] == pytest.approx(0.01)


def test_mutations_parse_and_bad_input_is_rejected():
    m = parse_mutation("optim.lr=loguniform:0.001:0.1")
    assert (m.key, m.kind, m.low, m.high) == ("optim.lr", "loguniform", 0.001, 0.1)
    assert parse_mutation("methods.0.alpha=choice:0.2, 1.0").values == (0.2, 1.0)
    with pytest.raises(ValueError, match="not mutable"):
        Mutation("model.options.hidden", "choice", values=([8], [16]))
    with pytest.raises(ValueError, match="low < high"):
        parse_mutation("optim.lr=uniform:0.5:0.1")
    with pytest.raises(ValueError, match="key=kind"):
        parse_mutation("optim.lr")
    with pytest.raises(ValueError, match="population"):
        run_population(TINY, population=1)
    with pytest.raises(ValueError, match="interval"):
        run_population(TINY, population=2, interval=0)
    with pytest.raises(TypeError, match="Recipe"):
        retarget_checkpoint({}, TINY)  # type: ignore[arg-type]
    no_validation = copy.deepcopy(TINY)
    no_validation["data"]["val_fraction"] = 0.0
    with pytest.raises(ValueError, match="val_fraction"):
        run_population(no_validation, population=2)


def test_the_population_is_selected_on_the_tasks_primary_metric_on_validation():
    assert objective(parse_recipe(TINY)) == ("val_acc", "max")
    tabular = parse_recipe(dict(TINY, task="classification", data={"name": "wine", "val_fraction": 0.2}))
    assert objective(tabular) == ("val_acc", "max")


def test_trial_data_is_what_the_task_loads(data):
    from regimen.tune.pbt import _load_data

    loaded = _load_data(parse_recipe(TINY))
    assert torch.equal(loaded.train.labels, data.train.labels) and loaded is _load_data(parse_recipe(TINY))
    wine = _load_data(parse_recipe(dict(TINY, task="classification", data={"name": "wine", "val_fraction": 0.2})))
    assert wine.train.inputs.dim() == 2 and len(wine.val) > 0


@pytest.mark.slow
def test_pbt_clone_starts_from_donor_weights_with_the_mutated_config(tmp_path):
    pytest.importorskip("ray")
    raw = copy.deepcopy(TINY)
    raw["schedule"] = {"name": "constant"}
    raw["train"]["epochs"] = 3
    result = run_population(
        raw, population=2, mutations=[Mutation("optim.lr", "loguniform", 1e-4, 0.3)], out_dir=tmp_path,
        interval=1, quantile_fraction=0.5, resample_probability=0.0, cpus=2, seed=1,
    )
    assert len(result.trials) == 2
    events = [json.loads(line) for path in Path(result.experiment_dir).rglob("pbt_events.jsonl")
              for line in path.read_text().splitlines()]
    # synchronous PBT pauses trials, so a trial also restores its own checkpoint; exploits copy the other trial
    exploits = [e for e in events if e["donor"] != e["trial"]]
    assert exploits, "with 2 trials and quantile 0.5 the worse trial must exploit the better one"
    for event in events:
        assert event["restored_digest"] == pytest.approx(event["donor_digest"], rel=1e-12)
        # the optimizer state was restored and then given the clone's (mutated) LR
        assert event["optimizer_lrs"] == pytest.approx([event["config"]["optim.lr"]] * 2)
    assert Path(result.best_checkpoint).is_file()


def test_cli_tune_rejects_a_population_below_two(tmp_path, capsys):
    from regimen.cli import main

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[data]\nname = "digits"\n[model]\nname = "mlp"\n')
    assert main(["tune", "--recipe", str(recipe), "--population", "1"]) == 1
    assert "population must be an int >= 2" in capsys.readouterr().err
