"""``task = "flow_matching"``: learn a velocity field that carries N(0, I) onto the data (conditional flow matching).

Batches (training): the data loader draws, for each data point ``x1`` of a batch, a source point ``x0 ~ N(0, I)``
and a time ``t ~ U[0, 1]`` (independent coupling: I-CFM with σ = 0, the baseline) and yields the model's input
``[x_t, t]`` ``(N, d + 1)`` with the target ``[x0, x1, t]`` ``(N, 2d + 1)`` (:mod:`regimen.losses.cfm`). The draws
come from a generator seeded by the run's seed and the batch's sample indices, so they are the same in every arm
of a paired study and after a resume. Coupling methods change the pairs in ``transform_batch`` (``otcfm``,
``icfm``), pair weights wrap the criterion (``wcfm``). The loss is :func:`regimen.losses.cfm_loss`.

Default model: :class:`VelocityMLP` (``[x, t]`` → velocity; ``hidden``, ``depth``).

Metrics (val/test): generated samples are the Euler solution at t = 1 from a fixed set of source points (the same
in every run), compared with the split's data points by the exact 2-Wasserstein distance of the two point clouds
(:func:`wasserstein2`, an optimal assignment of equal-size sets with ``scipy.optimize.linear_sum_assignment``):

* ``w2`` (primary, lower is better): Euler with ``data.options.ode_steps`` steps (default 100, near the exact flow);
* ``w2_euler_{1,2,5,20}`` and ``w2_midpoint_{1,2,5}`` (2 evaluations per step): error against the step count;
* ``mode_coverage`` (``eight_gaussians`` only, else NaN): the fraction of the 8 modes that hold at least a quarter of
  their share of the samples within 3 standard deviations of their centre; ``in_mode``: the fraction of samples
  within 3 standard deviations of some centre;
* ``loss``: the CFM loss on the split's points with fixed independent pairs (it does not reward straighter
  couplings, so it is no quality measure across methods).

Data (offline, rebuilt from constant seeds, so every run seed trains and tests on the same points):
``eight_gaussians`` (``auto``): 8 Gaussians of std 0.5 on the circle of radius 4 (about 8 source standard
deviations apart); ``moons``: scikit-learn's two moons (noise 0.1) × 3 − 1 (centred near 0); ``digits``:
scikit-learn's 1797 8×8 digits as 64-d points scaled to [−1, 1] (``x / 8 − 1``), the test split a seeded
``data.test_fraction`` of them; ``npz``: your ``x_train`` (and ``x_test``) arrays ``(N, d)``.
``data.options``: ``samples`` (training points of a toy, default 10000), ``eval_samples`` (points of a toy's
val/test split and the most generated samples compared, default 1000), ``ode_steps`` (default 100).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from regimen.data import DataError, DataSplits
from regimen.errors import ConfigurationError
from regimen.losses.cfm import cfm_loss, cfm_pairs, integrate_flow
from regimen.tasks.base import Task

__all__ = ["CFMPairs", "FlowMatchingTask", "PointSet", "VelocityMLP", "eight_gaussians", "mode_coverage", "moons",
           "wasserstein2"]

_DATA_OPTIONS = {"samples": int, "eval_samples": int, "ode_steps": int}
#: The step counts of the error-vs-steps metrics.
EULER_STEPS = (1, 2, 5, 20)
MIDPOINT_STEPS = (1, 2, 5)
#: Seeds of the toy sets and of the evaluation's source points: constants, so every run sees the same points.
TRAIN_SEED, VAL_SEED, TEST_SEED, EVAL_NOISE_SEED = 11, 12, 13, 14
RADIUS, MODE_STD = 4.0, 0.5


# ------------------------------------------------------------------------------------------------------ data
def _eight_centres() -> torch.Tensor:
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)


def eight_gaussians(n: int, seed: int) -> torch.Tensor:
    """``n`` points of the 8-Gaussian mixture (equal weights, std 0.5, centres on the circle of radius 4)."""
    g = torch.Generator().manual_seed(seed)
    modes = torch.randint(0, 8, (n,), generator=g)
    return (_eight_centres()[modes] + MODE_STD * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def moons(n: int, seed: int) -> torch.Tensor:
    """``n`` points of scikit-learn's two moons (noise 0.1), × 3 − 1."""
    from sklearn.datasets import make_moons

    points, _ = make_moons(n, noise=0.1, random_state=seed)
    return torch.from_numpy(points * 3 - 1).float()


