"""Supervised local learning: gradient-isolated modules trained by auxiliary networks (DGL, InfoPro, AugLocal, MAN,
feature reconstruction). Importing the package registers the ``local_learning`` recipe method."""

from regimen.local.auglocal import auglocal_auxiliary, auglocal_layer_indices, pyramid_depths, reinitialized_copy
from regimen.local.auxiliary import (
    AuxiliaryNetwork,
    ClassifierAuxiliary,
    InfoProAuxiliary,
    ReconstructionAuxiliary,
    dgl_head,
    infopro_decoder,
    infopro_head,
    infopro_weights,
)
from regimen.local.learning import AUX_TYPES, LocalLearning, LocalStepOutput, apply_local_learning, local_step
from regimen.local.man import MomentumAuxiliary, ema_update_
from regimen.local.method import LocalLearningMethod
from regimen.local.split import (
    BALANCE_MODES,
    balanced_split_points,
    block_costs,
    resolve_stages,
    split_points_to_ranges,
)

__all__ = [
    "AUX_TYPES",
    "BALANCE_MODES",
    "AuxiliaryNetwork",
    "ClassifierAuxiliary",
    "InfoProAuxiliary",
    "LocalLearning",
    "LocalLearningMethod",
    "LocalStepOutput",
    "MomentumAuxiliary",
    "ReconstructionAuxiliary",
    "apply_local_learning",
    "auglocal_auxiliary",
    "auglocal_layer_indices",
    "balanced_split_points",
    "block_costs",
    "dgl_head",
    "ema_update_",
    "infopro_decoder",
    "infopro_head",
    "infopro_weights",
    "local_step",
    "pyramid_depths",
    "reinitialized_copy",
    "resolve_stages",
    "split_points_to_ranges",
]
