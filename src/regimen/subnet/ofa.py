"""Once-for-All progressive shrinking: one supernet with elastic kernel size, depth and width.

One weight-shared network is trained so that every sub-network — a kernel size per convolution, a number of blocks
per stage, a width — works without retraining. Training first fits the full network, then *progressively* enables
smaller kernels, then fewer blocks, then narrower layers; every step of an elastic phase trains a few sampled
sub-networks with knowledge distillation from a frozen copy of the full network, and any chosen sub-network is
evaluated after re-estimating its BatchNorm statistics. ``OnceForAll.extract(depth=, width=, kernel=)`` returns a
standalone, physically smaller network that computes what the supernet computes at that setting.

Paper:
    Cai, Gan, Wang, Zhang, Han — "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
    ICLR 2020, arXiv 1908.09791 (reference code: github.com/mit-han-lab/once-for-all).

Formulas (``W`` = the largest kernel ``K × K`` of a convolution; ``M_{a→b}`` a learned ``b² × b²`` matrix per layer,
shared by all channels, initialised to the identity; ``crop_b`` the centre ``b × b`` window)::

    W_K = W,   W_b = reshape( flatten(crop_b(W_a)) · M_{a→b}ᵀ )   for consecutive kernel sizes a > b   (7→5→3)
    depth d of a stage with D blocks:  blocks 1 … d run, blocks d+1 … D are skipped (identity)
    width w:  every sliceable channel group keeps its first ⌈w · n⌉ units (the nested widths of ``NestedWidth``);
              on a transformer also every attention-head group keeps its first ⌈w · H⌉ heads (MLP hidden width
              and heads shrink together; the embedding width, coupled through LayerNorm, stays whole)
    L_step = Σ_{s ∈ S_t} [ ℓ(f_s(x), y) + λ_kd · CE(f_s(x), softmax(f_teacher(x))) ]   one optimizer step per S_t
    phases: full (K, D, 1.0) → elastic kernel → elastic depth → elastic width (each adds the next smaller values)

The kernel transform (``KERNEL_TRANSFORM_MODE = 1`` in the reference ``DynamicSeparableConv2d``: centre crop of the
larger kernel, ``F.linear`` with the ``"{a}to{b}_matrix"`` Parameter, applied recursively from the largest kernel),
"keep the first ``d`` blocks" (``runtime_depth``), the channel sort before the width phase, the sub-nets per step
(1 for the kernel phase, 2 for depth, 4 for width), the gradient accumulation over them before one step, the frozen
full-network teacher run with batch statistics and BN re-estimation on a training subset before evaluating a
sub-network are read from the reference code.

Pitfalls handled:
    * Without BN recalibration small sub-networks look broken (the shared running statistics are those of the
      sub-networks trained last): ``extract(..., calibration=batches)`` and ``OnceForAllMethod.eval_model``
      re-estimate them (cumulative average over the calibration batches) on the standalone copy.
    * The channel sort is done once, at the start of the width phase, on every coupled tensor at once (the
      dependency groups of ``NestedWidth``), so the function is unchanged; the optimizer moments are zeroed at every
      phase change (the reference starts each phase as a new run with a new optimizer).
    * The kernel transform is per layer and shared over channels (not per channel); sizes must be odd (centre).
    * All sampled sub-networks' gradients are accumulated before one optimizer step.
    * The teacher is a frozen copy of the *full* network taken when the first elastic phase starts (not the
      in-place largest sub-network of BigNAS / slimmable networks).
    * Sub-networks are drawn from the method's own generator seeded from the recipe's seed alike on every rank,
      so under DDP every process trains the same sub-networks.
    * ``extract`` refuses a depth, width or kernel size the supernet never trained (nor declared), naming it.

Deviations from the reference (stated, not hidden): width is one fraction for the whole network (the nested widths
of ``NestedWidth``, plus whole attention heads — the tracer's head groups, sorted by the same importance before the
width phase) rather than an expand ratio per block; depth skips trailing blocks of regimen's staged models
(ResNet stages, ViT blocks); one learning-rate schedule spans all phases (the reference restarts a schedule with a
lower rate per phase); no elastic resolution.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from regimen.errors import ConfigurationError
from regimen.losses import soft_target_cross_entropy
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.models import copy_module
from regimen.models.transformer import CausalSelfAttention
from regimen.subnet._surgery import attention_attributes, replace_parameters
from regimen.subnet.dependency import Group, UntraceableError
from regimen.subnet.elastic_samplers import ComplexityAwareSampler, PerformanceAwareSampler
from regimen.subnet.nested import NestedWidth, check_widths
from regimen.subnet.prune import prune_groups

__all__ = [
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
]

#: The phases of progressive shrinking, in the paper's order.
PHASES = ("full", "kernel", "depth", "width")


# ----------------------------------------------------------------------------------------------------------- functional
@checked_arguments
def check_kernels(kernels: Sequence[int]) -> tuple[int, ...]:
    """Validate an elastic kernel set: a non-empty, strictly increasing sequence of odd ints >= 1."""
    if isinstance(kernels, str | bytes) or not isinstance(kernels, Iterable):
        raise TypeError(f"kernels must be a sequence of odd ints, got {type(kernels).__name__}")
    values = tuple(kernels)
    if not values:
        raise ValueError("kernels must not be empty")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"kernels must be ints, got {k!r}")
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernels must be odd ints >= 1 (a centre crop needs a centre), got {k}")
    if list(values) != sorted(set(values)):
        raise ValueError(f"kernels must be strictly increasing, got {list(values)}")
    return values


@checked_arguments
def centre_crop_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """The centre ``kernel × kernel`` window of a ``(..., K, K)`` weight (a view)."""
    if weight.dim() < 2 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"weight must end in a square kernel (..., K, K), got {tuple(weight.shape)}")
    size = weight.shape[-1]
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1 or kernel > size or (size - kernel) % 2:
        raise ValueError(f"kernel must be an int in [1, {size}] with {size} - kernel even, got {kernel!r}")
    start = (size - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


@checked_arguments
def transform_kernel(weight: torch.Tensor, kernels: Sequence[int], kernel: int,
                     matrices: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """The ``kernel × kernel`` weight of an elastic convolution whose largest kernel is ``weight``'s.

    Starting from ``weight`` (``(..., K, K)``, ``K = max(kernels)``), each step to the next smaller size ``b`` crops
    the centre ``b × b`` window and multiplies its flattened ``b²`` values by ``matrices[i]ᵀ`` (``b² × b²``), where
    ``matrices[i]`` maps ``kernels[i + 1] → kernels[i]``. Without ``matrices`` it is the plain centre crop.
    """
    kernels = check_kernels(kernels)
    if weight.dim() < 2 or weight.shape[-1] != weight.shape[-2] or weight.shape[-1] != kernels[-1]:
        raise ValueError(f"weight must end in a {kernels[-1]}x{kernels[-1]} kernel (the largest of kernels "
                         f"{list(kernels)}), got {tuple(weight.shape)}")
    if kernel not in kernels:
        raise ValueError(f"kernel must be one of the elastic kernel sizes {list(kernels)}, got {kernel!r}")
    if matrices is None:
        return centre_crop_kernel(weight, kernel)
    matrices = list(matrices)
    if len(matrices) != len(kernels) - 1:
        raise ValueError(f"matrices must hold one matrix per step between kernels {list(kernels)} "
                         f"({len(kernels) - 1}), got {len(matrices)}")
    for index, matrix in enumerate(matrices):
        small = kernels[index] ** 2
        if tuple(matrix.shape) != (small, small):
            raise ValueError(f"matrices[{index}] must be {small}x{small} (maps {kernels[index + 1]} -> "
                             f"{kernels[index]}), got {tuple(matrix.shape)}")
        if matrix.dtype != weight.dtype or not weight.is_floating_point():
            raise TypeError(f"weight and matrices[{index}] must share one floating point dtype, got {weight.dtype} "
                            f"and {matrix.dtype}")
    out = weight
    for index in range(len(kernels) - 1, 0, -1):
        if kernels[index] <= kernel:
            break
        small = kernels[index - 1]
        crop = centre_crop_kernel(out, small)
        flat = crop.reshape(*crop.shape[:-2], small * small)
        out = F.linear(flat, matrices[index - 1]).reshape(crop.shape)
    return out


@checked_arguments
@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``batches`` (cumulative average).

    Statistics are reset, then each batch (a tensor, or a tuple/list of model inputs) runs once in training mode;
    momentum and the train/eval mode are restored afterwards. Weights are untouched. Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches must hold at least one batch")
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    was_training = model.training
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    try:
        for batch in batches:
            inputs = batch if isinstance(batch, tuple | list) else (batch,)
            model(*inputs)
    finally:
        for bn, momentum in zip(norms, saved, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return model


@checked_arguments
def progressive_phases(phase_epochs: Sequence[int], kernels: Sequence[int], depths: Sequence[int],
                       widths: Sequence[float]) -> list[tuple[int, str, str, Any]]:
    """The schedule of progressive shrinking: ``[(epoch, phase, dimension, value enabled), ...]``.

    ``phase_epochs`` gives the epochs of the four phases (full, kernel, depth, width). Each elastic phase enables its
    dimension's values from the second largest down, spread evenly over the phase's epochs (value ``j`` of ``n`` at
    ``start + ⌊j · E / n⌋``), as the reference's two-stage depth/width phases (``3,4`` then ``2,3,4``) do. A phase of
    0 epochs enables all its values where it starts.
    """
    if isinstance(phase_epochs, str | bytes) or not isinstance(phase_epochs, Iterable):
        raise TypeError(f"phase_epochs must be a sequence of 4 ints, got {type(phase_epochs).__name__}")
    epochs = list(phase_epochs)
    if len(epochs) != 4 or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in epochs):
        raise ValueError(f"phase_epochs must be 4 ints >= 0 (full, kernel, depth, width), got {phase_epochs!r}")
    values = {"kernel": sorted(kernels, reverse=True)[1:], "depth": sorted(depths, reverse=True)[1:],
              "width": sorted(widths, reverse=True)[1:]}
    events: list[tuple[int, str, str, Any]] = []
    start = epochs[0]
    for phase, length in zip(PHASES[1:], epochs[1:], strict=True):
        added = values[phase]
        for j, value in enumerate(added):
            events.append((start + (j * length) // len(added), phase, phase, value))
        start += length
    return events


# --------------------------------------------------------------------------------------------------------------- module
class ElasticKernelConv2d(nn.Conv2d):
    """A ``K × K`` convolution that also runs as any smaller odd kernel of ``kernels`` ("same" padding).

    The smaller kernels are the centre of the largest one transformed by per-layer matrices ``transform_{a}to{b}``
    (``b² × b²``, identity at construction; see :func:`transform_kernel`). ``active_kernel`` is the size ``forward``
    uses. An ``nn.Conv2d`` subclass, so pruning, tracing and counting see a convolution (of the largest kernel).
    """

    def __init__(self, in_channels: int, out_channels: int, kernels: Sequence[int], stride: int | tuple = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        kernels = check_kernels(kernels)
        for key, value in (("in_channels", in_channels), ("out_channels", out_channels), ("dilation", dilation),
                           ("groups", groups)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{key} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        largest = kernels[-1]
        super().__init__(in_channels, out_channels, largest, stride=stride, padding=dilation * (largest // 2),
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        self.kernels = kernels
        self.active_kernel = largest
        for small, large in zip(kernels[:-1], kernels[1:], strict=True):
            self.register_parameter(f"transform_{large}to{small}",
                                    nn.Parameter(torch.eye(small * small, device=device, dtype=dtype)))

    def transforms(self) -> list[torch.Tensor]:
        """The transform matrices, ``[M_{kernels[1]→kernels[0]}, ...]``."""
        return [getattr(self, f"transform_{large}to{small}")
                for small, large in zip(self.kernels[:-1], self.kernels[1:], strict=True)]

    def kernel_weight(self, kernel: int | None = None) -> torch.Tensor:
        """The weight at ``kernel`` (default: ``active_kernel``)."""
        kernel = self.active_kernel if kernel is None else kernel
        return transform_kernel(self.weight, self.kernels, kernel, self.transforms())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.active_kernel
        if kernel == self.kernels[-1]:
            return super().forward(x)
        return F.conv2d(x, self.kernel_weight(kernel), self.bias, self.stride, self.dilation[0] * (kernel // 2),
                        self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kernels={list(self.kernels)}, active_kernel={self.active_kernel}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, kernels: Sequence[int]) -> ElasticKernelConv2d:
        """An elastic convolution that owns ``conv``'s weight and bias Parameters (moved in, not copied)."""
        kernels = check_kernels(kernels)
        if not _elastic_candidate(conv, kernels[-1]):
            raise ValueError(f"conv must be a square {kernels[-1]}x{kernels[-1]} zero-padded 'same' Conv2d (padding "
                             f"dilation*{kernels[-1] // 2}), got {conv}")
        new = cls(conv.in_channels, conv.out_channels, kernels, stride=conv.stride, dilation=conv.dilation[0],
                  groups=conv.groups, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight = conv.weight
        new.bias = conv.bias
        return new.train(conv.training)

    def to_conv(self, kernel: int | None = None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` at ``kernel`` with the transformed weight (a copy) and the bias."""
        kernel = self.active_kernel if kernel is None else kernel
        if kernel not in self.kernels:
            raise ValueError(f"kernel must be one of {list(self.kernels)}, got {kernel!r}")
        conv = nn.Conv2d(self.in_channels, self.out_channels, kernel, stride=self.stride,
                         padding=self.dilation[0] * (kernel // 2), dilation=self.dilation, groups=self.groups,
                         bias=self.bias is not None, device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.kernel_weight(kernel))
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.train(self.training)


def _elastic_candidate(module: nn.Module, size: int) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (size, size) and module.padding_mode == "zeros"
            and module.dilation[0] == module.dilation[1]
            and module.padding == (module.dilation[0] * (size // 2),) * 2)


@checked_arguments
def apply_elastic_kernel(model: nn.Module, kernels: Sequence[int], ignore: Sequence[str] = (),
                         optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Replace every "same"-padded square ``K × K`` ``nn.Conv2d`` (``K = max(kernels)``) by an
    :class:`ElasticKernelConv2d` that owns its Parameters; returns the replaced names (in module order).

    ``optimizer``, when given, gets each layer's transform matrices in the param group of its weight. Raises when no
    convolution of that size exists (leaving ``model`` unchanged).
    """
    kernels = check_kernels(kernels)
    if len(kernels) < 2:
        raise ValueError(f"kernels must hold at least two sizes to be elastic, got {list(kernels)}")
    ignore = tuple(ignore)
    names = [name for name, module in model.named_modules()
             if _elastic_candidate(module, kernels[-1]) and not any(name == i or name.startswith(f"{i}.")
                                                                    for i in ignore)]
    if not names:
        raise ValueError(f"kernels: the model has no 'same'-padded {kernels[-1]}x{kernels[-1]} Conv2d (the largest "
                         f"elastic kernel of {list(kernels)}) to make elastic")
    replaced = {}
    for name in names:
        old = model.get_submodule(name)
        new = ElasticKernelConv2d.from_conv(old, kernels)
        model.set_submodule(name, new)
        replaced[new.weight] = [new.weight, *new.transforms()]
    if optimizer is not None:
        state = {p: optimizer.state[p] for p in replaced if p in optimizer.state}
        replace_parameters(optimizer, replaced)
        for param, kept in state.items():  # the weight is the same Parameter: keep its state
            optimizer.state[param] = kept
    return names


@dataclasses.dataclass(frozen=True)
class SubnetSetting:
    """One sub-network: blocks per stage group, the width fraction, the kernel size per elastic convolution."""

    depth: tuple[int, ...]
    width: float
    kernel: tuple[int, ...]

    def label(self) -> str:
        """``"w0.5_d2_k3"`` (per-group depths / per-layer kernels joined by ``-`` when they differ)."""
        def join(values: tuple) -> str:
            return str(values[0]) if len(set(values)) == 1 else "-".join(map(str, values))

        depth = join(self.depth) if self.depth else "full"
        kernel = join(self.kernel) if self.kernel else "fixed"
        return f"w{self.width:g}_d{depth}_k{kernel}"


def _blocks_of(model: nn.Module) -> list[list[int]]:
    """Stage indices of each group of skippable blocks of a regimen staged model (ResNet, ViT)."""
    config = getattr(model, "config", None) or {}
    if "depths" in config:  # ResNet: stem, blocks group by group, head
        out, start = [], 1
        for depth in config["depths"]:
            out.append(list(range(start, start + depth)))
            start += depth
        return out
    if "depth" in config:  # ViT / transformer: embedding, blocks, head
        return [list(range(1, 1 + config["depth"]))]
    raise TypeError("depths: elastic depth needs a regimen ResNet or ViT (model.config with 'depths' or 'depth'), "
                    "or pass blocks= (the stage indices of each group of blocks)")


@checked_arguments
class OnceForAll(nn.Module):
    """A staged network with elastic kernel size, depth and width; ``forward(x, depth=, width=, kernel=)``.

    Args:
        model: a :class:`regimen.models.StagedModel` (stages run in order), e.g. ``resnet(kernel_size=5)``; taken
            over (its largest-kernel convolutions are replaced by :class:`ElasticKernelConv2d`).
        example_inputs: inputs that run ``model`` once (traced for the width groups).
        kernels: elastic kernel sizes (odd, increasing; the largest is the model's), or ``None`` (fixed kernels).
        depths: elastic blocks per stage group (increasing; the largest must equal every group's block count), or
            ``None`` (fixed depth).
        widths: elastic width fractions (sorted, in (0, 1], ending in 1.0).
        blocks: stage indices of each group of skippable blocks (default: from a regimen ResNet's / ViT's config).
            Skipping a block must keep the shape (identity shortcut), checked on ``example_inputs``.
        groups: dependency groups of ``model`` for the widths (default: traced).

    On a transformer (regimen's ViT) the width slices the MLP hidden units (``NestedWidth``'s channel groups) and
    whole attention heads (``head_groups``: the tracer's lossless head groups computed with
    ``scaled_dot_product_attention``); the attention modules' head counts follow during the forward and in the
    extracted copy. The extracted ViT keeps its ``config`` (heads, mlp_ratio) of the full network: a pruned attention
    whose inner width ``heads · head_dim`` is below ``dim`` cannot be described by that config.

    ``trained`` holds the values each dimension has been trained at (initially only the full network's; the method
    enables the others phase by phase, or call :meth:`enable`); :meth:`extract` refuses any other.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, kernels: Sequence[int] | None = None,
                 depths: Sequence[int] | None = None, widths: Sequence[float] = (1.0,),
                 blocks: Sequence[Sequence[int]] | None = None, groups: Sequence[Group] | None = None) -> None:
        super().__init__()
        stages = getattr(model, "stages", None)
        if not isinstance(model, nn.Module) or not isinstance(stages, nn.ModuleList):
            raise TypeError(f"model must be a staged model (an nn.Module whose 'stages' ModuleList runs in order, e.g. "
                            f"regimen.models.resnet), got {type(model).__name__}")
        self.widths = check_widths(widths)
        if self.widths[-1] != 1.0:
            raise ValueError(f"widths must end in 1.0 (the full network), got {list(self.widths)}")
        self.kernels = check_kernels(kernels) if kernels is not None else ()
        self.model = model
        example = example_inputs if isinstance(example_inputs, tuple | list) else (example_inputs,)
        # widths: the nested channel groups (traced on the plain convolutions, before the kernel surgery)
        self._nested: NestedWidth | None = None
        #: attention-head groups sliced by OnceForAll itself (NestedWidth keeps heads at full width)
        self.head_groups: list[Group] = []
        object.__setattr__(self, "_attention_modules", {})  # traced name -> the attention module (by identity)
        if len(self.widths) > 1:
            nested = NestedWidth(model, example_inputs, self.widths, sort_by="none", groups=groups)
            object.__setattr__(self, "_nested", nested)  # not a submodule: it wraps the same ``model``
            for group in nested.fixed:
                if _sliceable_heads(model, group):
                    self.head_groups.append(group)
                    for site in group.attention:
                        self._attention_modules[site.module] = model.get_submodule(site.module)
        # depth
        if depths is not None:
            values = tuple(depths)
            if not values or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values) \
                    or list(values) != sorted(set(values)):
                raise ValueError(f"depths must be strictly increasing ints >= 1, got {depths!r}")
            self.blocks = [list(b) for b in (blocks if blocks is not None else _blocks_of(model))]
            sizes = {len(b) for b in self.blocks}
            if sizes != {values[-1]}:
                raise ValueError(f"depths: the largest depth {values[-1]} must equal every group's block count, got "
                                 f"groups of {[len(b) for b in self.blocks]} blocks")
            self.depths = values
            self._check_skippable(example)
        else:
            self.blocks, self.depths = [], ()
        # kernels
        self.kernel_layers: list[str] = []
        if self.kernels:
            if len(self.kernels) == 1:
                raise ValueError(f"kernels must hold at least two sizes to be elastic, got {list(self.kernels)}")
            self.kernel_layers = apply_elastic_kernel(model, self.kernels)
        # the elastic convolutions themselves (found again by identity if later surgery wraps them)
        object.__setattr__(self, "_kernel_modules", [model.get_submodule(n) for n in self.kernel_layers])
        # which values each dimension has been trained at: boolean buffers (saved with the model's state)
        for dim, values in (("depth", self.depths), ("width", self.widths), ("kernel", self.kernels)):
            mask = torch.zeros(len(values), dtype=torch.bool)
            if values:
                mask[-1] = True  # the full network's value
            self.register_buffer(f"trained_{dim}", mask)
        self.active = self.full_setting()

    @property
    def trained(self) -> dict[str, set]:
        """``{"depth": {...}, "width": {...}, "kernel": {...}}``: the values each dimension was trained at."""
        out = {}
        for dim, values in (("depth", self.depths), ("width", self.widths), ("kernel", self.kernels)):
            mask = getattr(self, f"trained_{dim}").tolist()
            out[dim] = {v for v, on in zip(values, mask, strict=True) if on}
        return out

    def _check_skippable(self, example: tuple) -> None:
        shapes: dict[int, tuple[tuple, tuple]] = {}
        handles = []
        for group in self.blocks:
            for index in group[1:]:
                def hook(module, inputs, output, index=index):
                    shapes[index] = (tuple(inputs[0].shape), tuple(output.shape))
                handles.append(self.model.stages[index].register_forward_hook(hook))
        try:
            with torch.no_grad():
                was = self.model.training
                self.model.eval()
                self.model(*example)
                self.model.train(was)
        finally:
            for h in handles:
                h.remove()
        for index, (before, after) in shapes.items():
            if before != after:
                raise ValueError(f"depths: stage {index} changes the shape {before} -> {after}, so it cannot be "
                                 "skipped (only blocks with an identity shortcut after the first of a group can)")

    # ---------------------------------------------------------------------------------------------------- settings
    def full_setting(self) -> SubnetSetting:
        return SubnetSetting(tuple(self.depths[-1] for _ in self.blocks) if self.depths else (), 1.0,
                             tuple(self.kernels[-1] for _ in self.kernel_layers) if self.kernels else ())

    def setting(self, depth: int | Sequence[int] | None = None, width: float | None = None,
                kernel: int | Sequence[int] | None = None) -> SubnetSetting:
        """Validate and broadcast a setting (``None`` = the active one's value)."""
        if isinstance(depth, SubnetSetting):
            return self.setting(depth.depth or None, depth.width, depth.kernel or None)
        active = self.active
        for key, value in (("depth", depth), ("kernel", kernel)):
            values = value if isinstance(value, tuple | list) else (value,)
            if value is not None and any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise TypeError(f"{key} must be an int or a sequence of ints, got {value!r}")
        if depth is None:
            depths = active.depth
        elif not self.depths:
            raise ValueError(f"depth: this supernet has no elastic depth, got depth={depth!r}")
        else:
            depths = (depth,) * len(self.blocks) if isinstance(depth, int) else tuple(depth)
            if len(depths) != len(self.blocks) or any(d not in self.depths for d in depths):
                raise ValueError(f"depth must be one of {list(self.depths)} or one per group ({len(self.blocks)} "
                                 f"groups), got {depth!r}")
        if width is None:
            width = active.width
        if isinstance(width, bool) or not isinstance(width, int | float) or float(width) not in self.widths:
            raise ValueError(f"width must be one of the elastic widths {list(self.widths)}, got {width!r}")
        if kernel is None:
            kernels = active.kernel
        elif not self.kernels:
            raise ValueError(f"kernel: this supernet has no elastic kernel, got kernel={kernel!r}")
        else:
            kernels = (kernel,) * len(self.kernel_layers) if isinstance(kernel, int) else tuple(kernel)
            if len(kernels) != len(self.kernel_layers) or any(k not in self.kernels for k in kernels):
                raise ValueError(f"kernel must be one of the elastic kernel sizes {list(self.kernels)} or one per "
                                 f"elastic layer ({len(self.kernel_layers)}), got {kernel!r}")
        return SubnetSetting(tuple(depths), float(width), tuple(kernels))

    def set_active(self, depth: int | Sequence[int] | None = None, width: float | None = None,
                   kernel: int | Sequence[int] | None = None) -> SubnetSetting:
        """The setting ``forward`` uses when none is given."""
        self.active = self.setting(depth, width, kernel)
        return self.active

    def enable(self, depth: int | None = None, width: float | None = None, kernel: int | None = None) -> None:
        """Mark a value of a dimension as trained (progressive shrinking calls this phase by phase)."""
        for dim, value, values in (("depth", depth, self.depths), ("width", width, self.widths),
                                   ("kernel", kernel, self.kernels)):
            if value is None:
                continue
            if value not in values:
                raise ValueError(f"{dim} must be one of {list(values)}, got {value!r}")
            getattr(self, f"trained_{dim}")[list(values).index(value)] = True

    def sample(self, generator: torch.Generator | None = None, trained_only: bool = True) -> SubnetSetting:
        """A random setting: depth per group, one width, kernel per elastic layer, uniform over the trained (or
        declared) values."""
        def pick(values: Sequence, n: int) -> tuple:
            values = sorted(values)
            return tuple(values[i] for i in torch.randint(len(values), (n,), generator=generator).tolist())

        trained = self.trained
        depths = trained["depth"] if trained_only else self.depths
        widths = trained["width"] if trained_only else self.widths
        kernels = trained["kernel"] if trained_only else self.kernels
        return SubnetSetting(pick(depths, len(self.blocks)) if self.depths else (), pick(widths, 1)[0],
                             pick(kernels, len(self.kernel_layers)) if self.kernels else ())

    def uniform_settings(self, trained_only: bool = False) -> list[SubnetSetting]:
        """Every setting with one depth for all groups and one kernel for all layers (the sampler tables)."""
        trained = self.trained
        depths = sorted(trained["depth"]) if trained_only else list(self.depths)
        widths = sorted(trained["width"]) if trained_only else list(self.widths)
        kernels = sorted(trained["kernel"]) if trained_only else list(self.kernels)
        out = []
        for d, w, k in itertools.product(depths or [None], widths, kernels or [None]):
            out.append(SubnetSetting((d,) * len(self.blocks) if d is not None else (), float(w),
                                     (k,) * len(self.kernel_layers) if k is not None else ()))
        return out

    def _skipped(self, setting: SubnetSetting) -> set[int]:
        return {index for group, d in zip(self.blocks, setting.depth, strict=True) for index in group[d:]}

    # ------------------------------------------------------------------------------------------------------ forward
    def forward(self, *args: Any, depth: int | Sequence[int] | None = None, width: float | None = None,
                kernel: int | Sequence[int] | None = None, **kwargs: Any) -> Any:
        setting = self.setting(depth, width, kernel)
        for module, k in zip(self._kernel_modules, setting.kernel, strict=True):
            module.active_kernel = k
        overrides: dict[str, torch.Tensor] = {}
        attributes: list[tuple[nn.Module, dict[str, Any]]] = []
        if setting.width < 1.0:
            head_groups = self._head_groups_now()
            plan = _merge_cuts(self._nested.width_plan(setting.width),
                               _group_cuts(self.model, {g: self._nested.units(g, setting.width) for g in head_groups}))
            for name, cuts in plan.items():
                tensor = _param_or_buffer(self.model, name)
                for dim, kept in cuts:
                    if int(kept[-1]) + 1 == kept.numel():  # a prefix: a view (BN statistics update in place)
                        tensor = tensor.narrow(dim, 0, kept.numel())
                    else:
                        tensor = tensor.index_select(dim, kept.to(tensor.device))
                overrides[name] = tensor
            attributes = self._head_attributes(setting.width)
        skipped = self._skipped(setting) if self.depths else set()
        if not skipped and not overrides:
            return self.model(*args, **kwargs)
        if kwargs:
            raise TypeError(f"a staged sub-network takes the input tensor only, got keyword arguments {sorted(kwargs)}")
        x = args[0] if len(args) == 1 else args
        saved = [(module, {key: getattr(module, key) for key in values}) for module, values in attributes]
        try:
            for module, values in attributes:  # the attention modules run with the sliced head counts
                for key, value in values.items():
                    setattr(module, key, value)
            for index, stage in enumerate(self.model.stages):
                if index in skipped:
                    continue
                prefix = f"stages.{index}."
                local = {name[len(prefix):]: t for name, t in overrides.items() if name.startswith(prefix)}
                x = functional_call(stage, local, (x,), strict=False) if local else stage(x)
        finally:
            for module, values in saved:
                for key, value in values.items():
                    setattr(module, key, value)
        return x

    def _head_groups_now(self) -> list[Group]:
        """``head_groups`` with their slices' and attention sites' module names as they are now."""
        if not self.head_groups:
            return []
        groups = self._nested.groups_now(self.head_groups)
        now = {id(m): name for name, m in self.model.named_modules(remove_duplicate=False)}
        out = []
        for group in groups:
            sites = []
            for site in group.attention:
                module = self._attention_modules[site.module]
                if id(module) not in now:
                    raise RuntimeError(f"OnceForAll: attention module {site.module!r} is no longer in the model; "
                                       "surgery after OnceForAll may wrap its layers, not replace them")
                sites.append(dataclasses.replace(site, module=now[id(module)]))
            out.append(dataclasses.replace(group, attention=tuple(sites)))
        return out

    def _head_attributes(self, width: float) -> list[tuple[nn.Module, dict[str, Any]]]:
        """The head-count attributes of every attention module at ``width`` (only those that change)."""
        counts: dict[int, tuple[nn.Module, dict[str, int], dict[str, int], int]] = {}
        for group in self.head_groups:
            keep = self._nested.units(group, width)
            if keep == group.size:
                continue
            kept = torch.arange(group.size) < keep
            for site in group.attention:
                module = self._attention_modules[site.module]
                before = {"heads": site.q_units.numel(), "kv_heads": site.kv_units.numel(),
                          "inner": site.q_units.numel() * site.head_dim}
                _, first, old, _ = counts.get(id(module), (module, before, dict(before), site.head_dim))
                lost_q = int(((site.q_units >= 0) & ~kept[site.q_units.clamp(min=0)]).sum())
                lost_kv = int(((site.kv_units >= 0) & ~kept[site.kv_units.clamp(min=0)]).sum())
                after = {"heads": old["heads"] - lost_q, "kv_heads": old["kv_heads"] - lost_kv}
                after["inner"] = after["heads"] * site.head_dim
                counts[id(module)] = (module, first, after, site.head_dim)
        out = []
        for module, before, after, _ in counts.values():
            values = attention_attributes(module, before, after)
            if isinstance(module, CausalSelfAttention):  # regimen's attention reshapes to ``dim`` = heads·head_dim
                values["dim"] = after["inner"]
            out.append((module, values))
        return out

    # ------------------------------------------------------------------------------------------------------- export
    def _check_trained(self, setting: SubnetSetting) -> None:
        trained = self.trained
        for dim, values in (("depth", setting.depth), ("width", (setting.width,)), ("kernel", setting.kernel)):
            untrained = sorted(set(values) - trained[dim])
            if untrained:
                raise ValueError(f"{dim}={untrained[0]!r} was never trained by this supernet (trained {dim}s: "
                                 f"{sorted(trained[dim])}); train its phase first or call enable({dim}=...)")

    @torch.no_grad()
    def build(self, setting: SubnetSetting) -> nn.Module:
        """The standalone network at ``setting`` (no check that it was trained; see :meth:`extract`)."""
        setting = self.setting(setting)
        now = {id(m): name for name, m in self.model.named_modules(remove_duplicate=False)}
        missing = [n for n, m in zip(self.kernel_layers, self._kernel_modules, strict=True) if id(m) not in now]
        if missing:
            raise RuntimeError(f"OnceForAll: elastic convolution {missing[0]!r} is no longer in the model; surgery "
                               "after OnceForAll may wrap its layers, not replace them")
        model = copy_module(self.model)  # the same structure: the current names hold in the copy
        for module, k in zip(self._kernel_modules, setting.kernel, strict=True):
            name = now[id(module)]
            model.set_submodule(name, model.get_submodule(name).to_conv(k))
        if setting.width < 1.0:
            groups = self._nested.groups_now() + self._head_groups_now()
            plan = {g: torch.arange(self._nested.units(g, setting.width)) for g in groups
                    if self._nested.units(g, setting.width) < g.size}
            if plan:
                prune_groups(model, plan)
                for module in model.modules():  # prune_groups set ``heads``; regimen's attention also reads ``dim``
                    if isinstance(module, CausalSelfAttention):
                        module.dim = module.heads * module.head_dim
        skipped = self._skipped(setting) if self.depths else set()
        if skipped:
            model.stages = nn.ModuleList([s for i, s in enumerate(model.stages) if i not in skipped])
            config = getattr(model, "config", None)
            if isinstance(config, dict):
                model.config = dict(config)
                if "depths" in config:
                    model.config["depths"] = list(setting.depth)
                elif "depth" in config:
                    model.config["depth"] = setting.depth[0]
        return model

    def extract(self, depth: int | Sequence[int] | None = None, width: float | None = None,
                kernel: int | Sequence[int] | None = None, calibration: Iterable[Any] | None = None) -> nn.Module:
        """A standalone copy at the setting, equal to ``self(x, depth=, width=, kernel=)`` in eval mode.

        Refuses a value of any dimension the supernet never trained. With ``calibration`` (batches of inputs) the
        copy's BatchNorm statistics are re-estimated on them (:func:`recalibrate_batch_norm`); the supernet is
        untouched.
        """
        setting = self.setting(depth, width, kernel)
        self._check_trained(setting)
        model = self.build(setting)
        if calibration is not None:
            recalibrate_batch_norm(model, calibration)
        return model

    @torch.no_grad()
    def recalibrate_bn(self, batches: Iterable[Any], depth: int | Sequence[int] | None = None,
                       width: float | None = None, kernel: int | Sequence[int] | None = None) -> None:
        """Re-estimate the *shared* BN statistics for one sub-network (as the reference does before evaluating it)."""
        batches = list(batches)
        if not batches:
            raise ValueError("batches must hold at least one batch")
        setting = self.setting(depth, width, kernel)
        norms = [m for m in self.model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
        saved, was = [bn.momentum for bn in norms], self.training
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None
        self.train()
        try:
            for batch in batches:
                inputs = batch if isinstance(batch, tuple | list) else (batch,)
                self(*inputs, depth=setting.depth, width=setting.width, kernel=setting.kernel)
        finally:
            for bn, momentum in zip(norms, saved, strict=True):
                bn.momentum = momentum
            self.train(was)

    def sort_channels(self, importance: str = "l1") -> None:
        """Order every width group's channels by decreasing importance (function preserving; before the width
        phase)."""
        if self._nested is not None:
            self._nested.sort_channels(importance)
            _sort_units(self.model, self._head_groups_now(), importance)

    @property
    def stages(self) -> nn.Module:
        """The wrapped model's ``stages``."""
        return self.model.stages


def _sliceable_heads(model: nn.Module, group: Group) -> bool:
    """A lossless head group whose tensors are Linear weights/biases and whose attention runs through
    ``scaled_dot_product_attention`` in a module that reads its head count from attributes (not the packed
    ``nn.MultiheadAttention``, whose forward checks its own sizes)."""
    if group.kind != "head" or not group.lossless or not group.attention:
        return False
    if any(not isinstance(model.get_submodule(s.module), nn.Linear) for s in group.slices):
        return False
    return not any(isinstance(model.get_submodule(site.module), nn.MultiheadAttention) for site in group.attention)


def _param_or_buffer(model: nn.Module, name: str) -> torch.Tensor:
    try:
        return model.get_parameter(name)
    except AttributeError:  # a buffer (running statistics)
        return model.get_buffer(name)


def _group_cuts(model: nn.Module, keeps: dict[Group, int]) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """``{tensor name: [(dim, kept positions), ...]}`` when each group keeps its first ``keeps[group]`` units."""
    dropped: dict[tuple[str, int], set[int]] = {}
    sizes: dict[tuple[str, int], int] = {}
    for group, keep in keeps.items():
        if keep >= group.size:
            continue
        for s in group.slices:
            key = (f"{s.module}.{s.param}" if s.module else s.param, s.dim)
            sizes[key] = s.tensor(model).shape[s.dim]
            dropped.setdefault(key, set()).update(group.positions(s, torch.arange(keep, group.size)).tolist())
    plan: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (name, dim), gone in sorted(dropped.items()):
        mask = torch.ones(sizes[(name, dim)], dtype=torch.bool)
        mask[list(gone)] = False
        plan.setdefault(name, []).append((dim, mask.nonzero().reshape(-1)))
    return plan


def _merge_cuts(*plans: dict[str, list[tuple[int, torch.Tensor]]]) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """One plan from several: the kept positions of a tensor's dim are those every plan keeps."""
    merged: dict[str, dict[int, torch.Tensor]] = {}
    for plan in plans:
        for name, cuts in plan.items():
            entry = merged.setdefault(name, {})
            for dim, kept in cuts:
                entry[dim] = kept if dim not in entry else entry[dim][torch.isin(entry[dim], kept)]
    return {name: sorted(entry.items()) for name, entry in merged.items()}


@torch.no_grad()
def _sort_units(model: nn.Module, groups: Sequence[Group], importance: str) -> None:
    """Permute each group's units by decreasing importance, every coupled tensor alike (function preserving)."""
    from regimen.subnet.importance import group_scores

    for group in groups:
        order = torch.sort(group_scores(model, group, importance), descending=True, stable=True).indices
        if torch.equal(order, torch.arange(group.size)):
            continue
        for s in group.slices:
            tensor = s.tensor(model)
            destination = s.indices.reshape(-1).to(tensor.device)
            source = s.indices[order].reshape(-1).to(tensor.device)
            tensor.index_copy_(s.dim, destination, tensor.index_select(s.dim, source))


# --------------------------------------------------------------------------------------------------------------- method
class _AtSetting:
    """The supernet restricted to one setting, as the callable the ``forward_loss`` chain passes on."""

    def __init__(self, model: Callable[..., Any], setting: SubnetSetting) -> None:
        self.model, self.setting = model, setting

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        s = self.setting
        return self.model(*args, depth=s.depth or None, width=s.width, kernel=s.kernel or None, **kwargs)


@register_method
class OnceForAllMethod(Method):
    """Once-for-All progressive shrinking: elastic kernel, depth and width trained phase by phase with KD.

    ``setup`` wraps the model in :class:`OnceForAll`. The run is split into the paper's phases (``phase_epochs``:
    full, kernel, depth, width); at each phase change the optimizer moments are zeroed, the new values of the dimension
    are enabled, the channel sort happens before the first width is enabled, and the frozen full-network teacher is
    copied when the first elastic phase starts. A ``forward_loss`` middleware: in an elastic phase every micro-batch
    trains ``subnets_per_step`` sampled sub-networks (their losses summed, so their gradients accumulate before the
    one optimizer step), each with the task loss plus ``kd_ratio`` × soft cross-entropy against the teacher.

    ``sampler`` chooses how sub-networks are drawn: ``"uniform"`` (OFA: per-group depth, per-layer kernel, one
    width), or ElasticViT's ``"complexity"`` (MACs buckets visited by an adjacent random walk, the bucket's smallest
    sub-network in every step) and ``"performance"`` (the same plus a bank of good sub-networks per bucket, and
    ElasticViT's preference for candidates whose extra MACs over the anchor come from width rather than depth) over
    the uniform settings (one depth, one kernel) — see :mod:`regimen.subnet.elastic_samplers`.

    The trainer evaluates the setting ``eval_depth`` / ``eval_width`` / ``eval_kernel`` (default the full network)
    as a standalone copy with BN statistics re-estimated on ``recalibrate_batches`` training batches.
    """

    name = "ofa"
    paper_id = "arXiv:1908.09791"
    claim = ("progressive shrinking trains one supernet whose sub-networks (kernel, depth, width) match or beat "
             "separately trained networks of the same size without retraining")
    claimed_effect = "no_worse"
    inputs = ("image",)
    targets = ("labels",)
    # found by training every pair of methods (tests/integration)
    after = ("blurpool",)
    # squeeze_excite: its gates keep the full channel count, so every narrower width fails in either order
    conflicts = ("nested_width", "nm_sparsity", "maestro", "trp", "hesso", "weight_std", "batchformer",
                 "nested_dropout", "multi_sample_dropout", "lora", "allora", "lost", "cp_kernels", "random_search",
                 "lottery_jackpots", "ftwt", "squeeze_excite")
    constraint_reason = ("ofa traces the model's channel groups and convolutions in setup, then slices their weights "
                         "and kernels: layers inserted after it (squeeze_excite, blurpool: list them first) are not "
                         "sliced; it cannot share the model with methods that re-parametrize or slice the same layers "
                         "or features (nested widths, N:M, low rank, LoRA/LOST/CP kernels, pruning and mask "
                         "search, FTWT's gates, batchformer, nested/multi-sample dropout's heads)")

    def __init__(
        self,
        kernels: list[int] | None = None,
        depths: list[int] | None = None,
        widths: list[float] | None = None,
        phase_epochs: list[int] | None = None,
        subnets_per_step: list[int] | None = None,
        kd_ratio: float = 1.0,
        sort_by: Literal["l1", "l2", "bn_scale", "none"] = "l1",
        sampler: Literal["uniform", "complexity", "performance"] = "uniform",
        buckets: int = 4,
        eval_depth: int | None = None,
        eval_width: float | None = None,
        eval_kernel: int | None = None,
        recalibrate_batches: int = 10,
    ) -> None:
        self.kernels = check_kernels(kernels) if kernels is not None else None
        if self.kernels is not None and len(self.kernels) < 2:
            raise ValueError(f"kernels must hold at least two sizes (or be omitted), got {kernels!r}")
        if depths is not None and (not depths or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                                                      for d in depths) or list(depths) != sorted(set(depths))):
            raise ValueError(f"depths must be strictly increasing ints >= 1, got {depths!r}")
        self.depths = tuple(depths) if depths is not None else None
        self.widths = check_widths(widths if widths is not None else (0.25, 0.5, 0.75, 1.0))
        if self.widths[-1] != 1.0:
            raise ValueError(f"widths must end in 1.0, got {list(self.widths)}")
        self.phase_epochs = list(phase_epochs) if phase_epochs is not None else None
        if self.phase_epochs is not None:
            progressive_phases(self.phase_epochs, self.kernels or (1,), self.depths or (1,), self.widths)
        self.subnets_per_step = list(subnets_per_step) if subnets_per_step is not None else [1, 1, 2, 4]
        if len(self.subnets_per_step) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                                  for n in self.subnets_per_step):
            raise ValueError(f"subnets_per_step must be 4 ints >= 1 (full, kernel, depth, width), got "
                             f"{subnets_per_step!r}")
        if isinstance(kd_ratio, bool) or not isinstance(kd_ratio, int | float) or kd_ratio < 0:
            raise ValueError(f"kd_ratio must be a number >= 0, got {kd_ratio!r}")
        if sort_by not in ("l1", "l2", "bn_scale", "none"):
            raise ValueError(f"sort_by must be 'l1', 'l2', 'bn_scale' or 'none', got {sort_by!r}")
        if sampler not in ("uniform", "complexity", "performance"):
            raise ValueError(f"sampler must be 'uniform', 'complexity' or 'performance', got {sampler!r}")
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be an int >= 1, got {buckets!r}")
        if eval_depth is not None and (self.depths is None or eval_depth not in self.depths):
            raise ValueError(f"eval_depth must be one of depths {list(self.depths or ())}, got {eval_depth!r}")
        if eval_width is not None and eval_width not in self.widths:
            raise ValueError(f"eval_width must be one of widths {list(self.widths)}, got {eval_width!r}")
        if eval_kernel is not None and (self.kernels is None or eval_kernel not in self.kernels):
            raise ValueError(f"eval_kernel must be one of kernels {list(self.kernels or ())}, got {eval_kernel!r}")
        if isinstance(recalibrate_batches, bool) or not isinstance(recalibrate_batches, int) or recalibrate_batches < 0:
            raise ValueError(f"recalibrate_batches must be an int >= 0, got {recalibrate_batches!r}")
        self.kd_ratio, self.sort_by, self.sampler, self.buckets = float(kd_ratio), sort_by, sampler, buckets
        self.eval_depth, self.eval_width, self.eval_kernel = eval_depth, eval_width, eval_kernel
        self.recalibrate_batches = recalibrate_batches
        self.supernet: OnceForAll | None = None
        self.teacher: nn.Module | None = None
        self.generator: torch.Generator | None = None
        self.phase = "full"
        self.events_done = 0
        self.sorted = False
        self.last_settings: list[SubnetSetting] = []
        self._sampler: ComplexityAwareSampler | None = None
        self._candidates: list[SubnetSetting] = []
        self._macs: dict[SubnetSetting, int] = {}

    # ----------------------------------------------------------------------------------------------------- set-up
    def setup(self, ctx: Context) -> None:
        example, _ = ctx.example_batch()
        if self.phase_epochs is None:  # the run's epochs dealt to full, width, depth, kernel in turn
            self.phase_epochs = [0, 0, 0, 0]
            for i in range(ctx.run.epochs):
                self.phase_epochs[(0, 3, 2, 1)[i % 4]] += 1
        total = sum(self.phase_epochs)
        if total > ctx.run.epochs:
            raise ConfigurationError(f"ofa: phase_epochs {self.phase_epochs} add up to {total} epochs, more than "
                                     f"train.epochs = {ctx.run.epochs}")
        if self.phase_epochs[0] == 0 and self.kd_ratio > 0:
            raise ConfigurationError("ofa: the teacher is the full network trained in the first phase; with "
                                     "phase_epochs[0] = 0 set kd_ratio = 0")
        try:
            self.supernet = OnceForAll(ctx.model, example, self.kernels, self.depths, self.widths)
        except (UntraceableError, ValueError, TypeError) as error:
            raise ConfigurationError(f"ofa needs a staged model (regimen resnet with kernel_size = max(kernels), or "
                                     f"vit) whose blocks it can skip and channels it can slice: {error}") from error
        if ctx.optimizer is not None:
            for layer in self.supernet._kernel_modules:  # the transform matrices train with their layer's weight
                replace_parameters(ctx.optimizer, {layer.weight: [layer.weight, *layer.transforms()]})
        ctx.model = self.supernet
        self._generator(ctx)
        self._advance(ctx, 0)
        self.log(ctx, "kernel_layers", len(self.supernet.kernel_layers))

    def _generator(self, ctx: Context) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(ctx.run.seed * 7919 + 17)
        return self.generator

    def _events(self) -> list[tuple[int, str, str, Any]]:
        return progressive_phases(self.phase_epochs, self.kernels or (1,), self.depths or (1,), self.widths)

    def _advance(self, ctx: Context, epoch: int) -> None:
        """Apply every phase event due by ``epoch`` (idempotent; also replays them after a resume)."""
        supernet = self.supernet
        events = self._events()
        changed = False
        for start, phase, dim, value in events[self.events_done:]:
            if start > epoch:
                break
            if (dim == "kernel" and self.kernels is None) or (dim == "depth" and self.depths is None):
                self.events_done += 1
                continue
            if self.teacher is None and self.kd_ratio > 0:
                self.teacher = supernet.build(supernet.full_setting())
                self.teacher.requires_grad_(False)
            if dim == "width" and not self.sorted and self.sort_by != "none":
                supernet.sort_channels(self.sort_by)
                self.sorted = True
            supernet.enable(**{dim: value})
            self.phase = phase
            self.events_done += 1
            changed = True
        if changed:
            optimizer = getattr(ctx.optimizer, "optimizer", ctx.optimizer)
            if optimizer is not None:  # each phase starts with fresh moments, as the reference's new optimizer does
                for state in optimizer.state.values():  # (other keys stay: optimizer-wrapping methods keep theirs)
                    for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                        if isinstance(state.get(key), torch.Tensor):
                            state[key].zero_()
            if self.sampler != "uniform":
                self._build_sampler(ctx)
            self.log(ctx, "phase", float(PHASES.index(self.phase)))

    def _build_sampler(self, ctx: Context) -> None:
        from regimen.subnet.measure import count_macs

        example, _ = ctx.example_batch()
        example = example[:1] if isinstance(example, torch.Tensor) else example
        self._candidates = self.supernet.uniform_settings(trained_only=True)
        for setting in self._candidates:
            if setting not in self._macs:
                self._macs[setting] = count_macs(self.supernet.build(setting), example)
        costs = [float(self._macs[s]) for s in self._candidates]
        buckets = min(self.buckets, len(costs))
        if self.sampler == "complexity":
            self._sampler = ComplexityAwareSampler(costs, buckets, generator=self._generator(ctx))
        else:
            self._sampler = PerformanceAwareSampler(costs, buckets, generator=self._generator(ctx),
                                                    preference=self._preference)

    def _preference(self, candidate: int, anchor: int) -> float:
        """ElasticViT's preference (lower is preferred): MACs of the candidate with the anchor's width minus MACs of
        the candidate with the anchor's depth — candidates whose extra cost comes from width rather than depth win."""
        c, a = self._candidates[candidate], self._candidates[anchor]
        deep = self._macs.get(SubnetSetting(c.depth, a.width, c.kernel))
        wide = self._macs.get(SubnetSetting(a.depth, c.width, c.kernel))
        return 0.0 if deep is None or wide is None else float(deep - wide)

    def on_epoch_start(self, ctx: Context) -> None:
        if self.supernet is not None:
            self._advance(ctx, ctx.epoch)
        self._rescore_all = True  # ElasticViT re-scores every bank on the first batch of an epoch

    def _rescore(self, model: Callable, x: Any, y: Any, ctx: Context) -> None:
        """Re-evaluate stale bank scores on the current (clean) batch: every bank at an epoch's first batch, the
        current bucket's bank every quarter epoch (ElasticViT's ``bank_loss_update`` / ``update_bank``)."""
        sampler = self._sampler
        quarter = max(1, ctx.run.steps_per_epoch // 4)
        bucket = None if getattr(self, "_rescore_all", False) else sampler.bucket
        if bucket is not None and (ctx.step + 1) % quarter:
            return
        self._rescore_all = False

        @torch.no_grad()
        def score(index: int) -> float:
            output = _AtSetting(model, self._candidates[index])(x)
            return -F.cross_entropy(output.float(), y).item()

        sampler.rescore(score, bucket)

    # ----------------------------------------------------------------------------------------------------- training
    def _draw(self, ctx: Context) -> list[SubnetSetting]:
        supernet = self.supernet
        n = self.subnets_per_step[PHASES.index(self.phase)]
        if self.phase == "full":
            return [supernet.full_setting()]
        if self._sampler is not None and len(self._candidates) > 1:
            return [self._candidates[i] for i in self._sampler.sample(n)]
        return [supernet.sample(self._generator(ctx)) for _ in range(n)]

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        self.last_settings = self._draw(ctx)

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        settings = self.last_settings or self._draw(ctx)
        soft = None
        if self.teacher is not None and self.phase != "full" and self.kd_ratio > 0:
            with torch.no_grad():
                self.teacher.train()  # the reference runs the teacher with batch statistics
                soft = F.softmax(self.teacher(x).float(), dim=-1)
        if isinstance(self._sampler, PerformanceAwareSampler):
            self._rescore(model, x, y, ctx)
        total, first = None, None
        for setting in settings:
            loss, output = next(_AtSetting(model, setting), x, y)
            if isinstance(self._sampler, PerformanceAwareSampler) and setting in self._candidates:
                with torch.no_grad():
                    score = -F.cross_entropy(output.detach().float(), y).item()
                self._sampler.update(self._candidates.index(setting), score)
            if soft is not None:
                loss = loss + self.kd_ratio * soft_target_cross_entropy(output, soft)
            total = loss if total is None else total + loss
            first = output if first is None else first
        self.log(ctx, "subnets", float(len(settings)))
        return total, first

    # --------------------------------------------------------------------------------------------------- evaluation
    def eval_setting(self) -> SubnetSetting:
        return self.supernet.setting(self.eval_depth, self.eval_width if self.eval_width is not None else 1.0,
                                     self.eval_kernel) if self.supernet is not None else None

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        if self.supernet is None:
            return None
        full = self.supernet.full_setting()
        setting = self.supernet.setting(self.eval_depth if self.eval_depth is not None else full.depth or None,
                                        self.eval_width if self.eval_width is not None else 1.0,
                                        self.eval_kernel if self.eval_kernel is not None else full.kernel or None)
        standalone = self.supernet.build(setting)
        if self.recalibrate_batches > 0 and ctx.train_data is not None:
            generator = torch.Generator().manual_seed(ctx.run.seed * 7919 + 29)  # the same batches every time
            batch = ctx.run.per_device_batch
            order = torch.randperm(len(ctx.train_data), generator=generator)[: self.recalibrate_batches * batch]
            batches = []
            for start in range(0, order.numel(), batch):
                xb, _ = ctx.train_data.gather(order[start:start + batch], ctx.run.device)
                batches.append(ctx.normalize(xb))
            recalibrate_batch_norm(standalone, batches)
        return standalone

    # ---------------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"events_done": self.events_done, "sorted": self.sorted}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        if self.teacher is not None:
            state["teacher"] = {k: v.detach().clone() for k, v in self.teacher.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator = torch.Generator()
            self.generator.set_state(state["generator"])
        # after setup (which replayed the events of epoch 0): the saved weights are already sorted and the trained
        # values come back with the model's state, so only the bookkeeping and the teacher are restored here
        self.events_done = int(state.get("events_done", self.events_done))
        self.sorted = bool(state.get("sorted", self.sorted))
        done = self._events()[: self.events_done]
        self.phase = done[-1][1] if done else "full"
        if "teacher" in state and self.supernet is not None:
            self.teacher = self.supernet.build(self.supernet.full_setting())
            self.teacher.load_state_dict(state["teacher"])
            self.teacher.requires_grad_(False)
