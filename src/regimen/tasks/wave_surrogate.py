"""``task = "wave_surrogate"``: learn one time step of the 2-D wave equation from finite-difference simulations.

Paper (the setting): Chiu et al., "A-priori compression of convolutional neural networks for wave simulators", 2023,
arXiv 2304.04964, which trains convolutional surrogates of the wave equation with kernels factorised as sums of outer
products of 1-D filters (``regimen.subnet.cp_kernels``); its data, grid and network were not readable here, so this
task is regimen's own small version of that setting. The simulations are generated offline, here, by
:mod:`regimen.data.wave`: the leapfrog scheme ``u^{t+1} = 2 u^t − u^{t−1} + λ² Δ_h u^t`` (5-point Laplacian,
Courant number ``λ = c dt / dx``) from random Gaussian pulses at rest, a frame recorded every ``stride`` steps.

A sample is one step of a trajectory: the input ``(u_{k−1}, u_k)`` ``(2, n, n)``, the target ``u_{k+1}``
``(1, n, n)``. Trajectories come from ``torch.Generator().manual_seed(data_seed)`` (a constant, default 0, so every run
seed trains and tests on the same fields): ``train_trajectories`` for training, ``eval_trajectories`` for the test
split (their own generator stream, so changing the training set does not change the test set), and
``round(data.val_fraction · train_trajectories)`` of the training trajectories held out (whole trajectories, chosen
with ``data_seed``) for validation. Every field is divided by one number, the standard deviation of the training
trajectories' frames, so the loss is in standardised units; the relative errors below do not depend on it.

The default model is :class:`WaveUNet`, a small U-Net predicting the increment ``u_{k+1} − u_k`` (``levels``
resolutions, two ``kernel_size × kernel_size`` convolutions with GELU per level, average-pool down, bilinear up,
skip connections by concatenation, a 1×1 output convolution). The loss is the mean squared error per sample.

Metrics of a split (lower is better):

* ``loss``: the mean squared error, standardised units;
* ``one_step_error`` (primary): the mean over the split's pairs of the relative L2 error
  ``‖f(u_{k−1}, u_k) − u_{k+1}‖₂ / ‖u_{k+1}‖₂``;
* ``rollout_error``: from frames 0 and 1 of each of the split's trajectories, the model is applied autoregressively
  ``rollout_steps`` times (each output fed back as the newest frame); the mean over trajectories of the relative L2
  error of the last prediction against frame ``rollout_steps + 1``.

Data (``data.name``: ``auto`` or ``wave``). ``data.options`` (defaults in :data:`DEFAULTS`): ``size`` (grid points per
side, 32; 64 is the paper-sized option), ``train_trajectories`` (48), ``eval_trajectories`` (16), ``frames`` (12 frames
per trajectory give the one-step pairs), ``stride`` (4), ``courant`` (0.5), ``boundary`` (``"neumann"``,
``"dirichlet"`` or ``"periodic"``), ``pulses`` (2), ``width`` (0.06 of the side), ``rollout_steps`` (20; trajectories
are simulated for ``max(frames, rollout_steps + 2)`` frames) and ``data_seed`` (0). ``data.train_subset`` keeps a
seeded subset of the training pairs; ``data.test_subset`` is refused (the test set is ``eval_trajectories``).

Bad input: an unknown option, a value of the wrong type or out of range, or a grid that the U-Net's levels cannot
halve are ConfigurationErrors naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import DataError, DataSplits, InMemoryLoader, TensorDataset
from regimen.errors import ConfigurationError
from regimen.tasks.base import Task

__all__ = ["DEFAULTS", "WaveSet", "WaveSurrogateTask", "WaveUNet", "relative_l2", "rollout", "wave_mse",
           "wave_splits"]

_DATA_OPTIONS = {"size": int, "train_trajectories": int, "eval_trajectories": int, "frames": int, "stride": int,
                 "courant": float, "boundary": str, "pulses": int, "width": float, "rollout_steps": int,
                 "data_seed": int}
DEFAULTS: dict[str, Any] = {"size": 32, "train_trajectories": 48, "eval_trajectories": 16, "frames": 12, "stride": 4,
                            "courant": 0.5, "boundary": "neumann", "pulses": 2, "width": 0.06, "rollout_steps": 20,
                            "data_seed": 0}
_BOUNDARIES = ("dirichlet", "neumann", "periodic")


# ---------------------------------------------------------------------------------------------------- functions
def relative_l2(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample ``‖prediction − target‖₂ / ‖target‖₂`` of ``(N, ...)`` tensors, as ``(N,)`` float64 (the target
    norm is clamped at 1e-12)."""
    if not isinstance(prediction, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("prediction and target must be tensors")
    if prediction.shape != target.shape or prediction.dim() < 1:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must have one shape "
                         "(N, ...)")
    difference = (prediction.double() - target.double()).reshape(len(target), -1).norm(dim=1)
    return difference / target.double().reshape(len(target), -1).norm(dim=1).clamp_min(1e-12)


