"""Weight Standardization (WS) and Batch-Channel Normalization (BCN) for micro-batch training.

Paper: Qiao, Wang, Liu, Shen & Yuille, "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization" (first titled "Weight Standardization"), 2019, arXiv 1903.10520.

WS reparameterises a conv's weight per output channel ``o`` over its fan-in (``C_in/groups · kh · kw`` values)::

    Ŵ_o = (W_o − mean(W_o)) / (std(W_o) + eps)              mode="paper": unbiased std, eps=1e-5 outside the sqrt
    Ŵ_o = (W_o − mean(W_o)) / sqrt(var(W_o) + eps)          mode="bit":   biased var, eps inside (BiT / timm)

and the conv uses ``Ŵ``; gradients flow through the standardisation. BCN normalises the activations twice::

    BCN(x) = γ_g · GN_g(BN(x)) + β_g

a BatchNorm (per-channel affine) followed by a channel (group) normalisation with a per-group affine ``γ_g, β_g``.
With ``estimate=True`` (the paper's EstBN for micro-batches) the batch-norm part normalises with its *running
estimates* also during training: ``x̂ = (x − μ̂) / sqrt(σ̂² + eps)`` with ``μ̂ ← (1 − m) μ̂ + m · mean_B(x)`` and
``σ̂² ← (1 − m) σ̂² + m · mean_B((x − μ̂_old)²)`` updated without gradient; gradients flow through ``x`` only.

Pitfalls handled:
  * WS only makes sense when a normalisation layer follows the conv (it removes the weight's scale, so the
    activation scale must be restored by the norm): :func:`apply_weight_standardization` converts only convs
    whose output feeds directly into a norm layer (found by tracing with ``torch.fx``, or by module order when the
    model cannot be traced), never a classifier.
  * eps placement and biased/unbiased variance are an explicit choice (``mode``), not an accident.
  * Surgery keeps the very same weight/bias ``Parameter`` objects, so the optimizer stays bound; BCN's new
    per-group affine parameters are added to the optimizer group that holds the replaced BN's weight.
"""


from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = [
    "BatchChannelNorm2d",
    "WSConv2d",
    "WeightStandardizationMethod",
    "apply_batch_channel_norm",
    "apply_weight_standardization",
    "convs_followed_by_norm",
    "weight_standardize",
]

WSMode = Literal["paper", "bit"]

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
)


@checked_arguments
def weight_standardize(weight: torch.Tensor, eps: float = 1e-5, mode: WSMode = "paper") -> torch.Tensor:
    """Standardise each output channel of a conv weight ``(C_out, C_in/groups, *kernel)`` over its fan-in.

    Args:
        weight: conv weight, at least 2-d, floating point; not modified.
        eps: stabiliser (outside the sqrt for ``"paper"``, inside for ``"bit"``).
        mode: ``"paper"`` (unbiased std + eps) or ``"bit"`` (biased var + eps inside the sqrt).

    Returns:
        The standardised weight, same shape.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a floating point tensor with >= 2 dims, got {weight.dtype} "
                         f"{tuple(weight.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    flat = weight.reshape(weight.shape[0], -1)
    if mode == "paper":
        if flat.shape[1] < 2:
            raise ValueError("mode='paper' uses the unbiased std, which needs a fan-in of at least 2")
        std, mean = torch.std_mean(flat, dim=1, correction=1, keepdim=True)
        out = (flat - mean) / (std + eps)
    elif mode == "bit":
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
        out = (flat - mean) * torch.rsqrt(var + eps)
    else:
        raise ValueError(f"mode must be 'paper' or 'bit', got {mode!r}")
    return out.view_as(weight)


@checked_arguments
class WSConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is standardised per output channel at every forward (Qiao et al. 2019).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device,
            dtype: as in ``nn.Conv2d``.
        ws_eps: WS stabiliser.
        ws_mode: ``"paper"`` or ``"bit"`` (see :func:`weight_standardize`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 ws_eps: float = 1e-5, ws_mode: WSMode = "paper") -> None:
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        if ws_mode not in ("paper", "bit"):
            raise ValueError(f"ws_mode must be 'paper' or 'bit', got {ws_mode!r}")
        if not ws_eps > 0:
            raise ValueError(f"ws_eps must be > 0, got {ws_eps}")
        self.ws_eps = ws_eps
        self.ws_mode = ws_mode

    def standardized_weight(self) -> torch.Tensor:
        return weight_standardize(self.weight, self.ws_eps, self.ws_mode)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
            raise ValueError(f"x must be a (C, H, W) or (N, C, H, W) tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self._conv_forward(x, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ws_mode={self.ws_mode!r}, ws_eps={self.ws_eps}"

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, ws_eps: float = 1e-5, ws_mode: WSMode = "paper") -> "WSConv2d":
        """A WSConv2d built through its constructor (on the meta device: nothing allocated) that takes over ``conv``'s
        weight and bias ``Parameter`` objects (no copy: the optimizer stays bound). Hooks on ``conv`` are not
        carried over."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta", ws_eps=ws_eps,
                  ws_mode=ws_mode)
        for name, param in conv.named_parameters(recurse=False):
            new.register_parameter(name, param)
        for name, buffer in conv.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        return new.train(conv.training)


