"""S3IM: Stochastic Structural SIMilarity for batches of point-wise predictions (neural fields, regression).

Paper: Xie, Yang, Zhao, Ye, Fan, Wang, "S3IM: Stochastic Structural SIMilarity and Its Unreasonable Effectiveness
for Neural Fields", ICCV 2023, arXiv 2308.07032. A batch of N independent points (e.g. rays' RGB, shape (N, C))
has no spatial structure, so S3IM builds one: concatenate M index lists — the identity, then M − 1 random
permutations of the batch — gather predictions and targets with them, lay the M·N points out row-major as a
virtual image of shape (C, H, M·N/H) and compute SSIM with a small kernel and an equal stride:

    S3IM = 1 − SSIM(virtual(pred), virtual(target)),   kernel = stride = 4, H = 64, M = 10 (defaults)

It is added to the point-wise loss (MSE), e.g. ``mse + λ · s3im_loss(pred, target)``.

SSIM details follow the authors' reference implementation so numbers are comparable: Gaussian window of size
``kernel`` with σ = 1.5 centred at index ``kernel // 2``, zero padding ``(kernel − 1) // 2``, convolution stride
``stride``, constants C1 = 0.01², C2 = 0.03² (values in [0, 1]), mean over the SSIM map.

Trainer method: ``s3im`` (:class:`S3IMMethod`) adds ``weight · s3im_loss`` to the task's criterion for tasks with
point-wise ``values`` targets (``task = "neural_field"``); the reference's weight is 1.0 at a batch of 4096 rays.

Pitfalls handled: the first repeat is the un-permuted batch (as in the reference); N must be divisible by
``patch_height`` (clear error otherwise, instead of a reshape failure); permutations come from a
``torch.Generator`` and are drawn in one call (no Python loop over repeats); any channel count C works. In the
trainer a batch that is not a multiple of ``patch_height`` uses its first ``N − N mod patch_height`` points (the
batch is in random order, so they are a random subset); a batch smaller than ``patch_height`` is refused.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["S3IM", "S3IMMethod", "gaussian_window", "s3im_indices", "s3im_loss", "ssim"]

_C1 = 0.01**2
_C2 = 0.03**2


@checked_arguments
def gaussian_window(kernel: int, sigma: float = 1.5) -> torch.Tensor:
    """The reference's normalised 2-D Gaussian window (float64, ``kernel × kernel``, centre at ``kernel // 2``)."""
    if kernel < 1 or not sigma > 0:
        raise ValueError(f"kernel must be >= 1 and sigma > 0, got kernel={kernel}, sigma={sigma}")
    x = torch.arange(kernel, dtype=torch.float64) - kernel // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


