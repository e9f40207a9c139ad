"""TOML recipes: parse, apply ``--set`` overrides, validate with pydantic into a ``Recipe``.

A recipe never executes code. Unknown keys and wrong types are errors that print the key path
(``train.batch_size: Input should be greater than 0``). Method parameters are validated against the registered
Method's ``__init__`` signature.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from regimen.errors import ConfigurationError
from regimen.method import Method, check_exclusive_hooks, check_method_order, get_method

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["Recipe", "RecipeError", "apply_overrides", "build_methods", "dump_recipe", "load_recipe", "parse_recipe",
           "parse_value", "recipe_task", "toml_value"]


class RecipeError(ConfigurationError):
    """A recipe that cannot be used: the message names the key path and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    name: str = "auto"  # the task says which names it reads

    root: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # held out when the source has no test split of its own
    train_subset: int | None = Field(None, gt=0)
    test_subset: int | None = Field(None, gt=0)
    normalize: bool = True
    options: dict[str, Any] = Field(default_factory=dict)  # task-specific (language_model: seq_len, tokenizer)


class ModelConfig(_Strict):
    name: str | None = None  # None: the task's default model
    options: dict[str, Any] = Field(default_factory=dict)
    # start from trained weights: a regimen checkpoint.pt or a torch.save(model.state_dict()) file, loaded into the
    # freshly built model before the methods' setup (surgery), so a method fine-tunes a model trained by another run
    weights: str | None = None


class OptimConfig(_Strict):
    name: Literal["sgd", "sgdw", "adamw", "lars", "lamb"] = "sgd"  # sgdw: decoupled weight decay (train/optim.py)
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    decay_norm_and_bias: bool = False


class ScheduleConfig(_Strict):
    name: Literal["constant", "cosine", "onecycle", "step"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    milestones: list[float] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0.0)
    pct_start: float = Field(0.3, gt=0.0, lt=1.0)
    extend: Literal["stretch", "continue", "restart"] = "stretch"  # a resume with more train.epochs


class TrainConfig(_Strict):
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int = Field(1000, gt=0)
    accumulation: int = Field(1, gt=0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(None, gt=0.0)
    max_steps_per_epoch: int | None = Field(None, gt=0)
    accelerator: Literal["cpu", "cuda", "gpu", "mps", "auto"] = "cpu"
    devices: int = Field(1, gt=0)  # processes per node
    num_nodes: int = Field(1, gt=0, strict=True)  # machines; every process of every node counts in the global batch
    dist_timeout_s: float = Field(300.0, gt=0.0)  # process-group set-up (rendezvous) and each collective
    strategy: str = "auto"
    precision: str = "32-true"
    compile: bool = False  # torch.compile the model (the first steps pay the compilation)
    channels_last: bool = False  # model and image batches in torch.channels_last (NHWC) memory format
    # beside metrics.jsonl: Lightning's CSV / TensorBoard / MLflow loggers (regimen.train.loggers)
    loggers: list[Literal["csv", "tensorboard", "mlflow"]] = Field(default_factory=list)
    threads: int | None = Field(None, gt=0)
    checkpoint_every: int = Field(1, ge=0)
    checkpoint_every_steps: int | None = Field(None, gt=0)
    eval_every: int = Field(1, gt=0)
    target: float | None = None  # of the task's primary metric (time-to-target)
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)  # deprecated: the v1 name of target

    @model_validator(mode="after")
    def _target_alias(self) -> TrainConfig:
        if self.target_accuracy is not None:
            if self.target is not None and self.target != self.target_accuracy:
                raise ValueError("set train.target only (train.target_accuracy is its deprecated name)")
            warnings.warn("train.target_accuracy is deprecated; use train.target", DeprecationWarning, stacklevel=2)
            self.target, self.target_accuracy = self.target_accuracy, None
        return self


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    task: str = "image_classification"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    methods: list[MethodEntry] = Field(default_factory=list)

    def method_params(self, index: int) -> dict[str, Any]:
        entry = self.methods[index].model_dump()
        entry.pop("name")
        return entry


#: Names users reach for that difflib cannot relate to the recipe's own (``path`` is nothing like ``root``).
_KEY_SYNONYMS = {
    "path": "root", "dir": "root", "directory": "root", "folder": "root", "data_dir": "root", "file": "root",
    "dataset": "name", "learning_rate": "lr", "optimizer": "optim", "optimiser": "optim", "scheduler": "schedule",
    "lr_schedule": "schedule", "method": "methods", "bs": "batch_size", "wd": "weight_decay", "epoch": "epochs",
    "max_epochs": "epochs", "device": "accelerator",
}


