"""Batch pillar: LR-vs-batch-size rules, Ghost BN + regime adaptation, Weight Standardization + Batch-Channel Norm,
adaptive batch size (norm test), LARS / LAMB, hard-batch selection and length-bucketed samplers; and the optimisation
methods of Composer parity: SAM/ASAM, SWA, per-example selective backprop, BlurPool,
Squeeze-Excite, layer freezing, value and adaptive (AGC) gradient
clipping.

Importing this package registers the recipe methods ``lr_scaling``, ``ghost_bn``, ``regime_adaptation``,
``weight_std``, ``adaptive_batch``, ``high_loss_batches``, ``sam``, ``swa``, ``selective_backprop``,
``blurpool``, ``squeeze_excite``, ``layer_freezing``, ``gradient_clipping``, and for language models
``seq_length_warmup`` and ``mup``; wave 2: ``batchformer``, ``lanczos_lr``, ``agvm``,
``conadv``.
``seq_length_warmup`` and ``mup``, and for metric learning ``pk_batches`` (P classes × K samples per batch).
"""

from regimen._compat import deprecated_aliases
from regimen.batch.adaptive import (
    AdaptiveBatchMethod,
    NormTestResult,
    norm_test,
    norm_test_from_sums,
    per_sample_gradients,
)
from regimen.batch.agvm import AGVM, AGVMMethod, agvm_factors, gradient_variance_proxy, module_group_of
from regimen.batch.batchformer import (
    BatchFormer,
    BatchFormerHead,
    BatchFormerMethod,
    apply_batchformer,
    batch_former,
)
from regimen.batch.blurpool import (
    BlurConv2d,
    BlurPoolMethod,
    MaxBlurPool2d,
    apply_blurpool,
    blur_2d,
    blur_filter,
)
from regimen.batch.conadv import ConAdvMethod, StaleCopy, random_other_labels, targeted_fgsm
from regimen.batch.coteaching import (
    CoTeachingEnsemble,
    CoTeachingMethod,
    coteaching_losses,
    coteaching_select,
    forget_rate_at,
)
from regimen.batch.frugal import FRUGAL, FrugalMethod, optimizer_state_bytes
from regimen.batch.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNormMethod,
    apply_ghost_batch_norm,
    ghost_batch_norm,
)
from regimen.batch.gradient_clipping import GradientClippingMethod, adaptive_clip_grad_, unitwise_norm
from regimen.batch.hard_batches import (
    HighLossBatchesMethod,
    HighLossBatchSelector,
    batch_loss_sums,
    select_high_loss,
)
from regimen.batch.lamb import LAMB
from regimen.batch.lanczos_lr import (
    LanczosLRMethod,
    hessian_vector_product,
    lanczos,
    lanczos_step_size,
    top_hessian_eigenvalues,
)
from regimen.batch.lars import LARS, excluded_from_trust_ratio
from regimen.batch.layer_freezing import LayerFreezingMethod, freezable_layers, frozen_layer_count
from regimen.batch.mup import MuPMethod, apply_mup, mup_hidden_parameters
from regimen.batch.pk_batches import PKBatchesMethod, pk_batch_indices
from regimen.batch.regime import Regime, RegimeAdaptationMethod, adapt_regime, regime_factor
from regimen.batch.sam import SAMMethod, frozen_bn_statistics, sam_epsilon, sam_step
from regimen.batch.samplers import LengthBucketBatchSampler, TokenBudgetBatchSampler, padding_fraction
from regimen.batch.sar import SAR, SARMethod, Tent, adapt, norm_affine_parameters, softmax_entropy
from regimen.batch.scaling import LRScalingMethod, infer_scaling_rule, scale_lr, scale_optimizer_lr
from regimen.batch.selective_backprop import (
    SelectiveBackpropMethod,
    downsample_for_scoring,
    select_by_loss_percentile,
    selection_weights,
)
from regimen.batch.seq_length_warmup import SeqLengthWarmupMethod, seq_length_at, truncate_sequences
from regimen.batch.seta import SeTaMethod, kmeans_1d, seta_select, seta_window, sliding_window
from regimen.batch.squeeze_excite import (
    SqueezeExcite2d,
    SqueezeExciteConv2d,
    SqueezeExciteMethod,
    apply_squeeze_excite,
)
from regimen.batch.swa import SWAMethod, recompute_bn_statistics, swa_lr_factor, swa_update
from regimen.batch.weight_std import (
    BatchChannelNorm2d,
    WeightStandardizationMethod,
    WSConv2d,
    apply_batch_channel_norm,
    apply_weight_standardization,
    convs_followed_by_norm,
    weight_standardize,
)
from regimen.batch.wta_crs import (
    WTACRSLinear,
    WTACRSMethod,
    apply_wta_crs,
    crs_sample,
    wta_crs_sample,
    wta_crs_weight_grad,
)

