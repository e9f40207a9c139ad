"""``regimen study``: what each method buys, measured over paired seeds.

A study trains a base recipe and, for every method under study, the same recipe with that method appended, each
over the same seeds. Seed ``s`` fixes the initial weights and the data order in every arm (the loader's permutation
depends only on the seed and the epoch), so the difference ``d_s = arm_s - base_s`` of the task's primary metric
removes most of the seed-to-seed noise. Per method the study reports the mean paired difference with a 95 %
Student-t confidence interval ``mean(d) ± t_{0.975, n-1} · sd(d) / √n``, the wall-time, time-to-target and
peak-memory ratios against the base run of the same seed, and a verdict on the method's claim
(``Method.claimed_effect``):

* ``better``: *confirmed* when the interval of the improvement lies above 0, *contradicted* when it lies below 0;
* ``no_worse`` (parity while buying memory, speed or size): *confirmed* when the interval lies above ``-margin``,
  *contradicted* when it lies below ``-margin``;
* otherwise *not detected at this budget*.

Every run is a fresh ``regimen train`` process (honest peak memory), written to ``OUT/runs/<arm>-seed<s>``; a run
whose ``summary.json`` exists is never redone, so a killed study continues where it stopped, and more seeds or new
methods extend a study (a changed base recipe, first seed or arm recipe is another study, and is refused). Runs go
to a pool of local processes, or to Ray tasks (``executor="ray"``), which return the run's files to this machine,
so a Ray cluster's nodes need no shared file system.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from regimen.errors import ConfigurationError, RegimenError
from regimen.method import get_method
from regimen.recipes import find_recipe
from regimen.train.recipe import apply_overrides, dump_recipe, parse_recipe, parse_value, read_recipe_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["Arm", "StudyError", "StudySpec", "analyse", "load_study", "parse_method_spec", "run_study",
           "write_study_report"]

STUDY_FILE = "study.json"
RESULTS_FILE = "results.json"
VERDICTS = ("confirmed", "not detected at this budget", "contradicted", "no claim", "not run yet")


class StudyError(RegimenError, RuntimeError):
    """Some of a study's runs failed; ``results.json`` holds each failed run's last error line."""


@dataclass(frozen=True)
class Arm:
    """One method under study: the base recipe plus ``[[methods]] name = method, **params``.

    ``label`` names the row (unique in a study); ``effect`` overrides the method's ``claimed_effect``.
    """

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    effect: str | None = None


@dataclass
class StudySpec:
    """What a study trains: ``base`` (a recipe file or shipped name), the arms, ``seeds`` paired seeds starting at
    ``first_seed`` (the base recipe's seed when None), ``overrides`` applied to every arm, an optional ``target`` of
    the primary metric (time-to-target), and the non-inferiority ``margin`` for ``no_worse`` claims (in units of
    the primary metric)."""

    base: str
    arms: list[Arm]
    seeds: int = 5
    first_seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    target: float | None = None
    margin: float = 0.005
    title: str = ""

    def validate(self) -> None:
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 2:
            raise ConfigurationError(
                f"seeds must be an int >= 2 (a confidence interval needs at least two paired seeds; 5 or more is "
                f"recommended), got {self.seeds!r}")
        if not self.arms:
            raise ConfigurationError("methods must name at least one method to study")
        if not (isinstance(self.margin, int | float) and self.margin >= 0 and math.isfinite(self.margin)):
            raise ConfigurationError(f"margin must be a finite number >= 0, got {self.margin!r}")
        labels = [arm.label for arm in self.arms]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ConfigurationError(f"methods: the labels {', '.join(repeated)} appear twice; give each arm its "
                                     "own label (TOML: label = \"...\")")
        for arm in self.arms:
            if arm.label == "base" or not arm.label or "/" in arm.label or arm.label.startswith("."):
                raise ConfigurationError(f"methods: {arm.label!r} cannot label an arm (reserved, empty or a path)")
            if arm.effect not in (None, "better", "no_worse", ""):
                raise ConfigurationError(f"methods ({arm.label}): effect must be 'better', 'no_worse' or '', "
                                         f"got {arm.effect!r}")


def parse_method_spec(text: str) -> Arm:
    """``NAME[:param=value,...]`` (values are TOML: ``cutmix:alpha=0.5,prob=1.0``) as an Arm labelled ``text``."""
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise ConfigurationError(f"--methods expects NAME[:param=value,...], got {text!r}")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"--methods {text!r}: {item!r} is not param=value")
        params[key.strip()] = parse_value(value.strip())
    return Arm(label=text.strip() if params else name, method=name, params=params)


def load_study(path: str | os.PathLike) -> StudySpec:
    """A study file (TOML)::

        title = "augment"
        base = "evidence/base"          # recipe file or shipped name
        seeds = 5
        overrides = ["train.epochs=12"]
        target = 0.85
        margin = 0.005

        [[methods]]
        name = "cutmix"                 # + its parameters; optional label = "...", effect = "better"
        alpha = 1.0
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"{path}: invalid TOML: {error}") from None
    known = {"title", "base", "seeds", "first_seed", "overrides", "target", "margin", "methods"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigurationError(f"{path}: unknown key {unknown[0]!r}; a study file has {', '.join(sorted(known))}")
    if "base" not in raw:
        raise ConfigurationError(f"{path}: base: missing (the recipe every method is added to)")
    arms = []
    for index, entry in enumerate(raw.get("methods", [])):
        entry = dict(entry)
        if "name" not in entry:
            raise ConfigurationError(f"{path}: methods.{index}.name: missing")
        name, label, effect = entry.pop("name"), entry.pop("label", None), entry.pop("effect", None)
        arms.append(Arm(label=label or name, method=name, params=entry, effect=effect))
    spec = StudySpec(base=str(raw["base"]), arms=arms, seeds=raw.get("seeds", 5), first_seed=raw.get("first_seed"),
                     overrides=list(raw.get("overrides", [])), target=raw.get("target"),
                     margin=raw.get("margin", 0.005), title=raw.get("title", ""))
    base_path = Path(spec.base)
    if not base_path.is_absolute() and (path.parent / base_path).is_file():  # relative to the study file
        spec.base = str(path.parent / base_path)
    return spec


# --------------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Run:
    arm: str
    seed: int
    recipe: Path
    folder: Path


def _arm_recipes(spec: StudySpec) -> tuple[dict[str, dict[str, Any]], int]:
    """The recipe dict of the base and of every arm, all validated (conflicts with the base are errors here, before
    anything trains), and the first seed."""
    overrides = list(spec.overrides)
    if spec.target is not None:
        overrides.append(f"train.target={spec.target}")
    base = apply_overrides(read_recipe_file(find_recipe(spec.base)), overrides)
    recipes = {"base": base}
    present = {entry.get("name") for entry in base.get("methods", [])}
    for arm in spec.arms:
        if arm.method in present:
            raise ConfigurationError(f"methods ({arm.label}): the base recipe {spec.base!r} already has "
                                     f"{arm.method!r}; study it on a base without it")
        raw = json.loads(json.dumps(base))  # a deep copy that is plain TOML data
        raw.setdefault("methods", []).append({"name": arm.method, **arm.params})
        raw["name"] = f"{base.get('name', 'recipe')}+{arm.label}"
        try:
            parse_recipe(raw)
        except ConfigurationError as error:
            raise ConfigurationError(f"methods ({arm.label}) on base {spec.base!r}: {error}") from None
        recipes[arm.label] = raw
    recipe = parse_recipe(base)
    return recipes, recipe.seed if spec.first_seed is None else spec.first_seed


def _check_same_study(out: Path, recipes: dict[str, dict[str, Any]], first_seed: int,
                      previous: dict[str, Any]) -> None:
    """A folder's finished runs stay valid when its base recipe, first seed and the recipe of every arm it already
    has are unchanged; new arms and more seeds extend it (the recipes the runs trained are in ``out/recipes``)."""
    why = ""
    if previous.get("first_seed") != first_seed:
        why = f"its first seed is {previous.get('first_seed')}, not {first_seed}"
    for label, raw in recipes.items():
        path = out / "recipes" / f"{_slug(label)}.toml"
        if why or not path.exists():
            continue
        if tomllib.loads(path.read_text(encoding="utf-8")) != tomllib.loads(dump_recipe(raw)):
            why = f"its {'base recipe' if label == 'base' else repr(label) + ' recipe'} differs"
    if not why and not (out / "recipes" / "base.toml").exists():
        why = "it has no base recipe"
    if why:
        raise ConfigurationError(f"{out} holds another study ({why}); choose another --out, or pass --overwrite to "
                                 "discard its runs")


def _prepare_folder(out: Path, spec: StudySpec, recipes: dict[str, dict[str, Any]], first_seed: int,
                    overwrite: bool) -> None:
    record = out / STUDY_FILE
    if record.exists() and not overwrite:
        try:
            previous = json.loads(record.read_text())
        except (OSError, json.JSONDecodeError):
            raise ConfigurationError(f"{record} is unreadable; pass --overwrite to start a new study there") from None
        _check_same_study(out, recipes, first_seed, previous)
    elif not record.exists() and out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigurationError(f"{out} is not empty and holds no study; choose another --out or pass --overwrite")
    if overwrite and out.exists():
        shutil.rmtree(out)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    for label, raw in recipes.items():
        (out / "recipes" / f"{_slug(label)}.toml").write_text(dump_recipe(raw), encoding="utf-8")
    spec_record = {"first_seed": first_seed, "spec": _spec_dict(spec), "command": _command_line()}
    record.write_text(json.dumps(spec_record, indent=2))


def _spec_dict(spec: StudySpec) -> dict[str, Any]:
    return asdict(spec)


def _command_line() -> str:
    argv = sys.argv[1:] if Path(sys.argv[0]).name in ("regimen", "__main__.py") else []
    return "regimen " + shlex.join(argv) if argv else ""  # quoted: a title with spaces can be pasted back


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in label)


