"""CutMix and MixUp: mix pairs of images and their labels.

Papers: Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features" (2019,
arXiv 1905.04899); Zhang et al., "mixup: Beyond Empirical Risk Minimization" (2017, arXiv 1710.09412).

Each image ``i`` is paired with image ``perm[i]`` of a random permutation. MixUp: ``x = lam x_i + (1 - lam) x_perm``.
CutMix: a box of area ``(1 - lam) H W`` (``lam ~ Beta(alpha, alpha)``, side ratio ``sqrt(1 - lam)``, centre uniform
over the image) is pasted from ``x_perm`` into ``x_i``. Targets: ``t = lam * q(y_i) + (1 - lam) * q(y_perm)`` with
label smoothing ``q(y) = (1 - eps) onehot(y) + eps / C``.

Pitfalls handled:

* CutMix's box is clipped at the border, so ``lam`` is **corrected to the pasted area**:
  ``lam = 1 - (box area) / (H W)``.
* Pairing by a random permutation (Composer/Kornia), not by flipping the batch (timm), which needs an even batch;
  odd batch sizes (and ``N = 1``) work.
* Index labels with "interpolate the loss" instead of dense soft targets: ``return_pair=True`` returns
  ``(images, targets_a, targets_b, lam)``, to be used with :func:`regimen.losses.mixed_cross_entropy` (Composer
  #382; ``regimen.augment.mixed_cross_entropy`` is its deprecated alias).
* Label smoothing is applied once. In training it is the trainer's (``train.label_smoothing``): its criterion smooths
  the mixed targets, ``(1 - eps) t + eps / C``, which equals mixing the smoothed sides because smoothing is affine in
  the target and the weights ``lam``, ``1 - lam`` sum to one. The Methods' own ``label_smoothing`` is deprecated and
  refused in ``setup`` when ``train.label_smoothing`` is also set. The functions keep ``label_smoothing=`` for
  users' own loops (applied to each side before mixing).
* Segmentation masks mixed alongside (``masks=``: CutMix pastes the same box; MixUp mixes floating masks linearly).
* One ``lam`` per batch (the papers) or one per image (``per_sample=True``); ``lam`` is always returned per image.
* ``Beta`` is sampled through NumPy seeded from ``generator``, so the same generator gives the same result.

CutMix *or* MixUp per batch (timm's ``Mixup(mixup_alpha, cutmix_alpha, switch_prob, prob)``): the ``mix`` Method
(:class:`MixMethod`) mixes a batch with probability ``prob``, and then uses CutMix with probability ``switch_prob``,
else MixUp. This is the documented way to use both.

Stacking ``cutmix`` then ``mixup`` in one recipe instead applies *both* to every batch: CutMix pairs image ``i``
with ``p(i)`` (weight ``l1``), then MixUp pairs the CutMix result ``i`` with ``s(i)`` (weight ``l2``), so an image
blends up to four originals and its target is

    ``t_i = l2 l1 e(y_i) + l2 (1 - l1) e(y_p(i)) + (1 - l2) l1' e(y_s(i)) + (1 - l2) (1 - l1') e(y_p(s(i)))``

with ``e`` the one-hot vector and ``l1'`` CutMix's weight of image ``s(i)`` (``= l1`` with one ``lam`` per batch).
MixUp mixes the soft targets CutMix produced, so the composition is exact; ``train.label_smoothing`` is applied once
by the criterion, to ``t``.
"""


import numpy as np
import torch
import torch.nn.functional as F

from regimen._compat import deprecated_aliases
from regimen.augment._common import check_single_smoothing, warn_method_smoothing
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["cutmix", "mixup", "cutmix_boxes", "CutMixMethod", "MixUpMethod", "MixMethod"]


