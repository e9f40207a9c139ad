"""``train.loggers``: the run's metrics, beside ``metrics.jsonl``, in the formats dashboards read, through Lightning's
logger classes.

=================  =================================================  ================================================
name               writes                                             needs
=================  =================================================  ================================================
``"csv"``          ``OUT/csv/metrics.csv``                            nothing (Lightning Fabric's ``CSVLogger``)
``"tensorboard"``  ``OUT/tensorboard/events.*``                       ``tensorboard`` or ``tensorboardX``
                                                                      (``pip install 'regimen[tensorboard]'``)
``"mlflow"``       a run in ``$MLFLOW_TRACKING_URI``, else            ``mlflow`` and ``lightning``
                   ``OUT/mlruns`` (experiment = the recipe's name)    (``pip install 'regimen[mlflow]'``)
=================  =================================================  ================================================

Every epoch's row (what ``metrics.jsonl`` gets: losses, metrics, LR, times, the methods' ``ctx.log`` values) is
logged at the run's optimizer step; the recipe is logged as hyperparameters (flattened keys ``train/batch_size``;
TensorBoard and MLflow — the CSV folder has ``OUT/recipe.json`` beside it); the summary's final and best metrics at the
end. Rank 0 only. A logger whose package is missing is refused before training, naming the extra. On
resume, the CSV file is written again from the checkpoint's history (so it holds exactly the epochs the run has, like
``metrics.jsonl``), TensorBoard gets only the epochs trained after the checkpoint (a second event file), and MLflow
continues the same run (its id is kept in ``OUT/mlflow_run_id``). Without ``MLFLOW_TRACKING_URI`` the MLflow run goes
to a file store in the run folder (``mlflow ui --backend-store-uri OUT/mlruns``; MLflow 3 needs
``MLFLOW_ALLOW_FILE_STORE=true`` for it, which regimen sets when it chose that store).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regimen.errors import ConfigurationError

__all__ = ["LOGGER_NAMES", "RunLoggers", "check_loggers"]

LOGGER_NAMES = ("csv", "tensorboard", "mlflow")

_NEEDS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard or tensorboardX", "tensorboard"),
    "mlflow": (("mlflow",), "mlflow", "mlflow"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_loggers(names: Sequence[str], out_dir: Path | None) -> None:
    """Refuse unknown names, repeats, a missing package (naming the extra to install) and loggers without ``--out``."""
    for name in names:
        if name not in LOGGER_NAMES:
            raise ConfigurationError(f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGER_NAMES)}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"train.loggers: {list(names)} names a logger twice")
    for name in names:
        if name in _NEEDS:
            modules, what, extra = _NEEDS[name]
            if not any(_installed(m) for m in modules):
                raise ConfigurationError(f"train.loggers: {name!r} needs {what}, which is not installed: pip install "
                                         f"'regimen[{extra}]'")
            if name == "mlflow" and not _installed("lightning"):
                raise ConfigurationError("train.loggers: 'mlflow' uses Lightning's MLFlowLogger, which needs the "
                                         "lightning package: pip install 'regimen[mlflow]'")
    if names and out_dir is None:
        raise ConfigurationError(f"train.loggers = {list(names)} write into the run folder: pass an output folder "
                                 "(--out / fit(out_dir=...))")


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}/{key}" if prefix else str(key), item, out)
    elif isinstance(value, list | tuple):
        out[prefix] = str(list(value))
    else:
        out[prefix] = value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in record.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


class RunLoggers:
    """The recipe's loggers for one run (rank 0): ``log_epoch(record)`` after each epoch, ``finish(summary, status)``
    once."""

    def __init__(self, names: Sequence[str], out_dir: Path, recipe: Any, history: list[dict[str, Any]],
                 resumed: bool) -> None:
        check_loggers(names, out_dir)
        self.loggers: list[Any] = []
        self.finished = False
        hyperparameters: dict[str, Any] = {}
        _flat("", recipe.model_dump(), hyperparameters)
        for name in names:
            logger = self._make(name, Path(out_dir), recipe, resumed)
            if name != "csv" and not (resumed and name == "mlflow"):
                logger.log_hyperparams(hyperparameters)
            if resumed and name == "csv":  # the file was removed by the logger: write the checkpoint's epochs again
                for record in history:
                    logger.log_metrics(_numbers(record), step=int(record.get("step", 0)))
            self.loggers.append(logger)

    @staticmethod
    def _make(name: str, out_dir: Path, recipe: Any, resumed: bool) -> Any:
        if name == "csv":
            from lightning_fabric.loggers import CSVLogger

            if resumed:  # written again from the checkpoint's history (Lightning would remove it with a warning)
                (out_dir / "csv" / "metrics.csv").unlink(missing_ok=True)
            return CSVLogger(root_dir=str(out_dir), name="", version="csv", flush_logs_every_n_steps=1)
        if name == "tensorboard":
            from lightning_fabric.loggers import TensorBoardLogger

            return TensorBoardLogger(root_dir=str(out_dir), name="", version="tensorboard", default_hp_metric=False)
        from lightning.pytorch.loggers import MLFlowLogger

        id_file = out_dir / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resumed and id_file.exists() else None
        tracking = os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking:  # the run folder's own store: MLflow 3 keeps file stores behind this switch
            tracking = (out_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        logger = MLFlowLogger(experiment_name=recipe.name, tracking_uri=tracking, run_id=run_id)
        id_file.write_text(str(logger.run_id))
        return logger

    def log_epoch(self, record: dict[str, Any]) -> None:
        values = _numbers(record)
        step = int(record.get("step", 0))
        for logger in self.loggers:
            logger.log_metrics(values, step=step)
            logger.save()

    def finish(self, summary: dict[str, Any] | None, status: str = "success") -> None:
        if self.finished:
            return
        self.finished = True
        if summary is not None:
            final = {f"summary/{key}": value for key, value in _numbers(summary).items()
                     if (key.startswith(("final_", "best_")) or key in ("train_time", "samples_per_s"))
                     and math.isfinite(value)}
            for logger in self.loggers:
                logger.log_metrics(final, step=int(summary.get("steps", 0)))
        for logger in self.loggers:
            logger.finalize(status)