def wave_mse(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error of predicted fields ``(N, 1, n, m)`` against targets of the same shape, per sample the mean over
    its grid points: those ``(N,)`` for ``reduction="none"``, their sum for ``"sum"``, their mean for ``"mean"``."""
    if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor) or output.shape != target.shape:
        raise ValueError(f"wave surrogate outputs {tuple(getattr(output, 'shape', ()))} must have the targets' shape "
                         f"{tuple(getattr(target, 'shape', ()))}")
    per_sample = (output.float() - target.float()).pow(2).reshape(len(target), -1).mean(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


@torch.no_grad()
def rollout(model: Callable[[torch.Tensor], torch.Tensor], first: torch.Tensor, second: torch.Tensor,
            steps: int) -> torch.Tensor:
    """Apply the one-step ``model`` ``steps`` times from frames ``first`` and ``second`` ``(N, 1, n, m)``: each
    prediction becomes the newest frame. Returns the last prediction ``(N, 1, n, m)``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if first.shape != second.shape or first.dim() != 4 or first.shape[1] != 1:
        raise ValueError(f"first and second must be (N, 1, n, m) of one shape, got {tuple(first.shape)} and "
                         f"{tuple(second.shape)}")
    previous, current = first, second
    for _ in range(steps):
        previous, current = current, model(torch.cat([previous, current], dim=1))
    return current


@dataclass
class WaveSet(TensorDataset):
    """One-step pairs of some trajectories: ``inputs`` ``(N, 2, n, n)`` = ``(u_{k−1}, u_k)``, ``targets``
    ``(N, 1, n, n)`` = ``u_{k+1}``, and the ``trajectories`` ``(M, T, n, n)`` they came from (for the rollout error;
    ``rollout_steps + 2 <= T``). Fields in standardised units (divided by ``scale``)."""

    trajectories: torch.Tensor | None = None
    rollout_steps: int = 20
    scale: float = 1.0

    def subset(self, indices: torch.Tensor) -> WaveSet:
        return WaveSet(self.inputs[indices], self.targets[indices], self.name, None, self.trajectories,
                       self.rollout_steps, self.scale)


def _pairs(trajectories: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    from regimen.data.wave import wave_pairs

    return wave_pairs(trajectories[:, :frames].contiguous())


def wave_splits(options: dict[str, Any], val_fraction: float = 0.0) -> tuple[WaveSet, WaveSet | None, WaveSet]:
    """Train / validation / test :class:`WaveSet` of the ``options`` (every key of :data:`DEFAULTS`), as the module
    docstring describes (validation: ``None`` when ``round(val_fraction · train_trajectories)`` is 0)."""
    from regimen.data.wave import wave_trajectories

    missing = set(DEFAULTS) - set(options)
    if missing:
        raise ValueError(f"options lacks {', '.join(sorted(missing))}")
    total_frames = max(options["frames"], options["rollout_steps"] + 2)
    simulate = {key: options[key] for key in ("size", "stride", "courant", "pulses", "width", "boundary")}
    seed = options["data_seed"]
    train = wave_trajectories(options["train_trajectories"], frames=total_frames,
                              generator=torch.Generator().manual_seed(seed), **simulate)
    test = wave_trajectories(options["eval_trajectories"], frames=total_frames,
                             generator=torch.Generator().manual_seed(seed + 1_000_003), **simulate)
    num_val = round(val_fraction * options["train_trajectories"])
    if num_val >= options["train_trajectories"]:
        raise DataError(f"data.val_fraction = {val_fraction} leaves no training trajectory of "
                        f"{options['train_trajectories']}")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 2_000_003))
    val_part, train_part = train[order[:num_val].sort().values], train[order[num_val:].sort().values]
    scale = float(train_part[:, :options["frames"]].std())
    if not scale > 0:
        raise DataError("the training trajectories are constant (zero standard deviation)")

    def make(trajectories: torch.Tensor, name: str) -> WaveSet:
        trajectories = trajectories / scale
        inputs, targets = _pairs(trajectories, options["frames"])
        return WaveSet(inputs, targets, name, None, trajectories, options["rollout_steps"], scale)

    return (make(train_part, "wave-train"), make(val_part, "wave-val") if num_val else None, make(test, "wave-test"))