def _check_common(images, targets, alpha, num_classes, label_smoothing, return_pair, masks):
    require_data(images=images, targets=targets, masks=masks)  # values are read (labels, the mix) below
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    n = images.shape[0]
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.shape[:1] != (n,) or targets.dim() not in (1, 2):
        raise ValueError(f"targets must have shape ({n},) (class indices) or ({n}, C) (probabilities), got "
                         f"{tuple(targets.shape)}")
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if targets.dim() == 1:
        if targets.is_floating_point() or targets.dtype == torch.bool:
            raise TypeError(f"index targets must be an integer tensor, got {targets.dtype}")
        if num_classes is None and not return_pair:
            raise ValueError("num_classes is required to build soft targets from index targets")
        if n and (targets.min() < 0 or (num_classes is not None and targets.max() >= num_classes)):
            raise ValueError(f"targets must be class indices in [0, num_classes={num_classes}), got values in "
                             f"[{targets.min().item()}, {targets.max().item()}]")
    else:
        if not targets.is_floating_point():
            raise TypeError(f"soft targets (N, C) must be floating point, got {targets.dtype}")
        if num_classes is not None and targets.shape[1] != num_classes:
            raise ValueError(f"soft targets have {targets.shape[1]} classes, num_classes is {num_classes}")
    bad_classes = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    if num_classes is not None and bad_classes:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if masks is not None:
        if not isinstance(masks, torch.Tensor):
            raise TypeError(f"masks must be a torch.Tensor, got {type(masks).__name__}")
        if masks.dim() not in (3, 4) or masks.shape[0] != n or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks must have shape ({n}, H, W) or ({n}, K, H, W) with H, W = "
                             f"{tuple(images.shape[-2:])}, got {tuple(masks.shape)}")


def _beta(alpha: float, size: int, generator: torch.Generator | None) -> torch.Tensor:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, size=size)).to(torch.float64)


