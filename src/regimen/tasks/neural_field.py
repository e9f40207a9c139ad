"""``task = "neural_field"``: fit a photo as a function of its pixel coordinates and predict held-out pixels.

A neural field maps a coordinate to a value; here (row, column) in [0, 1]² → RGB (or grey) in [0, 1]. The photo is
one of scikit-image's bundled images (offline), area-downsampled to ``size`` pixels on its longer side. A fixed,
seeded subset of ``train_fraction`` of the pixels trains the field; the held-out pixels are split into validation
(``data.val_fraction`` of them) and test (the rest). The pixel split uses a constant seed, so every run seed trains
and tests on the same pixels and paired seeds compare like with like.

Batches are ``(coordinates (N, 2) float in [0, 1], values (N, C) float in [0, 1])``; the default model is
:class:`regimen.models.CoordinateMLP` (Gaussian Fourier features + ReLU MLP + sigmoid); the loss is the mean
squared error (``reduction="none"``: each pixel's mean over channels). Metrics of a split (its pixels predicted):

* ``loss``: mean squared error over the split's pixels and channels;
* ``psnr`` (primary, higher is better): ``10 · log10(1 / MSE)`` of the predictions clamped to [0, 1] (data range 1),
  from the split's total squared error (not a mean of per-pixel PSNRs);
* ``ssim``: SSIM (Wang et al. 2004) of the photo in which the split's pixels are replaced by their predictions,
  against the photo: 11 × 11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1, population covariances,
  the mean over the valid part of the map and the channels — ``skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``. The other pixels
  keep their true values, so the map's errors come from the split's pixels only (as an inpainting score).

Data (``data.name``: ``auto`` or ``skimage``). ``data.options``: ``photo`` (default ``"astronaut"``; one of
:data:`PHOTOS`), ``size`` (default 128; pixels of the longer side after downsampling, at most the photo's own),
``train_fraction`` (default 0.25, in (0, 1)). A user's own image: ``fit(data=image)`` with a float tensor
``(H, W)`` or ``(H, W, C)`` in [0, 1], split the same way.
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

__all__ = ["PHOTOS", "NeuralFieldTask", "PixelSet", "field_mse", "image_ssim", "load_photo", "pixel_coordinates",
           "psnr", "split_pixels"]

#: scikit-image's bundled photos that load offline (2-D grey or RGB, 8-bit).
PHOTOS = ("astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
          "immunohistochemistry", "moon", "rocket")
#: Seed of the pixel split: a constant, so every run seed trains and tests on the same pixels.
PIXEL_SPLIT_SEED = 20_230_807
_DATA_OPTIONS = {"photo": str, "size": int, "train_fraction": float}
DEFAULTS = {"photo": "astronaut", "size": 128, "train_fraction": 0.25}


# ---------------------------------------------------------------------------------------------------- functions
def psnr(mse: float | torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 · log10(data_range² / mse)`` in dB (``inf`` for a zero error)."""
    mse = float(mse)
    if mse < 0 or math.isnan(mse):
        raise ValueError(f"mse must be >= 0, got {mse}")
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def _gaussian_kernel(sigma: float, truncate: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage.gaussian_filter's radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def image_ssim(image: torch.Tensor, reference: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5,
               k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Mean SSIM of two images ``(H, W)`` or ``(H, W, C)`` (Wang et al. 2004), Gaussian-weighted.

    The local means, variances and covariance are Gaussian averages (σ = ``sigma``, truncated at 3.5 σ: an
    11 × 11 window for σ = 1.5) over the window positions that lie inside the image ("valid"), with population
    (not sample) statistics; ``SSIM = (2 μx μy + C1)(2 σxy + C2) / ((μx² + μy² + C1)(σx² + σy² + C2))``,
    ``C1 = (k1 L)²``, ``C2 = (k2 L)²``, averaged over the map and the channels. Equals scikit-image's
    ``structural_similarity(image, reference, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
    data_range=L, channel_axis=-1)``.
    """
    if not isinstance(image, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError("image and reference must be tensors")
    if image.shape != reference.shape or image.dim() not in (2, 3):
        raise ValueError(f"image and reference must both be (H, W) or (H, W, C) of one shape, got "
                         f"{tuple(image.shape)} and {tuple(reference.shape)}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    dtype = torch.float64
    x = image.to(dtype)
    y = reference.to(dtype)
    if x.dim() == 2:
        x, y = x.unsqueeze(-1), y.unsqueeze(-1)
    g = _gaussian_kernel(sigma, 3.5, dtype, x.device)
    size = g.numel()
    if min(x.shape[0], x.shape[1]) < size:
        raise ValueError(f"images of {x.shape[0]}x{x.shape[1]} pixels are smaller than the {size}x{size} window")
    channels = x.shape[-1]
    rows = g.view(1, 1, size, 1).expand(channels * 5, 1, size, 1)
    cols = g.view(1, 1, 1, size).expand(channels * 5, 1, 1, size)
    x, y = x.permute(2, 0, 1), y.permute(2, 0, 1)  # (C, H, W)
    stack = torch.cat([x, y, x * x, y * y, x * y]).unsqueeze(0)  # (1, 5C, H, W)
    filtered = F.conv2d(F.conv2d(stack, rows, groups=channels * 5), cols, groups=channels * 5)[0]
    mx, my, xx, yy, xy = filtered.split(channels)
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim_map.mean()


def field_mse(output: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error of predicted values ``(N, C)`` against targets ``(N, C)``, per point the mean over its channels:
    those ``(N,)`` for ``reduction="none"``, their sum for ``"sum"``, their mean (the mean over every value) for
    ``"mean"``."""
    if not isinstance(output, torch.Tensor) or output.shape != target.shape:
        raise ValueError(f"field outputs {tuple(getattr(output, 'shape', ()))} must have the targets' shape "
                         f"{tuple(target.shape)}")
    errors = (output.float() - target.float()).pow(2)
    if reduction == "mean":
        return errors.mean()
    per_point = errors.reshape(len(errors), -1).mean(dim=1)
    if reduction == "sum":
        return per_point.sum()
    if reduction == "none":
        return per_point
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """``(H·W, 2)`` coordinates (row, column) of the pixel centres in [0, 1], row-major (pixel ``i = r·W + c``)."""
    rows = torch.linspace(0.0, 1.0, height) if height > 1 else torch.zeros(1)
    cols = torch.linspace(0.0, 1.0, width) if width > 1 else torch.zeros(1)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1)
    return grid.reshape(-1, 2)


