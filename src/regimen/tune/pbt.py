"""Population based training of regimen recipes on Ray Tune's ``PopulationBasedTraining`` scheduler.

A population of trials trains the same recipe with different hyperparameters. Every ``interval`` epochs each trial
reports its validation accuracy and a checkpoint; Ray's PBT scheduler then lets the bottom quantile *exploit* (copy the
weights, optimizer, schedule and RNG state of) a trial of the top quantile and *explore* (perturb the copied
hyperparameters by ×0.8/×1.2 or resample them). Scheduling, pausing, cloning and process management are Ray's; this
module only turns a recipe into a Ray trainable that trains in rounds through ``regimen.train.fit``.

Paper: Jaderberg et al. — "Population Based Training of Neural Networks", 2017, arXiv 1711.09846.

Pitfalls handled:
    * The checkpoint carries the architecture: regimen checkpoints hold ``model_spec`` and the full recipe (methods
      included, so surgery such as low-rank layers is rebuilt before the weights are loaded), so a clone rebuilds the
      donor's exact model.
    * ``optimizer.load_state_dict`` brings the *donor's* learning rate, weight decay and momentum back, and the
      schedule state brings the donor's base LR back. ``retarget_checkpoint`` rewrites both to the *mutated* config
      before the clone resumes (per-group LR ratios, e.g. from LR-scaling methods, are kept).
    * Rounds keep one schedule: the LR schedule spans the recipe's full ``train.epochs``; a round stops after its
      epochs (checkpoint written) and the next round resumes, so cosine/step schedules are not restarted per round.
    * Only hyperparameters that leave the architecture and data unchanged may be mutated (``optim.*``,
      ``methods.<i>.<param>``, ``train.label_smoothing``, ``train.grad_clip``); anything else is refused.
    * Selection uses the validation split and the task's primary metric (``val_acc`` for classification, maximised;
      a lower-is-better metric is minimised), never the test split, which is only reported.
    * Every trial uses the recipe's seed (same initial weights and data order), so trials differ by hyperparameters.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from regimen.tasks import get_task
from regimen.train import apply_overrides, fit, load_checkpoint, parse_recipe, save_checkpoint
from regimen.train.recipe import Recipe

__all__ = [
    "Mutation",
    "TuneResult",
    "default_mutations",
    "objective",
    "parse_mutation",
    "retarget_checkpoint",
    "run_population",
]

#: Recipe keys (prefixes) a population may mutate: none of them changes the model or the data.
MUTABLE_PREFIXES = ("optim.lr", "optim.weight_decay", "optim.momentum", "optim.eps", "methods.",
                    "train.label_smoothing", "train.grad_clip", "schedule.min_lr_ratio")
_DATA_CACHE: dict[tuple, Any] = {}


# ------------------------------------------------------------------------------------------------------ search space
@dataclass(frozen=True)
class Mutation:
    """How one recipe key is sampled and perturbed.

    ``kind`` is ``"loguniform"``, ``"uniform"`` (``low``/``high``), ``"randint"`` (``low`` ≤ n < ``high``) or
    ``"choice"`` (``values``).
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if not any(self.key == p.rstrip(".") or self.key.startswith(p) for p in MUTABLE_PREFIXES):
            raise ValueError(f"mutation key {self.key!r} is not mutable; PBT may change only "
                             f"{', '.join(MUTABLE_PREFIXES)} (the architecture and data stay fixed)")
        if self.kind in ("loguniform", "uniform", "randint"):
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"mutation {self.key}: {self.kind} needs low < high, got {self.low}, {self.high}")
            if self.kind == "loguniform" and self.low <= 0:
                raise ValueError(f"mutation {self.key}: loguniform needs low > 0, got {self.low}")
        elif self.kind == "choice":
            if len(self.values) < 2:
                raise ValueError(f"mutation {self.key}: choice needs at least two values, got {list(self.values)}")
        else:
            raise ValueError(f"mutation {self.key}: kind must be loguniform, uniform, randint or choice, "
                             f"got {self.kind!r}")

    def domain(self):
        """The Ray Tune search domain of this key."""
        from ray import tune

        if self.kind == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.kind == "uniform":
            return tune.uniform(self.low, self.high)
        if self.kind == "randint":
            return tune.randint(int(self.low), int(self.high))
        return tune.choice(list(self.values))


