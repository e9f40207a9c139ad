"""Ghost Batch Normalization: batch-norm statistics per small "ghost" batch inside a large batch.

Paper: Hoffer, Hubara & Soudry, "Train longer, generalize better: closing the generalization gap in large batch
training of neural networks", NeurIPS 2017, arXiv 1705.08741.

A training batch of ``N`` samples is cut, in order, into ghost batches of ``ghost_batch_size`` (``g``) consecutive
samples; each ghost batch ``k`` is normalised with its own per-channel mean ``μ_k`` and biased variance ``σ²_k``::

    y = γ · (x − μ_k) / sqrt(σ²_k + eps) + β          (x in ghost batch k)

The statistics of all ghost batches come from **one vectorised reduction**: the input is viewed (no copy) as
``(G, g, C, S)`` and reduced over the ghost-batch and spatial dimensions in one pass (sums and sums of squares,
with an exact two-pass fallback when cancellation threatens); a hand-written backward needs two reductions and two
fused passes (Composer loops over chunks in Python).

Running statistics ("momentum once per ghost batch"): the result is exactly what ``nn.BatchNorm`` gives when it is
applied to the ghost batches one after another, in order. With momentum ``m`` and ghost statistics ``s_1 … s_G``
(mean, and the *unbiased* variance as BatchNorm stores it) the sequential updates ``r ← (1 − m) r + m s_k`` collapse
to the closed form ``r_G = (1 − m)^G r_0 + Σ_k m (1 − m)^(G−k) s_k``, computed in one weighted sum;
``num_batches_tracked`` grows by ``G``. With ``momentum=None`` (cumulative average, as in BatchNorm) the result is
``r_G = (t r_0 + Σ_k s_k) / (t + G)`` with ``t`` the batches tracked so far. Evaluation uses the running statistics
(plain BatchNorm); a training batch of at most ``g`` samples is one ghost batch, i.e. plain BatchNorm.

Pitfalls handled:
  * **Last partial ghost batch** (``N`` not a multiple of ``g``): ``last_partial="separate"`` (default) normalises
    the ``N mod g`` trailing samples as a ghost batch of their own, exactly like BatchNorm on ``x.split(g)``; it
    needs more than one value per channel (like BatchNorm), else a ``ValueError`` suggests ``"merge"``.
    ``last_partial="merge"`` folds the remainder into the previous ghost batch (which then has ``g + N mod g``
    samples), so no ghost batch is smaller than ``g``.
  * The ghost batches are *consecutive* samples of the per-device batch; shuffle the data, not the batch.
  * Under DDP ghost batches are cut from each device's batch. When the per-device batch is a multiple of
    ``ghost_batch_size`` no ghost batch straddles two devices, so W processes at b train exactly as one process at
    W·b (``tests/distributed``: equal weights); otherwise the trailing partial ghost batch of every device differs.
    The running statistics are rank 0's ghost batches only (DDP broadcasts rank 0's buffers, as for
    ``nn.BatchNorm``), so evaluation differs slightly from the one-process run.
  * Parameters and buffers are those of ``nn.BatchNorm`` (``GhostBatchNorm2d`` *is* a ``BatchNorm2d``), so
    checkpoints load either way, weight-decay filters that look for ``_BatchNorm`` still find it, and
    ``apply_ghost_batch_norm`` keeps the very same ``Parameter`` objects (the optimizer stays bound).
  * The backward is hand-written and once-differentiable: double backward (gradient penalties) is not supported.
  * Half / bfloat16 inputs are normalised in float32 and cast back.

Speed against ``nn.BatchNorm`` and a Python chunk loop: ``benchmarks/batch_ghost_bn.py``, results in
``reports/batch/README.md`` (section 3).
"""


from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import deprecated_aliases
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNormMethod",
    "apply_ghost_batch_norm",
    "ghost_batch_norm",
]

LastPartial = Literal["separate", "merge"]


def _check_options(ghost_batch_size: int, last_partial: str) -> None:
    """The one check of the two Ghost BN options, shared by the function, the layers, the surgery and the Method."""
    if isinstance(ghost_batch_size, bool) or not isinstance(ghost_batch_size, int):
        raise TypeError(f"ghost_batch_size must be an int, got {type(ghost_batch_size).__name__}")
    if ghost_batch_size < 1:
        raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
    if last_partial not in ("separate", "merge"):
        raise ValueError(f"last_partial must be 'separate' or 'merge', got {last_partial!r}")


