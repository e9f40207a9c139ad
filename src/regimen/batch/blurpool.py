"""BlurPool: anti-aliased downsampling, by surgery on any model's strided convolutions and max-pools.

Paper: Zhang, "Making Convolutional Networks Shift-Invariant Again", ICML 2019, arXiv 1904.11486.

Strided layers subsample without low-pass filtering, so a one-pixel shift of the input can change the output a lot.
BlurPool filters with the binomial kernel ``B = b bᵀ / (Σb)²``, ``b = [1, 2, 1]`` (depthwise, one copy per channel)
before subsampling:

    strided conv  →  conv(blur(x), stride s)          (``blur_first = true``, Composer's default: cheaper)
                  or blur(conv(x, stride 1), stride s)  (``blur_first = false``, the paper's Conv → BlurPool)
    MaxPool(k, s) →  blur(MaxPool(k, stride 1)(x), stride s)   (the paper's MaxBlurPool)

with ``blur(x, stride)`` a depthwise convolution with B, padding ``(len(b) − 1)//2`` (zeros like Composer and
Kornia, or ``"reflect"`` like the authors' ``antialiased-cnns``). Not function-preserving (the paper trains from
scratch or fine-tunes): the weights are kept, what the layer computes changes.

:func:`apply_blurpool` works on any ``nn.Module``: it replaces every ``nn.Conv2d`` with a stride > 1 and at least
``min_channels`` input channels (Composer: 16, so a 3-channel stem is left alone) by :class:`BlurConv2d` holding the
same conv (the same Parameters, so an optimizer stays bound), and every ``nn.MaxPool2d`` with a stride > 1 by
:class:`MaxBlurPool2d`. A model with nothing to replace is refused and left unchanged. State-dict keys of a wrapped
conv gain ``.conv`` (a checkpoint of a BlurPool model loads into a BlurPool model).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["BlurConv2d", "BlurPoolMethod", "MaxBlurPool2d", "apply_blurpool", "blur_2d", "blur_filter"]

PaddingMode = Literal["zeros", "reflect"]


@checked_arguments
def blur_filter(channels: int, taps: Sequence[float] = (1.0, 2.0, 1.0), *, device=None,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """The depthwise binomial filter ``(channels, 1, k, k)``: ``b bᵀ / (Σb)²``."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be an int >= 1, got {channels!r}")
    b = torch.as_tensor(taps, dtype=dtype or torch.float32, device=device)
    if b.dim() != 1 or b.numel() < 1 or b.numel() % 2 == 0:
        raise ValueError(f"taps must be an odd number of filter taps, got {list(taps)}")
    kernel = torch.outer(b, b) / b.sum() ** 2
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


