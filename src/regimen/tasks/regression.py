"""``task = "regression"``: real-valued targets with an imbalanced training distribution, or only bag-mean labels.

Data (``data.name``; generated with a seed so a reader can rebuild them):

* ``rotation`` (also ``auto``): Fashion-MNIST images rotated counter-clockwise by θ degrees, the target. Training
  angles follow a truncated exponential on [0, ``max_angle``) with scale ``tail_scale`` (density ∝ e^{-θ/s}: many
  samples at small angles, a long tail of few at large ones), drawn by inverse CDF
  ``θ = -s·ln(1 - u·(1 - e^{-max/s}))``, u ~ U(0, 1); validation and test angles are uniform on [0, ``max_angle``)
  (the DIR protocol: a balanced test set, Yang et al. 2021, arXiv 2102.09554). Angles and the images they rotate
  come from ``torch.Generator().manual_seed(data_seed)`` (default 0; the run seed only draws the validation split),
  images rotated by ``affine_grid``/``grid_sample`` (bilinear, zero padding). Training images: the first
  ``data.train_subset`` (default 6000) of a seeded permutation of Fashion-MNIST's training set; test images: the first
  ``data.test_subset`` (default 2000) test images.
* ``diabetes``: scikit-learn's diabetes set (442 patients, 10 standardised features, a disease-progression score
  25-346); ``data.test_fraction`` held out with a constant seed. With ``data.options.bag_size = k`` the training set
  becomes bags: a seeded random partition into bags of k patients (the last incomplete bag dropped) whose only label
  is the mean score (learning from aggregate responses, Javanmard et al., ICLR 2024, arXiv 2401.11081); training
  batches are ``(bags (B, k, 10), bag means (B,))``, evaluation stays per patient.

Batches are ``(inputs, targets float (N,))``. The default model wraps regimen's ResNet (rotation) or an MLP
(diabetes) with one output, rescaled by the training targets' mean and standard deviation (fixed buffers), so
targets stay in their own units (degrees, score points). The default loss is the mean squared error; on bags the
instance-level loss ``mean_i (f(x_i) - ȳ_bag)²`` (``aggregate_loss`` offers the bag-level and interpolating ones).

Metrics (lower is better): ``mae`` (primary), ``mse``, and the MAE on the many-, medium- and few-shot bins
(``mae_many``, ``mae_medium``, ``mae_few``): the target range is cut into bins of ``data.options.bin_width`` (rotation
1°, diabetes 10 points) and a bin is many-shot with more than ``many_shot`` (100) training targets, few-shot with
fewer than ``few_shot`` (20), medium-shot otherwise (the DIR convention; NaN when a split has no sample in a group).

Bad input: a target that is NaN or infinite, or a bag size < 1, is refused naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import DataError, DataSplits, TensorDataset
from regimen.errors import ConfigurationError
from regimen.tasks.base import Task

__all__ = ["RegressionTask", "Regressor", "check_targets", "regression_loss", "rotate_images",
           "truncated_exponential"]

_DATA_OPTIONS = {"tail_scale": float, "max_angle": float, "data_seed": int, "bin_width": float, "few_shot": int,
                 "many_shot": int, "bag_size": int}
DEFAULT_TRAIN_IMAGES = 6000
DEFAULT_TEST_IMAGES = 2000


def truncated_exponential(n: int, scale: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """``n`` draws of the exponential with ``scale`` truncated to [0, high), by inverse CDF (float64)."""
    if not (scale > 0 and high > 0):
        raise ValueError(f"scale and high must be > 0, got {scale} and {high}")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return -scale * torch.log1p(-u * (1.0 - math.exp(-high / scale)))


def rotate_images(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate ``(N, C, H, W)`` float images counter-clockwise by ``degrees (N,)`` about their centre (bilinear, zero
    padding)."""
    theta = torch.deg2rad(degrees.float())
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(cos)
    # affine_grid maps output coordinates to input ones: the inverse rotation (y axis points down in images)
    matrix = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def check_targets(targets: torch.Tensor, where: str) -> torch.Tensor:
    """Float targets ``(N,)`` without NaN or infinity, else a DataError naming ``where`` and the first bad row."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point() or targets.dim() != 1:
        raise DataError(f"{where}: regression targets must be a float tensor (N,), got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
    bad = (~torch.isfinite(targets)).nonzero()
    if len(bad):
        raise DataError(f"{where}: regression target {targets[bad[0, 0]].item()} at row {bad[0, 0].item()} "
                        "(targets must be finite)")
    return targets


def regression_loss(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error of predictions ``(N,)`` against targets ``(N,)``; on bags, predictions ``(B, k)`` against bag
    means ``(B,)``, the instance-level loss ``mean_i (f_i - ȳ)²`` per bag. ``reduction``: mean, sum or none."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if output.dim() == target.dim() + 1:
        per = (output.float() - target.float().unsqueeze(-1)).square().mean(-1)
    elif output.shape == target.shape:
        per = (output.float() - target.float()).square()
    else:
        raise ValueError(f"predictions {tuple(output.shape)} do not match targets {tuple(target.shape)}")
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.mean()


class Regressor(nn.Module):
    """``net`` (one output) applied to each sample of ``(..., *input_shape)`` inputs, rescaled to target units:
    ``net(x) · std + mean`` with the training targets' ``mean`` and ``std`` (buffers). Returns ``(...)``."""

    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.input_shape = tuple(input_shape)
        self.register_buffer("target_mean", torch.tensor(float(mean)))
        self.register_buffer("target_std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[: x.dim() - len(self.input_shape)]
        out = self.net(x.reshape(-1, *self.input_shape)).reshape(lead)
        return out * self.target_std + self.target_mean


class RegressionTask(Task):
    """Predict real-valued targets from an imbalanced training set (rotated Fashion-MNIST, diabetes bags): MAE
    overall and on few-shot bins, MSE."""

    name = "regression"
    input_kind = "any"
    target_kind = "real"
    metrics: ClassVar[tuple[str, ...]] = ("mae", "mse", "mae_many", "mae_medium", "mae_few")
    primary_metric = "mae"
    higher_is_better = False
    train_metrics = ()
    data_names = ("auto", "rotation", "diabetes")
    model_names = ("resnet", "mlp")
    default_model = ""
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)
    data_arguments = ("in_channels", "in_features", "num_classes")

    def __init__(self, recipe: Any) -> None:
        super().__init__(recipe)
        self.options = self.data_options()
        self.source = "diabetes" if recipe.data.name == "diabetes" else "rotation"
        self.input_kind_of_data = "vector" if self.source == "diabetes" else "image"
        self.bin_counts: torch.Tensor | None = None
        self.bin_low = 0.0

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        diabetes = self.recipe.data.name == "diabetes"
        defaults = {"tail_scale": 20.0, "max_angle": 90.0, "data_seed": 0, "bin_width": 10.0 if diabetes else 1.0,
                    "few_shot": 20, "many_shot": 100, "bag_size": 0}
        options = {**defaults, **options}
        for key in ("tail_scale", "max_angle", "bin_width"):
            if not options[key] > 0:
                raise ConfigurationError(f"data.options.{key} must be > 0, got {options[key]}")
        if "bag_size" in (getattr(self.recipe.data, "options", {}) or {}):
            if not diabetes:
                raise ConfigurationError("data.options.bag_size: bags are built for data.name = 'diabetes' only")
            if options["bag_size"] < 1:
                raise ConfigurationError(f"data.options.bag_size must be >= 1 (a bag needs members), got "
                                         f"{options['bag_size']}")
        if not 0 <= options["few_shot"] <= options["many_shot"]:
            raise ConfigurationError(f"data.options: expected 0 <= few_shot <= many_shot, got {options['few_shot']} "
                                     f"and {options['many_shot']}")
        return options

    def model_class(self, name: str) -> type | None:
        from regimen.models import MLP, ResNet

        return {"resnet": ResNet, "mlp": MLP}.get(name)

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        if not self.recipe.model.name and not user_model:
            self.default_model = "mlp" if self.source == "diabetes" else "resnet"
        super().check_recipe(user_model, user_data)

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        data = self._diabetes() if self.source == "diabetes" else self._rotation()
        self._set_bins(data.train.targets)
        return data

    def _rotation(self) -> DataSplits:
        from regimen.data import load_fashion_mnist
        from regimen.data.datasets import split_dataset

        cfg, o = self.recipe.data, self.options
        generator = torch.Generator().manual_seed(o["data_seed"])
        train_src, test_src = load_fashion_mnist(cfg.root, "train"), load_fashion_mnist(cfg.root, "test")
        n_train = min(cfg.train_subset or DEFAULT_TRAIN_IMAGES, len(train_src))
        n_test = min(cfg.test_subset or DEFAULT_TEST_IMAGES, len(test_src))
        chosen = torch.randperm(len(train_src), generator=generator)[:n_train]
        train_images, _ = train_src.gather(chosen)
        test_images, _ = test_src.gather(torch.arange(n_test))
        test_angles = torch.rand(n_test, generator=generator, dtype=torch.float64) * o["max_angle"]
        # the run seed holds out validation images; their angles are uniform, like the test set's
        train_part, val_part = split_dataset(TensorDataset(train_images, torch.arange(n_train)), cfg.val_fraction,
                                             self.recipe.seed)
        train_angles = truncated_exponential(n_train, o["tail_scale"], o["max_angle"], generator)
        uniform_angles = torch.rand(n_train, generator=generator, dtype=torch.float64) * o["max_angle"]
        train = TensorDataset(rotate_images(train_part.inputs, train_angles[train_part.targets]),
                              train_angles[train_part.targets].float(), "rotation-train")
        val = None
        if val_part is not None:
            val = TensorDataset(rotate_images(val_part.inputs, uniform_angles[val_part.targets]),
                                uniform_angles[val_part.targets].float(), "rotation-val")
        test = TensorDataset(rotate_images(test_images, test_angles), test_angles.float(), "rotation-test")
        pixels = train.inputs
        sources = {"train": f"{len(train)} Fashion-MNIST training images rotated by a truncated exponential "
                            f"(scale {o['tail_scale']:g}°, [0, {o['max_angle']:g}°), data_seed {o['data_seed']})",
                   "val": f"seeded {cfg.val_fraction:g} of those images, rotated uniformly",
                   "test": "Fashion-MNIST test images rotated uniformly"}
        return DataSplits(train, val, test, pixels.mean().view(1), pixels.std().view(1), sources)

    def _diabetes(self) -> DataSplits:
        import sklearn.datasets

        from regimen.data.datasets import split_dataset
        from regimen.data.select import TEST_SPLIT_SEED

        cfg, o = self.recipe.data, self.options
        bunch = sklearn.datasets.load_diabetes()
        data = TensorDataset(torch.from_numpy(np.asarray(bunch.data, dtype=np.float32)),
                             check_targets(torch.from_numpy(np.asarray(bunch.target, dtype=np.float32)),
                                           "diabetes target"), "diabetes")
        rest, test = split_dataset(data, cfg.test_fraction, TEST_SPLIT_SEED)
        train, val = split_dataset(rest, cfg.val_fraction, self.recipe.seed)
        if cfg.train_subset is not None and cfg.train_subset < len(train):
            train = train.subset(torch.arange(cfg.train_subset))
        sources = {"train": "scikit-learn diabetes", "val": f"seeded {cfg.val_fraction:g} of it",
                   "test": f"constant-seed {cfg.test_fraction:g} of it"}
        k = o["bag_size"]
        if k:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(o["data_seed"]))
            bags = len(train) // k
            if bags < 1:
                raise ConfigurationError(f"data.options.bag_size = {k} is larger than the {len(train)} training "
                                         "patients: no bag has members")
            index = order[: bags * k].view(bags, k)
            train = TensorDataset(train.inputs[index], train.targets[index].mean(1), "diabetes-bags")
            sources["train"] = (f"{bags} random bags of {k} diabetes patients (data_seed {o['data_seed']}), labelled "
                                "by their mean score only")
        return DataSplits(train, val, test, sources=sources)

    def adopt_data(self, data: Any) -> DataSplits:
        """``DataSplits``, or a dict ``{"train": (inputs, targets), "val": ..., "test": ...}`` of float tensors."""
        if isinstance(data, DataSplits):
            splits = data
        elif isinstance(data, dict) and "train" in data and set(data) <= {"train", "val", "test"}:
            made = {}
            for key, value in data.items():
                if value is None:
                    continue
                if not (isinstance(value, tuple | list) and len(value) == 2):
                    raise DataError(f"data[{key!r}]: expected an (inputs, targets) pair of tensors")
                inputs, targets = (torch.as_tensor(v) for v in value)
                made[key] = TensorDataset(inputs.float(), check_targets(targets, f"data[{key!r}] targets"),
                                          "user data")
            splits = DataSplits(made["train"], made.get("val"), made.get("test"),
                                sources={k: "user data" for k in made})
        else:
            raise DataError("data: the regression task takes DataSplits or a dict {'train': (inputs, targets), "
                            "'val': ..., 'test': ...}")
        for key in ("train", "val", "test"):
            split = getattr(splits, key)
            if split is not None:
                check_targets(split.targets.float(), f"data[{key!r}] targets")
        self._set_bins(splits.train.targets)
        return splits

    def _set_bins(self, targets: torch.Tensor) -> None:
        width = self.options["bin_width"]
        self.bin_low = float(targets.min())
        index = ((targets.double() - self.bin_low) / width).floor().long()
        self.bin_counts = torch.bincount(index)

    # ----------------------------------------------------------------------------------------------------- model
    def _input_shape(self, data: DataSplits) -> tuple[int, ...]:
        shape = tuple(data.train.input_shape)
        if self.source == "diabetes" and len(shape) == 2:  # bags (k, d): the model sees one patient at a time
            shape = shape[1:]
        return shape

    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import build_model

        shape = self._input_shape(data)
        name = self.recipe.model.name or ("mlp" if len(shape) == 1 else "resnet")
        options = dict(self.recipe.model.options)
        if name == "mlp":
            from regimen.models import MLP

            options.setdefault("hidden", [64, 64])
            net = MLP(in_features=int(np.prod(shape)), num_classes=1, **options)
        else:
            net = build_model(name, shape, 1, **options)
        targets = data.train.targets.double()
        return Regressor(net, shape, float(targets.mean()), float(targets.std().clamp_min(1e-6)))

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        return dict(super().model_spec(data), input_shape=list(self._input_shape(data)))

    def normalizer(self, data: DataSplits, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        if data.mean is None or not self.recipe.data.normalize:
            return super().normalizer(data, device)
        mean, std = float(data.mean), float(data.std)
        return lambda x: (x - mean) / std

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        return regression_loss

    def shot_groups(self, targets: torch.Tensor) -> torch.Tensor:
        """0 many-shot, 1 medium-shot, 2 few-shot: the group of each target's bin by its training count."""
        index = ((targets.double() - self.bin_low) / self.options["bin_width"]).floor().long()
        inside = (index >= 0) & (index < len(self.bin_counts))
        counts = torch.where(inside, self.bin_counts[index.clamp(0, len(self.bin_counts) - 1)], 0)
        few = counts < self.options["few_shot"]
        many = counts > self.options["many_shot"]
        return torch.where(few, 2, torch.where(many, 0, 1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """MAE, MSE and the MAE of each shot group over the whole split (every rank scores the whole split)."""
        was_training = model.training
        model.eval()
        predictions, targets = [], []
        for start in range(0, len(dataset), batch_size):
            x, y = dataset.gather(torch.arange(start, min(start + batch_size, len(dataset))), device)
            predictions.append(model(normalize(x)).double().cpu().reshape(-1))
            targets.append(y.double().cpu().reshape(-1))
        model.train(was_training)
        prediction, target = torch.cat(predictions), torch.cat(targets)
        error = (prediction - target).abs()
        groups = self.shot_groups(target)
        results = {"mae": float(error.mean()), "mse": float(error.square().mean())}
        for g, name in enumerate(("mae_many", "mae_medium", "mae_few")):
            chosen = groups == g
            results[name] = float(error[chosen].mean()) if chosen.any() else math.nan
        return results