def _ghost_sizes(batch: int, ghost_batch_size: int, last_partial: str) -> tuple[int, int, int]:
    """``(full, size_of_full, tail)``: number of full ghost batches, their size and the size of the trailing one."""
    full, tail = divmod(batch, ghost_batch_size)
    if tail and last_partial == "merge" and full > 0:
        return full - 1, ghost_batch_size, ghost_batch_size + tail
    return full, ghost_batch_size, tail


#: Above this ratio mean² / var the one-pass formula var = E[x²] − E[x]² would lose digits: use the two-pass one.
_CANCELLATION_RATIO = 100.0


def _sum(a: torch.Tensor) -> torch.Tensor:
    """Σ over dims (1, 3) of ``a`` ``(G, n, C, S)``, shaped ``(G, 1, C, 1)``; reductions over contiguous dims."""
    if a.shape[3] == 1:
        return a.squeeze(3).sum(1)[:, None, :, None]
    return a.sum(-1).sum(1)[:, None, :, None]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over dims (1, 3) of ``a · b`` without materialising the product, shaped ``(G, 1, C, 1)``."""
    if a.shape[3] == 1:  # (G, n, C): reduce over n through a transposed vecdot (var_mean over dim 1 is slow)
        return torch.linalg.vecdot(a.squeeze(3).transpose(1, 2), b.squeeze(3).transpose(1, 2))[:, None, :, None]
    return torch.linalg.vecdot(a, b, dim=-1).sum(1)[:, None, :, None]


def _group_stats(xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Mean and biased variance of ``xv`` ``(G, n, C, S)`` over dims (1, 3), shaped ``(G, 1, C, 1)``, and whether
    the data are far from zero-mean (``mean² > 100 · var``), where ``x·s − μ·s`` would cancel (use ``(x − μ)·s``).

    Fast path: sums and sums of squares (``vecdot`` fuses the square) over contiguous dims, combined in float64.
    When ``mean² > 100 · var`` for some (ghost, channel) the one-pass formula could cancel, so the exact two-pass
    ``torch.var_mean`` in float64 is used instead.
    """
    count = xv.shape[1] * xv.shape[3]
    mean = _sum(xv).double() / count
    var = (_dot(xv, xv).double() / count - mean * mean).clamp_min(0.0)
    offset = bool((mean * mean > _CANCELLATION_RATIO * var).any())
    if offset:
        var, mean = torch.var_mean(xv.double(), dim=(1, 3), correction=0, keepdim=True)
    return mean.to(xv.dtype), var.to(xv.dtype), offset


