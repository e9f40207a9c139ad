"""``train.loggers``: CSV and TensorBoard (and MLflow where installed) get every epoch's row of metrics.jsonl through
Lightning's logger classes; a resumed run's CSV holds exactly its epochs; a missing package is refused before
training, naming the extra."""

import csv
import json
import struct

import pytest

from regimen.errors import ConfigurationError
from regimen.train import fit
from regimen.train.recipe import RecipeError, parse_recipe

RECIPE = {"task": "classification", "data": {"name": "digits"}, "model": {"name": "mlp"},
          "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 3, "threads": 1}}


def _recipe(loggers):
    return {**RECIPE, "train": {**RECIPE["train"], "loggers": loggers}}


def _jsonl(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _csv_rows(path):
    with open(path / "csv" / "metrics.csv", newline="") as file:
        return [row for row in csv.DictReader(file) if row.get("train_loss")]


def _tensorboard_scalars(folder):
    """(tag, step, value) of every scalar in the TFRecord event files (length, crc, Event proto, crc)."""
    from tensorboardX.proto import event_pb2

    scalars = []
    for path in sorted(folder.glob("events.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            scalars += [(v.tag, event.step, v.simple_value) for v in event.summary.value if v.HasField("simple_value")]
    return scalars


def test_csv_and_tensorboard_get_every_epoch_row_of_the_jsonl(tmp_path):
    pytest.importorskip("tensorboardX")
    fit(_recipe(["csv", "tensorboard"]), out_dir=tmp_path)
    rows, epochs = _csv_rows(tmp_path), _jsonl(tmp_path)
    assert len(rows) == len(epochs) == 2
    for row, epoch in zip(rows, epochs):
        assert int(row["step"]) == epoch["step"]
        for key in ("train_loss", "test_acc", "lr", "epoch_time"):
            assert float(row[key]) == pytest.approx(epoch[key], rel=1e-6)
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    losses = [(step, value) for tag, step, value in scalars if tag == "train_loss"]
    assert losses == [(e["step"], pytest.approx(e["train_loss"], rel=1e-6)) for e in epochs]
    assert any(tag == "summary/final_test_acc" for tag, _, _ in scalars)


def test_a_resumed_run_csv_holds_exactly_its_epochs(tmp_path):
    fit(_recipe(["csv"]), out_dir=tmp_path, stop_epoch=1)
    assert len(_csv_rows(tmp_path)) == 1
    fit(_recipe(["csv"]), out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    rows, epochs = _csv_rows(tmp_path), _jsonl(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [e["epoch"] for e in epochs] == [1, 2]


def test_a_missing_package_is_refused_before_training_naming_the_extra(tmp_path, monkeypatch):
    import regimen.train.loggers as loggers

    monkeypatch.setattr(loggers, "_installed", lambda module: False)
    with pytest.raises(ConfigurationError, match=r"tensorboard or tensorboardX.*regimen\[tensorboard\]"):
        fit(_recipe(["tensorboard"]), out_dir=tmp_path)
    with pytest.raises(ConfigurationError, match=r"mlflow.*regimen\[mlflow\]"):
        fit(_recipe(["mlflow"]), out_dir=tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_bad_logger_lists_are_refused():
    with pytest.raises(RecipeError, match="train.loggers"):
        parse_recipe(_recipe(["wandb"]))
    with pytest.raises(ConfigurationError, match="twice"):
        fit(_recipe(["csv", "csv"]), out_dir="/nonexistent/never-written")
    with pytest.raises(ConfigurationError, match="--out"):
        fit(_recipe(["csv"]))


def test_mlflow_gets_the_epochs_and_the_run_id_is_kept(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("lightning")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # regimen sets it for the run folder's store
    fit(_recipe(["mlflow"]), out_dir=tmp_path)
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["train_loss"], rel=1e-6))
                                                      for e in _jsonl(tmp_path)]