def load_photo(name: str = "astronaut", size: int | None = 128) -> torch.Tensor:
    """One of scikit-image's bundled photos as a float ``(H, W, C)`` tensor in [0, 1], area-downsampled so that its
    longer side has ``size`` pixels (``None``: full size). Grey photos have C = 1."""
    if not isinstance(name, str) or name not in PHOTOS:
        raise DataError(f"data.options.photo: unknown photo {name!r}; scikit-image's bundled photos: "
                        f"{', '.join(PHOTOS)}")
    try:
        import skimage.data
    except ImportError:
        raise DataError("the neural_field task reads scikit-image's bundled photos: pip install 'regimen[fields]' "
                        "(scikit-image)") from None
    array = getattr(skimage.data, name)()
    image = torch.from_numpy(array.copy()).float().div_(255.0)
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    longer = max(image.shape[:2])
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size:
            raise DataError(f"data.options.size must be an int >= 16, got {size!r}")
        if size > longer:
            raise DataError(f"data.options.size = {size} is larger than the photo {name!r} ({longer} pixels on its "
                            "longer side)")
        if size < longer:
            height = max(1, round(image.shape[0] * size / longer))
            width = max(1, round(image.shape[1] * size / longer))
            image = F.interpolate(image.permute(2, 0, 1).unsqueeze(0), size=(height, width), mode="area")[0]
            image = image.permute(1, 2, 0).clamp(0.0, 1.0)
    return image.contiguous()


@dataclass
class PixelSet(TensorDataset):
    """Pixels of one photo: ``inputs`` coordinates ``(N, 2)``, ``targets`` values ``(N, C)``, ``pixels`` their
    row-major indices ``(N,)`` in ``image`` ``(H, W, C)`` (the whole photo, shared by the splits)."""

    pixels: torch.Tensor | None = None
    image: torch.Tensor | None = None

    def subset(self, indices: torch.Tensor) -> PixelSet:
        return PixelSet(self.inputs[indices], self.targets[indices], self.name, None, self.pixels[indices],
                        self.image)