def _table_model(model: type[BaseModel] | None, loc: tuple) -> type[BaseModel] | None:
    """The pydantic model of the table that holds ``loc``'s last key (``("data", "path")`` -> ``DataConfig``): the
    field annotations are followed through ``X | None`` and ``list[X]`` (list indices are skipped)."""
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_key_hint(key: str, valid: list[str]) -> str:
    """``; did you mean root? valid keys: name, root, ...`` for an unknown ``key`` among ``valid`` ('' if none)."""
    if not valid:
        return ""
    guess = _KEY_SYNONYMS.get(key.lower())
    if guess not in valid:
        close = difflib.get_close_matches(key.lower(), valid, n=1, cutoff=0.6)
        guess = close[0] if close else None
    mean = f"; did you mean {guess}?" if guess else ""
    return f"{mean} valid keys: {', '.join(valid)}" if mean else f"; valid keys: {', '.join(valid)}"


def _format_validation_error(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line naming each problem's key path; an unknown key gets the nearest valid key and the table's keys
    (``model`` is the validated model, whose fields are the valid keys)."""
    problems = []
    for item in error.errors():
        path = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            table = _table_model(model, item["loc"])
            valid = list(table.model_fields) if table is not None else []
            message = "unknown key" + _unknown_key_hint(str(item["loc"][-1]), valid)
        problems.append(f"{path or '(recipe)'}: {message}")
    return "; ".join(problems)


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (numbers, booleans, arrays, quoted strings); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (booleans, numbers, strings, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def dump_recipe(raw: dict[str, Any]) -> str:
    """A recipe dict (as ``read_recipe_file`` returns it) as TOML text that reads back to the same dict: scalars
    first, then one ``[table]`` per section, then one ``[[methods]]`` block per method."""
    lines = [f"{key} = {toml_value(value)}" for key, value in raw.items()
             if not isinstance(value, dict) and key != "methods"]
    for key, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"[{key}]", *(f"{k} = {toml_value(v)}" for k, v in value.items())]
    for entry in raw.get("methods", []):
        lines += ["", "[[methods]]", *(f"{k} = {toml_value(v)}" for k, v in entry.items())]
    return "\n".join(lines) + "\n"


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.path=value`` overrides applied (list items by index: ``methods.0.p=1``)."""
    result = copy.deepcopy(raw)
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set expects key.path=value, got {override!r}")
        parts = key.strip().split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(f"--set {key}: {where} is not an index of a list of {len(node)}")
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise RecipeError(f"--set {key}: {where} is a value, not a table")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError(f"--set {key}: {last} is not an index of a list of {len(node)}")
            node[int(last)] = parse_value(value)
        else:
            node[last] = parse_value(value)
    return result


def _validate_method_params(cls: type[Method], params: dict[str, Any], where: str) -> dict[str, Any]:
    fields = {name: (annotation, ... if default is inspect.Parameter.empty else default)
              for name, annotation, default in cls.parameters()}
    model = create_model(  # type: ignore[call-overload]
        f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields
    )
    try:
        validated = model(**params)
    except ValidationError as error:
        raise RecipeError(_format_validation_error(error, where, model)) from None
    return {name: getattr(validated, name) for name in fields}


def recipe_task(recipe: Recipe):
    """The Task class the recipe names (a RecipeError at ``task`` otherwise)."""
    from regimen.tasks import UnknownTaskError, get_task

    try:
        return get_task(recipe.task)
    except UnknownTaskError as error:
        raise RecipeError(f"task: {error}") from None


def build_methods(recipe: Recipe) -> list[Method]:
    """Instantiate the recipe's methods in order; unknown names, bad parameters, methods the task cannot use and
    conflicts are RecipeErrors."""
    from regimen.tasks import incompatibility

    task = recipe_task(recipe)
    methods = []
    for index, entry in enumerate(recipe.methods):
        where = f"methods.{index}"
        try:
            cls = get_method(entry.name)
        except KeyError as error:
            raise RecipeError(f"{where}.name: {error.args[0]}") from None
        problem = incompatibility(cls, task)
        if problem is not None:
            raise RecipeError(f"{where} ({entry.name}): {problem}")
        params = _validate_method_params(cls, recipe.method_params(index), where)
        try:
            methods.append(cls(**params))
        except (ValueError, TypeError) as error:
            raise RecipeError(f"{where} ({entry.name}): {error}") from None
    try:
        check_exclusive_hooks(methods)
        check_method_order(methods)
    except ValueError as error:
        raise RecipeError(str(error)) from None
    return methods


def parse_recipe(raw: dict[str, Any]) -> Recipe:
    """Validate a recipe dict (as read from TOML) into a ``Recipe``; its methods are checked too."""
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        raise RecipeError(_format_validation_error(error, model=Recipe)) from None
    build_methods(recipe)  # validates the task, method names, parameters and conflicts up front
    try:
        recipe_task(recipe)(recipe).check_recipe()
    except ConfigurationError as error:
        raise RecipeError(str(error)) from None
    return recipe


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The TOML of a recipe file, or of a shipped recipe named like ``default`` or ``augment/cutmix``."""
    from regimen.recipes import find_recipe

    path = find_recipe(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise RecipeError(f"{path}: invalid TOML: {error}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file") from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a TOML recipe (a file or a shipped recipe's name), apply ``key=value`` overrides, validate."""
    raw = read_recipe_file(path)
    return parse_recipe(apply_overrides(raw, overrides or []))