def _permutation(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randperm(n, generator=generator)


def _soft(targets: torch.Tensor, num_classes: int | None, label_smoothing: float) -> torch.Tensor:
    if targets.dim() == 1:
        probs = F.one_hot(targets.long(), num_classes).float()
    else:
        probs = targets.float()
    if label_smoothing > 0:
        probs = probs * (1.0 - label_smoothing) + label_smoothing / probs.shape[1]
    return probs


def _finish(images, mixed, targets, perm, lam, num_classes, label_smoothing, return_pair, masks, mixed_masks):
    device = images.device
    perm_d = perm.to(device)
    lam_f = lam.to(device=device, dtype=torch.float32)
    if return_pair:
        out = (mixed, targets, targets.index_select(0, perm_d.to(targets.device)), lam_f)
    else:
        soft = _soft(targets, num_classes, label_smoothing)
        lam_t = lam_f.to(soft.device).view(-1, 1)
        out = (mixed, lam_t * soft + (1.0 - lam_t) * soft.index_select(0, perm_d.to(soft.device)))
    if masks is not None:
        out = (*out, mixed_masks)
    return out


@checked_arguments
def cutmix_boxes(
    lam: torch.Tensor, height: int, width: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``(N, 4)`` as ``(y1, y2, x1, x2)`` (end-exclusive) for target ratios ``lam`` ``(N,)``, and the corrected
    ``lam = 1 - box area / (H W)`` after clipping the box to the image."""
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height} and {width}")
    if not isinstance(lam, torch.Tensor) or lam.dim() != 1 or not lam.is_floating_point():
        raise ValueError(f"lam must be a 1-d floating point tensor of ratios (N,), got {lam!r:.80}")
    if lam.device.type == "meta" or (lam.numel() and not bool(((lam >= 0) & (lam <= 1)).all())):
        raise ValueError("lam must hold ratios in [0, 1] (no NaN, not on the meta device)")
    ratio = torch.sqrt(1.0 - lam.double())
    cut_h = (height * ratio).long()
    cut_w = (width * ratio).long()
    n = lam.shape[0]
    cy = torch.randint(0, height, (n,), generator=generator)
    cx = torch.randint(0, width, (n,), generator=generator)
    y1 = (cy - cut_h // 2).clamp(0, height)
    y2 = (cy + cut_h // 2).clamp(0, height)
    x1 = (cx - cut_w // 2).clamp(0, width)
    x2 = (cx + cut_w // 2).clamp(0, width)
    area = (y2 - y1) * (x2 - x1)
    corrected = 1.0 - area.double() / (height * width)
    return torch.stack([y1, y2, x1, x2], dim=1), corrected


@checked_arguments
def cutmix(
    images: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 1.0,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
    masks: torch.Tensor | None = None,
    return_pair: bool = False,
    per_sample: bool = False,
):
    """CutMix a batch.

    Args:
        images: ``(N, C, H, W)`` uint8 or float.
        targets: class indices ``(N,)`` or probabilities ``(N, num_classes)``.
        alpha: ``lam ~ Beta(alpha, alpha)`` (> 0).
        num_classes: needed to build soft targets from indices.
        label_smoothing: ``eps`` applied to each side before mixing.
        generator: CPU generator for the permutation, ``lam`` and the box centres.
        masks: optional ``(N, H, W)`` or ``(N, K, H, W)`` masks pasted with the same boxes.
        return_pair: return ``(images, targets_a, targets_b, lam)`` instead of ``(images, soft_targets)``.
        per_sample: one ``lam`` and box per image instead of one per batch.

    Returns:
        ``(images, soft_targets)`` or ``(images, targets_a, targets_b, lam)``, with ``masks`` appended when given;
        ``lam`` ``(N,)`` float32 is the area-corrected weight of ``targets_a``. Inputs are not modified.
    """
    _check_common(images, targets, alpha, num_classes, label_smoothing, return_pair, masks)
    n, _, h, w = images.shape
    perm = _permutation(n, generator)
    lam = _beta(alpha, n if per_sample else 1, generator).expand(n)
    boxes, lam = cutmix_boxes(lam if per_sample else lam[:1], h, w, generator)
    if not per_sample:
        boxes, lam = boxes.expand(n, 4), lam.expand(n)
    device = images.device
    b = boxes.to(device)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    inside = ((rows >= b[:, 0, None, None]) & (rows < b[:, 1, None, None])
              & (cols >= b[:, 2, None, None]) & (cols < b[:, 3, None, None]))  # (N, H, W)
    perm_d = perm.to(device)
    mixed = torch.where(inside.unsqueeze(1), images.index_select(0, perm_d), images)
    mixed_masks = None
    if masks is not None:
        box = inside if masks.dim() == 3 else inside.unsqueeze(1)
        mixed_masks = torch.where(box.to(masks.device), masks.index_select(0, perm_d.to(masks.device)), masks)
    return _finish(images, mixed, targets, perm, lam, num_classes, label_smoothing, return_pair, masks, mixed_masks)


@checked_arguments
def mixup(
    images: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.2,
    num_classes: int | None = None,
    label_smoothing: float = 0.0,
    generator: torch.Generator | None = None,
    masks: torch.Tensor | None = None,
    return_pair: bool = False,
    per_sample: bool = False,
):
    """MixUp a batch: ``x = lam x_i + (1 - lam) x_perm(i)``.

    Args and returns as :func:`cutmix` (``alpha`` defaults to 0.2). uint8 images are mixed in float and rounded
    back to uint8; ``masks`` must be floating point (soft masks are mixed with the same ``lam``).
    """
    _check_common(images, targets, alpha, num_classes, label_smoothing, return_pair, masks)
    if masks is not None and not masks.is_floating_point():
        raise TypeError("mixup masks must be floating point (probabilities or one-hot): integer label maps cannot be "
                        f"mixed linearly, got {masks.dtype}")
    n = images.shape[0]
    perm = _permutation(n, generator)
    lam = _beta(alpha, n if per_sample else 1, generator).expand(n)
    perm_d = perm.to(images.device)
    weight = lam.to(device=images.device, dtype=torch.float32).view(-1, 1, 1, 1)
    x = images.float()
    mixed = weight * x + (1.0 - weight) * x.index_select(0, perm_d)
    mixed = mixed.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else mixed.to(images.dtype)
    mixed_masks = None
    if masks is not None:
        mw = lam.to(device=masks.device, dtype=masks.dtype).view(-1, *([1] * (masks.dim() - 1)))
        mixed_masks = mw * masks + (1 - mw) * masks.index_select(0, perm_d.to(masks.device))
    return _finish(images, mixed, targets, perm, lam, num_classes, label_smoothing, return_pair, masks, mixed_masks)


class _MixMethod(Method):
    """Shared Method of CutMix and MixUp: mix with probability ``prob``, soft targets on every step.

    ``label_smoothing`` is deprecated: set ``train.label_smoothing`` (the criterion smooths the mixed targets).
    """

    function = staticmethod(cutmix)
    inputs = ("image",)
    targets = ("labels",)

    def __init__(self, alpha: float, prob: float, label_smoothing: float, per_sample: bool) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        warn_method_smoothing(self.name, label_smoothing)
        self.alpha = alpha
        self.prob = prob
        self.label_smoothing = label_smoothing
        self.per_sample = per_sample

    def setup(self, ctx: Context) -> None:
        check_single_smoothing(self.name, self.label_smoothing, ctx)
        if not ctx.run.num_classes:
            raise ConfigurationError(f"{self.name} needs the number of classes (ctx.run.num_classes) to build soft "
                                     "targets; the task gave none")

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = ctx.run.num_classes
        if self.prob < 1.0 and torch.rand((), generator=ctx.generator).item() >= self.prob:
            return x, _soft(y, num_classes, self.label_smoothing)  # soft targets on every step, smoothed alike
        return type(self).function(
            x,
            y,
            alpha=self.alpha,
            num_classes=num_classes,
            label_smoothing=self.label_smoothing,
            generator=ctx.generator,
            per_sample=self.per_sample,
        )


@register_method
class CutMixMethod(_MixMethod):
    """CutMix: paste a box from a paired image, labels mixed by the pasted area (Yun et al. 2019).

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``. prob: probability of mixing a batch. per_sample: one box per image.
        label_smoothing: deprecated; set ``train.label_smoothing`` (refused in ``setup`` when both are set).

    With ``mixup`` also in the recipe both apply to every batch (targets compose, see the module docstring); ``mix``
    chooses one of them per batch instead.
    """

    name = "cutmix"
    paper_id = "arXiv:1905.04899"
    claim = (
        "pasting patches between images with area-proportional labels improves accuracy (+2.3 pp top-1, "
        "ResNet-50 ImageNet)"
    )
    claimed_effect = "better"
    function = staticmethod(cutmix)

    def __init__(self, alpha: float = 1.0, prob: float = 1.0, label_smoothing: float = 0.0, per_sample: bool = False):
        super().__init__(alpha, prob, label_smoothing, per_sample)


@register_method
class MixUpMethod(_MixMethod):
    """MixUp: convex combinations of image pairs and their labels (Zhang et al. 2017).

    Args:
        alpha: ``lam ~ Beta(alpha, alpha)``. prob: probability of mixing a batch. per_sample: one ``lam`` per image.
        label_smoothing: deprecated; set ``train.label_smoothing`` (refused in ``setup`` when both are set).

    With ``cutmix`` also in the recipe both apply to every batch (targets compose, see the module docstring); ``mix``
    chooses one of them per batch instead.
    """

    name = "mixup"
    paper_id = "arXiv:1710.09412"
    claim = (
        "training on convex combinations of image pairs and their labels improves generalisation (ImageNet "
        "ResNet-50 -1.2 pp top-1 error)"
    )
    claimed_effect = "better"
    function = staticmethod(mixup)

    def __init__(self, alpha: float = 0.2, prob: float = 1.0, label_smoothing: float = 0.0, per_sample: bool = False):
        super().__init__(alpha, prob, label_smoothing, per_sample)


@register_method
class MixMethod(Method):
    """CutMix or MixUp, chosen per batch (timm's ``Mixup``): mix with probability ``prob``, then CutMix with
    probability ``switch_prob``, else MixUp (Yun et al. 2019; Zhang et al. 2017).

    Args:
        mixup_alpha: MixUp's ``lam ~ Beta(a, a)``; 0 turns MixUp off (every mixed batch uses CutMix).
        cutmix_alpha: CutMix's ``lam ~ Beta(a, a)``; 0 turns CutMix off (every mixed batch uses MixUp).
        switch_prob: probability of CutMix for a mixed batch when both are on.
        prob: probability of mixing a batch at all; unmixed batches still get (one-hot) soft targets.
        per_sample: one ``lam`` (and CutMix box) per image; the CutMix/MixUp choice stays one per batch.

    Draws per batch from ``ctx.generator``: two uniforms ``u, v`` (mix when ``u < prob``; CutMix when
    ``v < switch_prob``), then the chosen function's own draws, so a mixed batch equals :func:`cutmix` /
    :func:`mixup` called with the generator in that state. Label smoothing: ``train.label_smoothing``.
    Listing ``cutmix`` or ``mixup`` beside it is refused: they would mix every batch a second time.
    """

    name = "mix"
    paper_id = "arXiv:1905.04899"
    claim = "mixing each batch with CutMix or MixUp (timm's Mixup) improves accuracy over either alone"
    claimed_effect = "better"
    inputs = ("image",)
    targets = ("labels",)
    conflicts = ("cutmix", "mixup")
    constraint_reason = "mix already chooses CutMix or MixUp per batch; a second mixing Method would mix again"

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 prob: float = 1.0, per_sample: bool = False) -> None:
        for name, alpha in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha >= 0:
                raise ConfigurationError(f"mix.{name} must be a number >= 0 (0 turns it off), got {alpha!r}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigurationError("mix.mixup_alpha and mix.cutmix_alpha are both 0: turn one of them on "
                                     "(timm's defaults are mixup_alpha = 0.8, cutmix_alpha = 1.0)")
        for name, value in (("switch_prob", switch_prob), ("prob", prob)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ConfigurationError(f"mix.{name} must be a probability in [0, 1], got {value!r}")
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.switch_prob = float(switch_prob)
        self.prob = float(prob)
        self.per_sample = per_sample

    def setup(self, ctx: Context) -> None:
        if not ctx.run.num_classes:
            raise ConfigurationError(f"{self.name} needs the number of classes (ctx.run.num_classes) to build soft "
                                     "targets; the task gave none")

    def choose(self, generator: torch.Generator | None) -> str | None:
        """This batch's choice, ``"cutmix"``, ``"mixup"`` or ``None`` (no mixing), from two uniform draws."""
        u, v = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        if u >= self.prob:
            return None
        if self.cutmix_alpha == 0:
            return "mixup"
        if self.mixup_alpha == 0:
            return "cutmix"
        return "cutmix" if v < self.switch_prob else "mixup"

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        num_classes = ctx.run.num_classes
        choice = self.choose(ctx.generator)
        if choice is None:
            return x, _soft(y, num_classes, 0.0)  # soft targets on every step
        function, alpha = (cutmix, self.cutmix_alpha) if choice == "cutmix" else (mixup, self.mixup_alpha)
        return function(x, y, alpha=alpha, num_classes=num_classes, generator=ctx.generator,
                        per_sample=self.per_sample)


__getattr__ = deprecated_aliases(__name__, {"mixed_cross_entropy": "regimen.losses.mixed_cross_entropy"},
                                 globals())
