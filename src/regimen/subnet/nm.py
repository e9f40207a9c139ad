"""N:M fine-grained structured sparsity trained with SR-STE (sparse-refined straight-through estimator).

Paper: Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", ICLR 2021,
arXiv 2102.04010.

Formula. In every group of ``M`` consecutive weights along the input dimension, keep the ``N`` of largest magnitude:
``W~ = E ⊙ W`` with the mask ``E`` recomputed from the dense ``W`` at every forward. The backward pass is the
straight-through estimator refined by a decay on the pruned weights: ``dL/dW = dL/dW~ + lambda (1 - E) ⊙ W``
(``lambda`` ≈ 2e-4), which pulls weights that keep flipping in and out of the mask towards zero.

Layout. For ``Linear (out, in)`` groups run along ``in``; for ``Conv (out, in, kh, kw)`` along ``in`` at every kernel
position (the weight is viewed as ``(out, kh, kw, in)``, as NVIDIA's ASP does). Layers whose input dimension is not a
multiple of ``M`` (the 1-channel stem) stay dense. Ties are broken by position (the lower index wins), so the mask
is deterministic.

Hardware. 2:4 sparse kernels exist only on NVIDIA Ampere+ GPUs: on CPU the masked weights are still stored and
multiplied densely, so **memory and speed are unchanged** — this method only trains the sparse pattern.
``export_nm_sparsity`` returns dense masked weights; on CUDA ``to_semi_structured`` converts exported Linear weights
with ``torch.sparse.to_sparse_semi_structured`` (fp16/bf16, shapes multiple of 64/128 as the kernels require).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from regimen._compat import deprecated_aliases
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import unignored_modules

__all__ = ["NMSparsity", "NMSparsityMethod", "apply_nm_sparsity", "export_nm_sparsity", "nm_mask", "nm_sparsify",
           "to_semi_structured"]


def _check_nm(n: int, m: int) -> None:
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"n and m must be ints, got {n!r} and {m!r}")
    if not 0 < n <= m:
        raise ValueError(f"need 0 < n <= m, got n={n}, m={m}")


def _grouped(weight: torch.Tensor, m: int) -> torch.Tensor:
    """View of ``weight`` as ``(-1, m)`` groups along the input dimension."""
    if weight.dim() == 2:
        moved = weight
    elif weight.dim() >= 3:
        moved = weight.movedim(1, -1)  # (out, k..., in)
    else:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(weight.shape)}")
    if moved.shape[-1] % m:
        raise ValueError(f"input dim {moved.shape[-1]} of weight {tuple(weight.shape)} is not a multiple of m={m}")
    return moved.reshape(-1, m)


@checked_arguments
def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Boolean mask keeping the ``n`` largest ``|w|`` of every ``m`` consecutive weights along the input dim."""
    _check_nm(n, m)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise TypeError("weight must be a floating-point tensor")
    groups = _grouped(weight.detach().abs(), m)
    # stable descending order: ties keep the lower index
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(1, order[:, :n], True)
    if weight.dim() == 2:
        return mask.reshape(weight.shape)
    moved_shape = weight.movedim(1, -1).shape
    return mask.reshape(moved_shape).movedim(-1, 1)


