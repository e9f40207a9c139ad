"""Subnet pillar: extract smaller networks (structured pruning, HESSO, N:M sparsity, low rank, nested widths).

Importing this package registers its recipe methods (``hesso``, ``maestro``, ``nested_width``, ``nm_sparsity``,
``trp``, ``ssa``, ``lora``, ``allora``, ``lost``, ``cp_kernels``, ``polarization``, ``sap``, ``class_dependent``,
``random_search``, ``ofa``, ``lottery_jackpots``, ``ftwt``, ``layer_dp``, ``tscnc``, ``consensus_gates``).
Old names of v1 (``HESSO``, ``Maestro``, ``TrainedRankPruning``, ``LowRankConv2d``, ``LowRankLinear``,
``export``) still resolve, with a DeprecationWarning.
"""

from regimen._compat import deprecated_aliases
from regimen.subnet.allocation import allocate_sparsity, apply_allocation, erk_densities, lamp_scores
from regimen.subnet.class_dependent import (
    ClassDependentMethod,
    class_false_negatives,
    class_rank_loss,
    class_weighted_loss,
    layer_prune_masks,
)
from regimen.subnet.consensus import (
    ConsensusGate,
    ConsensusGatesMethod,
    apply_consensus_gates,
    consensus_dynamic_macs,
    consensus_masks,
    consensus_plan,
    extract_consensus,
    firing_rates,
    gate_polarization,
    gate_sparsity_loss,
    remove_consensus_gates,
    straight_through_gate,
)
from regimen.subnet.cp_kernels import (
    CPKernelConv2d,
    CPKernelMethod,
    apply_cp_kernels,
    cp_kernel,
    cp_kernel_factors,
)
from regimen.subnet.dependency import (
    DependencyGraph,
    Group,
    Slice,
    UntraceableError,
    dependency_groups,
    normalize_inputs,
    scale_units,
    trace_dependencies,
    zero_units,
)
from regimen.subnet.elastic_samplers import (
    ComplexityAwareSampler,
    PerformanceAwareSampler,
    adjacent_bucket_step,
    cost_buckets,
)
from regimen.subnet.ftwt import (
    FTWTGate,
    FTWTMethod,
    MaskPredictor,
    apply_ftwt,
    channel_heat,
    ftwt_dynamic_macs,
    ftwt_mask_loss,
    ftwt_targets,
)
from regimen.subnet.hesso import HESSOMethod, HESSOPruner, hesso_factor
from regimen.subnet.importance import IMPORTANCES, Importance, group_scores, normalized_scores
from regimen.subnet.layer_dp import LayerDPMethod, apply_layer_dp, dp_allocate, layer_costs, rd_curves
from regimen.subnet.lora import (
    ALLoRAMethod,
    LoRAConv2d,
    LoRALinear,
    LoRAMethod,
    allora_row_scale,
    allora_scale_,
    apply_lora,
    lora_delta,
    lora_layers,
    lora_parameters,
    merge_lora,
    unmerge_lora,
)
from regimen.subnet.lost import (
    LOSTLinear,
    LOSTMethod,
    apply_lost,
    lost_decompose,
    lost_linear,
    lost_parameter_count,
    select_channels,
)
from regimen.subnet.lottery_jackpots import (
    JackpotMask,
    LotteryJackpotsMethod,
    apply_lottery_jackpots,
    export_lottery_jackpots,
    jackpot_init_scores,
    jackpot_mask_update,
)
from regimen.subnet.lowrank import (
    FactorizedConv2d,
    FactorizedLinear,
    TrainedRankPruningMethod,
    conv_to_matrix,
    energy_rank,
    factorize,
    matrix_to_conv,
    nuclear_subgradient,
    restore_lowrank,
    truncate_weight,
)
from regimen.subnet.maestro import (
    MaestroMethod,
    OrderedLowRankConv2d,
    OrderedLowRankLinear,
    apply_maestro,
    hierarchical_group_lasso,
    low_rank_conv2d,
    low_rank_layers,
    low_rank_linear,
    rank_importance,
    sample_rank,
    set_rank_fraction,
    svd_factors,
    truncate_model,
)
from regimen.subnet.measure import PruneReport, count_macs, count_params, layer_widths
from regimen.subnet.modules import PrunedMultiheadAttention
from regimen.subnet.nested import (
    NestedWidth,
    NestedWidthMethod,
    check_widths,
    inplace_distillation_loss,
    sandwich_widths,
    units_at_width,
)
from regimen.subnet.nm import (
    NMSparsity,
    NMSparsityMethod,
    apply_nm_sparsity,
    export_nm_sparsity,
    nm_mask,
    nm_sparsify,
    to_semi_structured,
)
from regimen.subnet.ofa import (
    ElasticKernelConv2d,
    OnceForAll,
    OnceForAllMethod,
    SubnetSetting,
    apply_elastic_kernel,
    centre_crop_kernel,
    check_kernels,
    progressive_phases,
    recalibrate_batch_norm,
    transform_kernel,
)
from regimen.subnet.polarization import (
    ChannelGate,
    PolarizationMethod,
    apply_gates,
    fold_gates,
    polarization_penalty,
    polarization_plan,
    polarized_fraction,
    scaling_factors,
    search_threshold,
)
from regimen.subnet.pq_index import (
    SAPMethod,
    apply_masks,
    pq_index,
    prunable_weights,
    sap_prune,
    sap_prune_counts,
    sparsity_of,
)
from regimen.subnet.prune import plan_pruning, prune, prune_groups
from regimen.subnet.random_search import RandomSearchMethod, SearchResult, random_node_plan, random_search
from regimen.subnet.serialize import architecture_spec, build_from_spec, load_pruned, restore_pruned, save_pruned
from regimen.subnet.ssa import (
    SubsampledAttentionMethod,
    sample_kept_positions,
    subsampled_attention,
    subsampled_causal_attention,
)
from regimen.subnet.tscnc import (
    TSCNCMethod,
    condition_number_penalty,
    condition_numbers,
    fgsm_example,
    pgd_attack,
    transformed_l1,
    tscnc_penalty,
)