# -------------------------------------------------------------------------------------------------------- model
class WaveUNet(nn.Module):
    """A small U-Net one-step surrogate: ``(N, in_channels, n, m)`` frames (oldest first) → the next frame
    ``(N, 1, n, m)`` as the newest input frame plus a predicted increment.

    Level ``l`` (0 … ``levels − 1``) has ``width · 2^l`` channels and two ``kernel_size × kernel_size`` convolutions
    ("same" padding) with ``activation``; the encoder halves the grid between levels (average pooling), the decoder
    upsamples (bilinear) and concatenates the skip connection; a 1×1 convolution gives the increment. ``n`` and ``m``
    must be divisible by ``2^(levels − 1)``.
    """

    def __init__(self, in_channels: int = 2, width: int = 8, kernel_size: int = 3, levels: int = 2,
                 activation: str = "gelu") -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("width", width, 1), ("levels", levels, 1),
                                 ("kernel_size", kernel_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        activations = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
        if activation not in activations:
            raise ValueError(f"activation must be one of {', '.join(activations)}, got {activation!r}")
        self.levels = levels
        pad = kernel_size // 2

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, kernel_size, padding=pad), activations[activation](),
                                 nn.Conv2d(o, o, kernel_size, padding=pad), activations[activation]())

        widths = [width * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList([block(in_channels, widths[0])]
                                      + [block(widths[i - 1], widths[i]) for i in range(1, levels)])
        self.decoders = nn.ModuleList([block(widths[i] + widths[i + 1], widths[i]) for i in range(levels - 1)])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.dim() != 4 or x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"WaveUNet takes (N, C, n, m) fields with n and m divisible by {factor}, got "
                             f"{tuple(x.shape)}")
        skips = []
        h = x
        for level, encoder in enumerate(self.encoders):
            h = encoder(F.avg_pool2d(h, 2) if level else h)
            skips.append(h)
        for level in reversed(range(self.levels - 1)):
            h = F.interpolate(h, scale_factor=2.0, mode="bilinear", align_corners=False)
            h = self.decoders[level](torch.cat([skips[level], h], dim=1))
        return x[:, -1:] + self.head(h)


