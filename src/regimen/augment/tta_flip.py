"""Horizontal-flip test-time augmentation: evaluate the mean of the logits of an image and of its mirror image.

Papers: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional Neural Networks" (2012:
predictions averaged over an image and its horizontal reflection); Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on
a Single GPU" (2024, arXiv 2404.00498), whose airbench speedruns evaluate with flip TTA.

    f_tta(x) = (f(x) + f(flip_W(x))) / 2

where ``flip_W`` reverses the last (width) axis. Averaging *logits* (not probabilities) is airbench's choice; the
argmax of the mean logit is what accuracy counts. Training is untouched: the Method only replaces the module the
trainer evaluates (``eval_model``), and it wraps whatever an earlier method returned (an EMA copy), so it is listed
after ``ema``. Both views run as one batch of ``2 N`` (one forward call): in ``eval`` mode BatchNorm uses its running
statistics, so the result equals two separate forwards.
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["FlipTTA", "TTAFlipMethod", "flip_tta"]


@checked_arguments
def flip_tta(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(model(x) + model(x.flip(-1))) / 2`` for images ``x (N, C, H, W)``, computed as one forward of ``2 N``."""
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a tensor of images (N, C, H, W), got {getattr(x, 'shape', type(x).__name__)}")
    n = x.shape[0]
    output = model(torch.cat([x, x.flip(-1)]))
    if not isinstance(output, torch.Tensor) or output.shape[0] != 2 * n:
        raise ValueError(f"flip_tta: the model must return one row per image, got {getattr(output, 'shape', None)}")
    return (output[:n] + output[n:]) / 2


@checked_arguments
class FlipTTA(nn.Module):
    """Wraps a model so that ``forward`` is :func:`flip_tta`; the wrapped model is ``self.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_tta(self.module, x)


@register_method
class TTAFlipMethod(Method):
    """Flip test-time augmentation: evaluation averages the logits of each image and its horizontal flip.

    Listed after ``ema`` when both are in a recipe, so that the averaged weights are what is evaluated twice.
    """

    name = "tta_flip"
    inputs = ("image",)
    after = ("ema",)
    constraint_reason = "flip TTA wraps the model the earlier method evaluates (the EMA copy)"
    paper_id = "arXiv:2404.00498"
    claim = "averaging the logits of an image and its horizontal flip raises test accuracy at no training cost"
    claimed_effect = "better"

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        return FlipTTA(model)
