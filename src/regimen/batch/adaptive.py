"""Adaptive batch size with the (AdAdaGrad) norm test: grow the batch when the gradient is too noisy.

Paper: Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods", 2024,
arXiv 2402.11215 (the norm test goes back to Byrd, Chin, Nocedal & Wu 2012). With per-sample gradients ``∇f_i`` of
a batch of ``b`` samples and their mean ``g_B``, the sample variance is
``V = (1/(b−1)) Σ_i ‖∇f_i − g_B‖²`` and the test with constant ``η`` is::

    pass  iff  V / b  ≤  η² ‖g_B‖²          otherwise grow to  b' = ⌈ V / (η² ‖g_B‖²) ⌉

Pitfalls handled:
  * Per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over ``functional_call``), one batched
    computation, not a Python loop over samples. BatchNorm cannot compute batch statistics of one sample, so the
    per-sample gradients are taken with the model in eval mode (running statistics); dropout is off as well.
  * Only the first ``max_samples`` samples of the (global) micro-batch are used for the test (the variance estimate
    is unbiased for any ``b ≥ 2``; ``‖g_B‖²`` comes from the same samples). Under DDP rank ``r`` holds positions
    ``[r·b, (r+1)·b)`` of the global micro-batch and tests those of them below ``max_samples``; the sums
    ``Σ∇f_i``, ``Σ‖∇f_i‖²`` and the count are all-reduced, so every rank takes the decision one process would take
    at the same global batch (``tests/distributed``: equal weights and logs).
  * Growth is monotone (never shrinks), capped per update by ``max_growth`` and in total by ``max_batch_size``
    and the dataset size; the batch changes at epoch boundaries (``ctx.set_batch_size``), per device.
  * The test runs in ``before_forward``, on the micro-batch the model is about to train on (augmented, normalised).
  * Sums are accumulated in float64: ``Σ‖∇f_i − ḡ‖² = Σ‖∇f_i‖² − b‖ḡ‖²`` (the form that all-reduces).
"""


import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["AdaptiveBatchMethod", "NormTestResult", "norm_test", "norm_test_from_sums", "per_sample_gradients"]


class NormTestResult(NamedTuple):
    """Outcome of the norm test."""

    passed: bool
    suggested_batch: int  # ⌈V / (η²‖g‖²)⌉ (the batch at which the test would just pass)
    variance: float  # V = (1/(b-1)) Σ‖∇f_i − g‖²
    grad_norm_sq: float  # ‖g‖²
    batch: int  # b


@checked_arguments
def norm_test_from_sums(grad_sum: torch.Tensor, sq_norm_sum: float | torch.Tensor, count: int,
                        eta: float) -> NormTestResult:
    """The norm test from ``Σ_i ∇f_i`` (flat), ``Σ_i ‖∇f_i‖²`` and ``b`` (the all-reducible form)."""
    require_data(grad_sum=grad_sum, sq_norm_sum=sq_norm_sum)
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    if count < 2:
        raise ValueError(f"count: the norm test needs at least 2 per-sample gradients, got {count}")
    if float(sq_norm_sum) < 0:  # NaN gradients give a NaN result, as before
        raise ValueError(f"sq_norm_sum (a sum of squared norms) must be >= 0, got {float(sq_norm_sum)}")
    mean = grad_sum.double() / count
    mean_sq = float(mean.pow(2).sum())
    sq_total = float(sq_norm_sum)
    variance = max(sq_total - count * mean_sq, 0.0) / (count - 1)
    if not math.isfinite(variance) or not math.isfinite(mean_sq):
        raise ValueError("per-sample gradients (per_sample_grads, or grad_sum and sq_norm_sum) contain NaN or inf")
    threshold = eta**2 * mean_sq
    passed = variance / count <= threshold
    suggested = math.ceil(variance / threshold) if threshold > 0 else (count if variance == 0 else 2**62)
    return NormTestResult(passed, max(int(suggested), 1), variance, mean_sq, count)