class _SRSTE(torch.autograd.Function):
    # forward/setup_context split and a generated vmap rule: works under torch.func (e.g. adaptive_batch's
    # per-sample gradients) as well as in plain autograd
    generate_vmap_rule = True

    @staticmethod
    def forward(weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
        return weight * mask

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        weight, mask, decay = inputs
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight, mask = ctx.saved_tensors
        return grad + ctx.decay * (~mask) * weight, None, None


@checked_arguments
def nm_sparsify(weight: torch.Tensor, n: int = 2, m: int = 4, decay: float = 2e-4) -> torch.Tensor:
    """``E ⊙ W`` whose gradient w.r.t. ``W`` is ``dL/dW~ + decay (1 - E) ⊙ W`` (SR-STE)."""
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    return _SRSTE.apply(weight, nm_mask(weight, n, m), float(decay))


@checked_arguments
class NMSparsity(nn.Module):
    """Parametrization: ``register_parametrization(layer, "weight", NMSparsity(2, 4))`` makes the weight N:M sparse."""

    def __init__(self, n: int = 2, m: int = 4, decay: float = 2e-4) -> None:
        super().__init__()
        _check_nm(n, m)
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.n, self.m, self.decay = n, m, decay

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return nm_sparsify(weight, self.n, self.m, self.decay)

    def extra_repr(self) -> str:
        return f"n={self.n}, m={self.m}, decay={self.decay}"


def _eligible(model: nn.Module, m: int, ignore: Iterable[str]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in unignored_modules(model, ignore):
        is_conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
        if not (isinstance(module, nn.Linear) or is_conv):
            continue
        if module.weight.shape[1] % m:
            continue
        out.append((name, module))
    return out


@checked_arguments
def apply_nm_sparsity(model: nn.Module, n: int = 2, m: int = 4, decay: float = 2e-4, ignore: Iterable[str] = (),
                      optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Register ``NMSparsity`` on every eligible Linear/Conv weight, in place; returns the layer names.

    The dense weight stays the same Parameter object (``layer.parametrizations.weight.original``), so ``optimizer``
    keeps working unchanged; it is accepted for the surgery convention and needs no rebinding.
    """
    _check_nm(n, m)
    layers = _eligible(model, m, ignore)
    names = []
    for name, module in layers:
        if parametrize.is_parametrized(module, "weight"):
            continue
        parametrize.register_parametrization(module, "weight", NMSparsity(n, m, decay))
        names.append(name)
    del optimizer  # same Parameter objects: nothing to rebind
    return names


@checked_arguments
def export_nm_sparsity(model: nn.Module) -> nn.Module:
    """Remove the N:M parametrizations, leaving dense weights with the mask applied (in place)."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
                isinstance(p, NMSparsity) for p in module.parametrizations.weight):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


@checked_arguments
def to_semi_structured(model: nn.Module) -> nn.Module:
    """CUDA only: store exported 2:4 Linear weights as ``torch.sparse.SparseSemiStructuredTensor`` (in place)."""
    if not torch.cuda.is_available():
        raise RuntimeError("2:4 semi-structured kernels need an NVIDIA GPU (Ampere or newer); on CPU keep dense masks")
    from torch.sparse import to_sparse_semi_structured

    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.is_cuda:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return model


@register_method
class NMSparsityMethod(Method):
    """N:M structured sparsity (2:4 by default) trained with SR-STE; masks recomputed every forward.

    Logs ``nm_sparsity/layers`` (the layers made sparse) at setup.

    Args:
        n: weights kept in every group.
        m: group size along the input dimension.
        decay: SR-STE decay ``lambda`` on the masked-out weights.
        ignore: module names to keep dense.
        export_at_end: remove the parametrizations at the end (dense masked weights, plain state-dict keys).
    """

    name = "nm_sparsity"
    paper_id = "arXiv:2102.04010"
    claim = "2:4 weight sparsity trained with SR-STE matches dense accuracy"
    claimed_effect = "no_worse"

    def __init__(self, n: int = 2, m: int = 4, decay: float = 2e-4, ignore: list[str] | None = None,
                 export_at_end: bool = True) -> None:
        _check_nm(n, m)
        if decay < 0:
            raise ValueError(f"decay must be >= 0, got {decay}")
        self.n, self.m, self.decay = n, m, decay
        self.ignore = list(ignore or [])
        self.export_at_end = export_at_end
        self.layers: list[str] = []
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        self._model = ctx.model
        self.layers = apply_nm_sparsity(ctx.model, self.n, self.m, self.decay, self.ignore, ctx.optimizer)
        self.log(ctx, "layers", len(self.layers))

    def on_train_end(self, ctx: Context) -> None:
        if self.export_at_end and self._model is not None:
            export_nm_sparsity(self._model)


__getattr__ = deprecated_aliases(__name__, {"export": "export_nm_sparsity"}, globals())
