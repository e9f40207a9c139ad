"""CutOut: fill square holes at random positions of each image, batched with per-image holes.

Paper: DeVries & Taylor, "Improved Regularization of Convolutional Neural Networks with Cutout", 2017,
arXiv 1708.04552.

For each image and each of ``num_holes`` holes a centre ``(cy, cx)`` is drawn uniformly over the pixels and the rows
``[cy − s//2, cy + s//2)`` × columns ``[cx − s//2, cx + s//2)``, clipped at the border, are set to ``fill``; ``s =
round(length · min(H, W))`` (the authors' code: ``y1 = clip(y − length // 2, 0, h)``, ``y2 = clip(y + length // 2, 0,
h)``, so a hole near a border is smaller, and an odd ``s`` gives a ``s − 1`` side). The authors cut the normalised
image, i.e. fill with the data mean; the trainer method does this (``fill = "mean"`` uses ``ctx.run.data_mean`` on
the [0, 1] images it sees before normalisation), the function fills with a number.

Every image gets its own holes (Composer and torchvision's ``RandomErasing`` on a batch draw one set for all;
pytorch/vision #8191); the boxes come from ``generator`` (:func:`cutout_boxes`) and can be replayed
(``boxes=``). One boolean mask per batch, no loop over images. ``p`` is the probability that an image is cut at all.
uint8 and float images keep their dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["CutOutMethod", "cutout", "cutout_boxes", "cutout_mask"]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")


def _check_args(num_holes: int, length: float, p: float) -> None:
    if isinstance(num_holes, bool) or not isinstance(num_holes, int) or num_holes < 1:
        raise ValueError(f"num_holes must be an int >= 1, got {num_holes!r}")
    if isinstance(length, bool) or not isinstance(length, int | float) or not 0.0 < length <= 1.0:
        raise ValueError(f"length must be a fraction of the image side in (0, 1], got {length!r}")
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")


@checked_arguments
def cutout_boxes(n: int, height: int, width: int, num_holes: int = 1, length: float = 0.5, p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, num_holes, 4)`` int64 boxes ``(y1, y2, x1, x2)`` (half-open, clipped); an image not cut (probability
    ``1 − p``) gets empty boxes."""
    _check_args(num_holes, length, p)
    if n < 0 or height < 1 or width < 1:
        raise ValueError(f"n must be >= 0 and height, width >= 1, got n={n}, height={height}, width={width}")
    half = int(round(length * min(height, width))) // 2
    cy = torch.randint(0, height, (n, num_holes), generator=generator)
    cx = torch.randint(0, width, (n, num_holes), generator=generator)
    boxes = torch.stack([(cy - half).clamp(0, height), (cy + half).clamp(0, height),
                         (cx - half).clamp(0, width), (cx + half).clamp(0, width)], dim=-1)
    if p < 1.0:
        skip = torch.rand(n, generator=generator) >= p
        boxes[skip] = 0
    return boxes


@checked_arguments
def cutout_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, 1, H, W)`` bool, True inside any of an image's boxes."""
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be a tensor (N, holes, 4), got {tuple(getattr(boxes, 'shape', ()))}")
    if boxes.is_floating_point() or boxes.dtype == torch.bool:
        raise TypeError(f"boxes must hold integer pixel positions, got {boxes.dtype}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} and {width}")
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= boxes[..., 0:1]) & (rows < boxes[..., 1:2])  # (N, K, H)
    in_cols = (cols >= boxes[..., 2:3]) & (cols < boxes[..., 3:4])  # (N, K, W)
    return (in_rows[..., :, None] & in_cols[..., None, :]).any(dim=1, keepdim=True)


@checked_arguments
def cutout(images: torch.Tensor, num_holes: int = 1, length: float = 0.5, p: float = 1.0,
           fill: float | torch.Tensor = 0.0, generator: torch.Generator | None = None,
           boxes: torch.Tensor | None = None) -> torch.Tensor:
    """CutOut of a batch ``(N, C, H, W)``: a new tensor with each image's holes set to ``fill`` (a number or one
    value per channel ``(C,)``).

    Args:
        images: the batch (float or uint8).
        num_holes, length, p: holes per image, their side as a fraction of ``min(H, W)``, probability of cutting.
        fill: value of the holes.
        generator: random source of the boxes.
        boxes: replay these ``(N, holes, 4)`` boxes (from :func:`cutout_boxes`) instead of drawing.
    """
    _check_images(images)
    n, channels, height, width = images.shape
    if boxes is None:
        boxes = cutout_boxes(n, height, width, num_holes, length, p, generator)
    elif boxes.shape[0] != n:
        raise ValueError(f"boxes has {boxes.shape[0]} rows for {n} images")
    mask = cutout_mask(boxes.to(images.device), height, width)
    value = torch.as_tensor(fill, dtype=torch.float32, device=images.device)
    if value.dim() == 1:
        if value.numel() != channels:
            raise ValueError(f"fill has {value.numel()} values for {channels} channels")
        value = value.view(1, channels, 1, 1)
    elif value.dim() != 0:
        raise ValueError(f"fill must be a number or a (C,) tensor, got shape {tuple(value.shape)}")
    if not images.is_floating_point():
        value = value.round()
    return torch.where(mask, value.to(images.dtype), images)


@register_method
class CutOutMethod(Method):
    """CutOut (DeVries & Taylor 2017): ``num_holes`` square holes per image, each image its own.

    Args:
        num_holes: holes per image (paper: 1).
        length: hole side as a fraction of the image side (paper: 16 px of 32 on CIFAR-10 = 0.5; Composer 0.5).
        p: probability that an image is cut.
        fill: ``"mean"`` (the data mean: zero after normalisation, as the paper) or a number in the [0, 1] scale.
    """

    name = "cutout"
    inputs = ("image",)
    paper_id = "arXiv:1708.04552"
    claim = ("masking a random square of every training image improves test error of ResNets/WideResNets on "
             "CIFAR-10, CIFAR-100 and SVHN")
    claimed_effect = "better"

    def __init__(self, num_holes: int = 1, length: float = 0.5, p: float = 1.0, fill: float | str = "mean") -> None:
        _check_args(num_holes, length, p)
        if not (fill == "mean" or (isinstance(fill, int | float) and not isinstance(fill, bool))):
            raise ValueError(f"fill must be 'mean' or a number, got {fill!r}")
        self.num_holes, self.length, self.p, self.fill = num_holes, float(length), float(p), fill

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        fill = self.fill
        if fill == "mean":
            fill = ctx.run.data_mean if ctx.run.data_mean is not None else 0.0
            if isinstance(fill, torch.Tensor) and not x.is_floating_point():
                fill = fill * 255.0
        return cutout(x, self.num_holes, self.length, self.p, fill, ctx.generator), y
