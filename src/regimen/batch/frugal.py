"""FRUGAL: Adam on a low-dimensional subspace of each gradient, state-free signSGD (or SGD) on the rest.

Paper: Philip Zmushko, Aleksandr Beznosikov, Martin Takáč, Samuel Horváth, "FRUGAL: Memory-Efficient Optimization by
Reducing State Overhead for Scalable Training", ICML 2025, arXiv 2411.07837.

Formula, for each splittable matrix parameter θ with gradient g at step t and projector P_t (refreshed every T
steps):

    g_full = P_t(g),   g_free = g − P_t⁻¹(g_full)
    m ← β1 m + (1 − β1) g_full,   v ← β2 v + (1 − β2) g_full²          (moments only in the subspace)
    θ ← θ − η P_t⁻¹(m̂ / (√v̂ + ε)) − η_free · sign(g_free)             (signSGD; ``free="sgd"``: − η_free g_free)

so the update is full-rank while the optimizer state holds only the subspace. Projectors here (both coordinate
selections, so P_t⁻¹ is a scatter): ``"rows"`` keeps a random ρ fraction of each matrix's rows (output units);
``"blocks"`` keeps a random ρ fraction of the splittable matrices whole (BAdam-like blockwise selection) and gives the
others signSGD only. Parameters that are not split — vectors (norms, biases) and the ones the Method marks (token
embeddings and the output head) — use plain AdamW. Decoupled weight decay θ ← θ(1 − η λ) applies to every
parameter with ``weight_decay``.

Unconfirmed against the paper (its code was not retrievable here; the formula is the paper's Algorithm 1 as restated
by a third-party page): the defaults ρ = 0.25 and T = 200, the state-free step size (``free_lr_ratio`` × the LR,
default 1), and the moment handling at a refresh — here the moments and the bias-correction count are **reset**
(a new subspace has no history).

Pitfalls handled:

- The refresh resets m, v and the step count of the new subspace; it draws from the optimizer's own generator, so
  runs and resumes are reproducible (the generator state is in ``state_dict``).
- ρ = 0 is signSGD on the splittable matrices (no state); ρ = 1 is AdamW.
- signSGD's step is not scale-matched to Adam's: ``free_lr_ratio`` sets it separately.
- :func:`optimizer_state_bytes` counts the bytes of every state tensor (what FRUGAL saves against AdamW).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["FRUGAL", "FrugalMethod", "optimizer_state_bytes"]

_PROJECTIONS = ("rows", "blocks")


@checked_arguments
def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's per-parameter state (moments, subspace indices, step counts)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


@checked_arguments
class FRUGAL(torch.optim.Optimizer):
    """FRUGAL(Adam, signSGD): Adam moments on a ρ subspace of each splittable matrix, state-free steps elsewhere.

    Args:
        params: parameters or param groups; a group with ``split=False`` is plain AdamW (vectors are never split).
        lr, betas, eps, weight_decay: as AdamW (decoupled weight decay).
        density: ρ in [0, 1], the state-full fraction (of rows, or of matrices for ``projection="blocks"``).
        update_gap: T >= 1, steps between projector refreshes.
        projection: ``"rows"`` or ``"blocks"``.
        free: ``"sign"`` (signSGD) or ``"sgd"`` for the state-free part.
        free_lr_ratio: the state-free step size as a multiple of the LR.
        seed: seed of the projector draws.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, density: float = 0.25, update_gap: int = 200,
                 projection: str = "rows", free: str = "sign", free_lr_ratio: float = 1.0, seed: int = 0) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError(f"eps must be > 0 and weight_decay >= 0, got {eps!r}, {weight_decay!r}")
        if isinstance(density, bool) or not isinstance(density, int | float) or not 0.0 <= density <= 1.0:
            raise ValueError(f"density must be in [0, 1], got {density!r}")
        if isinstance(update_gap, bool) or not isinstance(update_gap, int) or update_gap < 1:
            raise ValueError(f"update_gap must be an int >= 1, got {update_gap!r}")
        if projection not in _PROJECTIONS:
            raise ValueError(f"projection must be one of {', '.join(_PROJECTIONS)}, got {projection!r}")
        if free not in ("sign", "sgd"):
            raise ValueError(f"free must be 'sign' or 'sgd', got {free!r}")
        if not free_lr_ratio >= 0:
            raise ValueError(f"free_lr_ratio must be >= 0, got {free_lr_ratio!r}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "split": True}
        super().__init__(params, defaults)
        self.density, self.update_gap, self.projection = float(density), update_gap, projection
        self.free, self.free_lr_ratio = free, float(free_lr_ratio)
        self.generator = torch.Generator().manual_seed(seed)
        self.steps = 0

    # ---------------------------------------------------------------------------------------------- subspaces
    def _splittable(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups if group["split"] for p in group["params"] if p.dim() >= 2]

    def _refresh(self) -> None:
        """Draw new subspaces and reset their moments (and bias-correction counts)."""
        matrices = self._splittable()
        if self.projection == "blocks":
            sizes = torch.tensor([p.numel() for p in matrices], dtype=torch.float64)
            order = torch.randperm(len(matrices), generator=self.generator)
            budget, used, active = self.density * float(sizes.sum()), 0.0, set()
            for i in order.tolist():
                if used + float(sizes[i]) <= budget + 1e-9:
                    active.add(i)
                    used += float(sizes[i])
        for i, p in enumerate(matrices):
            state = self.state[p]
            if self.projection == "rows":
                rows = p.shape[0]
                keep = min(rows, math.ceil(self.density * rows - 1e-9))
                index = torch.sort(torch.randperm(rows, generator=self.generator)[:keep]).values.to(p.device)
            else:
                index = torch.arange(p.shape[0], device=p.device) if i in active else torch.zeros(0, dtype=torch.long,
                                                                                                  device=p.device)
            state["index"] = index
            shape = (index.numel(), *p.shape[1:])
            state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            state["step"] = torch.zeros((), dtype=torch.float32)

    # ---------------------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.steps % self.update_gap == 0:
            self._refresh()
        self.steps += 1
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if decay:
                    p.mul_(1 - lr * decay)
                state = self.state[p]
                if not group["split"] or p.dim() < 2:  # plain AdamW
                    if "exp_avg" not in state:
                        state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                        state["step"] = torch.zeros((), dtype=torch.float32)
                    p.sub_(self._adam(state, g, beta1, beta2, eps), alpha=lr)
                    continue
                index = state["index"]
                free = g.clone()
                if index.numel():
                    update = self._adam(state, g.index_select(0, index), beta1, beta2, eps)
                    p.index_add_(0, index, update, alpha=-lr)
                    free.index_fill_(0, index, 0.0)
                step = free.sign() if self.free == "sign" else free
                p.sub_(step, alpha=lr * self.free_lr_ratio)
        return loss

    @staticmethod
    def _adam(state: dict, g: torch.Tensor, beta1: float, beta2: float, eps: float) -> torch.Tensor:
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** t)
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** t)
        return m_hat / (v_hat.sqrt() + eps)

    # ---------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["frugal"] = {"steps": self.steps, "generator": self.generator.get_state()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("frugal", None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.steps = int(extra["steps"])
            self.generator.set_state(extra["generator"])