def _scalar(text: str) -> Any:
    """A ``--mutate`` choice value: a JSON number, boolean, string or array; anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_mutation(text: str) -> Mutation:
    """Parse ``key=kind:low:high`` or ``key=choice:a,b,c`` (``optim.lr=loguniform:0.01:0.5``)."""
    key, sep, spec = text.partition("=")
    key, spec = key.strip(), spec.strip()
    if not sep or not key or not spec:
        raise ValueError(f"--mutate expects key=kind:low:high or key=choice:a,b,..., got {text!r}")
    kind, _, rest = spec.partition(":")
    if kind == "choice":
        return Mutation(key, "choice", values=tuple(_scalar(v.strip()) for v in rest.split(",") if v.strip()))
    parts = rest.split(":")
    if len(parts) != 2:
        raise ValueError(f"--mutate {key}: expected {kind}:low:high, got {spec!r}")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--mutate {key}: low and high must be numbers, got {spec!r}") from None
    return Mutation(key, kind, low, high)


def default_mutations(recipe: Recipe) -> list[Mutation]:
    """LR within ×[1/10, 10] of the recipe's (log scale) and, when non-zero, weight decay likewise."""
    mutations = [Mutation("optim.lr", "loguniform", recipe.optim.lr / 10, recipe.optim.lr * 10)]
    if recipe.optim.weight_decay > 0:
        wd = recipe.optim.weight_decay
        mutations.append(Mutation("optim.weight_decay", "loguniform", wd / 10, wd * 10))
    return mutations


def _with_config(raw: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    values = {key: value.item() if hasattr(value, "item") else value for key, value in config.items()}  # numpy
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]  # JSON scalars are TOML scalars
    return apply_overrides(raw, overrides)