def _plan(out: Path, spec: StudySpec, labels: Iterable[str], first_seed: int) -> list[_Run]:
    """Every (arm, seed) run: the base's seeds first, then arm by arm, so that a partial study already has whole
    rows (every seed of an arm) rather than one seed of every arm."""
    return [_Run(label, seed, out / "recipes" / f"{_slug(label)}.toml", out / "runs" / f"{_slug(label)}-seed{seed}")
            for label in labels for seed in range(first_seed, first_seed + spec.seeds)]


# ---------------------------------------------------------------------------------------------------- running


def _train_command(run: _Run, folder: Path, threads: int) -> list[str]:
    return [sys.executable, "-m", "regimen", "train", "--recipe", str(run.recipe), "--out", str(folder),
            "--overwrite", "--quiet", "--set", f"seed={run.seed}", "--set", f"train.threads={threads}"]


def _execute(command: list[str], folder: Path) -> dict[str, Any]:
    """Run one training process; the outcome with the run's files read back (or the last error line)."""
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    outcome: dict[str, Any] = {"process_time": time.perf_counter() - started}
    if completed.returncode != 0:
        outcome["error"] = (completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"])[-1]
    else:
        outcome["summary"] = (folder / "summary.json").read_text()
        outcome["metrics"] = (folder / "metrics.jsonl").read_text()
    return outcome


def _execute_elsewhere(command: list[str], recipe_text: str) -> dict[str, Any]:
    """A Ray task: the run in a temporary folder of whatever machine runs it, its files returned as text."""
    with tempfile.TemporaryDirectory(prefix="regimen-study-") as tmp:
        recipe = Path(tmp) / "recipe.toml"
        recipe.write_text(recipe_text, encoding="utf-8")
        folder = Path(tmp) / "run"
        command = list(command)
        command[command.index("--recipe") + 1] = str(recipe)
        command[command.index("--out") + 1] = str(folder)
        command[0] = sys.executable
        return _execute(command, folder)


def _store(run: _Run, outcome: dict[str, Any]) -> None:
    """Write a finished run's files (a Ray task's come back as text) and its error, if any."""
    run.folder.mkdir(parents=True, exist_ok=True)
    if "error" in outcome:
        (run.folder / "error.txt").write_text(outcome["error"] + "\n")
        return
    (run.folder / "error.txt").unlink(missing_ok=True)
    (run.folder / "metrics.jsonl").write_text(outcome["metrics"])
    (run.folder / "process_time.txt").write_text(f"{outcome['process_time']:.3f}\n")
    tmp = run.folder / "summary.json.tmp"  # summary.json last and atomically: it marks the run as done
    tmp.write_text(outcome["summary"])
    os.replace(tmp, run.folder / "summary.json")


class _LocalExecutor:
    """Runs on this machine: a few threads, each waiting on one training process."""

    def __init__(self, workers: int, threads: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.threads = threads

    def submit(self, run: _Run) -> Future:
        return self.pool.submit(self._run, run)

    def _run(self, run: _Run) -> dict[str, Any]:
        scratch = run.folder.with_name(run.folder.name + ".partial")  # never a half-written run folder
        shutil.rmtree(scratch, ignore_errors=True)
        outcome = _execute(_train_command(run, scratch, self.threads), scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        return outcome

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _RayExecutor:
    """Runs as Ray tasks (``ray.init(address)``: a running cluster, or a local instance when None)."""

    def __init__(self, threads: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigurationError("executor 'ray' needs Ray: pip install 'regimen[tune]'") from None
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        self.remote = ray.remote(num_cpus=threads)(_execute_elsewhere)
        self.threads = threads

    def submit(self, run: _Run) -> Future:
        command = _train_command(run, Path("run"), self.threads)
        return self.remote.remote(command, run.recipe.read_text(encoding="utf-8")).future()

    def shutdown(self) -> None:
        pass


def run_study(
    spec: StudySpec,
    out: str | os.PathLike,
    workers: int | None = None,
    threads: int | None = None,
    executor: str = "local",
    ray_address: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Train every pending run of ``spec`` into ``out``, then write results.json, results.md and the plot.

    ``workers`` processes run at once (default: one per two cores, at least one) with ``threads`` torch threads
    each (default: cores // workers). Everything is validated before anything trains. Returns the results dict.

    Raises:
        ConfigurationError: a bad spec, a method that conflicts with the base recipe, or ``out`` holding another
            study. StudyError: some runs failed (the others are kept, and a rerun retries only the failed ones).
    """
    spec.validate()
    if executor not in ("local", "ray"):
        raise ConfigurationError(f"executor must be 'local' or 'ray', got {executor!r}")
    cores = os.cpu_count() or 1
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise ConfigurationError(f"workers must be an int >= 1, got {workers!r}")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigurationError(f"threads must be an int >= 1, got {threads!r}")
    workers = workers or max(1, cores // 2)
    threads = threads or max(1, cores // workers)
    for arm in spec.arms:  # unknown names fail here with the list of known ones
        try:
            get_method(arm.method)
        except KeyError as error:
            raise ConfigurationError(f"methods ({arm.label}): {error.args[0]}") from None
    recipes, first_seed = _arm_recipes(spec)
    out = Path(out)
    _prepare_folder(out, spec, recipes, first_seed, overwrite)
    runs = _plan(out, spec, recipes, first_seed)
    pending = [run for run in runs if not (run.folder / "summary.json").exists()]
    if pending:
        pool = _LocalExecutor(workers, threads) if executor == "local" else _RayExecutor(threads, ray_address)
        try:
            _drive(pending, pool, quiet, done=len(runs) - len(pending), total=len(runs))
        finally:
            pool.shutdown()
    results = write_study_report(out)
    failed = sorted({r["arm"] for r in results["runs"] if "error" in r})
    if failed:
        raise StudyError(f"study runs failed for {', '.join(failed)}; see {out / RESULTS_FILE} (rerun the same "
                         "command to retry them)")
    return results


def _drive(pending: list[_Run], pool: _LocalExecutor | _RayExecutor, quiet: bool, done: int, total: int) -> None:
    """Submit every pending run, store each as it finishes, and show progress."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=quiet)
    futures = {pool.submit(run): run for run in pending}
    with Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, disable=quiet) as progress:
        task = progress.add_task("", total=total, completed=done)
        waiting = set(futures)
        while waiting:
            finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
            for future in finished:
                run = futures[future]
                try:
                    outcome = future.result()
                except Exception as error:  # a Ray worker lost, a process that could not start
                    outcome = {"error": f"{type(error).__name__}: {error}"}
                _store(run, outcome)
                status = f"failed: {outcome['error']}" if "error" in outcome else "done"
                progress.console.print(f"{run.arm} seed {run.seed}: {status}")
                progress.update(task, advance=1, description=f"{run.arm} seed {run.seed}")


# --------------------------------------------------------------------------------------------------- analysis


def _collect(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    record = json.loads((out / STUDY_FILE).read_text())
    spec = record["spec"]
    labels = ["base"] + [arm["label"] for arm in spec["arms"]]
    first = record["first_seed"]
    runs = []
    for seed in range(first, first + spec["seeds"]):
        for label in labels:
            folder = out / "runs" / f"{_slug(label)}-seed{seed}"
            run: dict[str, Any] = {"arm": label, "seed": seed}
            if (folder / "summary.json").exists():
                run["summary"] = json.loads((folder / "summary.json").read_text())
            elif (folder / "error.txt").exists():
                run["error"] = (folder / "error.txt").read_text().strip()
            else:
                run["pending"] = True
            runs.append(run)
    return record, runs


def _t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95 % Student-t interval (``nan`` bounds below two pairs)."""
    n = len(differences)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(differences) / n
    if n < 2:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = _t_quantile(n) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(low: float, high: float, effect: str, margin: float) -> str:
    """The verdict on a claim from the interval ``[low, high]`` of the *improvement* (sign-corrected so that
    positive is better)."""
    if not effect:
        return "no claim"
    if math.isnan(low):
        return "not detected at this budget"
    threshold = 0.0 if effect == "better" else -margin
    if low > threshold:
        return "confirmed"
    if high < threshold:
        return "contradicted"
    return "not detected at this budget"


def _geomean(values: list[float]) -> float:
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else math.nan


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if v is not None and math.isfinite(v))
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def analyse(out: str | os.PathLike) -> dict[str, Any]:
    """The study in ``out`` as a results dict: per arm the paired differences, interval, ratios and verdict."""
    out = Path(out)
    record, runs = _collect(out)
    spec = record["spec"]
    by_key = {(r["arm"], r["seed"]): r for r in runs}
    base_runs = [r for r in runs if r["arm"] == "base" and "summary" in r]
    primary = base_runs[0]["summary"]["primary_metric"] if base_runs else None
    higher = base_runs[0]["summary"].get("higher_is_better", True) if base_runs else True
    sign = 1.0 if higher else -1.0
    rows = []
    for arm in spec["arms"]:
        cls = _method_class(arm["method"])
        effect = arm["effect"] if arm["effect"] is not None else getattr(cls, "claimed_effect", "")
        pairs = []
        for seed in range(record["first_seed"], record["first_seed"] + spec["seeds"]):
            base, mine = by_key[("base", seed)], by_key[(arm["label"], seed)]
            if "summary" in base and "summary" in mine:
                pairs.append((base["summary"], mine["summary"]))
        key = f"final_{primary}"
        diffs = [m.get(key, math.nan) - b.get(key, math.nan) for b, m in pairs]
        mean, low, high = paired_interval(diffs)
        improvement_low, improvement_high = sorted((sign * low, sign * high)) if not math.isnan(low) else (low, high)
        timed = [(b, m) for b, m in pairs if _timed_together(b, m)]
        reached = [(b.get("time_to_target"), m.get("time_to_target")) for b, m in pairs]
        timed_reached = [(b.get("time_to_target"), m.get("time_to_target")) for b, m in timed]
        rows.append({
            "label": arm["label"], "method": arm["method"], "params": arm["params"],
            "paper_id": getattr(cls, "paper_id", ""), "claim": getattr(cls, "claim", ""), "claimed_effect": effect,
            "pairs": len(pairs), "differences": diffs, "mean_difference": mean, "ci_low": low, "ci_high": high,
            "base_mean": _mean([b.get(key, math.nan) for b, _ in pairs]),
            "arm_mean": _mean([m.get(key, math.nan) for _, m in pairs]),
            "verdict": verdict(improvement_low, improvement_high, effect, spec["margin"]) if pairs else "not run yet",
            "time_ratio": _geomean([m["train_time"] / b["train_time"] for b, m in timed if b.get("train_time")]),
            "cpu_time_ratio": _geomean([m["process_cpu_time"] / b["process_cpu_time"] for b, m in pairs
                                        if b.get("process_cpu_time") and m.get("process_cpu_time")]),
            "time_to_target_ratio": _median([m / b for b, m in timed_reached if b and m]),
            "arm_reached_target": sum(m is not None for _, m in reached),
            "base_reached_target": sum(b is not None for b, _ in reached),
            "memory_ratio": _geomean([m["peak_memory_mb"] / b["peak_memory_mb"] for b, m in pairs
                                      if b.get("peak_memory_mb")]),
        })
    base_summaries = [r["summary"] for r in base_runs]
    return {
        "title": spec.get("title") or "regimen study", "command": record.get("command", ""), "spec": spec,
        "first_seed": record["first_seed"], "primary_metric": primary, "higher_is_better": higher,
        "base": {"runs": len(base_summaries),
                 "mean": _mean([s.get(f"final_{primary}", math.nan) for s in base_summaries]),
                 "train_time": _median([s.get("train_time") for s in base_summaries]),
                 "epochs": base_summaries[0].get("epochs") if base_summaries else None},
        "rows": rows, "runs": [{k: v for k, v in r.items() if k != "summary"} | _brief(r) for r in runs],
        "pending": sum("pending" in r for r in runs), "machine": _machine(),
    }


def _timed_together(base: dict[str, Any], arm: dict[str, Any]) -> bool:
    """Whether two runs' wall times compare: both carry the CPU-time record or neither does. A run without it
    predates that record, so it was timed in another session, under another load, than a run with it (a re-timed
    base against older arms): their wall-time ratio would measure the machine, not the method."""
    return ("process_cpu_time" in base) == ("process_cpu_time" in arm)


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    if "summary" not in run:
        return {}
    s = run["summary"]
    key = f"final_{s['primary_metric']}"
    return {key: s.get(key), "train_time": s.get("train_time"), "time_to_target": s.get("time_to_target"),
            "peak_memory_mb": s.get("peak_memory_mb")}


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _method_class(name: str):
    try:
        return get_method(name)
    except KeyError:
        return None


def _machine() -> dict[str, Any]:
    import platform

    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_report": load}


# ---------------------------------------------------------------------------------------------------- report


def _fmt(value: float, template: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else template.format(value)


def _percent_points(results: dict[str, Any]) -> bool:
    """Accuracy-like metrics (in [0, 1]) read better as percentage points."""
    return bool(results["primary_metric"]) and results["primary_metric"].endswith(("acc", "accuracy"))


def markdown_table(results: dict[str, Any]) -> str:
    pp = _percent_points(results)
    scale, unit = (100.0, " pp") if pp else (1.0, "")
    metric = results["primary_metric"] or "primary metric"
    header = ["method", "paper", "claim", f"Δ {metric} (95 % CI)", "verdict", "pairs", "time ×", "CPU time ×",
              "time-to-target ×", "memory ×"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        delta = (f"{_fmt(scale * row['mean_difference'], '{:+.2f}')}{unit} "
                 f"[{_fmt(scale * row['ci_low'], '{:+.2f}')}, {_fmt(scale * row['ci_high'], '{:+.2f}')}]")
        reached = f" ({row['arm_reached_target']}/{row['pairs']} reached)" if results["spec"].get("target") else ""
        cells = [f"`{row['label']}`", row["paper_id"] or "–", row["claim"] or "–", delta, row["verdict"],
                 str(row["pairs"]), _fmt(row["time_ratio"], "{:.2f}"), _fmt(row.get("cpu_time_ratio"), "{:.2f}"),
                 _fmt(row["time_to_target_ratio"], "{:.2f}") + reached, _fmt(row["memory_ratio"], "{:.2f}")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_study_report(out: str | os.PathLike) -> dict[str, Any]:
    """Analyse the study in ``out`` and (re)write ``results.json``, ``results.md`` and ``differences.png``."""
    out = Path(out)
    if not (out / STUDY_FILE).exists():
        raise ConfigurationError(f"{out} holds no study ({STUDY_FILE} is missing)")
    results = analyse(out)
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    base = results["base"]
    scale = 100.0 if _percent_points(results) else 1.0
    spec = results["spec"]
    lines = [
        f"# {results['title']}", "",
        f"Base recipe `{spec['base']}` ({base['epochs']} epochs; overrides: "
        f"{', '.join(f'`{o}`' for o in spec['overrides']) or 'none'}), {spec['seeds']} paired seeds from "
        f"{results['first_seed']}. Primary metric `{results['primary_metric']}`: base mean "
        f"{_fmt(scale * base['mean'], '{:.2f}')}{'%' if scale == 100 else ''}, base training time "
        f"{_fmt(base['train_time'], '{:.1f}')} s (median).", "",
        "Δ is the mean over seeds of (base + method) − base at the same seed, with its 95 % Student-t interval. "
        "Ratios are method / base at the same seed (geometric mean; time-to-target: median over the seeds where both "
        "reached the target). *time ×* is training wall time, which other jobs on a shared machine move; *CPU time ×* "
        "is the process's CPU seconds (start-up and evaluation included), which they barely move (– for runs that "
        "predate it). Wall-time ratios pair only runs timed in the same generation (both with or both without the "
        f"CPU-time record). Verdicts: `better` claims are confirmed when the interval lies above 0; `no_worse` "
        f"claims when it lies above −{_fmt(scale * spec['margin'], '{:g}')}{' pp' if scale == 100 else ''}.", "",
        markdown_table(results), "",
    ]
    if results["pending"]:
        lines += [f"**{results['pending']} runs have not finished**: rerun the command to complete the study.", ""]
    if results["command"]:
        lines += ["Command:", "", "```bash", results["command"], "```", ""]
    machine = results["machine"]
    lines += [f"Machine: {machine['cpus']} CPUs, torch {machine['torch']}, Python {machine['python']}.", ""]
    (out / "results.md").write_text("\n".join(lines))
    _plot(results, out / "differences.png")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["rows"] if r["pairs"]]
    scale = 100.0 if _percent_points(results) else 1.0
    colours = {"confirmed": "tab:green", "contradicted": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2))
    for i, row in enumerate(rows):
        mean = scale * row["mean_difference"]
        low, high = scale * row["ci_low"], scale * row["ci_high"]
        error = [[mean - low], [high - mean]] if not math.isnan(low) else None
        ax.errorbar(mean, i, xerr=error, fmt="o", color=colours.get(row["verdict"], "tab:gray"), capsize=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows])
    ax.invert_yaxis()
    unit = " (pp)" if scale == 100 else ""
    ax.set_xlabel(f"Δ {results['primary_metric']}{unit} vs base, mean and 95 % CI over paired seeds")
    ax.set_title(results["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
