"""Subnet pillar: extract smaller networks (structured pruning, HESSO, N:M sparsity, low rank, nested widths).

Importing this package registers its recipe methods (``hesso``, ``maestro``, ``nested_width``, ``nm_sparsity``,
``trp``, ``ssa``, ``lottery_jackpots``, ``ftwt``, ``layer_dp``, ``tscnc``).
Old names of v1 (``HESSO``, ``Maestro``, ``TrainedRankPruning``, ``LowRankConv2d``, ``LowRankLinear``,
``export``) still resolve, with a DeprecationWarning.
"""

from regimen._compat import deprecated_aliases
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
from regimen.subnet.prune import plan_pruning, prune, prune_groups
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
    # nested widths
    "NestedWidth",
    "NestedWidthMethod",
    "check_widths",
    "inplace_distillation_loss",
    "sandwich_widths",
    "units_at_width",
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
    # TSCNC
    "TSCNCMethod",
    "condition_number_penalty",
    "condition_numbers",
    "fgsm_example",
    "pgd_attack",
    "transformed_l1",
    "tscnc_penalty",
]

__getattr__ = deprecated_aliases(__name__, {
    "HESSO": "HESSOPruner",
    "LowRankConv2d": "FactorizedConv2d",
    "LowRankLinear": "FactorizedLinear",
    "Maestro": "MaestroMethod",
    "TrainedRankPruning": "TrainedRankPruningMethod",
    "export": "export_nm_sparsity",
}, globals())