# ---------------------------------------------------------------------------------------------- checkpoint retargeting
def retarget_checkpoint(state: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """A copy of ``state`` whose optimizer and schedule carry ``recipe``'s (mutated) hyperparameters.

    ``optimizer.load_state_dict`` restores the saved param groups' ``lr``, ``weight_decay``, ``momentum``, ``betas``
    and ``eps``, and the schedule restores its base LRs, so without this a clone would silently continue with the
    donor's hyperparameters. Base LRs are rescaled by ``new_lr / old_lr`` (keeping per-group ratios), the current
    LR is ``base × the schedule's last factor``, weight decay is set on the groups that decay, and momentum, betas
    and eps are overwritten where the optimizer has them. The recipe stored in the checkpoint becomes ``recipe``.

    Args:
        state: a regimen checkpoint dict (``load_checkpoint``); not modified.
        recipe: the validated recipe the clone continues with.

    Returns:
        The retargeted checkpoint dict.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a validated Recipe, got {type(recipe).__name__}")
    for key in ("recipe", "optimizer", "scheduler"):
        if key not in state:
            raise ValueError(f"state is not a regimen checkpoint: missing {key!r}")
    out = dict(state)
    optimizer = copy.deepcopy(state["optimizer"])
    schedule = copy.deepcopy(state["scheduler"])
    old = state["recipe"]["optim"]
    new = recipe.optim
    if old.get("name", new.name) != new.name:
        raise ValueError(f"cannot retarget a {old.get('name')!r} optimizer state to {new.name!r}")
    ratio = new.lr / old["lr"]
    schedule["initial_lrs"] = [lr * ratio for lr in schedule["initial_lrs"]]
    factor = schedule.get("last_factor", 1.0)
    for group, base in zip(optimizer["param_groups"], schedule["initial_lrs"], strict=True):
        group["lr"] = base * factor
        if "initial_lr" in group:
            group["initial_lr"] = base
        decays = new.decay_norm_and_bias or not group.get("exclude_from_trust_ratio", False)
        if "weight_decay" in group and decays:
            group["weight_decay"] = new.weight_decay
        if "momentum" in group:
            group["momentum"] = new.momentum
        if "nesterov" in group:
            group["nesterov"] = new.nesterov
        if "betas" in group:
            group["betas"] = tuple(new.betas)
        if "eps" in group:
            group["eps"] = new.eps
    out["optimizer"], out["scheduler"] = optimizer, schedule
    out["recipe"] = recipe.model_dump()
    return out


def objective(recipe: Recipe) -> tuple[str, str]:
    """The metric a population is selected on and its direction: the task's primary metric on the validation split,
    e.g. ``("val_acc", "max")`` for classification."""
    task = get_task(recipe.task)
    return f"val_{task.primary_metric}", "max" if task.higher_is_better else "min"


def _load_data(recipe: Recipe):
    """The recipe's data as its task loads it (one load per trial process, reused across rounds)."""
    key = (recipe.task, recipe.data.model_dump_json(), recipe.seed)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = get_task(recipe.task)(recipe).load_data()
    return _DATA_CACHE[key]


def _train_round(raw: dict[str, Any], work: Path, resume: Path | None, stop: int, data) -> None:
    """Train ``raw`` (resuming from ``resume``) until ``stop`` epochs are done; the schedule spans train.epochs."""
    fit(parse_recipe(raw), out_dir=work, resume=resume, overwrite=True, data=data, stop_epoch=stop)


def _last_record(work: Path) -> dict[str, Any]:
    lines = [line for line in (work / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def _digest(state_dict: Mapping[str, torch.Tensor]) -> float:
    """A cheap fingerprint of model weights (sum of |w| · position weights), logged to trace clones."""
    total = 0.0
    for index, (_, tensor) in enumerate(sorted(state_dict.items())):
        if tensor.is_floating_point():
            total += (index + 1) * float(tensor.double().abs().sum())
    return total


def _trial(config: dict[str, Any], base: dict[str, Any], interval: int, threads: int) -> None:
    """The Ray Tune function trainable: rounds of ``interval`` epochs, a report + checkpoint after each."""
    from ray import tune

    torch.set_num_threads(threads)
    context = tune.get_context()
    trial_dir = Path(context.get_trial_dir())
    work = trial_dir / "run"
    work.mkdir(parents=True, exist_ok=True)
    raw = _with_config(base, config)
    recipe = parse_recipe(raw)
    data = _load_data(recipe)
    metric, _ = objective(recipe)
    total = recipe.train.epochs
    resume: Path | None = None
    epoch = 0
    events = trial_dir / "pbt_events.jsonl"
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(Path(folder) / "checkpoint.pt")
            meta = json.loads((Path(folder) / "pbt.json").read_text())
        state = retarget_checkpoint(state, recipe)
        resume = work / "resume.pt"
        save_checkpoint(state, resume)
        epoch = int(state["epoch"])
        with open(events, "a") as handle:
            kind = "resume" if meta["trial"] == context.get_trial_id() else "exploit"
            handle.write(json.dumps({"event": kind, "trial": context.get_trial_id(), "donor": meta["trial"],
                                     "epoch": epoch, "donor_digest": meta["digest"],
                                     "restored_digest": _digest(state["model"]), "config": config,
                                     "optimizer_lrs": [g["lr"] for g in state["optimizer"]["param_groups"]],
                                     "optimizer_wds": [g.get("weight_decay") for g in
                                                       state["optimizer"]["param_groups"]]}) + "\n")
    while epoch < total:
        stop = min(epoch + interval, total)
        _train_round(raw, work, resume, stop, data)
        resume = work / "checkpoint.pt"
        record = _last_record(work)
        epoch = int(record["epoch"])
        state = load_checkpoint(resume)
        folder = Path(tempfile.mkdtemp(prefix="ckpt-", dir=trial_dir))
        save_checkpoint(state, folder / "checkpoint.pt")
        digest = _digest(state["model"])
        (folder / "pbt.json").write_text(json.dumps({"trial": context.get_trial_id(), "epoch": epoch,
                                                     "config": config, "digest": digest}))
        metrics = {key: float(value) for key, value in record.items() if isinstance(value, int | float)}
        if metric not in metrics:
            raise RuntimeError(f"epoch {epoch} has no {metric!r} to select on (evaluated: "
                               f"{sorted(k for k in metrics if k.startswith(('val_', 'test_')))}); PBT needs "
                               "train.eval_every dividing the interval")
        metrics["digest"] = digest
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------- entry point
@dataclass
class TuneResult:
    """What ``run_population`` returns (also written to ``<out>/tune_summary.json``): the best trial by ``metric``
    (``val_<primary metric>``), its value there and on the test split (``test_<primary metric>``)."""

    best_config: dict[str, Any]
    metric: str
    best_val: float
    best_test: float
    best_checkpoint: str | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    experiment_dir: str = ""

    @property
    def best_val_acc(self) -> float:
        """Deprecated: ``best_val`` (the classification tasks' ``val_acc``)."""
        warnings.warn("TuneResult.best_val_acc is deprecated; use best_val", DeprecationWarning, stacklevel=2)
        return self.best_val

    @property
    def best_test_acc(self) -> float:
        """Deprecated: ``best_test``."""
        warnings.warn("TuneResult.best_test_acc is deprecated; use best_test", DeprecationWarning, stacklevel=2)
        return self.best_test


def run_population(
    recipe: dict[str, Any],
    population: int = 4,
    mutations: Sequence[Mutation] | None = None,
    out_dir: str | os.PathLike = "runs/tune",
    interval: int = 1,
    scheduler: str = "pbt",
    quantile_fraction: float = 0.25,
    resample_probability: float = 0.25,
    cpus: int | None = None,
    threads_per_trial: int = 1,
    seed: int = 0,
    name: str | None = None,
    quiet: bool = True,
) -> TuneResult:
    """Train ``population`` copies of a recipe under Ray Tune; with ``scheduler="pbt"`` they exploit and explore.

    Args:
        recipe: the recipe as a raw dict (TOML-parsed, overrides applied); validated here.
        population: number of trials, >= 2.
        mutations: keys to sample initially and perturb; default ``default_mutations`` (LR and weight decay).
        out_dir: Ray's storage folder; ``tune_summary.json`` and ``best/checkpoint.pt`` are written here.
        interval: epochs per round (PBT's perturbation interval, in Ray's ``training_iteration`` units).
        scheduler: ``"pbt"`` (synchronous PopulationBasedTraining) or ``"fifo"`` (independent trials with the same
            initial samples: the fixed-config baseline at equal compute).
        quantile_fraction: PBT's bottom/top fraction (the bottom copies the top).
        resample_probability: PBT's probability of resampling a value instead of perturbing it.
        cpus: CPUs for the local Ray instance (default ``min(population, os.cpu_count())``); one per trial.
        threads_per_trial: torch threads in each trial.
        seed: seeds Ray's initial sampling and PBT's explore draws.
        name: experiment folder name under ``out_dir`` (default ``<recipe name>-<scheduler>``).
        quiet: silence Ray's progress output.

    Returns:
        TuneResult: the best trial (by the final value of the task's primary metric on the validation split), its
        checkpoint copy and every trial's final metrics.
    """
    if isinstance(population, bool) or not isinstance(population, int) or population < 2:
        raise ValueError(f"population must be an int >= 2 (PBT needs trials to copy from), got {population!r}")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"interval must be an int >= 1 epoch, got {interval!r}")
    if scheduler not in ("pbt", "fifo"):
        raise ValueError(f"scheduler must be 'pbt' or 'fifo', got {scheduler!r}")
    if not 0.0 < quantile_fraction <= 0.5:
        raise ValueError(f"quantile_fraction must be in (0, 0.5], got {quantile_fraction}")
    if not 0.0 <= resample_probability <= 1.0:
        raise ValueError(f"resample_probability must be in [0, 1], got {resample_probability}")
    validated = parse_recipe(recipe)
    if validated.data.val_fraction <= 0:
        raise ValueError("PBT selects trials on the validation split; set data.val_fraction > 0 (the test split "
                         "must not choose hyperparameters)")
    metric, mode = objective(validated)
    mutations = list(mutations) if mutations else default_mutations(validated)
    keys = [m.key for m in mutations]
    if len(set(keys)) != len(keys):
        raise ValueError(f"mutation keys must be unique, got {keys}")
    for mutation in mutations:  # each key must exist and accept a sampled value
        sample = mutation.values[0] if mutation.kind == "choice" else mutation.low
        if mutation.kind == "randint":
            sample = int(sample)
        parse_recipe(_with_config(recipe, {mutation.key: sample}))
    rounds = math.ceil(validated.train.epochs / interval)

    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining
        from ray.tune.search.basic_variant import BasicVariantGenerator
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("regimen tune needs Ray Tune: pip install 'regimen[tune]'") from error

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = name or f"{validated.name}-{scheduler}"
    random.seed(seed)  # PBT's explore draws use Python's random module
    if scheduler == "pbt":
        trial_scheduler = PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=1,
            hyperparam_mutations={m.key: m.domain() for m in mutations},
            quantile_fraction=quantile_fraction, resample_probability=resample_probability, synch=True,
        )
    else:
        trial_scheduler = FIFOScheduler()
    cpus = cpus or min(population, os.cpu_count() or 1)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=not quiet, configure_logging=not quiet,
                 logging_level="ERROR")
    try:
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=recipe, interval=interval, threads=threads_per_trial), {"cpu": 1}
        )
        tuner = tune.Tuner(
            trainable,
            param_space={m.key: m.domain() for m in mutations},
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, scheduler=trial_scheduler, num_samples=population,
                search_alg=BasicVariantGenerator(random_state=seed), reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=name, storage_path=str(out), stop={"training_iteration": rounds}, verbose=0 if quiet else 1,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=max(4, population)),
            ),
        )
        grid = tuner.fit()
    finally:
        if started_here:
            ray.shutdown()

    test_metric = "test_" + metric.removeprefix("val_")
    trials = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"a tune trial failed: {result.error}")
        metrics = result.metrics or {}
        trials.append({"config": dict(result.config), metric: metrics.get(metric),
                       test_metric: metrics.get(test_metric), "epoch": metrics.get("epoch"), "path": result.path})
    worst = -math.inf if mode == "max" else math.inf
    trials.sort(key=lambda t: worst if t[metric] is None else t[metric], reverse=mode == "max")  # best first
    best = grid.get_best_result(metric=metric, mode=mode, scope="last")
    best_checkpoint = None
    if best.checkpoint is not None:
        with best.checkpoint.as_directory() as folder:
            target = out / name / "best"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / "checkpoint.pt", target / "checkpoint.pt")
            best_checkpoint = str(target / "checkpoint.pt")
    summary = TuneResult(
        best_config=dict(best.config), metric=metric, best_val=float(best.metrics[metric]),
        best_test=float(best.metrics.get(test_metric, math.nan)), best_checkpoint=best_checkpoint,
        trials=trials, experiment_dir=str(out / name),
    )
    (out / name / "tune_summary.json").write_text(json.dumps(summary.__dict__, indent=2, default=str))
    return summary