class _GhostBatchNormFunction(torch.autograd.Function):
    """Forward and hand-written backward of batch norm over G ghost batches of ``x`` viewed as ``(G, n, C, S)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):  # type: ignore[override]
        total, channels = x.shape[:2]
        xv = x.view(groups, total // groups, channels, -1)
        mean, var, offset = _group_stats(xv)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.view(1, 1, -1, 1)
        if offset:  # (x − μ)·s + β: exact when |μ| ≫ σ
            out = (xv - mean).mul_(scale)
            if bias is not None:
                out.add_(bias.view(1, 1, -1, 1))
        else:  # one fused pass: x·s + (β − μ·s)
            shift = -mean * scale
            if bias is not None:
                shift = shift + bias.view(1, 1, -1, 1)
            out = torch.addcmul(shift, xv, scale)
        ctx.offset = offset
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.groups = groups
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(mean, var)
        return out, mean.flatten(), var.flatten()  # out (G, n, C, S) is a fresh tensor, never a view

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_mean, _grad_var):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        groups = ctx.groups
        total, channels = x.shape[:2]
        xv = x.view(groups, total // groups, channels, -1)
        gv = grad_out.reshape(xv.shape).contiguous()
        count = xv.shape[1] * xv.shape[3]
        sum_g = _sum(gv)
        sum_gx = _dot(gv, xv)
        sum_g_xhat = invstd * (sum_gx - mean * sum_g)  # Σ g·x̂ per (ghost, channel)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight.view(1, 1, -1, 1)
            # dx = scale·(g − Σg/n − x̂·Σ(g·x̂)/n) = scale·g + a·x + c, with per-(ghost, channel) a and c
            k = sum_g_xhat / count
            a = -scale * invstd * k
            if ctx.offset:  # a·(x − μ) − scale·Σg/n + scale·g, exact when |μ| ≫ σ
                grad_x = (xv - mean).mul_(a).sub_(scale * sum_g / count).addcmul_(gv, scale).view_as(x)
            else:
                c = scale * (invstd * k * mean - sum_g / count)
                grad_x = torch.addcmul(c, xv, a).addcmul_(gv, scale).view_as(x)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_g_xhat.sum((0, 1, 3)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = sum_g.sum((0, 1, 3)).to(grad_out.dtype)
        return grad_x, grad_weight, grad_bias, None, None


def _bn_groups(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise ``x`` ``(G·n, C, S)`` as G consecutive ghost batches; returns output, means, unbiased variances."""
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    xf = x.float() if low_precision else x
    wf = weight.float() if weight is not None and low_precision else weight
    bf = bias.float() if bias is not None and low_precision else bias
    out, mean, var = _GhostBatchNormFunction.apply(xf, wf, bf, groups, eps)
    out = out.reshape(x.shape)
    mean, var = mean.view(groups, -1), var.view(groups, -1)
    count = (x.shape[0] // groups) * x.shape[2]
    unbiased = var.detach() * (count / (count - 1))
    return out.to(x.dtype), mean.detach(), unbiased


@torch.no_grad()
def _update_running(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    num_batches_tracked: torch.Tensor | None,
    means: torch.Tensor,
    vars_unbiased: torch.Tensor,
    momentum: float | None,
) -> None:
    """Apply G sequential BatchNorm running-stat updates (one per ghost batch, in order) in closed form."""
    count = means.shape[0]
    means = means.to(running_mean.dtype)
    vars_unbiased = vars_unbiased.to(running_var.dtype)
    if momentum is None:
        tracked = float(num_batches_tracked.item()) if num_batches_tracked is not None else 0.0
        total = tracked + count
        running_mean.mul_(tracked / total).add_(means.sum(0) / total)
        running_var.mul_(tracked / total).add_(vars_unbiased.sum(0) / total)
    else:
        keep = 1.0 - momentum
        # weight of ghost batch k (1-based) after all G updates: m (1 - m)^(G - k)
        weights = torch.tensor([momentum * keep ** (count - k) for k in range(1, count + 1)],
                               dtype=running_mean.dtype, device=running_mean.device)
        decay = keep**count
        running_mean.mul_(decay).add_(weights @ means)
        running_var.mul_(decay).add_(weights @ vars_unbiased)
    if num_batches_tracked is not None:
        num_batches_tracked.add_(count)


@checked_arguments
def ghost_batch_norm(
    x: torch.Tensor,
    ghost_batch_size: int,
    running_mean: torch.Tensor | None = None,
    running_var: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: torch.Tensor | None = None,
    last_partial: LastPartial = "separate",
) -> torch.Tensor:
    """Batch normalisation with statistics per ghost batch of ``ghost_batch_size`` consecutive samples.

    Args:
        x: input ``(N, C)`` or ``(N, C, *)``, floating point.
        ghost_batch_size: samples per ghost batch (``>= 1``).
        running_mean, running_var: ``(C,)`` buffers updated **in place** in training (like ``F.batch_norm``), or
            ``None`` to track nothing; in eval mode they normalise the input.
        weight, bias: ``(C,)`` affine parameters or ``None``.
        training: ghost-batch statistics if True, running statistics otherwise.
        momentum: running-stat momentum applied once per ghost batch; ``None`` for a cumulative average (needs
            ``num_batches_tracked``).
        eps: added to the variance inside the square root.
        num_batches_tracked: optional scalar buffer incremented by the number of ghost batches.
        last_partial: ``"separate"`` or ``"merge"``, see the module docstring.

    Returns:
        The normalised tensor, same shape and dtype as ``x``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C) or (N, C, *), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    _check_options(ghost_batch_size, last_partial)
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    channels = x.shape[1]
    for label, tensor in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                          ("bias", bias)):
        if tensor is not None and tensor.shape != (channels,):
            raise ValueError(f"{label} must have shape ({channels},) for x with {channels} channels, "
                             f"got {tuple(tensor.shape)}")
    if momentum is None and running_mean is not None and training and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    require_same_device(x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                        num_batches_tracked=num_batches_tracked)
    batch = x.shape[0]
    if batch == 0:
        raise ValueError("x must contain at least one sample")

    if not training:
        if running_mean is None:
            raise ValueError("eval mode needs running_mean and running_var")
        return F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)

    require_data(x=x)  # the cancellation guard of the statistics reads values
    spatial = x[0, 0].numel()
    full, size, tail = _ghost_sizes(batch, ghost_batch_size, last_partial)
    if tail and tail * spatial < 2:
        raise ValueError(
            f"the last ghost batch has {tail} sample(s) x {spatial} value(s) per channel (batch {batch}, "
            f"ghost_batch_size {ghost_batch_size}); batch statistics need more than one value per channel — "
            "use last_partial='merge' or a batch size that is a multiple of ghost_batch_size"
        )
    if size * spatial < 2 and full:
        raise ValueError(f"ghost_batch_size {ghost_batch_size} gives one value per channel; need more than one")

    flat = x.reshape(batch, channels, spatial)
    outputs, means, variances = [], [], []
    head = full * size
    if full:
        out, mean, var = _bn_groups(flat[:head], full, weight, bias, eps)
        outputs.append(out)
        means.append(mean)
        variances.append(var)
    if tail:
        out, mean, var = _bn_groups(flat[head:], 1, weight, bias, eps)
        outputs.append(out)
        means.append(mean)
        variances.append(var)
    result = outputs[0] if len(outputs) == 1 else torch.cat(outputs, 0)

    if running_mean is not None:
        means_all = means[0] if len(means) == 1 else torch.cat(means, 0)
        variances_all = variances[0] if len(variances) == 1 else torch.cat(variances, 0)
        _update_running(running_mean, running_var, num_batches_tracked, means_all, variances_all, momentum)
    return result.view_as(x)


@checked_arguments
class _GhostBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Shared constructor and forward of the Ghost BN layers; each subclasses this and the matching ``nn.BatchNorm``
    (which supplies ``_check_input_dim``)."""

    def __init__(self, num_features: int, ghost_batch_size: int = 128, eps: float = 1e-5,
                 momentum: float | None = 0.1, affine: bool = True, track_running_stats: bool = True,
                 last_partial: LastPartial = "separate", device=None, dtype=None) -> None:
        _check_options(ghost_batch_size, last_partial)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.ghost_batch_size = ghost_batch_size
        self.last_partial: LastPartial = last_partial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        self._check_input_dim(x)
        # the parameters' current size, not num_features: nested_width calls the layer with sliced parameters
        reference = self.weight if self.weight is not None else self.running_mean
        channels = self.num_features if reference is None else reference.shape[0]
        if x.shape[1] != channels:
            raise ValueError(f"x must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats or x.shape[0] <= self.ghost_batch_size:
            return super().forward(x)
        track = self.training and self.track_running_stats
        return ghost_batch_norm(
            x,
            self.ghost_batch_size,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            training=True,
            momentum=self.momentum,
            eps=self.eps,
            num_batches_tracked=self.num_batches_tracked if track else None,
            last_partial=self.last_partial,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}, last_partial={self.last_partial!r}"


@checked_arguments
class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with statistics per ghost batch in training; inputs ``(N, C)`` or ``(N, C, L)``.

    Args:
        num_features: channels ``C``.
        ghost_batch_size: samples per ghost batch.
        eps, momentum, affine, track_running_stats, device, dtype: as in ``nn.BatchNorm1d``.
        last_partial: ``"separate"`` or ``"merge"`` (see the module docstring).
    """


@checked_arguments
class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with statistics per ghost batch in training; inputs ``(N, C, H, W)``.

    Args:
        num_features: channels ``C``.
        ghost_batch_size: samples per ghost batch.
        eps, momentum, affine, track_running_stats, device, dtype: as in ``nn.BatchNorm2d``.
        last_partial: ``"separate"`` or ``"merge"`` (see the module docstring).
    """


def _to_ghost(bn: nn.BatchNorm1d | nn.BatchNorm2d, ghost_batch_size: int, last_partial: LastPartial
              ) -> _GhostBatchNorm:
    """A Ghost BN layer built through its constructor (on the meta device: nothing allocated) that then takes over
    ``bn``'s very Parameter and buffer objects: the optimizer stays bound and checkpoints keep their keys. Hooks
    registered on ``bn`` are not carried over (the new layer is a new module)."""
    cls = GhostBatchNorm2d if isinstance(bn, nn.BatchNorm2d) else GhostBatchNorm1d
    ghost = cls(bn.num_features, ghost_batch_size, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                last_partial, device="meta")
    for name, param in bn.named_parameters(recurse=False):
        ghost.register_parameter(name, param)
    for name, buffer in bn.named_buffers(recurse=False):
        ghost.register_buffer(name, buffer)
    return ghost.train(bn.training)


@checked_arguments
def apply_ghost_batch_norm(
    model: nn.Module,
    ghost_batch_size: int,
    optimizer: torch.optim.Optimizer | None = None,
    last_partial: LastPartial = "separate",
) -> nn.Module:
    """Replace every ``nn.BatchNorm1d``/``nn.BatchNorm2d`` of ``model`` by its Ghost BN counterpart.

    The new modules take over the old ones' ``Parameter`` and buffer objects, so ``optimizer`` (momentum buffers,
    Adam moments) stays bound without any copy; it is accepted for the surgery convention and checked. Already-ghost
    layers get the new ``ghost_batch_size`` and ``last_partial``. ``SyncBatchNorm``, 3-d BN and subclasses of the
    BatchNorm layers are left alone.

    Args:
        model: the model; modified in place (its children are replaced) and returned. If ``model`` is itself a
            BatchNorm layer, the new layer is returned.
        ghost_batch_size: samples per ghost batch.
        optimizer: optional optimizer holding the model's parameters.
        last_partial: ``"separate"`` or ``"merge"``.

    Returns:
        The model with Ghost BN layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_options(ghost_batch_size, last_partial)
    before = {id(p) for p in model.parameters()}

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, _GhostBatchNorm):
            module.ghost_batch_size = ghost_batch_size
            module.last_partial = last_partial
            return module
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
            return _to_ghost(module, ghost_batch_size, last_partial)
        for name, child in module.named_children():
            new = convert(child)
            if new is not child:
                setattr(module, name, new)
        return module

    result = convert(model)
    if optimizer is not None:
        after = {id(p) for p in result.parameters()}
        if after != before:  # pragma: no cover - guarded by construction
            raise RuntimeError("apply_ghost_batch_norm changed parameter identities; optimizer would be stale")
    return result


def _ghost_layer_count(model: nn.Module) -> int:
    """Number of Ghost BN layers in ``model``."""
    return sum(isinstance(m, _GhostBatchNorm) for m in model.modules())


@register_method
class GhostBatchNormMethod(Method):
    """Ghost Batch Normalization: BN statistics per ghost batch of consecutive samples (Hoffer et al. 2017).

    Logs ``ghost_bn/layers`` (BatchNorm layers converted) and ``ghost_bn/ghost_batches`` (ghost batches per
    per-device batch) at setup.

    Args:
        ghost_batch_size: samples per ghost batch, on each device (the per-device batch is what BN sees).
        last_partial: ``"separate"`` or ``"merge"`` for a per-device batch that is not a multiple of the ghost size.
    """

    name = "ghost_bn"
    paper_id = "arXiv:1705.08741"
    claim = "BatchNorm statistics over small ghost batches narrow the large-batch generalisation gap"
    claimed_effect = "better"

    def __init__(self, ghost_batch_size: int = 128, last_partial: LastPartial = "separate") -> None:
        _check_options(ghost_batch_size, last_partial)
        self.ghost_batch_size = ghost_batch_size
        self.last_partial = last_partial

    def setup(self, ctx: Context) -> None:
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            raise ConfigurationError(f"ghost_bn: {type(model).__name__} has no BatchNorm layer, so ghost batch "
                                     "normalisation would change nothing; remove the method (LayerNorm/RMSNorm "
                                     "models such as the GPT and the ViT normalise per sample already)")
        ctx.model = apply_ghost_batch_norm(ctx.model, self.ghost_batch_size, ctx.optimizer, self.last_partial)
        self.log(ctx, "layers", _ghost_layer_count(ctx.model))
        self.log(ctx, "ghost_batches", -(-ctx.run.per_device_batch // self.ghost_batch_size))


__getattr__ = deprecated_aliases(
    __name__, {"GhostBN": "GhostBatchNormMethod", "apply_ghost_batchnorm": "apply_ghost_batch_norm"}, globals()
)