__all__ = [
    "ConAdvMethod",
    "StaleCopy",
    "random_other_labels",
    "targeted_fgsm",
    "AGVM",
    "AGVMMethod",
    "agvm_factors",
    "gradient_variance_proxy",
    "module_group_of",
    "LanczosLRMethod",
    "hessian_vector_product",
    "lanczos",
    "lanczos_step_size",
    "top_hessian_eigenvalues",
    "BatchFormer",
    "BatchFormerHead",
    "BatchFormerMethod",
    "apply_batchformer",
    "batch_former",
    "PKBatchesMethod",
    "pk_batch_indices",
    "SAR",
    "SARMethod",
    "Tent",
    "adapt",
    "norm_affine_parameters",
    "softmax_entropy",
    "FRUGAL",
    "FrugalMethod",
    "optimizer_state_bytes",
    "WTACRSLinear",
    "WTACRSMethod",
    "apply_wta_crs",
    "crs_sample",
    "wta_crs_sample",
    "wta_crs_weight_grad",
    "SeTaMethod",
    "kmeans_1d",
    "seta_select",
    "seta_window",
    "sliding_window",
    "CoTeachingEnsemble",
    "CoTeachingMethod",
    "coteaching_losses",
    "coteaching_select",
    "forget_rate_at",
    "MuPMethod",
    "apply_mup",
    "mup_hidden_parameters",
    "SeqLengthWarmupMethod",
    "seq_length_at",
    "truncate_sequences",
    "AdaptiveBatchMethod",
    "BatchChannelNorm2d",
    "BlurConv2d",
    "BlurPoolMethod",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNormMethod",
    "GradientClippingMethod",
    "HighLossBatchSelector",
    "HighLossBatchesMethod",
    "LAMB",
    "LARS",
    "LRScalingMethod",
    "LayerFreezingMethod",
    "LengthBucketBatchSampler",
    "MaxBlurPool2d",
    "NormTestResult",
    "Regime",
    "SAMMethod",
    "SWAMethod",
    "SelectiveBackpropMethod",
    "SqueezeExcite2d",
    "SqueezeExciteConv2d",
    "SqueezeExciteMethod",
    "RegimeAdaptationMethod",
    "TokenBudgetBatchSampler",
    "WSConv2d",
    "WeightStandardizationMethod",
    "adapt_regime",
    "adaptive_clip_grad_",
    "apply_batch_channel_norm",
    "apply_blurpool",
    "apply_squeeze_excite",
    "apply_ghost_batch_norm",
    "apply_weight_standardization",
    "batch_loss_sums",
    "blur_2d",
    "blur_filter",
    "convs_followed_by_norm",
    "excluded_from_trust_ratio",
    "freezable_layers",
    "frozen_bn_statistics",
    "frozen_layer_count",
    "ghost_batch_norm",
    "infer_scaling_rule",
    "norm_test",
    "norm_test_from_sums",
    "padding_fraction",
    "per_sample_gradients",
    "recompute_bn_statistics",
    "regime_factor",
    "sam_epsilon",
    "sam_step",
    "scale_lr",
    "scale_optimizer_lr",
    "select_by_loss_percentile",
    "downsample_for_scoring",
    "select_high_loss",
    "selection_weights",
    "swa_lr_factor",
    "swa_update",
    "unitwise_norm",
    "weight_standardize",
]

__getattr__ = deprecated_aliases(
    __name__,
    {
        "AdaptiveBatch": "AdaptiveBatchMethod",
        "GhostBN": "GhostBatchNormMethod",
        "HighLossBatches": "HighLossBatchesMethod",
        "LRScaling": "LRScalingMethod",
        "RegimeAdaptation": "RegimeAdaptationMethod",
        "WeightStandardization": "WeightStandardizationMethod",
        "apply_ghost_batchnorm": "apply_ghost_batch_norm",
    },
    globals(),
)
