"""The tracer's vocabulary: which torch functions and ``nn`` modules keep, mix, reshape or ignore channel data, which
modules are leaves (mapped as a whole instead of traced inside), and small helpers over nested outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from regimen.subnet.modules import PrunedMultiheadAttention

__all__ = [
    "BINARY",
    "CHANNEL_KEEP",
    "CONVS",
    "CONV_T",
    "IGNORED",
    "LeafTracer",
    "NONZERO_MODULES",
    "NONZERO_POINTWISE",
    "NORMS",
    "POOL_MODULES",
    "REDUCE",
    "SAME_SHAPE_MIXING",
    "SHAPE",
    "SPLITS",
    "TRANSFORMER_LAYERS",
    "VIEWS",
    "FUNCTIONAL_LAYERS",
    "MATMULS",
    "ZERO_MODULES",
    "ZERO_PRESERVING",
    "is_leaf",
    "op_name",
    "tree_leaves",
    "tree_map",
]

# pointwise ops that map 0 to 0: a zeroed channel stays zero through them (removal stays lossless)
ZERO_PRESERVING = {
    "relu", "relu6", "hardtanh", "gelu", "silu", "tanh", "hardswish", "leaky_relu", "elu", "selu", "celu", "mish",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "detach", "abs", "neg", "sin", "square", "sqrt",
    "clamp", "clip", "hardshrink", "softshrink", "tanhshrink", "identity",
}
# pointwise ops that map 0 elsewhere: channels keep their identity but removing a zeroed one is no longer lossless
NONZERO_POINTWISE = {"sigmoid", "hardsigmoid", "exp", "cos", "softplus", "log", "reciprocal", "rsqrt", "logsigmoid",
                     "erf", "erfc", "log1p", "expm1", "sign"}
# element-wise ops of two operands: the elements they combine are coupled (residual additions)
BINARY = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv", "maximum", "minimum", "where",
          "floordiv", "pow", "iadd", "isub", "imul", "itruediv", "addcmul"}
# ops that move values around without computing: replayed on the label tensors themselves
SHAPE = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "expand",
         "expand_as", "repeat", "cat", "concat", "concatenate", "stack", "split", "chunk", "getitem", "narrow",
         "select", "unbind", "movedim", "moveaxis", "flip", "roll", "view_as", "reshape_as", "tile", "pad",
         "swapaxes", "swapdims", "hstack", "vstack", "tensor_split", "pixel_shuffle", "pixel_unshuffle",
         "channel_shuffle", "native_channel_shuffle"}
# shape ops that cut one dim into pieces: the pieces must lose the same positions (see Propagator.split_pieces)
SPLITS = {"split", "chunk", "unbind", "tensor_split"}
# reshapes that can cut a channel dim into a grid of several dims (see Propagator.record_grid)
VIEWS = {"view", "reshape", "unflatten"}
# functional layers that are pruned like their module when their weight is a parameter of the model
FUNCTIONAL_LAYERS = {"linear", "conv1d", "conv2d", "conv3d", "addmm", "matmul", "mm"}
# matrix products of two labeled tensors (hand-written attention): everything one batch entry combines is coupled
MATMULS = {"matmul", "bmm", "mm"}
# spatial ops that keep dim 1 (channels) as it is
CHANNEL_KEEP = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
                "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
                "upsample_bilinear", "lp_pool2d", "max_pool2d_with_indices"}
# reductions: fine over spatial dims, inexact when they reduce over several channels
REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "nansum",
          "nanmean"}
# same-shape ops that mix values along one dim (inexact when that dim holds channels)
SAME_SHAPE_MIXING = {"softmax", "log_softmax", "softmin", "cumsum", "normalize"}
FACTORY = {"new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "zeros_like", "ones_like", "empty_like",
           "full_like", "rand_like", "randn_like", "randint_like", "bernoulli"}
# ops whose result carries no channel data (new tensors, shapes, comparisons)
IGNORED = FACTORY | {"size", "dim", "numel", "getattr", "eq", "ne", "lt", "le", "gt", "ge", "argmax", "argmin",
                     "isnan", "isinf", "isfinite", "all", "any", "item", "tolist", "len",
                     # questions about a tensor's type or layout, not its values (e.g. in DropPath, WS convs)
                     "is_floating_point", "is_complex", "is_contiguous", "is_signed"}

POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
                nn.UpsamplingBilinear2d, nn.LPPool2d)
ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
                nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
                nn.Hardtanh, nn.Hardshrink, nn.Softshrink, nn.Tanhshrink)
NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
         nn.SyncBatchNorm)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# torch.nn containers of layers that the tracer follows inside (their fused eval fast path is not taken while tracing)
TRANSFORMER_LAYERS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder,
                      nn.TransformerDecoder, nn.Transformer)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def op_name(target: Any) -> str:
    """The canonical name of an fx target or torch function (``iadd`` -> ``add``, ``concat`` -> ``cat``)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", None) or str(target)
    name = name.strip("_")
    if name.endswith("_") and name not in ("_",):
        name = name.rstrip("_")
    return {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv", "radd": "add", "rmul": "mul",
            "rsub": "sub", "rtruediv": "truediv", "concat": "cat", "concatenate": "cat", "clip": "clamp",
            "moveaxis": "movedim", "swapaxes": "transpose", "swapdims": "transpose"}.get(name, name)


def is_leaf(module: nn.Module) -> bool:
    """Modules mapped as a whole: ``torch.nn`` layers, attention and norm subclasses; containers are traced inside."""
    if isinstance(module, PrunedMultiheadAttention | nn.MultiheadAttention):
        return True
    if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict, *TRANSFORMER_LAYERS)):
        return False
    if isinstance(module, NORMS) and not parametrize.is_parametrized(module):
        # norm subclasses (e.g. ghost batch norm) keep the per-channel structure: mapped as the base layer. Conv
        # subclasses are traced inside instead: weight standardization, for one, normalises each filter over its
        # input channels, so removing even all-zero input channels would change the output.
        return True
    return type(module).__module__.startswith("torch.nn")


class LeafTracer(fx.Tracer):
    """``torch.fx`` tracer that stops at ``is_leaf`` modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_leaf(m)


def tree_map(fn: Callable[[Any], Any], value: Any) -> Any:
    """``fn`` applied to every leaf of nested tuples (named too), lists and dicts (a ``torch.Size`` is a leaf)."""
    if isinstance(value, torch.Size):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(tree_map(fn, v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(tree_map(fn, v) for v in value)
    if isinstance(value, dict):
        return {k: tree_map(fn, v) for k, v in value.items()}
    return fn(value)


def tree_leaves(value: Any) -> list[Any]:
    out: list[Any] = []
    tree_map(lambda v: out.append(v), value)
    return out
