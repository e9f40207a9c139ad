"""Augmentation: per-sample batched RandAugment/TrivialAugment (Pillow-exact ops), CutMix/MixUp, AugMix, CutOut,
ColOut, progressive resizing, invertible geometric augmentation (AugUndo) and data-efficient augmentation subsets.

Importing the package registers the Methods ``randaugment`` (:class:`RandAugmentMethod`), ``trivialaugment``
(:class:`TrivialAugmentMethod`), ``cutmix`` (:class:`CutMixMethod`), ``mixup`` (:class:`MixUpMethod`), ``mix``
(:class:`MixMethod`: CutMix or MixUp per batch, timm's switch), ``augmix`` (:class:`AugMixMethod`), ``cutout``
(:class:`CutOutMethod`), ``colout`` (:class:`ColOutMethod`), ``progressive_resizing``
(:class:`ProgressiveResizingMethod`), ``aug_subset`` (:class:`AugSubsetMethod`), ``hflip`` (:class:`FlipMethod`:
random or alternating horizontal flips), ``tta_flip`` (:class:`TTAFlipMethod`: flip test-time augmentation) and
``lagnn`` (:class:`LAGNNMethod`: LA-GNN's CVAE-generated neighbour features for GCNs, task ``node_classification``).
The Pillow-exact ops on batches are in :mod:`regimen.augment.functional`. The soft-target losses
(``mixed_cross_entropy`` for the pair form of CutMix/MixUp) live in :mod:`regimen.losses`;
``regimen.augment.mixed_cross_entropy`` is a deprecated alias.
"""

from regimen._compat import deprecated_aliases
from regimen.augment import functional, native
from regimen.augment.augmix import AugMixMethod, augmix, augmix_params, jensen_shannon_consistency
from regimen.augment.colout import ColOutMethod, colout, colout_indices
from regimen.augment.cutout import CutOutMethod, cutout, cutout_boxes, cutout_mask
from regimen.augment.flip import FlipMethod, alternating_flip_mask, flip_images, random_flip_mask
from regimen.augment.functional import OPS
from regimen.augment.invertible import AugUndo, InvertibleAugment, invertible_augment
from regimen.augment.local_augmentation import (
    LAGNNMethod,
    LocalAugmentedGCN,
    NeighbourCVAE,
    consistency_loss,
    cvae_loss,
    train_neighbour_cvae,
)
from regimen.augment.mix import CutMixMethod, MixMethod, MixUpMethod, cutmix, cutmix_boxes, mixup
from regimen.augment.progressive_resizing import ProgressiveResizingMethod, progressive_scale, resize_batch
from regimen.augment.randaugment import (
    AugmentParams,
    RandAugment,
    RandAugmentMethod,
    TrivialAugment,
    TrivialAugmentMethod,
    apply_ops,
)
from regimen.augment.subset import (
    AugSubsetMethod,
    facility_location,
    gradient_proxies,
    model_gradient_proxies,
    select_coreset,
)
from regimen.augment.tta_flip import FlipTTA, TTAFlipMethod, flip_tta

__all__ = [
    "OPS",
    "LAGNNMethod",
    "LocalAugmentedGCN",
    "NeighbourCVAE",
    "consistency_loss",
    "cvae_loss",
    "train_neighbour_cvae",
    "AugMixMethod",
    "AugSubsetMethod",
    "AugUndo",
    "AugmentParams",
    "ColOutMethod",
    "CutMixMethod",
    "CutOutMethod",
    "FlipMethod",
    "FlipTTA",
    "InvertibleAugment",
    "MixMethod",
    "MixUpMethod",
    "ProgressiveResizingMethod",
    "RandAugment",
    "RandAugmentMethod",
    "TTAFlipMethod",
    "TrivialAugment",
    "TrivialAugmentMethod",
    "alternating_flip_mask",
    "apply_ops",
    "augmix",
    "augmix_params",
    "jensen_shannon_consistency",
    "colout",
    "colout_indices",
    "cutmix",
    "cutmix_boxes",
    "cutout",
    "cutout_boxes",
    "cutout_mask",
    "facility_location",
    "flip_images",
    "flip_tta",
    "functional",
    "gradient_proxies",
    "invertible_augment",
    "mixup",
    "model_gradient_proxies",
    "native",
    "progressive_scale",
    "resize_batch",
    "random_flip_mask",
    "select_coreset",
]

__getattr__ = deprecated_aliases(__name__, {"mixed_cross_entropy": "regimen.losses.mixed_cross_entropy"},
                                 globals())
