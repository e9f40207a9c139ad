"""The task protocol: what a batch is and how a model is scored. The trainer owns the loop; a task owns the data,
the default model, the default loss and the metrics (as Composer's ``ComposerModel`` and Lightning's
``LightningModule`` own loss and metrics).

A task class declares:

* ``name`` (the recipe's ``task``), ``input_kind`` and ``target_kind`` (what methods' ``inputs``/``targets`` are
  checked against);
* ``metrics`` (evaluation metrics, e.g. ``("loss", "acc")``), ``primary_metric`` and ``higher_is_better`` (what
  ``best``, ``train.target`` and time-to-target use), ``train_metrics`` (measured on the training batches);
* ``data_names`` (the recipe's ``data.name`` values it loads) and ``model_names`` (its ``model.name`` values).

and implements ``load_data``, ``adopt_data`` (a user's own data), ``build_model``, ``loss``, ``eval_sums`` and
``train_sums``; ``normalizer`` and ``evaluate`` have defaults.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from regimen.data import DataSplits, InMemoryLoader
from regimen.errors import ConfigurationError

__all__ = ["Task", "UnknownTaskError"]


class UnknownTaskError(ConfigurationError):
    """A recipe or command names a task that is not registered."""


class Task:
    """Base class of tasks. One instance per run, built from the recipe (``Task(recipe)``)."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = ""
    target_kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("loss",)
    primary_metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    #: The other ``metrics`` for which higher is better (``best_*`` in the summary is their maximum).
    higher_is_better_metrics: ClassVar[tuple[str, ...]] = ()
    train_metrics: ClassVar[tuple[str, ...]] = ()
    data_names: ClassVar[tuple[str, ...]] = ()
    model_names: ClassVar[tuple[str, ...]] = ()
    default_model: ClassVar[str] = ""
    #: Keys of ``data.options`` the task reads (empty: it takes none).
    data_option_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, recipe: Any) -> None:
        self.recipe = recipe

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring: shown by ``regimen info`` and ``regimen methods --task``."""
        doc = inspect.getdoc(cls) or ""
        return doc.splitlines()[0] if doc else ""

    # -------------------------------------------------------------------------------------------- recipe checks
    def typed_data_options(self, spec: dict[str, type]) -> dict[str, Any]:
        """The recipe's ``data.options``, every key one of ``spec`` and every value of its type (a bool is never a
        number; an int is accepted for a float); a one-line ConfigurationError naming the key otherwise."""
        options = dict(getattr(self.recipe.data, "options", {}) or {})
        for key, value in options.items():
            if key not in spec:
                raise ConfigurationError(f"data.options.{key}: unknown option of task {self.name!r}; its options are "
                                         f"{', '.join(spec)}")
            kind = spec[key]
            allowed = (int, float) if kind is float else (kind,)
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise ConfigurationError(f"data.options.{key}: expected {kind.__name__}, got {value!r}")
        return options

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        """Raise ConfigurationError naming the recipe key that this task cannot use."""
        recipe = self.recipe
        if not user_data and self.data_names and recipe.data.name not in self.data_names:
            raise ConfigurationError(f"data.name: task {self.name!r} reads {', '.join(map(repr, self.data_names))}, "
                                     f"got {recipe.data.name!r}")
        if getattr(recipe.data, "options", None) and not self.data_option_names:
            raise ConfigurationError(f"data.options: task {self.name!r} takes no data options, got "
                                     f"{', '.join(recipe.data.options)}")
        model_name = recipe.model.name or self.default_model
        if not user_model and self.model_names and model_name not in self.model_names:
            raise ConfigurationError(f"model.name: task {self.name!r} builds "
                                     f"{', '.join(map(repr, self.model_names))}, got {model_name!r}")
        if not user_model:
            self._check_model_options(model_name, recipe.model.options)

    def model_class(self, name: str) -> type | None:
        """The class ``model.name`` builds (its constructor checks ``model.options``), if the task says."""
        return None

    #: Constructor arguments the task fills itself (from the data), not ``model.options``.
    data_arguments: ClassVar[tuple[str, ...]] = ("in_channels", "in_features", "num_classes")

    def _check_model_options(self, name: str, options: dict[str, Any]) -> None:
        cls = self.model_class(name)
        if cls is None:
            return
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return
        known = [p for p in parameters if p != "self" and p not in self.data_arguments]
        for key in options:
            if key in self.data_arguments:
                raise ConfigurationError(f"model.options.{key}: set by the task from the data; remove it")
            if key not in known:
                raise ConfigurationError(f"model.options.{key}: unknown option of model {name!r}; its options are "
                                         f"{', '.join(known)}")

    # ------------------------------------------------------------------------------------------ what subclasses do
    def load_data(self) -> DataSplits:
        """The splits the recipe's ``[data]`` table names."""
        raise NotImplementedError

    def adopt_data(self, data: Any) -> DataSplits:
        """A user's own data (``fit(data=...)``) as splits."""
        raise NotImplementedError

    def build_model(self, data: DataSplits) -> nn.Module:
        """The recipe's ``[model]`` for this data."""
        raise NotImplementedError

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        """What identifies the recipe's model in a checkpoint (a resume into another model is refused)."""
        model = self.recipe.model
        return {"name": model.name or self.default_model, "input_shape": list(data.train.input_shape),
                "options": dict(model.options)}

    def train_loader(self, dataset: Any, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> Any:
        """The training loader: shuffled fixed-size batches (:class:`regimen.data.InMemoryLoader`) unless the
        task batches otherwise (e.g. the language model's length buckets and token budgets)."""
        return InMemoryLoader(dataset, batch_size, shuffle=True, drop_last=True, seed=seed, rank=rank,
                              world_size=world_size, device=device)

    def loss(self) -> Callable[..., torch.Tensor]:
        """The base criterion ``loss(output, target, reduction="mean")`` that criterion methods wrap."""
        raise NotImplementedError

    def run_facts(self, data: DataSplits) -> dict[str, Any]:
        """Task facts for ``ctx.run`` (``num_classes``, ``label_smoothing``, ``data_mean``, ``data_std``)."""
        return {}

    def normalizer(self, data: DataSplits, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The input normalisation applied after ``transform_batch`` (identity by default)."""
        return _identity

    def train_sums(self, output: Any, target: Any) -> list[float]:
        """Sums over a training batch of the ``train_metrics`` (divided by the sample count by the trainer)."""
        return []

    def eval_sums(self, output: Any, target: Any) -> torch.Tensor:
        """Sums over an evaluation batch of each of ``metrics`` (float64 tensor, one entry per metric)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """``metrics`` of ``model`` on ``dataset`` (sharded over ranks, summed, divided by the sample count)."""
        was_training = model.training
        model.eval()
        loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                                world_size=world_size, device=device)
        totals = torch.zeros(len(self.metrics) + 1, dtype=torch.float64, device=device)
        for x, y, _ in loader:
            if len(y) == 0:
                continue
            totals[:-1] += self.eval_sums(model(normalize(x)), y).to(device)
            totals[-1] += len(y)
        if all_reduce is not None:
            totals = all_reduce(totals, "sum")
        model.train(was_training)
        count = max(totals[-1].item(), 1.0)
        return {name: totals[i].item() / count for i, name in enumerate(self.metrics)}

    def metric_higher_is_better(self, metric: str) -> bool:
        """Whether a higher value of ``metric`` (one of ``metrics``, or ``compat_<metric>``) is better."""
        metric = metric.removeprefix("compat_")
        if metric == self.primary_metric:
            return self.higher_is_better
        return metric in self.higher_is_better_metrics

    def better(self, a: float, b: float) -> bool:
        """Whether primary-metric value ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def reached(self, value: float, target: float) -> bool:
        """Whether ``value`` of the primary metric meets ``train.target``."""
        return value >= target if self.higher_is_better else value <= target


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x
