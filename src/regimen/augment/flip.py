"""Horizontal-flip augmentation, random or alternating (airbench's derandomised flip).

Papers: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks" (2012:
random horizontal reflections); Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024,
arXiv 2404.00498, section "alternating flip").

Random flip: each image is mirrored (``x[..., ::-1]``) with probability ``p``, drawn from a ``torch.Generator``.
Alternating flip: image ``i`` is mirrored in epoch ``e`` when ``b_i XOR (e mod 2) = 1``, where ``b_i`` is a fixed
pseudo-random bit of the image's dataset index, bit 16 of a multiplicative hash:
``b_i = ⌊((i + 7919·seed) · 2654435761 mod 2³²) / 2¹⁶⌋ mod 2``. Every image is therefore seen in
both orientations every two epochs, and half of the images are mirrored in any epoch: the same expected number of
flips as random flip at ``p = 0.5`` without repeats of the same view in consecutive epochs, which the paper reports
as worth about as much as extra epochs in short runs. It needs the batch's dataset indices
(``ctx.batch_indices``); without them the Method falls back to random flips.

Pitfall handled: the flip reverses the last axis only (width), so it works on ``(N, C, H, W)`` of any size and keeps
labels; vertical flips are not label-preserving on most image data.
"""

from __future__ import annotations

import torch

from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["FlipMethod", "alternating_flip_mask", "flip_images", "random_flip_mask"]


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")


@checked_arguments
def flip_images(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``images (N, C, H, W)`` with the rows where ``mask (N,)`` is true mirrored left-right (a new tensor)."""
    _check_images(images)
    require_data(mask=mask)  # moved to the images' device below
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != (images.shape[0],):
        raise ValueError(f"mask must be a bool tensor of shape ({images.shape[0]},), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


@checked_arguments
def random_flip_mask(n: int, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n,)`` bools, each true with probability ``p``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    return torch.rand(n, generator=generator) < p


@checked_arguments
def alternating_flip_mask(indices: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    """``b_i XOR (epoch mod 2)`` for dataset ``indices (N,)``: ``b_i`` is a fixed pseudo-random bit of index ``i``
    (a multiplicative hash with ``seed``), so each image alternates its orientation from one epoch to the next."""
    if not isinstance(indices, torch.Tensor) or indices.dim() != 1 or indices.is_floating_point():
        raise ValueError(f"indices must be a 1-d integer tensor, got {getattr(indices, 'shape', type(indices))}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if indices.device.type == "meta":
        raise ValueError("indices must hold data; got a tensor on the meta device")
    mixed = (indices.long().cpu() + seed * 7919) * 2654435761 % (2 ** 32)
    bits = (mixed >> 16) & 1
    return (bits ^ (epoch % 2)).bool()


@register_method
class FlipMethod(Method):
    """Horizontal flips of training images: alternating per image and epoch (airbench) or random.

    Args:
        alternate: airbench's alternating flip (needs the batch's dataset indices); ``False``: random flips.
        p: the probability of a random flip (``alternate = False``, or no indices available).
    """

    name = "hflip"
    inputs = ("image",)
    paper_id = "arXiv:2404.00498"
    claim = ("horizontal flips raise test accuracy; alternating (derandomised) flips beat random flips in short "
             "training runs")
    claimed_effect = "better"

    def __init__(self, alternate: bool = True, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.alternate = alternate
        self.p = p

    def transform_batch(self, x: torch.Tensor, y, ctx: Context):
        indices = ctx.batch_indices
        if self.alternate and indices is not None and len(indices) == x.shape[0]:
            mask = alternating_flip_mask(indices, ctx.epoch, ctx.run.seed)
        else:
            mask = random_flip_mask(x.shape[0], self.p, ctx.generator)
        return flip_images(x, mask), y