__all__ = [
    "SubsampledAttentionMethod",
    "sample_kept_positions",
    "subsampled_attention",
    "subsampled_causal_attention",
    # dependency graph
    "DependencyGraph",
    "Group",
    "Slice",
    "UntraceableError",
    "dependency_groups",
    "normalize_inputs",
    "scale_units",
    "trace_dependencies",
    "zero_units",
    # structured pruning
    "IMPORTANCES",
    "Importance",
    "PruneReport",
    "PrunedMultiheadAttention",
    "count_macs",
    "count_params",
    "group_scores",
    "layer_widths",
    "normalized_scores",
    "plan_pruning",
    "prune",
    "prune_groups",
    "architecture_spec",
    "build_from_spec",
    "load_pruned",
    "restore_pruned",
    "save_pruned",
    # HESSO
    "HESSOMethod",
    "HESSOPruner",
    "hesso_factor",
    # N:M sparsity
    "NMSparsity",
    "NMSparsityMethod",
    "apply_nm_sparsity",
    "export_nm_sparsity",
    "nm_mask",
    "nm_sparsify",
    "to_semi_structured",
    # Trained Rank Pruning
    "FactorizedConv2d",
    "FactorizedLinear",
    "TrainedRankPruningMethod",
    "conv_to_matrix",
    "energy_rank",
    "factorize",
    "matrix_to_conv",
    "nuclear_subgradient",
    "restore_lowrank",
    "truncate_weight",
    # Maestro
    "MaestroMethod",
    "OrderedLowRankConv2d",
    "OrderedLowRankLinear",
    "apply_maestro",
    "hierarchical_group_lasso",
    "low_rank_conv2d",
    "low_rank_layers",
    "low_rank_linear",
    "rank_importance",
    "sample_rank",
    "set_rank_fraction",
    "svd_factors",
    "truncate_model",
    # LoRA / ALLoRA
    "ALLoRAMethod",
    "LoRAConv2d",
    "LoRALinear",
    "LoRAMethod",
    "allora_row_scale",
    "allora_scale_",
    "apply_lora",
    "lora_delta",
    "lora_layers",
    "lora_parameters",
    "merge_lora",
    "unmerge_lora",
    # LOST
    "LOSTLinear",
    "LOSTMethod",
    "apply_lost",
    "lost_decompose",
    "lost_linear",
    "lost_parameter_count",
    "select_channels",
    # a-priori factorised (CP) conv kernels
    "CPKernelConv2d",
    "CPKernelMethod",
    "apply_cp_kernels",
    "cp_kernel",
    "cp_kernel_factors",
    # nested widths
    "NestedWidth",
    "NestedWidthMethod",
    "check_widths",
    "inplace_distillation_loss",
    "sandwich_widths",
    "units_at_width",
    # polarization (NeurIPS 2020; arXiv 2302.10798)
    "ChannelGate",
    "PolarizationMethod",
    "apply_gates",
    "fold_gates",
    "polarization_penalty",
    "polarization_plan",
    "polarized_fraction",
    "scaling_factors",
    "search_threshold",
    # PQ Index + SAP (arXiv 2302.05601)
    "SAPMethod",
    "apply_masks",
    "pq_index",
    "prunable_weights",
    "sap_prune",
    "sap_prune_counts",
    "sparsity_of",
    # class-dependent compression (arXiv 1909.10364)
    "ClassDependentMethod",
    "class_false_negatives",
    "class_rank_loss",
    "class_weighted_loss",
    "layer_prune_masks",
    # random search (arXiv 2403.08265)
    "RandomSearchMethod",
    "SearchResult",
    "random_node_plan",
    "random_search",
    # Once-for-All (elastic kernel, depth, width)
    "ElasticKernelConv2d",
    "OnceForAll",
    "OnceForAllMethod",
    "SubnetSetting",
    "apply_elastic_kernel",
    "centre_crop_kernel",
    "check_kernels",
    "progressive_phases",
    "recalibrate_batch_norm",
    "transform_kernel",
    # ElasticViT samplers
    "ComplexityAwareSampler",
    "PerformanceAwareSampler",
    "adjacent_bucket_step",
    "cost_buckets",
    # Lottery Jackpots
    "JackpotMask",
    "LotteryJackpotsMethod",
    "apply_lottery_jackpots",
    "export_lottery_jackpots",
    "jackpot_init_scores",
    "jackpot_mask_update",
    # Fire Together Wire Together
    "FTWTGate",
    "FTWTMethod",
    "MaskPredictor",
    "apply_ftwt",
    "channel_heat",
    "ftwt_dynamic_macs",
    "ftwt_mask_loss",
    "ftwt_targets",
    # layer-adaptive sparsity by dynamic programming
    "LayerDPMethod",
    "apply_layer_dp",
    "dp_allocate",
    "layer_costs",
    "rd_curves",
    # layer-wise sparsity allocations (uniform, global magnitude, LAMP, ERK)
    "allocate_sparsity",
    "apply_allocation",
    "erk_densities",
    "lamp_scores",
    # TSCNC
    "TSCNCMethod",
    "condition_number_penalty",
    "condition_numbers",
    "fgsm_example",
    "pgd_attack",
    "transformed_l1",
    "tscnc_penalty",
    # consensus sub-network: dynamic gates, polarised, extracted (arXiv 2302.10798)
    "ConsensusGate",
    "ConsensusGatesMethod",
    "apply_consensus_gates",
    "consensus_dynamic_macs",
    "consensus_masks",
    "consensus_plan",
    "extract_consensus",
    "firing_rates",
    "gate_polarization",
    "gate_sparsity_loss",
    "remove_consensus_gates",
    "straight_through_gate",
]

__getattr__ = deprecated_aliases(__name__, {
    "HESSO": "HESSOPruner",
    "LowRankConv2d": "FactorizedConv2d",
    "LowRankLinear": "FactorizedLinear",
    "Maestro": "MaestroMethod",
    "TrainedRankPruning": "TrainedRankPruningMethod",
    "export": "export_nm_sparsity",
}, globals())
