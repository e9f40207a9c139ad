"""Progressive resizing: train on smaller images early, growing linearly to the full size (fast.ai's trick, Composer's
schedule).

Reference: Howard, fast.ai DAWNBench (2018), "Now anyone can train Imagenet in 18 minutes"; Touvron, Vedaldi, Douze &
Jégou, "Fixing the train-test resolution discrepancy", NeurIPS 2019, arXiv 1906.06423 (why training at a lower
resolution costs little); schedule and defaults of Composer's ``ProgressiveResizing``.

At progress ``t`` (fraction of training done) the scale is

    s(t) = s₀                                                         t < delay
           s₀ + (1 − s₀) · min(1, (t − delay) / (1 − delay − finetune))   afterwards

(``s₀ = initial_scale``; the last ``finetune`` of training runs at full size) and each side becomes
``clamp(inc · ⌊s · side / inc⌋, inc, side)`` pixels (``inc = size_increment``). ``mode = "resize"`` resamples the
whole image (bilinear with antialiasing; Composer uses nearest), ``mode = "crop"`` cuts a random window, each image
its own offset (one gather per axis, no loop over images). Evaluation is at full size; the model must accept any
input size (global pooling), which the method checks in ``setup``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from regimen.augment.colout import check_accepts_smaller_images
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["ProgressiveResizingMethod", "progressive_scale", "resize_batch"]


@checked_arguments
def progressive_scale(progress: float, initial_scale: float = 0.5, delay: float = 0.5, finetune: float = 0.2
                      ) -> float:
    """``s(t)`` of the module docstring."""
    if not 0.0 < initial_scale <= 1.0:
        raise ValueError(f"initial_scale must be in (0, 1], got {initial_scale!r}")
    if not (0.0 <= delay and 0.0 <= finetune and delay + finetune < 1.0):
        raise ValueError(f"delay and finetune must be >= 0 with delay + finetune < 1, got delay={delay}, "
                         f"finetune={finetune}")
    if not progress >= 0:
        raise ValueError(f"progress must be >= 0 (the fraction of training done), got {progress}")
    if progress < delay:
        return float(initial_scale)
    ramp = min(1.0, (progress - delay) / (1.0 - delay - finetune))
    return float(initial_scale + (1.0 - initial_scale) * ramp)


def _side(side: int, scale: float, increment: int) -> int:
    return max(min(increment * math.floor(scale * side / increment + 1e-9), side), min(increment, side))


@checked_arguments
def resize_batch(images: torch.Tensor, scale: float, mode: Literal["resize", "crop"] = "resize",
                 size_increment: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Images ``(N, C, H, W)`` at ``scale`` (sides rounded down to multiples of ``size_increment``)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if mode not in ("resize", "crop"):
        raise ValueError(f"mode must be 'resize' or 'crop', got {mode!r}")
    if isinstance(size_increment, bool) or not isinstance(size_increment, int) or size_increment < 1:
        raise ValueError(f"size_increment must be an int >= 1, got {size_increment!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    n, c, h, w = images.shape
    new_h, new_w = _side(h, scale, size_increment), _side(w, scale, size_increment)
    if (new_h, new_w) == (h, w):
        return images
    if mode == "resize":
        dtype = images.dtype
        out = F.interpolate(images.float(), size=(new_h, new_w), mode="bilinear", align_corners=False,
                            antialias=True)
        return out if dtype.is_floating_point else out.round().clamp(0, 255).to(dtype)
    oy = torch.randint(0, h - new_h + 1, (n,), generator=generator).to(images.device)
    ox = torch.randint(0, w - new_w + 1, (n,), generator=generator).to(images.device)
    rows = oy[:, None] + torch.arange(new_h, device=images.device)
    cols = ox[:, None] + torch.arange(new_w, device=images.device)
    out = images.gather(2, rows[:, None, :, None].expand(n, c, new_h, w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, new_h, new_w))


@register_method
class ProgressiveResizingMethod(Method):
    """Progressive resizing: images scaled from ``initial_scale`` up to full size over training (Composer's schedule).

    Args:
        mode: ``"resize"`` or ``"crop"``.
        initial_scale: scale s₀ in (0, 1] (Composer: 0.5).
        delay, finetune: fractions of training at s₀ first and at full size last (Composer: 0.5 and 0.2).
        size_increment: sides are multiples of this (Composer: 4).
    """

    name = "progressive_resizing"
    after = ("dropblock",)
    constraint_reason = "the smallest images are checked against the model with its DropBlock layers in place"
    inputs = ("image",)
    targets = ("labels",)
    paper_id = "arXiv:1906.06423"
    claim = "training at lower resolution first saves time at little cost in final accuracy (fast.ai DAWNBench)"
    claimed_effect = "no_worse"

    def __init__(self, mode: Literal["resize", "crop"] = "resize", initial_scale: float = 0.5, delay: float = 0.5,
                 finetune: float = 0.2, size_increment: int = 4) -> None:
        progressive_scale(0.0, initial_scale, delay, finetune)  # validates
        if mode not in ("resize", "crop"):
            raise ValueError(f"mode must be 'resize' or 'crop', got {mode!r}")
        if isinstance(size_increment, bool) or not isinstance(size_increment, int) or size_increment < 1:
            raise ValueError(f"size_increment must be an int >= 1, got {size_increment!r}")
        self.mode, self.initial_scale, self.delay, self.finetune = mode, float(initial_scale), delay, finetune
        self.size_increment = size_increment

    def setup(self, ctx: Context) -> None:
        x, _ = ctx.example_batch(2)
        check_accepts_smaller_images(ctx.model, resize_batch(x, self.initial_scale, self.mode, self.size_increment),
                                     self.name)

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        progress = ctx.step / max(ctx.run.epochs * ctx.run.steps_per_epoch, 1)
        scale = progressive_scale(progress, self.initial_scale, self.delay, self.finetune)
        self.log(ctx, "scale", scale)
        return resize_batch(x, scale, self.mode, self.size_increment, ctx.generator), y