def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().data / 8.0 - 1.0).float()


class PointSet:
    """A split's data points ``(N, d)`` (evaluation compares generated samples with them)."""

    def __init__(self, points: torch.Tensor, name: str = "points") -> None:
        self.points = points
        self.name = name

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.points.shape[1] + 1,)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def subset(self, indices: torch.Tensor) -> PointSet:
        return PointSet(self.points[indices], self.name)


class CFMPairs(PointSet):
    """Training data: ``gather(indices)`` pairs the data points at ``indices`` with fresh source points and times,
    drawn from a generator seeded by ``seed`` and the indices (the same batch gives the same draws)."""

    def __init__(self, points: torch.Tensor, seed: int = 0, name: str = "points") -> None:
        super().__init__(points, name)
        self.seed = seed

    def subset(self, indices: torch.Tensor) -> CFMPairs:
        return CFMPairs(self.points[indices], self.seed, self.name)

    def gather(self, indices: torch.Tensor, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        digest = hashlib.blake2b(indices.to(torch.int64).cpu().numpy().tobytes(), digest_size=7,
                                 key=str(self.seed).encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest, "little"))
        x1 = self.points[indices]
        x0 = torch.randn(x1.shape, generator=g, dtype=x1.dtype)
        t = torch.rand(x1.shape[0], generator=g, dtype=x1.dtype)
        inputs, target = cfm_pairs(x0, x1, t)
        return inputs.to(device), target.to(device)


