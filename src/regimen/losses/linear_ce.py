"""Cross-entropy of a linear classifier without materialising the N×V logits (Cut Cross-Entropy).

Paper: Wijmans, Huval, Hertzberg, Koltun, Krähenbühl, "Cut Your Losses in Large-Vocabulary Language Models",
2024, arXiv 2411.09009. For embeddings ``e_i`` (rows of ``E``, shape ``(N, d)``) and classifier rows ``c_j``
(``W``, shape ``(V, d)``, optional bias ``b``)::

    o_ij = c_j · e_i + b_j
    L_i  = LSE_j(o_ij) − o_{i, y_i}  (+ z_loss_coef · LSE_j(o_ij)²)

Forward walks the logits in blocks of ``row_chunk_size × chunk_size`` and folds every block into a running
log-sum-exp per row (``logaddexp`` of the running value and the block's own stable LSE), so only ``N`` floats of
LSE survive the forward pass. The target logit ``o_{i, y_i}`` is a row-wise dot product with the gathered classifier
rows. A custom :class:`torch.autograd.Function` saves ``(E, W, b, y, LSE)`` and recomputes each block in backward:
``softmax = exp(o − LSE)`` gives ``∂L_i/∂o_ij = g_i (1 + 2 z LSE_i) softmax_ij − g_i [j = y_i]``; block products
accumulate the gradients for ``E``, ``W`` and ``b``; the one-hot part is a gather / ``index_add_`` outside the
blocks. Peak extra memory is one block plus the gradients themselves, instead of several N×V tensors.

Pitfalls handled:
  * ``ignore_index`` rows are dropped before any block is computed (no work, zero gradient); ``reduction="mean"``
    divides by the number of non-ignored rows, as :func:`torch.nn.functional.cross_entropy` does (``nan`` when
    every row is ignored, also as PyTorch does).
  * Targets outside ``[0, V)`` (other than ``ignore_index``) and non-finite logits (NaN/inf embeddings or weights
    surface as a non-finite LSE) raise ``ValueError`` instead of silently producing garbage.
  * Low-precision inputs: blocks are computed in the input dtype but exponentiated and accumulated in fp32
    (fp64 inputs stay fp64); gradients are accumulated in that precision and cast back to the parameter dtype.
  * Only the gradients that are needed are computed (``needs_input_grad``); inputs are never modified in place.
  * The PyPI ``cut-cross-entropy`` fast path needs Triton and a GPU; its torch path materialises the logits. This
    implementation is plain PyTorch and never materialises them, on any device. Chunk sizes default to values tuned
    on CPU (see ``benchmarks/losses_linear_ce.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method, require_same_device

__all__ = ["LinearCrossEntropy", "LinearCrossEntropyMethod", "linear_cross_entropy"]

#: Default vocabulary block (columns of the logits per block), tuned on CPU (benchmarks/losses_linear_ce.py).
DEFAULT_CHUNK_SIZE = 4096
#: Default row block.
DEFAULT_ROW_CHUNK_SIZE = 2048

_REDUCTIONS = ("mean", "sum", "none")


def _block_logits(e_rows: torch.Tensor, w_blk: torch.Tensor, b_blk: torch.Tensor | None) -> torch.Tensor:
    if b_blk is None:
        out = e_rows @ w_blk.T
    else:
        out = torch.addmm(b_blk, e_rows, w_blk.T)
    acc = torch.promote_types(out.dtype, torch.float32)
    return out if out.dtype == acc else out.to(acc)


def _blockwise_lse(
    e: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, row_chunk: int, col_chunk: int
) -> torch.Tensor:
    """Row-wise log-sum-exp of ``e @ w.T + b`` (fp32), computed block by block."""
    n, v = e.shape[0], w.shape[0]
    lse = torch.empty(n, dtype=torch.promote_types(e.dtype, torch.float32), device=e.device)
    for r0 in range(0, n, row_chunk):
        rows = e[r0 : r0 + row_chunk]
        running = None
        for c0 in range(0, v, col_chunk):
            block = _block_logits(rows, w[c0 : c0 + col_chunk], None if b is None else b[c0 : c0 + col_chunk])
            block_max = block.amax(dim=1, keepdim=True)
            # a row whose block max is -inf/inf/nan makes the sum nan/inf: caught by the finiteness check below
            block.sub_(block_max).exp_()
            block_lse = block.sum(dim=1).log_().add_(block_max.squeeze(1))
            running = block_lse if running is None else torch.logaddexp(running, block_lse)
        lse[r0 : r0 + row_chunk] = running
    return lse


class _LinearCrossEntropyFunction(torch.autograd.Function):
    """Per-row loss of the valid rows; see the module docstring for the maths."""

    @staticmethod
    def forward(ctx, e, w, b, target, z_loss_coef, row_chunk, col_chunk):  # noqa: D401
        lse = _blockwise_lse(e, w, b, row_chunk, col_chunk)
        if not torch.isfinite(lse).all():
            bad = int((~torch.isfinite(lse)).sum())
            raise ValueError(
                f"linear_cross_entropy: {bad} row(s) have non-finite logits (NaN or inf in embeddings, "
                "classifier_weight or bias)"
            )
        target_logit = (e * w.index_select(0, target)).sum(dim=1).to(lse.dtype)
        if b is not None:
            target_logit = target_logit + b.index_select(0, target).to(lse.dtype)
        loss = lse - target_logit
        if z_loss_coef != 0.0:
            loss = loss + z_loss_coef * lse.square()
        ctx.save_for_backward(e, w, b, target, lse)
        ctx.z_loss_coef = z_loss_coef
        ctx.chunks = (row_chunk, col_chunk)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        e, w, b, target, lse = ctx.saved_tensors
        row_chunk, col_chunk = ctx.chunks
        need_e, need_w, need_b = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            b is not None and (ctx.needs_input_grad[2]),
        )
        acc = lse.dtype
        g = grad_loss.to(acc)
        # d loss_i / d o_ij = g_i * (1 + 2 z lse_i) * softmax_ij - g_i * [j == y_i]
        scale = g * (1.0 + 2.0 * ctx.z_loss_coef * lse) if ctx.z_loss_coef != 0.0 else g
        n, v = e.shape[0], w.shape[0]
        grad_e = torch.zeros(e.shape, dtype=acc, device=e.device) if need_e else None
        grad_w = torch.zeros(w.shape, dtype=acc, device=w.device) if need_w else None
        grad_b = torch.zeros(v, dtype=acc, device=w.device) if need_b else None
        e_f = e.to(acc)
        w_f = w.to(acc)
        if need_e or need_w or need_b:
            for r0 in range(0, n, row_chunk):
                rows = e[r0 : r0 + row_chunk]
                rows_f = e_f[r0 : r0 + row_chunk]
                lse_rows = lse[r0 : r0 + row_chunk].unsqueeze(1)
                scale_rows = scale[r0 : r0 + row_chunk].unsqueeze(1)
                for c0 in range(0, v, col_chunk):
                    w_blk = w[c0 : c0 + col_chunk]
                    block = _block_logits(rows, w_blk, None if b is None else b[c0 : c0 + col_chunk])
                    block.sub_(lse_rows).exp_().mul_(scale_rows)  # block is now dL/do for this block (w/o one-hot)
                    if need_e:
                        grad_e[r0 : r0 + row_chunk].addmm_(block, w_f[c0 : c0 + col_chunk])
                    if need_w:
                        grad_w[c0 : c0 + col_chunk].addmm_(block.T, rows_f)
                    if need_b:
                        grad_b[c0 : c0 + col_chunk].add_(block.sum(dim=0))
        # the one-hot part: - g_i at (i, y_i)
        if need_e:
            grad_e.sub_(g.unsqueeze(1) * w_f.index_select(0, target))
            grad_e = grad_e.to(e.dtype)
        if need_w:
            grad_w.index_add_(0, target, e_f * g.unsqueeze(1), alpha=-1.0)
            grad_w = grad_w.to(w.dtype)
        if need_b:
            grad_b.index_add_(0, target, g, alpha=-1.0)
            grad_b = grad_b.to(b.dtype)
        return grad_e, grad_w, grad_b, None, None, None, None


def _check_chunk(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@checked_arguments
def linear_cross_entropy(
    embeddings: torch.Tensor,
    classifier_weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    z_loss_coef: float = 0.0,
    row_chunk_size: int = DEFAULT_ROW_CHUNK_SIZE,
    shift: bool = False,
) -> torch.Tensor:
    """Cross-entropy of ``embeddings @ classifier_weight.T (+ bias)`` without materialising the logits.

    Equals ``F.cross_entropy(embeddings @ classifier_weight.T + bias, target, ignore_index=..., reduction=...)``
    (plus ``z_loss_coef * logsumexp(logits)**2`` per row when ``z_loss_coef > 0``, reduced the same way) in value
    and in gradients w.r.t. ``embeddings``, ``classifier_weight`` and ``bias``, but holds only one
    ``row_chunk_size × chunk_size`` block of logits at a time.

    Args:
        embeddings: ``(..., d)`` floating tensor (leading dimensions are flattened).
        classifier_weight: ``(V, d)`` classifier matrix (an ``nn.Linear(d, V).weight``).
        target: integer tensor of shape ``embeddings.shape[:-1]`` with values in ``[0, V)`` or ``ignore_index``.
        bias: optional ``(V,)`` bias.
        ignore_index: target value whose rows contribute neither loss nor gradient.
        reduction: ``"mean"`` (over non-ignored rows), ``"sum"`` or ``"none"`` (shape of ``target``; 0 where
            ignored).
        chunk_size: vocabulary columns per block.
        z_loss_coef: coefficient of the logit z-loss ``(log Σ_j e^{o_j})²`` (PaLM / ST-MoE), computed from the
            LSE that the loss already has, at no extra cost.
        row_chunk_size: rows per block.
        shift: causal language-model shift: position ``t`` predicts ``target[..., t + 1]`` (embeddings
            ``(..., T, d)``, target ``(..., T)``; the last position and the first target are dropped, and
            ``reduction="none"`` returns shape ``(..., T - 1)``).

    Returns:
        The reduced loss (fp32, or fp64 for fp64 inputs) or per-row losses for ``reduction="none"``.

    Raises:
        TypeError: non-floating embeddings/weight/bias, non-integer target, mismatched dtypes.
        ValueError: mismatched shapes, targets out of range, non-finite logits, bad reduction or chunk sizes.
    """
    require_same_device(embeddings=embeddings, classifier_weight=classifier_weight, target=target, bias=bias)
    if not isinstance(embeddings, torch.Tensor) or not embeddings.is_floating_point():
        raise TypeError(f"embeddings must be a floating tensor, got {getattr(embeddings, 'dtype', type(embeddings))}")
    if not isinstance(classifier_weight, torch.Tensor) or not classifier_weight.is_floating_point():
        raise TypeError("classifier_weight must be a floating tensor")
    if classifier_weight.dim() != 2:
        raise ValueError(f"classifier_weight must be (V, d), got shape {tuple(classifier_weight.shape)}")
    if embeddings.dim() < 1 or embeddings.shape[-1] != classifier_weight.shape[1]:
        raise ValueError(
            f"embeddings last dimension ({tuple(embeddings.shape)}) must equal classifier_weight's d "
            f"({classifier_weight.shape[1]})"
        )
    if embeddings.dtype != classifier_weight.dtype:
        raise TypeError(f"embeddings ({embeddings.dtype}) and classifier_weight ({classifier_weight.dtype}) differ")
    if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must be an integer tensor of class indices, got {getattr(target, 'dtype', target)}")
    if shift:
        if embeddings.dim() < 2 or embeddings.shape[-2] < 2:
            raise ValueError(f"shift=True needs embeddings (..., T >= 2, d), got shape {tuple(embeddings.shape)}")
        if tuple(target.shape) == tuple(embeddings.shape[:-1]):
            embeddings, target = embeddings[..., :-1, :], target[..., 1:]
    if tuple(target.shape) != tuple(embeddings.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal embeddings.shape[:-1] {tuple(embeddings.shape[:-1])}"
        )
    vocab = classifier_weight.shape[0]
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("bias must be a floating tensor or None")
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias must have shape ({vocab},), got {tuple(bias.shape)}")
        if bias.dtype != classifier_weight.dtype:
            raise TypeError(f"bias ({bias.dtype}) and classifier_weight ({classifier_weight.dtype}) differ")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    chunk_size = _check_chunk("chunk_size", chunk_size)
    row_chunk_size = _check_chunk("row_chunk_size", row_chunk_size)
    z_loss_coef = float(z_loss_coef)
    if not z_loss_coef >= 0.0:
        raise ValueError(f"z_loss_coef must be >= 0, got {z_loss_coef}")

    out_shape = target.shape
    e = embeddings.reshape(-1, embeddings.shape[-1])
    t = target.reshape(-1).long()
    valid = t != ignore_index
    t_valid = t[valid]
    if t_valid.numel() and (int(t_valid.min()) < 0 or int(t_valid.max()) >= vocab):
        bad = t_valid[(t_valid < 0) | (t_valid >= vocab)]
        raise ValueError(
            f"target values must be in [0, {vocab}) or ignore_index={ignore_index}; got e.g. {int(bad[0])}"
        )
    all_valid = bool(valid.all())
    e_valid = e if all_valid else e[valid]
    if not e_valid.is_contiguous():
        e_valid = e_valid.contiguous()
    w = classifier_weight if classifier_weight.is_contiguous() else classifier_weight.contiguous()
    per_row = _LinearCrossEntropyFunction.apply(e_valid, w, bias, t_valid, z_loss_coef, row_chunk_size, chunk_size)
    if reduction == "sum":
        return per_row.sum()
    if reduction == "mean":
        return per_row.sum() / t_valid.numel() if t_valid.numel() else per_row.sum() * float("nan")
    if all_valid:
        return per_row.reshape(out_shape)
    full = per_row.new_zeros(t.shape[0])
    full = full.masked_scatter(valid, per_row)
    return full.reshape(out_shape)


@checked_arguments
class LinearCrossEntropy(nn.Module):
    """Module form of :func:`linear_cross_entropy`: ``LinearCrossEntropy(...)(embeddings, weight, target, bias)``."""

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        z_loss_coef: float = 0.0,
        row_chunk_size: int = DEFAULT_ROW_CHUNK_SIZE,
        shift: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.chunk_size = _check_chunk("chunk_size", chunk_size)
        self.row_chunk_size = _check_chunk("row_chunk_size", row_chunk_size)
        self.z_loss_coef = float(z_loss_coef)
        self.shift = bool(shift)

    def forward(
        self,
        embeddings: torch.Tensor,
        classifier_weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return linear_cross_entropy(
            embeddings,
            classifier_weight,
            target,
            bias=bias,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            chunk_size=self.chunk_size,
            z_loss_coef=self.z_loss_coef,
            row_chunk_size=self.row_chunk_size,
            shift=self.shift,
        )

    def extra_repr(self) -> str:
        return (
            f"reduction={self.reduction!r}, chunk_size={self.chunk_size}, row_chunk_size={self.row_chunk_size}, "
            f"z_loss_coef={self.z_loss_coef}"
        )


def _unwrapped(model: nn.Module) -> nn.Module:
    """The user's module inside Fabric / DDP wrappers (each keeps it as ``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


