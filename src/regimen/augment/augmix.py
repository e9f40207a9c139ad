"""AugMix: a convex mixture of ``width`` random augmentation chains of each image, mixed again with the image.

Paper: Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, "AugMix: A Simple Data Processing Method to Improve
Robustness and Uncertainty", ICLR 2020, arXiv 1912.02781 (reference code: google-research/augmix, ``augment_and_mix``
and ``augmentations.py``).

Per image:

    w ~ Dirichlet(α, …, α)   (width weights),   m ~ Beta(α, α)
    chain_j = op_{j,d} ∘ … ∘ op_{j,1} (x),   d = depth, or uniform in {1, 2, 3} when depth = −1
    x_augmix = (1 − m) x + m Σ_j w_j chain_j

Every op draws its own level ``l ~ U(0.1, severity)`` (the authors' ``sample_level``: severity is sampled per op, not
fixed at the maximum — timm #404) and maps it as the reference does (``int_parameter(l, max) = ⌊l · max/10⌋``,
``float_parameter = l · max/10``, a random sign for geometric ops): rotate ``⌊3l⌋``°, solarize threshold
``256 − ⌊25.6 l⌋``, posterize ``4 − ⌊0.4 l⌋`` bits, shear ``0.03 l``, translate ``⌊l · side/30⌋`` px (the reference's
``IMAGE_SIZE/3`` with the image's side), and for ``augmentation_set = "all"`` the enhancement factor ``0.18 l + 0.1``
of color, contrast, brightness and sharpness. ``"safe"`` (default, the paper's ImageNet-C-disjoint set) leaves those
four out. Geometric ops resample bilinearly like the reference.

Vectorised: every chain position is one call of :func:`regimen.augment.apply_ops` with per-image ops and values
(images that drew the same op are processed together); shorter chains are padded with Identity. The mixture is
taken in [0, 1] pixel space, which equals the reference's mixing of normalised images (normalisation is affine and
the weights sum to 1).

Jensen–Shannon consistency (``jsd = true``, the paper's Eq. 3, the reference's ``cifar.py``): each step trains on the
clean image x and two independent AugMix views x₁, x₂ of it, one forward pass over the 3N images, and the loss

    L = CE(p(y | x), y) + λ · JS(p; p₁; p₂),   λ = 12,
    JS = ⅓ (KL(p ‖ M) + KL(p₁ ‖ M) + KL(p₂ ‖ M)),   M = (p + p₁ + p₂)/3

(softmax probabilities, KL summed over classes and averaged over the batch; the reference clamps M to [1e-7, 1]
before its log, and so does :func:`jensen_shannon_consistency`). The cross-entropy sees only the clean images. The
batch (what later methods see) is then ``cat(x, x₁, x₂)`` with N targets: list ``augmix`` after every other method that
transforms or selects rows of the batch (a mismatch is an error naming it); its ``forward_loss`` runs the model once on
the 3N images and hands the clean logits on as the step's output (so training accuracy is that of the clean images).
A step costs about three forward/backward passes of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from regimen.augment.functional import check_images
from regimen.augment.randaugment import OPS, AugmentParams, apply_ops
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["AugMixMethod", "augmix", "augmix_params", "jensen_shannon_consistency"]

_SAFE = ("AutoContrast", "Equalize", "Posterize", "Rotate", "Solarize", "ShearX", "ShearY", "TranslateX",
         "TranslateY")
_ALL = _SAFE + ("Color", "Contrast", "Brightness", "Sharpness")
_SIGNED = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}


def _check(severity: float, width: int, depth: int, alpha: float, augmentation_set: str) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int | float) or not 0.1 < severity <= 10:
        raise ValueError(f"severity must be in (0.1, 10], got {severity!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1 (the number of augmentation chains), got {width!r}")
    if isinstance(depth, bool) or not isinstance(depth, int) or not (depth == -1 or depth >= 1):
        raise ValueError(f"depth must be -1 (random 1-3) or an int >= 1, got {depth!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if augmentation_set not in ("safe", "all"):
        raise ValueError(f"augmentation_set must be 'safe' or 'all', got {augmentation_set!r}")


def _values(names: np.ndarray, level: np.ndarray, sign: np.ndarray, side: int) -> np.ndarray:
    """The reference's level-to-parameter maps, in the units of ``apply_ops``."""
    values = np.zeros_like(level)
    for name in np.unique(names):
        at = names == name
        lv = level[at]
        if name == "Posterize":
            values[at] = 4 - np.floor(lv * 4 / 10)
        elif name == "Solarize":
            values[at] = 256 - np.floor(lv * 256 / 10)
        elif name == "Rotate":
            values[at] = np.floor(lv * 30 / 10)
        elif name in ("ShearX", "ShearY"):
            values[at] = lv * 0.3 / 10
        elif name in ("TranslateX", "TranslateY"):
            values[at] = np.floor(lv * (side / 3) / 10)
        elif name in ("Color", "Contrast", "Brightness", "Sharpness"):
            values[at] = lv * 1.8 / 10 + 0.1
        if name in _SIGNED:
            values[at] *= sign[at]
    return values


