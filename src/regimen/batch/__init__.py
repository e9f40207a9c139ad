"""Batch pillar: LR-vs-batch-size rules, Ghost BN + regime adaptation, Weight Standardization + Batch-Channel Norm,
adaptive batch size (norm test), LARS / LAMB, hard-batch selection and length-bucketed samplers.

Importing this package registers the recipe methods ``lr_scaling``, ``ghost_bn``, ``regime_adaptation``,
``weight_std``, ``adaptive_batch``, ``high_loss_batches``, ``seq_length_warmup`` and ``mup`` (language models).
"""

from regimen._compat import deprecated_aliases
from regimen.batch.adaptive import (
    AdaptiveBatchMethod,
    NormTestResult,
    norm_test,
    norm_test_from_sums,
    per_sample_gradients,
)
from regimen.batch.ghost_bn import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNormMethod,
    apply_ghost_batch_norm,
    ghost_batch_norm,
)
from regimen.batch.hard_batches import (
    HighLossBatchesMethod,
    HighLossBatchSelector,
    batch_loss_sums,
    select_high_loss,
)
from regimen.batch.lamb import LAMB
from regimen.batch.lars import LARS, excluded_from_trust_ratio
from regimen.batch.mup import MuPMethod, apply_mup, mup_hidden_parameters
from regimen.batch.regime import Regime, RegimeAdaptationMethod, adapt_regime, regime_factor
from regimen.batch.samplers import LengthBucketBatchSampler, TokenBudgetBatchSampler, padding_fraction
from regimen.batch.scaling import LRScalingMethod, infer_scaling_rule, scale_lr, scale_optimizer_lr
from regimen.batch.seq_length_warmup import SeqLengthWarmupMethod, seq_length_at, truncate_sequences
from regimen.batch.weight_std import (
    BatchChannelNorm2d,
    WeightStandardizationMethod,
    WSConv2d,
    apply_batch_channel_norm,
    apply_weight_standardization,
    convs_followed_by_norm,
    weight_standardize,
)

__all__ = [
    "MuPMethod",
    "apply_mup",
    "mup_hidden_parameters",
    "SeqLengthWarmupMethod",
    "seq_length_at",
    "truncate_sequences",
    "AdaptiveBatchMethod",
    "BatchChannelNorm2d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNormMethod",
    "HighLossBatchSelector",
    "HighLossBatchesMethod",
    "LAMB",
    "LARS",
    "LRScalingMethod",
    "LengthBucketBatchSampler",
    "NormTestResult",
    "Regime",
    "RegimeAdaptationMethod",
    "TokenBudgetBatchSampler",
    "WSConv2d",
    "WeightStandardizationMethod",
    "adapt_regime",
    "apply_batch_channel_norm",
    "apply_ghost_batch_norm",
    "apply_weight_standardization",
    "batch_loss_sums",
    "convs_followed_by_norm",
    "excluded_from_trust_ratio",
    "ghost_batch_norm",
    "infer_scaling_rule",
    "norm_test",
    "norm_test_from_sums",
    "padding_fraction",
    "per_sample_gradients",
    "regime_factor",
    "scale_lr",
    "scale_optimizer_lr",
    "select_high_loss",
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