# --------------------------------------------------------------------------------------------------------- task
class WaveSurrogateTask(Task):
    """Predict the next frame of a 2-D wave-equation simulation (finite differences): one-step and rollout error."""

    name = "wave_surrogate"
    input_kind = "field"
    target_kind = "field"
    metrics = ("loss", "one_step_error", "rollout_error")
    primary_metric = "one_step_error"
    higher_is_better = False
    train_metrics = ()
    data_names = ("auto", "wave")
    model_names = ("unet",)
    default_model = "unet"
    data_arguments: ClassVar[tuple[str, ...]] = ("in_channels",)
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        """The recipe's ``data.options`` over :data:`DEFAULTS`, each checked (a ConfigurationError naming the key)."""
        options = {**DEFAULTS, **self.typed_data_options(_DATA_OPTIONS)}
        lows = {"size": 4, "train_trajectories": 1, "eval_trajectories": 1, "frames": 3, "stride": 1, "pulses": 1,
                "rollout_steps": 1, "data_seed": 0}
        for key, low in lows.items():
            if options[key] < low:
                raise ConfigurationError(f"data.options.{key} must be >= {low}, got {options[key]!r}")
        if not 0.0 < options["courant"] <= 1.0 / math.sqrt(2.0):
            raise ConfigurationError(f"data.options.courant must be in (0, 1/sqrt(2)] (a stable 2-D leapfrog), got "
                                     f"{options['courant']!r}")
        if not options["width"] > 0:
            raise ConfigurationError(f"data.options.width must be > 0, got {options['width']!r}")
        if options["boundary"] not in _BOUNDARIES:
            raise ConfigurationError(f"data.options.boundary must be one of {', '.join(_BOUNDARIES)}, got "
                                     f"{options['boundary']!r}")
        return options

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        options = self.data_options()
        data = self.recipe.data
        if data.test_subset is not None:
            raise ConfigurationError("data.test_subset: the wave_surrogate task tests on "
                                     "data.options.eval_trajectories whole trajectories; set that instead")
        if round(data.val_fraction * options["train_trajectories"]) >= options["train_trajectories"]:
            raise ConfigurationError(f"data.val_fraction = {data.val_fraction} leaves none of the "
                                     f"{options['train_trajectories']} training trajectories")
        model = self.recipe.model
        if not user_model and (model.name or self.default_model) == "unet":
            levels = model.options.get("levels", 2)
            if isinstance(levels, int) and not isinstance(levels, bool) and levels >= 1 \
                    and options["size"] % 2 ** (levels - 1):
                raise ConfigurationError(f"data.options.size = {options['size']} is not divisible by "
                                         f"2^(levels - 1) = {2 ** (levels - 1)} (model.options.levels = {levels})")

    def model_class(self, name: str) -> type | None:
        return WaveUNet

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        options = self.data_options()
        train, val, test = wave_splits(options, self.recipe.data.val_fraction)
        train = self._subset(train)
        grid = f"{options['size']}x{options['size']} grid, {options['boundary']} walls"
        sources = {"train": f"{len(train)} one-step pairs of {len(train.trajectories)} simulated trajectories ({grid})",
                   "val": f"{len(val.trajectories)} held-out training trajectories" if val is not None else "none",
                   "test": f"{options['eval_trajectories']} other simulated trajectories"}
        return DataSplits(train, val, test, sources=sources)

    def _subset(self, train: WaveSet) -> WaveSet:
        limit = self.recipe.data.train_subset
        if limit is not None and limit < len(train):
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.recipe.seed + 1))
            train = train.subset(order[:limit])
        return train

    def adopt_data(self, data: Any) -> DataSplits:
        """``DataSplits`` of :class:`WaveSet`, or trajectories ``(N, T, n, m)`` (float, ``T >= 3``): split as the
        recipe's ``data.val_fraction`` says (whole trajectories; the test split is the validation one when
        ``val_fraction`` is 0 — pass DataSplits for a separate test set) and standardised by the training std."""
        if isinstance(data, DataSplits):
            for split in (data.train, data.val, data.test):
                if split is not None and not isinstance(split, WaveSet):
                    raise DataError(f"data: the wave_surrogate task takes DataSplits of WaveSets, got a "
                                    f"{type(split).__name__}")
            return data
        if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() != 4 \
                or data.shape[1] < 3 or len(data) < 2:
            raise DataError(f"data: the wave_surrogate task takes trajectories, a float tensor (N >= 2, T >= 3, n, m),"
                            f" or DataSplits of WaveSets; got {type(data).__name__} "
                            f"{tuple(getattr(data, 'shape', ()))}")
        if not torch.isfinite(data).all():
            raise DataError("data: the trajectories hold NaN or infinite values")
        frames = data.shape[1]
        steps = min(self.data_options()["rollout_steps"], frames - 2)
        num_val = max(1, round(self.recipe.data.val_fraction * len(data)))
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.data_options()["data_seed"]))
        held, kept = data[order[:num_val].sort().values], data[order[num_val:].sort().values]
        scale = float(kept.std())
        if not scale > 0:
            raise DataError("data: the training trajectories are constant (zero standard deviation)")

        def make(trajectories: torch.Tensor, name: str) -> WaveSet:
            trajectories = trajectories.float() / scale
            inputs, targets = _pairs(trajectories, frames)
            return WaveSet(inputs, targets, name, None, trajectories, steps, scale)

        held_set = make(held, "user-held-out")
        return DataSplits(self._subset(make(kept, "user-train")), held_set, held_set,
                          sources={"train": f"{len(kept)} user trajectories", "val": f"{num_val} user trajectories",
                                   "test": "the validation trajectories"})

    # ----------------------------------------------------------------------------------------------------- model
    def build_model(self, data: DataSplits) -> nn.Module:
        return WaveUNet(in_channels=int(data.train.inputs.shape[1]), **self.recipe.model.options)

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        return wave_mse

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sums over the batch of the squared error (mean over grid points) and of the relative L2 error."""
        return torch.stack([wave_mse(output.double(), target.double(), "sum").double(),
                            relative_l2(output, target).sum()])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """Loss and one-step error over the split's pairs (sharded over ranks, summed), and the rollout error over
        its trajectories (every rank rolls out all of them)."""
        if not isinstance(dataset, WaveSet) or dataset.trajectories is None:
            raise DataError("the wave_surrogate task evaluates WaveSets (pairs with their trajectories)")
        was_training = model.training
        model.eval()
        loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                                world_size=world_size, device=device)
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for x, y, _ in loader:
            if len(y) == 0:
                continue
            totals[:2] += self.eval_sums(model(normalize(x)), y).to(device)
            totals[2] += len(y)
        if all_reduce is not None:
            totals = all_reduce(totals, "sum")
        trajectories = dataset.trajectories.to(device)
        steps = dataset.rollout_steps
        errors = []
        for start in range(0, len(trajectories), max(1, batch_size)):
            chunk = trajectories[start:start + batch_size]
            last = rollout(lambda fields: model(normalize(fields)), chunk[:, 0:1], chunk[:, 1:2], steps)
            errors.append(relative_l2(last, chunk[:, steps + 1:steps + 2]))
        model.train(was_training)
        count = max(totals[2].item(), 1.0)
        return {"loss": totals[0].item() / count, "one_step_error": totals[1].item() / count,
                "rollout_error": torch.cat(errors).mean().item()}
