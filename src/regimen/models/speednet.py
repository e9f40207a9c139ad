"""A small fast CNN with a patch-whitening first layer, after airbench's CIFAR-10 speedrun network.

Paper: Keller Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (2024, arXiv 2404.00498): the first layer is
a convolution whose filters are the ZCA/PCA whitening of the training set's ``k x k`` patches, followed by three
groups of ``conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU`` and a linear head. Code: KellerJordan/
cifar10-airbench (written here from its description, not copied).

Patch whitening. With ``p`` the flattened ``C k k`` patches of the training images, mean ``mu`` and covariance
``Sigma = E[(p - mu)(p - mu)^T] = V diag(lambda) V^T``, the whitening filters are

    W = diag(lambda + eps)^(-1/2) V^T,   b = -W mu,

so ``W p + b`` has covariance ``diag(lambda / (lambda + eps))`` (the identity up to ``eps``) on training patches. As in
airbench the layer holds ``[W; -W]`` (``2 C k k`` output channels) so that a following GELU keeps both signs of every
whitened direction. The weight is frozen by default (``requires_grad=False``; the optimizer skips it), the bias
trains. Pitfalls handled: eigenvalues of a rank-deficient covariance (constant borders of Fashion-MNIST) are clamped
at 0 before ``eps`` is added, and the covariance is accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from regimen.models.staged import ClassifierHead, StagedModel

__all__ = ["PatchWhitening2d", "SpeedNet", "image_patches", "patch_whitening"]


def image_patches(images: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Every ``kernel_size x kernel_size`` patch (stride 1, no padding) of ``images (N, C, H, W)`` as rows
    ``(N * (H - k + 1) * (W - k + 1), C * k * k)``, flattened in ``Conv2d`` weight order (channel, row, column)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor (N, C, H, W), got {getattr(images, 'shape', type(images))}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"kernel_size must be an int >= 1, got {kernel_size!r}")
    if kernel_size > min(images.shape[2:]):
        raise ValueError(f"kernel_size {kernel_size} is larger than the images {tuple(images.shape[2:])}")
    cols = nn.functional.unfold(images.float(), kernel_size)  # (N, C k k, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def patch_whitening(images: torch.Tensor, kernel_size: int, eps: float = 5e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """The whitening filters of ``images``' patches: ``(weight (D, C, k, k), bias (D,))`` with ``D = C k k`` rows
    ``diag(lambda + eps)^(-1/2) V^T`` (largest eigenvalue first) and ``bias = -W mu``.

    Args:
        images: training images ``(N, C, H, W)`` as the model sees them (normalised).
        kernel_size: the patch size ``k``.
        eps: added to every eigenvalue: bounds the gain of near-constant directions (> 0).
    """
    if not isinstance(eps, int | float) or isinstance(eps, bool) or eps <= 0:
        raise ValueError(f"eps must be a number > 0, got {eps!r}")
    patches = image_patches(images, kernel_size).double()
    if patches.shape[0] < 2:
        raise ValueError("patch_whitening needs at least two patches")
    mean = patches.mean(dim=0)
    centred = patches - mean
    covariance = centred.T @ centred / patches.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp_min(0.0), eigenvectors.flip(1)
    weight = eigenvectors.T / torch.sqrt(eigenvalues + eps).unsqueeze(1)  # (D, D): rows are scaled eigenvectors
    bias = -weight @ mean
    channels = images.shape[1]
    return weight.reshape(-1, channels, kernel_size, kernel_size).float(), bias.float()


class PatchWhitening2d(nn.Conv2d):
    """A ``k x k`` convolution (no padding) with ``2 C k k`` filters ``[W; -W]`` set by :meth:`fit` to the whitening of
    training patches (:func:`patch_whitening`). Before ``fit`` it is an ordinary randomly initialised convolution.

    Args:
        in_channels: image channels ``C``.
        kernel_size: patch size ``k``.
        eps: see :func:`patch_whitening`.
        trainable: whether the filters train after ``fit`` (the bias always trains).
    """

    def __init__(self, in_channels: int, kernel_size: int = 2, eps: float = 5e-4, trainable: bool = False) -> None:
        if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
            raise ValueError(f"kernel_size must be an int >= 1, got {kernel_size!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        super().__init__(in_channels, 2 * in_channels * kernel_size * kernel_size, kernel_size, bias=True)
        self.eps = eps
        self.weight.requires_grad_(trainable)

    @property
    def directions(self) -> int:
        """``D = C k k``: the whitened directions (the first ``D`` channels; the next ``D`` are their negatives)."""
        return self.out_channels // 2

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> PatchWhitening2d:
        """Set the filters and bias from ``images (N, C, H, W)`` (normalised as the model sees them)."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be (N, {self.in_channels}, H, W), got {tuple(images.shape)}")
        weight, bias = patch_whitening(images.to(self.weight.device), self.kernel_size[0], self.eps)
        self.weight.copy_(torch.cat([weight, -weight]))
        self.bias.copy_(torch.cat([bias, -bias]))
        return self


class ConvGroup(nn.Module):
    """``conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU`` (airbench's ConvGroup)."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.pool(self.conv1(x))))
        return self.act(self.bn2(self.conv2(x)))


class SpeedNet(StagedModel):
    """Whitening stem (or a plain conv stem), ``len(widths)`` ConvGroups, classifier head; ``stages`` =
    ``[stem, group, ..., head]``.

    Args:
        in_channels, num_classes: set from the data by the task.
        widths: output channels of each ConvGroup (each halves the resolution).
        whiten: a :class:`PatchWhitening2d` stem (``fit`` it on training images: ``build_model`` does when given
            ``example_inputs``); ``False``: a plain trainable ``k x k`` convolution with as many channels.
        whiten_kernel: the stem's patch size ``k``.
        whiten_eps: see :func:`patch_whitening`.
        whiten_trainable: let the whitening filters train.
        bn_momentum: BatchNorm's running-statistics momentum (airbench: 0.4, high because the runs are short).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 whiten: bool = True, whiten_kernel: int = 2, whiten_eps: float = 5e-4,
                 whiten_trainable: bool = False, bn_momentum: float = 0.4) -> None:
        widths = list(widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of ints >= 1, got {widths!r}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        if whiten:
            stem_conv: nn.Conv2d = PatchWhitening2d(in_channels, whiten_kernel, whiten_eps, whiten_trainable)
        else:
            if not isinstance(whiten_kernel, int) or isinstance(whiten_kernel, bool) or whiten_kernel < 1:
                raise ValueError(f"whiten_kernel must be an int >= 1, got {whiten_kernel!r}")
            stem_conv = nn.Conv2d(in_channels, 2 * in_channels * whiten_kernel ** 2, whiten_kernel)
        stages: list[nn.Module] = [nn.Sequential(stem_conv, nn.GELU())]
        channels = stem_conv.out_channels
        for width in widths:
            stages.append(ConvGroup(channels, width, bn_momentum))
            channels = width
        stages.append(ClassifierHead(channels, num_classes))
        super().__init__(stages)
        self.widths = widths

    @property
    def whitening(self) -> PatchWhitening2d | None:
        """The whitening stem, or ``None`` when built with ``whiten=False``."""
        layer = self.stages[0][0]
        return layer if isinstance(layer, PatchWhitening2d) else None

    def fit_whitening(self, images: torch.Tensor) -> SpeedNet:
        """Fit the whitening stem on ``images`` (normalised training images); a ValueError without one."""
        if self.whitening is None:
            raise ValueError("this SpeedNet was built with whiten=False: it has no whitening layer to fit")
        self.whitening.fit(images)
        return self
