"""Dropout pillar: multi-sample, nested, temporal, concrete and gyro dropout, MC inference, DropBlock and DropPath.

Importing this package registers the recipe methods ``multi_sample_dropout`` (:class:`MultiSampleDropoutMethod`),
``drop_path`` (:class:`DropPathMethod`), ``dropblock`` (:class:`DropBlockMethod`) and ``gyro_dropout``
(:class:`GyroDropoutMethod`); for sequences ``temporal_dropout`` (:class:`TemporalDropoutMethod`),
``concrete_temporal_dropout`` (:class:`ConcreteTemporalDropoutMethod`), and ``mc_inference``
(:class:`MCInferenceMethod`: Monte-Carlo dropout at evaluation).

Surgery works on any model: by names the user gives (``blocks=``/``branches=``, ``modules=``, ``module=``) or by
convention (a residual block has a ``drop_path`` child, timm's convention; the head is ``stages[-1]`` or a child
``head``/``fc``/``classifier``). See each function.
"""

from regimen._compat import deprecated_aliases
from regimen.dropout.concrete import (
    ConcreteTemporalDropout,
    ConcreteTemporalDropoutMethod,
    apply_concrete_temporal_dropout,
    concrete_dropout_mask,
)
from regimen.dropout.dropblock import (
    DropBlock2d,
    DropBlockMethod,
    DropBlockOutput,
    apply_dropblock,
    default_dropblock_targets,
    drop_block2d,
    dropblock_mask,
)
from regimen.dropout.droppath import (
    DropPath,
    DropPathBranch,
    DropPathMethod,
    apply_drop_path,
    drop_path,
    drop_path_rates,
)
from regimen.dropout.gyro import GyroDropout, GyroDropoutMethod, apply_gyro_dropout, gyro_group_index
from regimen.dropout.mc import (
    MCDropoutClassifier,
    MCInferenceMethod,
    is_mc_dropout_layer,
    mc_dropout_mode,
    mc_predict,
)
from regimen.dropout.multisample import (
    HEAD_NAMES,
    INNER_MODEL_NAMES,
    MultiSampleDropout,
    MultiSampleDropoutMethod,
    apply_multi_sample_dropout,
    default_head,
    multi_sample_dropout,
    multi_sample_dropout_masks,
)
from regimen.dropout.nested import (
    NESTED_SAMPLERS,
    NestedDropout,
    half_gaussian_nested_index,
    nested_dropout,
    nested_dropout_index,
)
from regimen.dropout.nested_head import (
    NestedDropoutMethod,
    NestedLinear,
    apply_nested_dropout_head,
    find_classifier_linear,
    nested_prefix_logits,
    select_nested_k,
)
from regimen.dropout.temporal import (
    TemporalDropout,
    TemporalDropoutMethod,
    apply_temporal_dropout,
    temporal_dropout,
    time_dropout_slots,
    time_step_mask_shape,
)
from regimen.models import BasicBlock  # noqa: F401 - target of the deprecated DropPathBasicBlock alias

__all__ = [
    "NESTED_SAMPLERS",
    "NestedDropoutMethod",
    "NestedLinear",
    "apply_nested_dropout_head",
    "find_classifier_linear",
    "half_gaussian_nested_index",
    "nested_prefix_logits",
    "select_nested_k",
    "HEAD_NAMES",
    "INNER_MODEL_NAMES",
    "ConcreteTemporalDropout",
    "ConcreteTemporalDropoutMethod",
    "DropBlock2d",
    "DropBlockMethod",
    "DropBlockOutput",
    "DropPath",
    "DropPathBranch",
    "DropPathMethod",
    "GyroDropout",
    "GyroDropoutMethod",
    "MCDropoutClassifier",
    "MCInferenceMethod",
    "MultiSampleDropout",
    "MultiSampleDropoutMethod",
    "NestedDropout",
    "TemporalDropout",
    "TemporalDropoutMethod",
    "apply_concrete_temporal_dropout",
    "apply_drop_path",
    "apply_dropblock",
    "apply_gyro_dropout",
    "apply_multi_sample_dropout",
    "apply_temporal_dropout",
    "concrete_dropout_mask",
    "default_dropblock_targets",
    "default_head",
    "drop_block2d",
    "drop_path",
    "drop_path_rates",
    "dropblock_mask",
    "gyro_group_index",
    "is_mc_dropout_layer",
    "mc_dropout_mode",
    "mc_predict",
    "multi_sample_dropout",
    "multi_sample_dropout_masks",
    "nested_dropout",
    "nested_dropout_index",
    "temporal_dropout",
    "time_dropout_slots",
    "time_step_mask_shape",
]

# ``DropPathBasicBlock`` was the class the old drop-path surgery switched blocks to; BasicBlock has the slot now.
__getattr__ = deprecated_aliases(__name__, {"DropPathBasicBlock": "BasicBlock"}, globals())