def split_pixels(image: torch.Tensor, train_fraction: float, val_fraction: float, name: str = "photo",
                 seed: int = PIXEL_SPLIT_SEED) -> tuple[PixelSet, PixelSet | None, PixelSet]:
    """Train / validation / test pixel sets of ``image (H, W, C)``: a seeded ``train_fraction`` of the pixels trains,
    ``val_fraction`` of the rest validates (``None`` when 0), the remainder tests."""
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, int | float) \
            or not 0.0 < train_fraction < 1.0:
        raise DataError(f"data.options.train_fraction must be in (0, 1), got {train_fraction!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1), got {val_fraction!r}")
    height, width, channels = image.shape
    total = height * width
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    num_train = round(total * train_fraction)
    held = total - num_train
    num_val = round(held * val_fraction)
    if num_train < 1 or held - num_val < 1:
        raise DataError(f"data.options.train_fraction = {train_fraction} leaves no training or no test pixels of "
                        f"the {height}x{width} image")
    coords = pixel_coordinates(height, width)
    values = image.reshape(total, channels)

    def part(indices: torch.Tensor, label: str) -> PixelSet:
        indices = indices.sort().values
        return PixelSet(coords[indices], values[indices], f"{name}-{label}", None, indices, image)

    train = part(order[:num_train], "train")
    val = part(order[num_train:num_train + num_val], "val") if num_val else None
    test = part(order[num_train + num_val:], "test")
    return train, val, test