@checked_arguments
class BatchChannelNorm2d(nn.Module):
    """Batch-Channel Normalization: ``γ_g · GroupNorm_g(BatchNorm(x)) + β_g`` (Qiao et al. 2019).

    Args:
        num_features: channels ``C``.
        num_groups: channel groups of the channel normalisation (must divide ``C``); ``None`` picks
            ``min(32, C)`` reduced until it divides ``C``.
        eps: stabiliser of both normalisations.
        momentum: running-estimate momentum of the batch-norm part.
        estimate: EstBN — normalise with the running estimates in training too (micro-batches).
        bn: optional existing ``nn.BatchNorm2d`` to use as the batch-norm part (its parameters are kept).
    """

    def __init__(self, num_features: int, num_groups: int | None = None, eps: float = 1e-5,
                 momentum: float = 0.1, estimate: bool = False, bn: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be an int >= 1, got {num_features!r}")
        if num_groups is None:
            num_groups = min(32, num_features)
            while num_features % num_groups:
                num_groups -= 1
        if not isinstance(num_groups, int) or num_groups < 1 or num_features % num_groups:
            raise ValueError(f"num_groups must be an int >= 1 dividing num_features={num_features}, "
                             f"got {num_groups!r}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        if bn is not None and (not isinstance(bn, nn.BatchNorm2d) or bn.num_features != num_features):
            raise ValueError(f"bn must be an nn.BatchNorm2d with {num_features} features")
        self.num_features = num_features
        self.num_groups = num_groups
        self.eps = eps
        self.estimate = estimate
        self.bn = bn if bn is not None else nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
        self.bn.momentum = momentum
        self.group_weight = nn.Parameter(torch.ones(num_groups))
        self.group_bias = nn.Parameter(torch.zeros(num_groups))

    def _estimated_bn(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if self.training:
            with torch.no_grad():
                old_mean = bn.running_mean.clone()
                batch_mean = x.mean(dim=(0, 2, 3))
                batch_var = (x - old_mean.view(1, -1, 1, 1)).pow(2).mean(dim=(0, 2, 3))
                bn.running_mean.lerp_(batch_mean.to(bn.running_mean.dtype), bn.momentum)
                bn.running_var.lerp_(batch_var.to(bn.running_var.dtype), bn.momentum)
                bn.num_batches_tracked.add_(1)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected input x of shape (N, {self.num_features}, H, W), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        out = self._estimated_bn(x) if self.estimate else self.bn(x)
        out = F.group_norm(out, self.num_groups, None, None, self.eps)
        n, c, h, w = out.shape
        out = out.view(n, self.num_groups, c // self.num_groups, h, w)
        out = out * self.group_weight.view(1, -1, 1, 1, 1) + self.group_bias.view(1, -1, 1, 1, 1)
        return out.view(n, c, h, w)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_groups={self.num_groups}, eps={self.eps}, estimate={self.estimate}"


def _norm_successors_fx(model: nn.Module) -> set[str] | None:
    """Names of Conv2d modules whose only consumer is a norm module, via torch.fx; None if tracing fails."""
    try:
        from torch import fx

        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure falls back to module order
        return None
    modules = dict(model.named_modules())
    found = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Conv2d):
            continue
        users = list(node.users)
        if users and all(u.op == "call_module" and isinstance(modules.get(u.target), NORM_TYPES) for u in users):
            found.add(str(node.target))
    return found


def _norm_successors_order(model: nn.Module) -> set[str]:
    """Conv2d modules immediately followed, in their parent's registration order, by a norm module."""
    found = set()
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for (name, child), (_, following) in zip(children, children[1:], strict=False):
            if isinstance(child, nn.Conv2d) and isinstance(following, NORM_TYPES):
                found.add(f"{parent_name}.{name}" if parent_name else name)
    return found


@checked_arguments
def convs_followed_by_norm(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Conv2d`` layers whose output goes straight into a normalisation layer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = _norm_successors_fx(model)
    if found is None:
        found = _norm_successors_order(model)
    return sorted(found)


@checked_arguments
def apply_weight_standardization(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    eps: float = 1e-5,
    mode: WSMode = "paper",
) -> list[str]:
    """Turn every ``nn.Conv2d`` that feeds a norm layer into a :class:`WSConv2d`, in place.

    The converted convs keep their weight/bias ``Parameter`` objects, so ``optimizer`` stays bound (it is accepted
    for the surgery convention). Convs not followed by a norm layer and all Linear layers (the classifier) are left
    alone.

    Returns:
        The qualified names of the converted convs.
    """
    if mode not in ("paper", "bit"):
        raise ValueError(f"mode must be 'paper' or 'bit', got {mode!r}")
    names = [n for n in convs_followed_by_norm(model) if type(model.get_submodule(n)) is nn.Conv2d]
    for name in names:
        model.set_submodule(name, WSConv2d.from_conv(model.get_submodule(name), eps, mode))  # type: ignore[arg-type]
    return names


@checked_arguments
def apply_batch_channel_norm(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    num_groups: int | None = None,
    estimate: bool = False,
    momentum: float = 0.1,
) -> list[str]:
    """Replace every ``nn.BatchNorm2d`` by a :class:`BatchChannelNorm2d` wrapping it, in place.

    The BN's parameters and buffers are kept (inside ``bcn.bn``); the new per-group affine parameters are added to
    ``optimizer``'s param group that holds the BN weight (or its first group when the BN has no weight). Each layer
    gets the largest divisor of its channel count that is ``<= num_groups`` (``None``: up to 32).

    Returns:
        The qualified names of the replaced layers.
    """
    if num_groups is not None and num_groups < 1:
        raise ValueError(f"num_groups must be >= 1 (or None), got {num_groups}")
    names = [n for n, m in model.named_modules() if type(m) is nn.BatchNorm2d]
    owner: dict[int, dict] = {}
    if optimizer is not None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                owner[id(param)] = group
    for name in names:
        bn = model.get_submodule(name)
        groups = None
        if num_groups is not None:  # the largest divisor of the channel count not above num_groups
            groups = max(d for d in range(1, min(num_groups, bn.num_features) + 1) if bn.num_features % d == 0)
        bcn = BatchChannelNorm2d(bn.num_features, groups, bn.eps, momentum, estimate, bn=bn)  # type: ignore
        bcn.to(device=bn.weight.device if bn.weight is not None else None)
        model.set_submodule(name, bcn)
        if optimizer is not None:
            group = owner.get(id(bn.weight), optimizer.param_groups[0]) if bn.weight is not None \
                else optimizer.param_groups[0]
            group["params"].extend([bcn.group_weight, bcn.group_bias])
    return names


@register_method
class WeightStandardizationMethod(Method):
    """Weight Standardization on convs followed by a norm layer, optionally with Batch-Channel Norm (Qiao et al.).

    Args:
        mode: ``"paper"`` (unbiased std + eps outside the sqrt) or ``"bit"`` (biased var + eps inside).
        eps: WS stabiliser.
        bcn: also replace every BatchNorm2d by Batch-Channel Normalization.
        bcn_groups: at most this many channel groups in BCN (per layer the largest divisor of its channels;
            ``None``: up to 32).
        estimate: BCN normalises with running estimates in training (EstBN; for micro-batches).
    """

    name = "weight_std"
    paper_id = "arXiv:1903.10520"
    claim = (
        "standardising conv weights smooths the loss landscape and improves accuracy, most at micro-batch "
        "sizes"
    )
    claimed_effect = "better"

    def __init__(self, mode: WSMode = "paper", eps: float = 1e-5, bcn: bool = False, bcn_groups: int | None = None,
                 estimate: bool = False) -> None:
        if mode not in ("paper", "bit"):
            raise ValueError(f"mode must be 'paper' or 'bit', got {mode!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if bcn_groups is not None and bcn_groups < 1:
            raise ValueError(f"bcn_groups must be >= 1 or None, got {bcn_groups}")
        self.mode, self.eps, self.bcn, self.bcn_groups, self.estimate = mode, eps, bcn, bcn_groups, estimate

    def setup(self, ctx: Context) -> None:
        converted = apply_weight_standardization(ctx.model, ctx.optimizer, self.eps, self.mode)
        if not converted:  # nothing was changed: refuse instead of training a silent no-op
            raise ConfigurationError(f"weight_std: {type(ctx.model).__name__} has no Conv2d followed by a norm layer "
                                     "to standardise, so the method would change nothing; remove it (it serves "
                                     "convolutional networks with BatchNorm/GroupNorm)")
        self.log(ctx, "convs", len(converted))
        if self.bcn:
            replaced = apply_batch_channel_norm(ctx.model, ctx.optimizer, self.bcn_groups, self.estimate)
            self.log(ctx, "bcn_layers", len(replaced))


__getattr__ = deprecated_aliases(__name__, {"WeightStandardization": "WeightStandardizationMethod"}, globals())