@checked_arguments
def ssim(img1: torch.Tensor, img2: torch.Tensor, kernel: int = 4, stride: int = 4, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two ``(B, C, H, W)`` images with a Gaussian window, zero padding and a strided window."""
    require_data(img1=img1, img2=img2)
    if img1.shape != img2.shape or img1.dim() != 4:
        raise ValueError(f"images must both be (B, C, H, W) of one shape, got {tuple(img1.shape)}, {tuple(img2.shape)}")
    if not (img1.is_floating_point() and img2.is_floating_point()):
        raise TypeError(f"img1 and img2 must be floating point, got {img1.dtype} and {img2.dtype}")
    if img1.dtype != img2.dtype:
        raise TypeError(f"img1 and img2 must share one dtype, got {img1.dtype} and {img2.dtype}")
    if kernel < 1 or stride < 1:
        raise ValueError(f"kernel and stride must be >= 1, got kernel={kernel}, stride={stride}")
    channels = img1.shape[1]
    window = gaussian_window(kernel, sigma).to(device=img1.device, dtype=img1.dtype)
    window = window.expand(channels, 1, kernel, kernel).contiguous()
    pad = (kernel - 1) // 2

    def conv(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, padding=pad, groups=channels, stride=stride)

    mu1, mu2 = conv(img1), conv(img2)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = conv(img1 * img1) - mu1_sq
    sigma2_sq = conv(img2 * img2) - mu2_sq
    sigma12 = conv(img1 * img2) - mu12
    ssim_map = ((2 * mu12 + _C1) * (2 * sigma12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (sigma1_sq + sigma2_sq + _C2))
    return ssim_map.mean()


@checked_arguments
def s3im_indices(n: int, repeats: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The ``repeats · n`` gather indices: ``arange(n)`` then ``repeats − 1`` random permutations of it."""
    if n < 1 or repeats < 1:
        raise ValueError(f"n and repeats must be >= 1, got n={n}, repeats={repeats}")
    first = torch.arange(n)
    if repeats == 1:
        return first
    perms = torch.argsort(torch.rand(repeats - 1, n, generator=generator), dim=1)
    return torch.cat([first, perms.reshape(-1)])


@checked_arguments
def s3im_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    repeats: int = 10,
    kernel: int = 4,
    stride: int = 4,
    patch_height: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``1 − SSIM`` of the stochastic virtual patches built from a batch of points.

    Args:
        pred: ``(N, C)`` predictions (e.g. RGB of N rays), values nominally in [0, 1].
        target: ``(N, C)`` targets.
        repeats: M, number of (re-shuffled) copies of the batch in the virtual image.
        kernel: SSIM window size.
        stride: SSIM window stride.
        patch_height: H of the virtual image; N must be divisible by it.
        generator: ``torch.Generator`` for the permutations (``None``: torch's global RNG).

    Returns:
        Scalar loss in [0, 2].
    """
    if not isinstance(pred, torch.Tensor) or not pred.is_floating_point():
        raise TypeError("pred must be a floating tensor")
    if not isinstance(target, torch.Tensor) or not target.is_floating_point():
        raise TypeError("target must be a floating tensor")
    if pred.dtype != target.dtype:
        raise TypeError(f"pred and target must share one dtype, got {pred.dtype} and {target.dtype}")
    require_data(pred=pred, target=target)  # the finiteness check and the patches' shuffle read values
    if pred.dim() == 1 and target.dim() == 1:
        pred, target = pred.unsqueeze(1), target.unsqueeze(1)
    if pred.dim() != 2 or pred.shape != target.shape:
        raise ValueError(
            f"pred and target must both be (N, C) of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    for name, value in (("repeats", repeats), ("kernel", kernel), ("stride", stride), ("patch_height", patch_height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n, channels = pred.shape
    if n % patch_height != 0:
        raise ValueError(f"the batch size N={n} must be divisible by patch_height={patch_height}")
    width = n * repeats // patch_height
    if min(patch_height, width) + 2 * ((kernel - 1) // 2) < kernel:
        raise ValueError(f"virtual image {patch_height}x{width} is smaller than the kernel {kernel}")
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise ValueError("pred or target contain NaN or inf")
    idx = s3im_indices(n, repeats, generator).to(pred.device)
    src = pred[idx].T.reshape(1, channels, patch_height, width)
    tar = target[idx].T.reshape(1, channels, patch_height, width)
    return 1.0 - ssim(src, tar, kernel=kernel, stride=stride)


@checked_arguments
class S3IM(nn.Module):
    """Module form of :func:`s3im_loss`; holds its own seeded generator when ``seed`` is given."""

    def __init__(
        self, repeats: int = 10, kernel: int = 4, stride: int = 4, patch_height: int = 64, seed: int | None = None
    ) -> None:
        super().__init__()
        self.repeats, self.kernel, self.stride, self.patch_height = repeats, kernel, stride, patch_height
        self.generator = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(seed)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return s3im_loss(pred, target, self.repeats, self.kernel, self.stride, self.patch_height, self.generator)

    def extra_repr(self) -> str:
        return f"repeats={self.repeats}, kernel={self.kernel}, stride={self.stride}, patch_height={self.patch_height}"


@register_method
class S3IMMethod(Method):
    """Add S3IM to a point-wise loss: ``next(output, target) + weight · s3im_loss(output, target)`` (neural fields).

    A ``criterion`` link: the stochastic virtual patches are built from the batch's predictions and targets
    ``(N, C)`` with permutations drawn from ``ctx.generator``; the loss of a ``reduction="none"`` call gets the
    (batch-level) S3IM term on every row, a ``"sum"`` call ``N`` times it, so each reduction's mean is the same.
    Logs ``s3im/value`` (the last ``1 − SSIM``).

    Args:
        weight: λ, the S3IM term's weight (reference: 1.0).
        repeats: M, copies of the batch in the virtual image (reference: 10).
        kernel: SSIM window (reference: 4). stride: its stride (reference: 4).
        patch_height: rows of the virtual image (reference: 64).
    """

    name = "s3im"
    paper_id = "arXiv:2308.07032"
    claim = ("adding S3IM (1 - SSIM of stochastic virtual patches of the batch) to the point-wise MSE improves "
             "neural fields' held-out quality (test MSE down >90 % for TensoRF/DVGO) nearly for free")
    claimed_effect = "better"
    targets = ("values",)

    def __init__(self, weight: float = 1.0, repeats: int = 10, kernel: int = 4, stride: int = 4,
                 patch_height: int = 64) -> None:
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight >= 0:
            raise ValueError(f"s3im: weight must be a number >= 0, got {weight!r}")
        for key, value in (("repeats", repeats), ("kernel", kernel), ("stride", stride),
                           ("patch_height", patch_height)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"s3im: {key} must be an int >= 1, got {value!r}")
        self.weight, self.repeats, self.kernel, self.stride = float(weight), repeats, kernel, stride
        self.patch_height = patch_height

    def setup(self, ctx: Context) -> None:
        if ctx.run.per_device_batch < self.patch_height:
            raise ValueError(f"train.batch_size = {ctx.run.per_device_batch} is smaller than patch_height = "
                             f"{self.patch_height}; S3IM needs at least one column of the virtual image")

    def criterion(self, output: torch.Tensor, target: torch.Tensor, next, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        base = next(output, target, reduction=reduction)
        n = output.shape[0]
        usable = n - n % self.patch_height
        if usable < self.patch_height:
            raise ValueError(f"s3im: a batch of {n} points is smaller than patch_height = {self.patch_height}")
        term = s3im_loss(output[:usable].float(), target[:usable].float(), self.repeats, self.kernel, self.stride,
                         self.patch_height, ctx.generator)
        with contextlib.suppress(RuntimeError):  # no value to log inside a torch.func transform
            self.log(ctx, "value", term.detach())
        term = self.weight * term
        if reduction == "sum":
            term = term * n
        return base + term
