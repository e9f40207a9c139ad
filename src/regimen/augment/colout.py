"""ColOut: drop a random fraction of the rows and columns of each image (a smaller image, and an augmentation).

Reference: MosaicML Composer's ``ColOut`` algorithm (no paper; Composer's method card, "ColOut", 2022). For an image
of ``H × W``, ``⌊p_row · H⌋`` rows and ``⌊p_col · W⌋`` columns are removed and the rest kept in order, so the output is
``(H − ⌊p_row H⌋) × (W − ⌊p_col W⌋)``: faster steps on a model that accepts any input size (global pooling), and a
distortion like a random non-uniform resize.

Composer drops the same rows and columns from every image of a batch (``batch = True``) to keep one output shape.
Here every image draws its own rows and columns (``per_sample = True``, the default): the count is the same, so the
batch still has one shape, and the selection is one ``gather`` per axis from per-image random orders (``argsort`` of
uniform keys from ``generator``), no loop over images. ``per_sample = False`` is Composer's form. Targets are
unchanged (classification); dense targets are refused by the method.
"""

from __future__ import annotations

from typing import Any

import torch

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["ColOutMethod", "colout", "colout_indices"]


@torch.no_grad()
def check_accepts_smaller_images(model: torch.nn.Module, x: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` when ``model`` cannot run on the smaller images ``x`` (it flattens a fixed size, a
    DropBlock block is larger than a feature map ...): one forward pass in training mode, after which the model's
    parameters and buffers (BatchNorm statistics) are restored."""
    was_training = model.training
    saved = {key: value.clone() for key, value in model.state_dict().items()}
    model.train()
    try:
        model(x)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{name} feeds the model smaller images ({tuple(x.shape[-2:])}) and it cannot take them "
                         f"({str(error).splitlines()[0][:120]}); use a model with global pooling") from error
    finally:
        model.load_state_dict(saved)
        model.train(was_training)


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}")
    return float(value)


@checked_arguments
def colout_indices(n: int, size: int, p: float, per_sample: bool = True,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, size − ⌊p · size⌋)`` sorted positions to keep along one axis (the same row for every image when
    ``per_sample`` is False)."""
    p = _check_fraction(p, "p")
    if n < 0 or size < 1:
        raise ValueError(f"n must be >= 0 and size >= 1, got n={n}, size={size}")
    keep = size - int(p * size)
    rows = n if per_sample else 1
    order = torch.argsort(torch.rand(rows, size, generator=generator), dim=1)
    kept = torch.sort(order[:, :keep], dim=1).values
    return kept.expand(n, keep)


@checked_arguments
def colout(images: torch.Tensor, p_row: float = 0.15, p_col: float = 0.15, per_sample: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """ColOut of a batch ``(N, C, H, W)`` → ``(N, C, H − ⌊p_row H⌋, W − ⌊p_col W⌋)``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    _check_fraction(p_row, "p_row")
    _check_fraction(p_col, "p_col")
    n, c, h, w = images.shape
    rows = colout_indices(n, h, p_row, per_sample, generator).to(images.device)
    cols = colout_indices(n, w, p_col, per_sample, generator).to(images.device)
    out = images.gather(2, rows[:, None, :, None].expand(n, c, rows.shape[1], w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, rows.shape[1], cols.shape[1]))


@register_method
class ColOutMethod(Method):
    """ColOut (Composer): drop ``⌊p_row H⌋`` rows and ``⌊p_col W⌋`` columns of every image, each image its own.

    Args:
        p_row, p_col: fractions of rows and columns removed (Composer: 0.15 each).
        per_sample: every image its own rows/columns (Composer: one set per batch).
    """

    name = "colout"
    after = ("dropblock",)
    constraint_reason = "the smaller images are checked against the model with its DropBlock layers in place"
    inputs = ("image",)
    targets = ("labels",)
    paper_id = "Composer ColOut (MosaicML method card, 2022)"
    claim = "dropping 15 % of rows and columns speeds up training at little cost in accuracy (ResNet-50 on ImageNet)"
    claimed_effect = "no_worse"

    def __init__(self, p_row: float = 0.15, p_col: float = 0.15, per_sample: bool = True) -> None:
        self.p_row, self.p_col = _check_fraction(p_row, "p_row"), _check_fraction(p_col, "p_col")
        self.per_sample = bool(per_sample)

    def setup(self, ctx: Context) -> None:
        x, _ = ctx.example_batch(2)
        check_accepts_smaller_images(ctx.model, colout(x, self.p_row, self.p_col, False), self.name)

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        return colout(x, self.p_row, self.p_col, self.per_sample, ctx.generator), y