@checked_arguments
def augmix_params(n: int, height: int, width_px: int, severity: float = 3, width: int = 3, depth: int = -1,
                  alpha: float = 1.0, augmentation_set: Literal["safe", "all"] = "safe",
                  generator: torch.Generator | None = None) -> tuple[list[AugmentParams], torch.Tensor, torch.Tensor]:
    """The random draws of one AugMix call: per chain an :class:`AugmentParams` ``(n, max depth)``, the chain weights
    ``(n, width)`` and the mixing weights ``m`` ``(n,)``."""
    _check(severity, width, depth, alpha, augmentation_set)
    for name, value, low in (("n", n, 0), ("height", height, 1), ("width_px", width_px, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    names = np.array(_ALL if augmentation_set == "all" else _SAFE)
    k = depth if depth > 0 else 3
    chains = []
    for _ in range(width):
        lengths = np.full(n, depth) if depth > 0 else rng.integers(1, 4, size=n)
        picked = names[rng.integers(0, len(names), size=(n, k))]
        level = rng.uniform(0.1, severity, size=(n, k))
        sign = np.where(rng.random(size=(n, k)) < 0.5, -1.0, 1.0)
        values = _values(picked, level, sign, min(height, width_px))
        active = np.arange(k)[None, :] < lengths[:, None]
        picked = np.where(active, picked, "Identity")
        values = np.where(active, values, 0.0)
        ops = np.vectorize(OPS.index, otypes=[np.int64])(picked)
        chains.append(AugmentParams(torch.from_numpy(ops), torch.from_numpy(values.astype(np.float64))))
    weights = torch.from_numpy(rng.dirichlet([alpha] * width, size=n)).float()
    m = torch.from_numpy(rng.beta(alpha, alpha, size=n)).float()
    return chains, weights, m


@checked_arguments
def augmix(images: torch.Tensor, severity: float = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
           augmentation_set: Literal["safe", "all"] = "safe", generator: torch.Generator | None = None,
           interpolation: str = "bilinear") -> torch.Tensor:
    """AugMix of a batch ``(N, C, H, W)`` of float images in [0, 1] (or uint8: the result is float in [0, 1]);
    ``interpolation`` of the geometric ops (the reference: bilinear)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    check_images(images)
    n, _, h, w = images.shape
    chains, weights, m = augmix_params(n, h, w, severity, width, depth, alpha, augmentation_set, generator)
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    mix = torch.zeros_like(x)
    for j, params in enumerate(chains):
        chain = apply_ops(images, params, interpolation=interpolation)
        chain = chain.float() / 255.0 if chain.dtype == torch.uint8 else chain
        mix += weights[:, j].to(x.device).view(n, 1, 1, 1) * chain
    m = m.to(x.device).view(n, 1, 1, 1)
    return (1.0 - m) * x + m * mix


@checked_arguments
def jensen_shannon_consistency(logits: Sequence[torch.Tensor], eps: float = 1e-7) -> torch.Tensor:
    """``JS(p_1; …; p_K) = (1/K) Σ_k KL(p_k ‖ M)``, ``M = (1/K) Σ_k p_k``, ``p_k = softmax(logits_k)`` over the last
    dimension, KL summed over classes and averaged over the batch; ``log M`` is taken of M clamped to [eps, 1] as the
    AugMix reference does. ``logits``: K ≥ 2 tensors ``(N, C)`` of one shape."""
    if isinstance(logits, torch.Tensor) or not isinstance(logits, Sequence) or len(logits) < 2:
        raise ValueError("logits must be a sequence of at least 2 tensors (one per view)")
    shape = logits[0].shape
    if any(not isinstance(t, torch.Tensor) or t.shape != shape for t in logits) or len(shape) != 2:
        raise ValueError(f"logits must be tensors (N, C) of one shape, got {[tuple(t.shape) for t in logits]}")
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    probs = [F.softmax(t.float(), dim=1) for t in logits]
    log_mixture = torch.clamp(torch.stack(probs).mean(dim=0), eps, 1.0).log()
    kl = [(torch.xlogy(p, p) - p * log_mixture).sum(dim=1).mean() for p in probs]
    return torch.stack(kl).mean()


@register_method
class AugMixMethod(Method):
    """AugMix (Hendrycks 2020): each image mixed with ``width`` random op chains, severity sampled per op.

    Args:
        severity: top of the per-op level range U(0.1, severity) (paper: 3).
        width: chains per image (paper: 3). depth: ops per chain, -1 for uniform 1-3 (paper).
        alpha: Dirichlet and Beta parameter (paper: 1).
        augmentation_set: ``"safe"`` (paper; disjoint from ImageNet-C) or ``"all"``.
        jsd: train on the clean images and two AugMix views with the Jensen–Shannon consistency loss (paper).
        jsd_weight: λ of the consistency term (paper: 12).
    """

    name = "augmix"
    inputs = ("image",)
    paper_id = "arXiv:1912.02781"
    claim = ("mixing random augmentation chains improves robustness to corruptions and calibration while keeping "
             "clean accuracy (CIFAR-10/100-C, ImageNet-C)")
    claimed_effect = "no_worse"

    def __init__(self, severity: float = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 augmentation_set: Literal["safe", "all"] = "safe", jsd: bool = False,
                 jsd_weight: float = 12.0) -> None:
        _check(severity, width, depth, alpha, augmentation_set)
        if not isinstance(jsd, bool):
            raise TypeError(f"jsd must be true or false, got {jsd!r}")
        if isinstance(jsd_weight, bool) or not isinstance(jsd_weight, int | float) or not jsd_weight > 0:
            raise ValueError(f"jsd_weight must be > 0 (the paper's lambda = 12), got {jsd_weight!r}")
        self.severity, self.width, self.depth, self.alpha = severity, width, depth, float(alpha)
        self.augmentation_set = augmentation_set
        self.jsd, self.jsd_weight = jsd, float(jsd_weight)

    def overrides(self, hook: str) -> bool:
        if hook == "forward_loss":  # the consistency loss only: without it AugMix is a batch transform alone
            return self.jsd
        return super().overrides(hook)

    def _augmix(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return augmix(x, self.severity, self.width, self.depth, self.alpha, self.augmentation_set, ctx.generator)

    def transform_batch(self, x: Any, y: Any, ctx: Context) -> tuple[Any, Any]:
        if not self.jsd:
            return self._augmix(x, ctx), y
        clean = x.float() / 255.0 if x.dtype == torch.uint8 else x
        return torch.cat([clean, self._augmix(x, ctx), self._augmix(x, ctx)]), y

    def forward_loss(self, model: Any, x: Any, y: Any, next: Any, ctx: Context):
        if not self.jsd:
            return next(model, x, y)
        n = len(y)
        if not isinstance(x, torch.Tensor) or x.shape[0] != 3 * n:
            raise RuntimeError(f"augmix (jsd = true) expects the clean and two augmented views, 3 x {n} rows for {n} "
                               f"targets, got {getattr(x, 'shape', None)}: a method listed after augmix changed the "
                               "batch; list augmix after every method that transforms or selects its rows")
        views: dict[str, torch.Tensor] = {}

        def clean_logits(inputs: torch.Tensor) -> torch.Tensor:  # one pass over the 3N images; CE on the clean N
            if inputs.shape[0] != 3 * n:
                raise RuntimeError(f"augmix (jsd = true): a forward_loss method listed after augmix called the model "
                                   f"on {inputs.shape[0]} rows, not the 3 x {n} views; list augmix after it")
            views["all"] = model(inputs)
            return views["all"][:n]

        loss, output = next(clean_logits, x, y)
        if "all" not in views:
            raise RuntimeError("augmix (jsd = true): the model was not called on the batch by the methods after it")
        consistency = jensen_shannon_consistency(views["all"].split(n))
        self.log(ctx, "jsd", consistency)
        return loss + self.jsd_weight * consistency, output