# ----------------------------------------------------------------------------------------------------- model
class VelocityMLP(nn.Module):
    """``v_θ([x, t])``: an MLP on the point and its time, ``(N, dim + 1)`` → ``(N, dim)`` (SiLU, ``depth`` hidden
    layers of ``hidden`` units)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        for key, value in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VelocityMLP: {key} must be an int >= 1, got {value!r}")
        self.dim = dim
        layers: list[nn.Module] = []
        width = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim + 1:
            raise ValueError(f"VelocityMLP: input must be [x, t] of shape (N, {self.dim + 1}), got {tuple(x.shape)}")
        return self.net(x)


# --------------------------------------------------------------------------------------------------- metrics
def wasserstein2(a: torch.Tensor, b: torch.Tensor) -> float:
    """The exact 2-Wasserstein distance between two equal-size point clouds with uniform weights:
    ``sqrt(min_σ (1/n) Σ_i ‖a_i − b_σ(i)‖²)`` (an optimal assignment, ``scipy.optimize.linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"point clouds must be (n, d) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    cost = torch.cdist(a.double(), b.double()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(math.sqrt(cost[rows, cols].mean()))


def mode_coverage(samples: torch.Tensor, centres: torch.Tensor, std: float,
                  min_share: float = 0.25) -> tuple[float, float]:
    """``(coverage, in_mode)``: the fraction of modes that hold at least ``min_share`` of their equal share of the
    samples within ``3 std`` of their centre, and the fraction of samples within ``3 std`` of a centre."""
    distances = torch.cdist(samples.double(), centres.double())
    nearest, mode = distances.min(dim=1)
    hit = nearest <= 3 * std
    counts = torch.bincount(mode[hit], minlength=centres.shape[0]).double()
    expected = samples.shape[0] / centres.shape[0]
    return float((counts >= min_share * expected).double().mean()), float(hit.double().mean())


# ------------------------------------------------------------------------------------------------------ task
class FlowMatchingTask(Task):
    """Generate points by flow matching (2-D toys, 64-d digits): CFM loss, 2-Wasserstein, modes, error vs ODE steps."""

    name = "flow_matching"
    input_kind = "flow"
    target_kind = "flow"
    metrics = ("loss", "w2", *(f"w2_euler_{s}" for s in EULER_STEPS), *(f"w2_midpoint_{s}" for s in MIDPOINT_STEPS),
               "mode_coverage", "in_mode")
    primary_metric = "w2"
    higher_is_better_metrics = ("mode_coverage", "in_mode")
    higher_is_better = False
    data_names = ("auto", "eight_gaussians", "moons", "digits", "npz")
    model_names = ("velocity_mlp",)
    default_model = "velocity_mlp"
    data_arguments: ClassVar[tuple[str, ...]] = ("dim",)
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    def data_options(self) -> dict[str, int]:
        options = self.typed_data_options(_DATA_OPTIONS)
        for key, value in options.items():
            if value < 1:
                raise ConfigurationError(f"data.options.{key}: expected an int >= 1, got {value!r}")
        options.setdefault("samples", 10_000)
        options.setdefault("eval_samples", 1000)
        options.setdefault("ode_steps", 100)
        if options["eval_samples"] < 2:
            raise ConfigurationError(f"data.options.eval_samples must be >= 2, got {options['eval_samples']}")
        return options

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        self.data_options()

    def model_class(self, name: str) -> type | None:
        return VelocityMLP

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        cfg, options = self.recipe.data, self.data_options()
        name = "eight_gaussians" if cfg.name == "auto" else cfg.name
        n, m = options["samples"], options["eval_samples"]
        if name in ("eight_gaussians", "moons"):
            draw = eight_gaussians if name == "eight_gaussians" else moons
            train = draw(n, TRAIN_SEED)
            val = draw(m, VAL_SEED) if cfg.val_fraction > 0 else None
            test = draw(m, TEST_SEED)
            sources = {"train": f"{n} points of {name} (seed {TRAIN_SEED})",
                       "val": f"{m} fresh points (seed {VAL_SEED})", "test": f"{m} fresh points (seed {TEST_SEED})"}
        else:
            if name == "digits":
                points, test = _digits(), None
                where = "data.name = 'digits'"
            else:
                if cfg.root is None:
                    raise DataError("data.root: data.name = 'npz' needs the .npz file (arrays x_train, x_test)")
                points, test = _npz_points(Path(cfg.root))
                where = "data.root"
            if test is None:
                order = torch.randperm(len(points), generator=torch.Generator().manual_seed(TEST_SEED))
                held = max(1, round(cfg.test_fraction * len(points)))
                points, test = points[order[held:]], points[order[:held]]
            val = None
            if cfg.val_fraction > 0:
                seeded = torch.Generator().manual_seed(VAL_SEED + self.recipe.seed)
                order = torch.randperm(len(points), generator=seeded)
                held = max(1, round(cfg.val_fraction * len(points)))
                points, val = points[order[held:]], points[order[:held]]
            train = points
            _check_dims({"train": train, "val": val, "test": test}, where)
            sources = {"train": f"{name} points", "val": f"seeded {cfg.val_fraction:g} of the training points",
                       "test": f"seeded {cfg.test_fraction:g} of {name}, held out"}
        if cfg.train_subset is not None and cfg.train_subset < len(train):
            train = train[:cfg.train_subset]
        if cfg.test_subset is not None and cfg.test_subset < len(test):
            test = test[:cfg.test_subset]
        return DataSplits(CFMPairs(train, self.recipe.seed, name), None if val is None else PointSet(val, name),
                          PointSet(test, name), sources=sources)

    def adopt_data(self, data: Any) -> DataSplits:
        """A dict ``{"train": points, "val": points, "test": points}`` of ``(N, d)`` float tensors (``val`` and
        ``test`` optional), or ``DataSplits``."""
        if isinstance(data, DataSplits):
            return data
        if isinstance(data, torch.Tensor):
            data = {"train": data}
        if not (isinstance(data, dict) and "train" in data and set(data) <= {"train", "val", "test"}):
            raise DataError("data: the flow_matching task takes a dict {'train': points, 'val': ..., 'test': ...} of "
                            "(N, d) tensors, or DataSplits")
        _check_dims(data, "data")
        return DataSplits(CFMPairs(data["train"].float(), self.recipe.seed, "user data"),
                          *(PointSet(data[k].float(), "user data") if data.get(k) is not None else None
                            for k in ("val", "test")), sources={k: "user data" for k in data})

    # ----------------------------------------------------------------------------------------------------- model
    def build_model(self, data: DataSplits) -> nn.Module:
        return VelocityMLP(dim=data.train.dim, **self.recipe.model.options)

    def loss(self) -> Callable[..., torch.Tensor]:
        return cfm_loss

    # --------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Generate as many samples as the split has points (at most ``eval_samples``) from fixed source points and
        compare; every rank computes the same numbers (no sharding)."""
        was_training = model.training
        model.eval()
        options = self.data_options()
        points = dataset.points[:options["eval_samples"]]
        n, d = points.shape
        g = torch.Generator().manual_seed(EVAL_NOISE_SEED)
        x0 = torch.randn(n, d, generator=g)
        t = torch.rand(n, generator=g)

        def velocity(x: torch.Tensor) -> torch.Tensor:
            return model(normalize(x.to(device))).float().cpu()

        inputs, target = cfm_pairs(x0, points, t)
        results = {"loss": float(cfm_loss(velocity(inputs), target))}
        samples = integrate_flow(velocity, x0, options["ode_steps"], "euler")
        results["w2"] = wasserstein2(samples, points)
        for solver, counts in (("euler", EULER_STEPS), ("midpoint", MIDPOINT_STEPS)):
            for steps in counts:
                results[f"w2_{solver}_{steps}"] = wasserstein2(integrate_flow(velocity, x0, steps, solver), points)
        if dataset.name == "eight_gaussians":
            results["mode_coverage"], results["in_mode"] = mode_coverage(samples, _eight_centres(), MODE_STD)
        else:
            results["mode_coverage"] = results["in_mode"] = math.nan
        model.train(was_training)
        return results

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("flow_matching evaluates whole point clouds (see FlowMatchingTask.evaluate)")


def _npz_points(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not path.is_file():
        raise DataError(f"data.root: npz file not found: {path}")
    with np.load(path) as arrays:
        if "x_train" not in arrays:
            raise DataError(f"data.root: {path} has no x_train array (found {sorted(arrays)})")
        train = torch.from_numpy(np.asarray(arrays["x_train"], dtype=np.float32))
        test = torch.from_numpy(np.asarray(arrays["x_test"], dtype=np.float32)) if "x_test" in arrays else None
    return train, test


def _check_dims(splits: dict[str, Any], where: str) -> None:
    """Every split is an ``(N, d)`` float tensor of finite points with the training set's ``d``."""
    dim = None
    for key in ("train", "val", "test"):
        points = splits.get(key)
        if points is None:
            continue
        label = f"{where}[{key!r}]" if where == "data" else f"{where} ({key} points)"
        if not isinstance(points, torch.Tensor) or not points.is_floating_point():
            raise DataError(f"{label}: flow-matching points must be a float tensor (N, d), got "
                            f"{getattr(points, 'dtype', type(points).__name__)}")
        if points.dim() != 2 or points.shape[0] < 2:
            raise DataError(f"{label}: flow-matching points must be (N, d) rows with N >= 2, got shape "
                            f"{tuple(points.shape)}; flatten images to rows first")
        if dim is not None and points.shape[1] != dim:
            raise DataError(f"{label}: points have {points.shape[1]} dimensions, the training points {dim}")
        if not torch.isfinite(points).all():
            raise DataError(f"{label}: points contain NaN or inf")
        dim = points.shape[1] if dim is None else dim