@checked_arguments
def norm_test(per_sample_grads: torch.Tensor, eta: float = 1.0) -> NormTestResult:
    """The norm test on a ``(b, P)`` matrix of flattened per-sample gradients.

    Args:
        per_sample_grads: one row per sample, ``b ≥ 2``.
        eta: test constant ``η > 0`` (smaller → larger batches).
    """
    require_data(per_sample_grads=per_sample_grads)
    if not isinstance(per_sample_grads, torch.Tensor) or per_sample_grads.dim() != 2:
        raise ValueError("per_sample_grads must be a 2-d tensor (samples, parameters)")
    if per_sample_grads.shape[0] < 2:
        raise ValueError(f"per_sample_grads must hold at least 2 per-sample gradients (rows), got "
                         f"{per_sample_grads.shape[0]}")
    g = per_sample_grads.double()
    return norm_test_from_sums(g.sum(0), g.pow(2).sum(), g.shape[0], eta)


@checked_arguments
def per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    params: list[str] | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Flattened per-sample gradients ``(b, P)`` of ``loss_fn(model(x_i), y_i)`` via ``torch.func.vmap(grad)``.

    The model runs in eval mode for this computation (restored afterwards) so BatchNorm uses running statistics;
    its parameters are not modified and no ``.grad`` is written.

    Args:
        model: the module.
        loss_fn: ``loss_fn(logits, target)`` for a batch (called on batches of one sample).
        x, y: a batch; ``x.shape[0] == y.shape[0] >= 1``.
        params: names of the parameters to differentiate (default: all with ``requires_grad``).
        chunk_size: ``vmap`` chunk size to bound memory.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 1:
        raise ValueError("x must contain at least one sample")
    named = dict(model.named_parameters())
    names = params if params is not None else [n for n, p in named.items() if p.requires_grad]
    if not names:
        raise ValueError("model has no trainable parameters")
    diff = {n: named[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in named.items() if n not in diff}
    buffers = {n: b for n, b in model.named_buffers()}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**p, **frozen}, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    was_training = model.training
    model.eval()
    try:
        grads = vmap(grad(sample_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)(diff, x, y)
    finally:
        model.train(was_training)
    return torch.cat([grads[n].reshape(x.shape[0], -1) for n in names], dim=1)


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric / DDP wrappers (their parameter names carry a prefix)."""
    for _ in range(4):
        inner = getattr(model, "_forward_module", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            break
        model = inner
    return model


@register_method
class AdaptiveBatchMethod(Method):
    """Adaptive batch size by the AdAdaGrad norm test (Lau et al. 2024): grow the batch when gradients are noisy.

    Every ``interval`` optimizer steps, per-sample gradients of the current micro-batch (at most ``max_samples``
    of it) are computed with ``torch.func``; the norm test suggests a global batch. At the end of the epoch the
    global batch grows to the largest suggestion of the epoch, limited by ``max_growth`` × the current batch,
    ``max_batch_size`` and the dataset size, never shrinking; the new per-device batch is
    ``ceil(global / (world_size · accumulation))`` (so under DDP the global batch is rounded up to a multiple of
    ``world_size · accumulation``) and takes effect from the next epoch.

    Args:
        eta: norm-test constant (smaller → larger batches).
        interval: optimizer steps between tests.
        max_samples: per-sample gradients per test: the first ``max_samples`` samples of the global micro-batch.
        max_batch_size: cap on the global batch (``None``: the dataset size).
        max_growth: cap on the growth factor per epoch.
    """

    name = "adaptive_batch"
    targets = ("labels",)  # the norm test takes per-sample gradients of a label loss (token targets: not yet)
    paper_id = "arXiv:2402.11215"
    claim = (
        "growing the batch when the norm test fails matches small-batch accuracy with fewer, larger steps"
    )
    claimed_effect = "no_worse"

    def __init__(self, eta: float = 1.0, interval: int = 50, max_samples: int = 64, max_batch_size: int | None = 4096,
                 max_growth: float = 2.0) -> None:
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if max_samples < 2:
            raise ValueError(f"max_samples must be >= 2, got {max_samples}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if not max_growth >= 1.0:
            raise ValueError(f"max_growth must be >= 1, got {max_growth}")
        self.eta, self.interval, self.max_samples = eta, interval, max_samples
        self.max_batch_size, self.max_growth = max_batch_size, max_growth
        self.suggested = 0
        self.tests = 0
        self.failed = 0
        self.last: NormTestResult | None = None
        self.global_batch: int | None = None

    def before_forward(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> None:
        if ctx.step % self.interval != 0 or y.dim() != 1:  # soft (mixed) targets: no per-sample index loss
            return
        # the first max_samples samples of the *global* micro-batch: rank r holds its positions [r·b, (r+1)·b)
        n = max(0, min(self.max_samples - ctx.run.rank * x.shape[0], x.shape[0]))
        if ctx.run.world_size == 1 and n < 2:
            return
        model = _unwrap(ctx.model)
        if n > 0:
            grads = per_sample_gradients(model, ctx.criterion, x[:n], y[:n]).double()
            sums, squares = grads.sum(0), grads.pow(2).sum().reshape(1)
        else:  # this rank holds none of the tested samples; it still joins the all-reduces
            size = sum(p.numel() for p in model.parameters() if p.requires_grad)
            device = next(model.parameters()).device
            sums = torch.zeros(size, dtype=torch.float64, device=device)
            squares = torch.zeros(1, dtype=torch.float64, device=device)
        sums = ctx.all_reduce(sums, op="sum")
        squares = ctx.all_reduce(squares, op="sum")
        count = int(ctx.all_reduce(torch.tensor([float(n)], dtype=torch.float64, device=sums.device), op="sum"))
        if count < 2:
            return
        result = norm_test_from_sums(sums, squares.item(), count, self.eta)
        self.last = result
        self.tests += 1
        self.failed += int(not result.passed)
        if not result.passed:
            self.suggested = max(self.suggested, result.suggested_batch)

    def next_global_batch(self, current: int, dataset_size: int | None) -> int:
        """The global batch for the next epoch: monotone, capped growth towards the largest suggestion."""
        target = max(current, self.suggested)
        target = min(target, math.floor(current * self.max_growth))
        for cap in (self.max_batch_size, dataset_size):
            if cap is not None:
                target = min(target, cap)
        return max(current, target)

    def on_epoch_end(self, ctx: Context) -> None:
        run = ctx.run
        data = ctx.train_data
        size = len(data) if data is not None and hasattr(data, "__len__") else None
        new_global = self.next_global_batch(run.global_batch, size)
        per_device_factor = run.world_size * run.accumulation
        per_device = max(run.per_device_batch, math.ceil(new_global / per_device_factor))
        if per_device != run.per_device_batch:
            ctx.set_batch_size(per_device)
        self.global_batch = per_device * per_device_factor
        self.log(ctx, "batch_size", self.global_batch)
        self.log(ctx, "tests_failed", self.failed)
        if self.last is not None:
            self.log(ctx, "suggested", self.last.suggested_batch)
            self.log(ctx, "variance_ratio", self.last.variance / max(
                self.last.batch * self.eta**2 * self.last.grad_norm_sq, 1e-300))
        self.suggested = 0
        self.failed = 0

    def state_dict(self) -> dict[str, Any]:
        return {"suggested": self.suggested, "tests": self.tests, "failed": self.failed,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.suggested = int(state.get("suggested", 0))
        self.tests = int(state.get("tests", 0))
        self.failed = int(state.get("failed", 0))
        self.global_batch = state.get("global_batch")


__getattr__ = deprecated_aliases(__name__, {"AdaptiveBatch": "AdaptiveBatchMethod"}, globals())
