"""FRUGAL: Adam on a low-dimensional subspace of each gradient, state-free signSGD (or SGD) on the rest.

Paper: Philip Zmushko, Aleksandr Beznosikov, Martin Takáč, Samuel Horváth, "FRUGAL: Memory-Efficient Optimization by
Reducing State Overhead for Scalable Training", ICML 2025, arXiv 2411.07837.

Formula, for each splittable matrix parameter θ with gradient g at step t and projector P_t (refreshed every T
steps):

    g_full = P_t(g),   g_free = g − P_t⁻¹(g_full)
    m ← β1 m + (1 − β1) g_full,   v ← β2 v + (1 − β2) g_full²          (moments only in the subspace)
    θ ← θ − η P_t⁻¹(m̂ / (√v̂ + ε)) − η_free · sign(g_free)             (signSGD; ``free="sgd"``: − η_free g_free)

so the update is full-rank while the optimizer state holds only the subspace. Projectors (``projection=``), as in
the authors' code (its README and ``frugal/proj_optimizer_templates.py``, ``adamw.py``, ``galore_projector.py``,
``coordinate_projector.py``, read as stored in a code index that did not name the repository):

- ``"blocks"`` (default; the reference's ``block_adamw``, launched as ``frugal``): ``round(n·ρ)`` of the n
  splittable matrices, drawn at random every T steps, get AdamW whole; the others get the state-free step only.
- ``"rows"`` / ``"columns"`` (the reference's CoordAdamW): a random ``int(ρ·rows)`` rows (or ``int(ρ·cols)``
  columns) of each matrix (P⁻¹ is a scatter).
- ``"svd"`` (GaLore-like, the reference's GaloreAdamW with ``proj_type="svd"``, ``proj_side="std"``): for a matrix
  with rows >= cols the top ``r = round(ρ·cols)`` right singular vectors B (r × cols) of the gradient at the
  refresh, P(g) = g Bᵀ, P⁻¹(u) = u B; otherwise the top ``round(ρ·rows)`` left singular vectors A, P(g) = Aᵀ g,
  P⁻¹(u) = A u. The projection matrix is optimizer state (counted by :func:`optimizer_state_bytes`).
- ``"random"``: as ``"svd"`` with a random semi-orthogonal B (or A) instead of singular vectors.

Parameters that are not split — vectors (norms, biases) and the ones the Method marks (token embeddings and the
output head) — use plain AdamW. Decoupled weight decay θ ← θ(1 − η λ) applies to every parameter with
``weight_decay``.

Confirmed against the reference code and README: ρ = 0.25 (``density``), T = 200 (``update_gap``), signSGD as
the state-free rule (``inactive_update_rule="sign_sgd"``; ``"sgd"`` and none are options), the state-free step
size = LR × ``inactive_lr_scale`` (1.0 for pre-training, 0.1 for fine-tuning: our ``free_lr_ratio``), the moments
**and** the bias-correction step count reset at every refresh (``reset_statistics=True``), and the state-full
candidates: the Linear weights of the transformer blocks (attention and MLP), with norms, embeddings and the LM
head on AdamW. Differences: any ≥ 2-D parameter of a ``split`` group is a candidate (not only ``nn.Linear``
weights named attn/mlp); the draws use the optimizer's own generator.

Pitfalls handled:

- The refresh resets m, v and the step count of the new subspace; it draws from the optimizer's own generator, so
  runs and resumes are reproducible (the generator state is in ``state_dict``).
- ρ = 0 is signSGD on the splittable matrices (no state); ρ = 1 is AdamW for ``"blocks"``, ``"rows"`` and
  ``"columns"`` (for ``"svd"``/``"random"`` it is Adam in a rotated basis).
- signSGD's step is not scale-matched to Adam's: ``free_lr_ratio`` sets it separately.
- :func:`optimizer_state_bytes` counts the bytes of every state tensor (what FRUGAL saves against AdamW).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["FRUGAL", "FrugalMethod", "optimizer_state_bytes"]

_PROJECTIONS = ("blocks", "rows", "columns", "svd", "random")


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
        density: ρ in [0, 1], the state-full fraction (of the matrices for ``"blocks"``, of each matrix's rows,
            columns or rank otherwise).
        update_gap: T >= 1, steps between projector refreshes.
        projection: ``"blocks"``, ``"rows"``, ``"columns"``, ``"svd"`` or ``"random"`` (module docstring).
        free: ``"sign"`` (signSGD) or ``"sgd"`` for the state-free part.
        free_lr_ratio: the state-free step size as a multiple of the LR.
        seed: seed of the projector draws.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, density: float = 0.25, update_gap: int = 200,
                 projection: str = "blocks", free: str = "sign", free_lr_ratio: float = 1.0, seed: int = 0) -> None:
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
            count = round(len(matrices) * self.density)
            active = set(torch.randperm(len(matrices), generator=self.generator)[:count].tolist())
        for i, p in enumerate(matrices):
            state = self.state[p]
            for key in ("index", "proj", "side"):
                state.pop(key, None)
            if self.projection in ("svd", "random"):
                rows, cols = p.shape[0], p[0].numel()
                right = rows >= cols
                rank = round(self.density * (cols if right else rows))
                if rank:
                    if self.projection == "svd":
                        grad = (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(rows, cols)
                        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
                        proj = vh[:rank] if right else u[:, :rank]
                    else:
                        proj = torch.empty((rank, cols) if right else (rows, rank))
                        torch.nn.init.orthogonal_(proj, generator=self.generator)
                    state["proj"] = proj.to(device=p.device, dtype=p.dtype)
                state["side"] = "right" if right else "left"
                shape = [rows, rank] if right else [rank, cols]
            else:
                if self.projection == "blocks":
                    index = torch.arange(p.shape[0] if i in active else 0, device=p.device)
                else:
                    size = p.shape[0 if self.projection == "rows" else 1]
                    keep = int(size * self.density)
                    index = torch.sort(torch.randperm(size, generator=self.generator)[:keep]).values.to(p.device)
                state["index"] = index
                shape = list(p.shape)
                shape[1 if self.projection == "columns" else 0] = index.numel()
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
                if "side" in state:  # svd / random: a rank-r projection of the matrix (flattened after dim 0)
                    proj, right = state.get("proj"), state["side"] == "right"
                    flat = g.reshape(g.shape[0], -1)
                    free = flat
                    if proj is not None:
                        low = flat @ proj.T if right else proj.T @ flat
                        update = self._adam(state, low, beta1, beta2, eps)
                        p.sub_((update @ proj if right else proj @ update).reshape(p.shape), alpha=lr)
                        free = flat - (low @ proj if right else proj @ low)
                    free = free.reshape(p.shape)
                else:
                    index, dim = state["index"], 1 if self.projection == "columns" else 0
                    free = g.clone()
                    if index.numel():
                        update = self._adam(state, g.index_select(dim, index), beta1, beta2, eps)
                        p.index_add_(dim, index, update, alpha=-lr)
                        free.index_fill_(dim, index, 0.0)
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
    """Token embeddings and the output head (the last Linear): kept on AdamW, as the reference's
    ``prepare_proj_params`` does (``proj_embeds=False``, ``proj_logits=False``)."""
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
        projection: ``"blocks"`` (random whole matrices, the reference default), ``"rows"``, ``"columns"``,
            ``"svd"`` (GaLore-like top singular vectors of the gradient) or ``"random"`` (a random orthogonal basis).
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

    def __init__(self, density: float = 0.25, update_gap: int = 200, projection: str = "blocks", free: str = "sign",
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