def _unsplit_parameters(model: nn.Module) -> set[int]:
    """Token embeddings and the output head (the last Linear): kept on AdamW, as the paper's setup keeps them
    state-full (unconfirmed detail)."""
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        ids.add(id(linears[-1].weight))
    return ids


@register_method
class FrugalMethod(Method):
    """FRUGAL (Zmushko et al. 2025): replaces the optimizer by Adam on a ρ subspace + signSGD on the rest; logs the
    optimizer-state bytes.

    The LR, betas, eps and weight decay come from the recipe's ``[optim]`` (its optimizer is replaced; use
    ``name = "adamw"`` for the matching baseline).

    Args:
        density: ρ, the state-full fraction in [0, 1].
        update_gap: T, steps between subspace refreshes.
        projection: ``"rows"`` (random rows of each matrix) or ``"blocks"`` (random whole matrices).
        free: ``"sign"`` or ``"sgd"``.
        free_lr_ratio: the state-free step size / the LR.
    """

    name = "frugal"
    paper_id = "arXiv:2411.07837"
    claim = ("full-rank updates with Adam state on a low-dimensional subspace and state-free signSGD elsewhere match "
             "or beat other memory-efficient optimizers at a fixed memory budget (LLaMA pre-training on C4)")
    claimed_effect = "no_worse"
    conflicts = ("sam",)
    constraint_reason = "FRUGAL replaces the optimizer; SAM's two-step update wraps the recipe's optimizer"

    def __init__(self, density: float = 0.25, update_gap: int = 200, projection: str = "rows", free: str = "sign",
                 free_lr_ratio: float = 1.0) -> None:
        FRUGAL([torch.zeros(1, requires_grad=True)], density=density, update_gap=update_gap, projection=projection,
               free=free, free_lr_ratio=free_lr_ratio)  # validates the arguments
        self.density, self.update_gap, self.projection = density, update_gap, projection
        self.free, self.free_lr_ratio = free, free_lr_ratio

    def setup(self, ctx: Context) -> None:
        old = ctx.optimizer
        if old is None:
            raise ValueError("frugal replaces the recipe's optimizer; none was built")
        defaults = old.defaults
        unsplit = _unsplit_parameters(ctx.model)
        groups = []
        for group in old.param_groups:
            settings = {"lr": group["lr"], "weight_decay": group.get("weight_decay", 0.0),
                        "betas": tuple(group.get("betas", defaults.get("betas", (0.9, 0.999)))),
                        "eps": group.get("eps", defaults.get("eps", 1e-8))}
            split = [p for p in group["params"] if id(p) not in unsplit]
            kept = [p for p in group["params"] if id(p) in unsplit]
            if split:
                groups.append(dict(settings, params=split, split=True))
            if kept:
                groups.append(dict(settings, params=kept, split=False))
        ctx.optimizer = FRUGAL(groups, lr=defaults.get("lr", 1e-3), density=self.density,
                               update_gap=self.update_gap, projection=self.projection, free=self.free,
                               free_lr_ratio=self.free_lr_ratio, seed=ctx.run.seed)

    def on_epoch_end(self, ctx: Context) -> None:
        self.log(ctx, "state_bytes", optimizer_state_bytes(ctx.optimizer))