@checked_arguments
def blur_2d(x: torch.Tensor, stride: int = 1, filter: torch.Tensor | None = None,
            padding_mode: PaddingMode = "zeros") -> torch.Tensor:
    """Depthwise blur of ``(N, C, H, W)`` with ``filter`` (default: :func:`blur_filter` of C channels), then every
    ``stride``-th pixel; ``(k − 1)//2`` padding of zeros or by reflection."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if padding_mode not in ("zeros", "reflect"):
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    channels = x.shape[1]
    if filter is None:
        filter = blur_filter(channels, device=x.device, dtype=x.dtype)
    pad = (filter.shape[-1] - 1) // 2
    if padding_mode == "reflect" and pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        pad = 0
    return F.conv2d(x, filter.to(x.dtype), stride=stride, padding=pad, groups=channels)


@checked_arguments
class BlurConv2d(nn.Module):
    """A strided ``nn.Conv2d`` with a blur before it (``blur_first``) or a stride-1 conv followed by a strided blur.

    Args:
        conv: the convolution (kept as ``self.conv``, its Parameters unchanged).
        blur_first: blur the input, then the strided conv; else conv at stride 1, then blur with the stride.
        padding_mode: of the blur.
    """

    def __init__(self, conv: nn.Conv2d, blur_first: bool = True, padding_mode: PaddingMode = "zeros") -> None:
        super().__init__()
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if not blur_first and conv.padding_mode != "zeros":
            raise ValueError("blur_first=False needs a conv with padding_mode='zeros'")
        self.conv, self.blur_first, self.padding_mode = conv, bool(blur_first), padding_mode
        channels = conv.in_channels if blur_first else conv.out_channels
        self.register_buffer("filter", blur_filter(channels, dtype=conv.weight.dtype, device=conv.weight.device),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur_first:
            return self.conv(blur_2d(x, 1, self.filter, self.padding_mode))
        conv = self.conv
        y = F.conv2d(x, conv.weight, conv.bias, 1, conv.padding, conv.dilation, conv.groups)
        return blur_2d(y, conv.stride[0], self.filter, self.padding_mode)

    def extra_repr(self) -> str:
        return f"blur_first={self.blur_first}, padding_mode={self.padding_mode!r}"


@checked_arguments
class MaxBlurPool2d(nn.Module):
    """``blur(max_pool(x, kernel_size, stride=1), stride)``: the paper's anti-aliased max-pooling."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int, padding: int | tuple[int, int] = 0,
                 dilation: int | tuple[int, int] = 1, padding_mode: PaddingMode = "zeros",
                 ceil_mode: bool = False) -> None:
        super().__init__()
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        for name, value in (("kernel_size", kernel_size), ("dilation", dilation)):
            if any(v < 1 for v in (value if isinstance(value, tuple) else (value,))):
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.padding_mode, self.ceil_mode = padding_mode, ceil_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x).__name__)}")
        x = F.max_pool2d(x, self.kernel_size, stride=1, padding=self.padding, dilation=self.dilation,
                         ceil_mode=self.ceil_mode)
        return blur_2d(x, self.stride, None, self.padding_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def _stride(value) -> int:
    return max(value) if isinstance(value, tuple) else int(value)


def _check_options(replace_convs: bool, replace_maxpools: bool, min_channels: int, padding_mode: str) -> None:
    """The arguments ``apply_blurpool`` and ``BlurPoolMethod`` share, checked in one place."""
    if isinstance(min_channels, bool) or not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
    if padding_mode not in ("zeros", "reflect"):
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
    if not (replace_convs or replace_maxpools):
        raise ValueError("replace_convs and replace_maxpools are both False: nothing to do")


@checked_arguments
def apply_blurpool(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, *, replace_convs: bool = True,
                   replace_maxpools: bool = True, blur_first: bool = True, min_channels: int = 16,
                   padding_mode: PaddingMode = "zeros", ignore: Sequence[str] = ()) -> list[str]:
    """Anti-alias every strided ``nn.Conv2d`` (``in_channels >= min_channels``) and strided ``nn.MaxPool2d`` of
    ``model``, in place.

    Args:
        model: any module.
        optimizer: accepted for the surgery convention; the convs keep their Parameters, so it stays bound.
        replace_convs, replace_maxpools: which layers to replace.
        blur_first: see :class:`BlurConv2d`.
        min_channels: convs with fewer input channels are left alone.
        padding_mode: ``"zeros"`` or ``"reflect"``.
        ignore: qualified module names to leave alone.

    Returns:
        The qualified names of the replaced modules.

    Raises:
        ValueError: nothing to replace (the model is unchanged), or a bad argument.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_options(replace_convs, replace_maxpools, min_channels, padding_mode)
    skip = set(ignore)
    found = []
    for name, module in model.named_modules():
        if name in skip or isinstance(module, BlurConv2d | MaxBlurPool2d):
            continue
        if (replace_convs and type(module) is nn.Conv2d and _stride(module.stride) > 1
                and module.in_channels >= min_channels):
            if not blur_first and module.padding_mode != "zeros":
                continue
            found.append((name, module))
        elif replace_maxpools and type(module) is nn.MaxPool2d and _stride(module.stride) > 1:
            found.append((name, module))
    if any(name == "" for name, _ in found):
        raise ValueError("model is itself a strided layer; wrap it in a module (surgery replaces children)")
    if not found:
        raise ValueError(f"model has no strided nn.Conv2d with in_channels >= min_channels={min_channels} and no "
                         "strided nn.MaxPool2d to anti-alias (BlurPool only changes downsampling layers); lower "
                         "min_channels or apply it to a model that downsamples")
    for name, module in found:
        if isinstance(module, nn.Conv2d):
            new = BlurConv2d(module, blur_first, padding_mode)
        else:
            stride = _stride(module.stride)
            new = MaxBlurPool2d(module.kernel_size, stride, module.padding, module.dilation, padding_mode,
                                module.ceil_mode)
        model.set_submodule(name, new)
    return [name for name, _ in found]


@register_method
class BlurPoolMethod(Method):
    """BlurPool (Zhang 2019): blur before every strided conv and max-pool of the model (any model).

    Args: see :func:`apply_blurpool` (Composer's defaults: convs and max-pools, blur first, ``min_channels = 16``).
    """

    name = "blurpool"
    before = ("hesso", "nested_width")
    constraint_reason = "pruning and nested widths rewrite the convs, so they must see the wrapped layers"
    inputs = ("image",)
    paper_id = "arXiv:1904.11486"
    claim = ("low-pass filtering before subsampling makes CNNs more shift-invariant and improves ImageNet accuracy "
             "of ResNets, DenseNets and MobileNets")
    claimed_effect = "better"

    def __init__(self, replace_convs: bool = True, replace_maxpools: bool = True, blur_first: bool = True,
                 min_channels: int = 16, padding_mode: PaddingMode = "zeros") -> None:
        _check_options(replace_convs, replace_maxpools, min_channels, padding_mode)
        self.kwargs = dict(replace_convs=replace_convs, replace_maxpools=replace_maxpools, blur_first=blur_first,
                           min_channels=min_channels, padding_mode=padding_mode)

    def setup(self, ctx: Context) -> None:
        replaced = apply_blurpool(ctx.model, ctx.optimizer, **self.kwargs)
        self.log(ctx, "replaced", len(replaced))
