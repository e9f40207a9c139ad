"""Loss functions: the one vocabulary every pillar may import.

Trainer methods registered here: ``z_loss`` (spherical Z-loss replaces cross-entropy), ``logit_z_loss``
(adds the (log Σ e^o)² regulariser to the criterion), ``linear_ce`` (a language model's loss from its hidden states
and read-out, without the logits), ``load_balance`` (the MoE load-balancing loss over the global batch) and
``comp_sum`` (the comp-sum τ family: sum-exponential, cross-entropy, GCE, MAE, instead of cross-entropy).
Functional only (they need other model types): ``multi_similarity_loss`` + ``PKSampler`` (embedding models),
``s3im_loss`` (point-wise regression / neural fields).
and read-out, without the logits) and ``load_balance`` (the MoE load-balancing loss over the global batch).
On the ``metric_learning`` task: ``multi_similarity`` (the Multi-Similarity loss replaces the contrastive loss) and
``bt2`` (backward-compatible training with a basis transformation); on ``regression``: ``conr`` (ConR's
contrastive regulariser) and ``aggregate_loss`` (bag-level / instance-level / interpolating losses on bag means).
Functional only: ``PKSampler`` (the batch pillar's ``pk_batches`` draws P×K batches in the trainer), ``s3im_loss``
(point-wise regression / neural fields).

Flow matching (``task = "flow_matching"``): ``cfm_pairs``/``cfm_loss``/``integrate_flow`` (the CFM core), the methods
``icfm`` (I-CFM's Gaussian path width), ``otcfm`` (minibatch exact-OT pairs) and ``wcfm`` (Gibbs-weighted pairs).

Soft-target losses live here: ``soft_target_cross_entropy``, ``classification_loss`` (the trainer's default
criterion), ``mixed_cross_entropy`` (CutMix/MixUp's pair form) and ``multi_sample_cross_entropy`` (multi-sample
dropout's ``(K, N, C)`` logits, which the others refuse with a message naming it).

``s3im`` (:class:`S3IMMethod`) adds the S3IM loss to a point-wise criterion (``task = "neural_field"``).
"""

from regimen.losses.aggregate import AggregateLossMethod, aggregate_loss
from regimen.losses.backward_compatible import (
    BT2Method,
    BT2Model,
    BT2Output,
    bt2_embedding,
    bt2_regularizer,
    class_means,
)
from regimen.losses.cfm import cfm_loss, cfm_pairs, integrate_flow, split_cfm_target
from regimen.losses.comp_sum import CompSumLoss, CompSumLossMethod, comp_sum_loss, comp_sum_phi
from regimen.losses.conr import ConRMethod, conr_loss, lds_weights
from regimen.losses.icfm import ICFMMethod, add_path_noise
from regimen.losses.linear_ce import LinearCrossEntropy, LinearCrossEntropyMethod, linear_cross_entropy
from regimen.losses.load_balance import LoadBalanceAccumulator, LoadBalanceMethod, expert_counts, load_balancing_loss
from regimen.losses.multisample import multi_sample_cross_entropy
from regimen.losses.multisimilarity import MultiSimilarityLoss, MultiSimilarityMethod, PKSampler, multi_similarity_loss
from regimen.losses.otcfm import OTCFMMethod, ot_pairing
from regimen.losses.s3im import S3IM, S3IMMethod, gaussian_window, s3im_indices, s3im_loss, ssim
from regimen.losses.soft_ce import (
    check_single_sample_logits,
    classification_loss,
    mixed_cross_entropy,
    soft_target_cross_entropy,
)
from regimen.losses.wcfm import WCFMMethod, gibbs_weights, pair_cost
from regimen.losses.zloss import LogitZLoss, LogitZLossMethod, ZLoss, ZLossMethod, logit_z_loss, z_loss

__all__ = [
    "ICFMMethod",
    "OTCFMMethod",
    "WCFMMethod",
    "add_path_noise",
    "cfm_loss",
    "cfm_pairs",
    "gibbs_weights",
    "integrate_flow",
    "ot_pairing",
    "pair_cost",
    "split_cfm_target",
    "CompSumLoss",
    "CompSumLossMethod",
    "comp_sum_loss",
    "comp_sum_phi",
    "AggregateLossMethod",
    "ConRMethod",
    "aggregate_loss",
    "conr_loss",
    "lds_weights",
    "BT2Method",
    "BT2Model",
    "BT2Output",
    "bt2_embedding",
    "bt2_regularizer",
    "class_means",
    "LinearCrossEntropy",
    "LinearCrossEntropyMethod",
    "LoadBalanceAccumulator",
    "LoadBalanceMethod",
    "LogitZLoss",
    "LogitZLossMethod",
    "MultiSimilarityLoss",
    "MultiSimilarityMethod",
    "PKSampler",
    "S3IM",
    "S3IMMethod",
    "ZLoss",
    "ZLossMethod",
    "check_single_sample_logits",
    "classification_loss",
    "expert_counts",
    "gaussian_window",
    "linear_cross_entropy",
    "load_balancing_loss",
    "logit_z_loss",
    "mixed_cross_entropy",
    "multi_sample_cross_entropy",
    "multi_similarity_loss",
    "s3im_indices",
    "s3im_loss",
    "soft_target_cross_entropy",
    "ssim",
    "z_loss",
]