@register_method
class LinearCrossEntropyMethod(Method):
    """Train a language model's head with the chunked linear cross-entropy: no N×V logits, equal to plain CE.

    A ``forward_loss`` link that replaces the base forward + criterion: it asks the model for its final hidden states
    (``model(x, return_hidden=True)``) and computes :func:`linear_cross_entropy` against ``output_weight`` (the
    read-out ``(V, d)``, e.g. :class:`regimen.models.GPT`), so the logits are never materialised. The loss equals the
    task's mean next-token cross-entropy in value and gradient. Criterion methods never run (there are no logits):
    ``logit_z_loss`` is its ``z_loss_coef`` parameter instead. The step's output is ``None``.

    Args:
        chunk_size: vocabulary columns per block. row_chunk_size: token rows per block.
        z_loss_coef: the logit z-loss ``z · (log Σ e^o)²`` added per token, from the LSE the loss already has.
    """

    name = "linear_ce"
    inputs = ("tokens",)
    targets = ("tokens",)
    conflicts = ("logit_z_loss", "z_loss", "multi_sample_dropout", "nested_width")
    constraint_reason = ("linear_ce never builds the logits that criterion methods (logit_z_loss, z_loss), "
                         "multi-sample dropout and nested widths work on; use its z_loss_coef for the z-loss")
    paper_id = "arXiv:2411.09009"
    claim = ("Cut Cross-Entropy computes the cross-entropy without materialising the logits for all tokens, cutting "
             "the loss's memory footprint by orders of magnitude without sacrificing training speed or convergence")
    claimed_effect = "no_worse"

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, row_chunk_size: int = DEFAULT_ROW_CHUNK_SIZE,
                 z_loss_coef: float = 0.0) -> None:
        self.chunk_size = _check_chunk("chunk_size", chunk_size)
        self.row_chunk_size = _check_chunk("row_chunk_size", row_chunk_size)
        if not z_loss_coef >= 0.0:
            raise ValueError(f"z_loss_coef must be >= 0, got {z_loss_coef}")
        self.z_loss_coef = float(z_loss_coef)

    def setup(self, ctx: Context) -> None:
        model = _unwrapped(ctx.model)
        weight = getattr(model, "output_weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"linear_ce needs a model with an `output_weight` (V, d) read-out and a forward that "
                             f"takes return_hidden=True (regimen.models.GPT); {type(model).__name__} has none")

    def forward_loss(self, model, x, y, next, ctx: Context):  # noqa: A002 - the hook's argument name
        hidden = model(x, return_hidden=True)
        loss = linear_cross_entropy(hidden, _unwrapped(model).output_weight, y, chunk_size=self.chunk_size,
                                    row_chunk_size=self.row_chunk_size, z_loss_coef=self.z_loss_coef)
        return loss, None