# --------------------------------------------------------------------------------------------------------- task
class NeuralFieldTask(Task):
    """Fit a photo as coordinates → RGB on a pixel subset, predict the held-out pixels: MSE, PSNR, SSIM."""

    name = "neural_field"
    input_kind = "coordinates"
    target_kind = "values"
    metrics = ("loss", "psnr", "ssim")
    primary_metric = "psnr"
    higher_is_better_metrics = ("psnr", "ssim")
    higher_is_better = True
    train_metrics = ()
    data_names = ("auto", "skimage")
    model_names = ("coordinate_mlp",)
    default_model = "coordinate_mlp"
    data_arguments: ClassVar[tuple[str, ...]] = ("in_features", "out_features")
    data_option_names: ClassVar[tuple[str, ...]] = tuple(_DATA_OPTIONS)

    # ----------------------------------------------------------------------------------------------- options
    def data_options(self) -> dict[str, Any]:
        options = self.typed_data_options(_DATA_OPTIONS)
        options = {**DEFAULTS, **options}
        if options["photo"] not in PHOTOS:
            raise ConfigurationError(f"data.options.photo: unknown photo {options['photo']!r}; scikit-image's "
                                     f"bundled photos: {', '.join(PHOTOS)}")
        if not 0.0 < options["train_fraction"] < 1.0:
            raise ConfigurationError(f"data.options.train_fraction must be in (0, 1), got "
                                     f"{options['train_fraction']!r}")
        if options["size"] < 16:
            raise ConfigurationError(f"data.options.size must be >= 16, got {options['size']!r}")
        return options

    def check_recipe(self, user_model: bool = False, user_data: bool = False) -> None:
        super().check_recipe(user_model, user_data)
        self.data_options()

    def model_class(self, name: str) -> type | None:
        from regimen.models import CoordinateMLP

        return CoordinateMLP

    # ------------------------------------------------------------------------------------------------------ data
    def load_data(self) -> DataSplits:
        options = self.data_options()
        image = load_photo(options["photo"], options["size"])
        return self._splits(image, options["photo"], f"scikit-image's {options['photo']!r}")

    def _splits(self, image: torch.Tensor, name: str, source: str) -> DataSplits:
        options = self.data_options()
        cfg = self.recipe.data
        train, val, test = split_pixels(image, options["train_fraction"], cfg.val_fraction, name)
        if cfg.train_subset is not None and cfg.train_subset < len(train):
            train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(
                self.recipe.seed + 1))[:cfg.train_subset])
        height, width, _ = image.shape
        where = f"{source}, {height}x{width} pixels"
        sources = {"train": f"seeded {options['train_fraction']:g} of the pixels of {where}",
                   "val": f"{cfg.val_fraction:g} of the held-out pixels", "test": "the other held-out pixels"}
        return DataSplits(train, val, test, sources=sources)

    def adopt_data(self, data: Any) -> DataSplits:
        """``DataSplits`` of :class:`PixelSet`, or an image: a float tensor ``(H, W)`` / ``(H, W, C)`` in [0, 1]
        (split into pixels as the recipe's ``data.options.train_fraction`` and ``data.val_fraction`` say)."""
        if isinstance(data, DataSplits):
            return data
        if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.dim() not in (2, 3):
            raise DataError(f"data: the neural_field task takes an image, a float tensor (H, W) or (H, W, C) in "
                            f"[0, 1], or DataSplits of PixelSets; got {type(data).__name__} "
                            f"{tuple(getattr(data, 'shape', ()))}")
        if data.numel() and not (0.0 <= float(data.min()) and float(data.max()) <= 1.0):
            raise DataError(f"data: image values must lie in [0, 1], got [{float(data.min()):.4g}, "
                            f"{float(data.max()):.4g}]")
        image = (data.unsqueeze(-1) if data.dim() == 2 else data).float().contiguous()
        return self._splits(image, "image", "user image")

    # ----------------------------------------------------------------------------------------------------- model
    def build_model(self, data: DataSplits) -> nn.Module:
        from regimen.models import CoordinateMLP

        return CoordinateMLP(in_features=data.train.inputs.shape[1], out_features=data.train.targets.shape[1],
                             **self.recipe.model.options)

    def model_spec(self, data: DataSplits) -> dict[str, Any]:
        return dict(super().model_spec(data), out_features=int(data.train.targets.shape[1]))

    # ---------------------------------------------------------------------------------------------- loss, scores
    def loss(self) -> Callable[..., torch.Tensor]:
        return field_mse

    def eval_sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sums of the squared error (raw) and of the squared error of the clamped predictions, per pixel."""
        output, target = output.double(), target.double()
        raw = (output - target).pow(2).reshape(len(target), -1).mean(dim=1).sum()
        clamped = (output.clamp(0.0, 1.0) - target).pow(2).reshape(len(target), -1).mean(dim=1).sum()
        return torch.stack([raw, clamped])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, normalize: Callable, batch_size: int = 1000,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
                 all_reduce: Callable | None = None) -> dict[str, float]:
        """MSE, PSNR (of the clamped predictions) and SSIM (of the photo with this split's pixels predicted); the
        pixels are sharded over ranks and every rank's predictions are summed into one canvas."""
        if not isinstance(dataset, PixelSet) or dataset.image is None:
            raise DataError("the neural_field task evaluates PixelSets (pixels of one image)")
        was_training = model.training
        model.eval()
        device = torch.device(device)
        image = dataset.image.to(device)
        height, width, channels = image.shape
        canvas = torch.zeros(height * width, channels, dtype=torch.float64, device=device)
        covered = torch.zeros(height * width, 1, dtype=torch.float64, device=device)
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # squared error raw, clamped, pixels
        pixels = dataset.pixels.to(device)
        loader = InMemoryLoader(dataset, batch_size, shuffle=False, drop_last=False, rank=rank,
                                world_size=world_size, device=device)
        for x, y, indices in loader:
            if len(y) == 0:
                continue
            output = model(normalize(x)).double()
            totals[:2] += self.eval_sums(output, y)
            totals[2] += len(y)
            where = pixels[indices.to(device)]
            canvas[where] = output.clamp(0.0, 1.0)
            covered[where] = 1.0
        if all_reduce is not None:
            totals = all_reduce(totals, "sum")
            canvas = all_reduce(canvas, "sum")
            covered = all_reduce(covered, "sum")
        model.train(was_training)
        count = max(totals[2].item(), 1.0)
        composite = torch.where(covered > 0, canvas, image.reshape(-1, channels).double())
        ssim = image_ssim(composite.view(height, width, channels), image)
        return {"loss": totals[0].item() / count, "psnr": psnr(totals[1].item() / count), "ssim": ssim.item()}
