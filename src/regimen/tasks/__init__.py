"""Tasks: what a batch is, the default model and loss, and how a model is scored (one file per task).

``recipe.task`` names one; ``image_classification`` is the default. Register your own with :func:`register_task`.
"""

from __future__ import annotations

from regimen.tasks.base import Task, UnknownTaskError
from regimen.tasks.classification import ClassificationTask, classification_criterion
from regimen.tasks.flow_matching import FlowMatchingTask
from regimen.tasks.image_classification import ImageClassificationTask
from regimen.tasks.language_model import LanguageModelTask, lm_cross_entropy
from regimen.tasks.metric_learning import MetricLearningTask, contrastive_loss, retrieval_metrics
from regimen.tasks.neural_field import NeuralFieldTask, field_mse, image_ssim
from regimen.tasks.node_classification import NodeClassificationTask
from regimen.tasks.regression import RegressionTask, regression_loss
from regimen.tasks.sequence_classification import SequenceClassificationTask, expected_calibration_error
from regimen.tasks.wave_surrogate import WaveSurrogateTask

__all__ = [
    "ClassificationTask",
    "FlowMatchingTask",
    "ImageClassificationTask",
    "LanguageModelTask",
    "NodeClassificationTask",
    "NeuralFieldTask",
    "SequenceClassificationTask",
    "Task",
    "UnknownTaskError",
    "WaveSurrogateTask",
    "classification_criterion",
    "expected_calibration_error",
    "field_mse",
    "MetricLearningTask",
    "RegressionTask",
    "contrastive_loss",
    "get_task",
    "image_ssim",
    "incompatibility",
    "list_tasks",
    "lm_cross_entropy",
    "register_task",
    "regression_loss",
    "retrieval_metrics",
]

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register a Task subclass under its ``name``."""
    if not (isinstance(cls, type) and issubclass(cls, Task)) or not cls.name:
        raise TypeError(f"register_task expects a Task subclass with a name, got {cls!r}")
    existing = _TASKS.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"task name {cls.name!r} is taken by {existing.__module__}.{existing.__qualname__}")
    _TASKS[cls.name] = cls
    return cls


def list_tasks() -> dict[str, type[Task]]:
    """Registered tasks by name, sorted."""
    return dict(sorted(_TASKS.items()))


def get_task(name: str) -> type[Task]:
    """The Task class registered under ``name``; an UnknownTaskError listing the known ones otherwise."""
    if name not in _TASKS:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def incompatibility(method_cls, task_cls: type[Task]) -> str | None:
    """``None`` when the method serves the task, else why not (its ``inputs``/``targets`` against the task's
    ``input_kind``/``target_kind``)."""
    inputs, targets = tuple(method_cls.inputs), tuple(method_cls.targets)
    if inputs and task_cls.input_kind not in inputs:
        return (f"method {method_cls.name!r} serves {'/'.join(inputs)} inputs; task {task_cls.name!r} has "
                f"{task_cls.input_kind} inputs")
    if targets and task_cls.target_kind not in targets:
        return (f"method {method_cls.name!r} needs {'/'.join(targets)} targets; task {task_cls.name!r} has "
                f"{task_cls.target_kind} targets")
    return None


register_task(ClassificationTask)
register_task(ImageClassificationTask)
register_task(LanguageModelTask)
register_task(FlowMatchingTask)
register_task(NodeClassificationTask)
register_task(NeuralFieldTask)
register_task(SequenceClassificationTask)
register_task(MetricLearningTask)
register_task(RegressionTask)
register_task(WaveSurrogateTask)
