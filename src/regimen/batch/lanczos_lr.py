"""Lanczos learning-rate estimator: the batch Hessian's extreme eigenvalues by Lanczos with Hessian-vector products,
turned into the step's learning rate and momentum on the fly.

Paper: Diego Granziol, Stefan Zohren & Stephen Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix
Theory Approach to Neural Network Training", JMLR 2022, arXiv 2006.09092. The paper shows that the extremal
eigenvalues of the *batch* Hessian grow as the batch shrinks (so the largest stable learning rate scales linearly with
the batch for SGD) and, from that, builds a "stochastic Lanczos quadrature based on the fly learning rate and
momentum learner".

Lanczos (m steps, full re-orthogonalisation) on the Hessian ``H`` of the batch loss ``L(w)``::

    q₁ = random unit vector;  for j = 1..m:  z = H q_j  (Hessian-vector product: ∂(∇L·q_j)/∂w)
        α_j = q_jᵀ z;  z ← z − Q_j (Q_jᵀ z) (twice);  β_j = ‖z‖;  q_{j+1} = z / β_j
    T = tridiag(β, α, β)  →  Ritz values θ₁ ≤ … ≤ θ_m  (eigvalsh(T)):  λ_max ≈ θ_m,  λ_min ≈ θ₁

The learning rate and momentum (``rule``):

    "polyak":   λ_lo = max(θ₁, min_ratio · θ_m);  lr = 4 / (√θ_m + √λ_lo)²,  ρ = ((√θ_m − √λ_lo)/(√θ_m + √λ_lo))²
                (heavy-ball's optimal pair for a quadratic with curvatures in [λ_lo, λ_max])
    "inverse":  lr = 1 / θ_m, momentum unchanged (the curvature step along the sharpest direction)

each times ``lr_scale``. **Unconfirmed**: the paper's own formula for the learner (its method section could not be
read here; see reports/wave2/training_a.md): "polyak" is the textbook optimum the abstract's "learning rate and
momentum learner" most plausibly means, and "inverse" the plain curvature rule.

How the LR is applied (:class:`LanczosLRMethod`): the estimate replaces the recipe's *peak* LR. During the optimizer
step only, every param group's LR is multiplied by ``lr / optim.lr`` (so the schedule's warm-up/decay shape and any
per-group multipliers stay) and ``momentum`` is set to ρ; both are restored right after the step, so schedules and
checkpoints never see them (as SAM and AGVM wrap the step).

Pitfalls handled:
  * The Hessian-vector products use a forward pass with BatchNorm running statistics frozen (the estimate must not
    move them) and the model's current mode.
  * Non-convexity: θ₁ is often negative; ``min_ratio`` floors λ_lo at a fraction of λ_max. A non-positive λ_max (a
    saddle or maximum of the batch loss) keeps the previous estimate.
  * DDP: each process estimates on its own batch; the λs are averaged over processes so every rank steps alike.
  * Lanczos with few steps finds the extreme eigenvalues first; full re-orthogonalisation keeps the Ritz values from
    repeating (the "ghost" eigenvalues of plain Lanczos in floating point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from regimen.batch.sam import frozen_bn_statistics
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["LanczosLRMethod", "hessian_vector_product", "lanczos", "lanczos_step_size", "top_hessian_eigenvalues"]


@checked_arguments
def hessian_vector_product(grads: Sequence[torch.Tensor], params: Sequence[torch.Tensor],
                           vector: torch.Tensor) -> torch.Tensor:
    """``H v`` flattened, from ``grads`` (computed with ``create_graph=True``) of the loss w.r.t. ``params``."""
    total = sum(p.numel() for p in params)
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"vector must be flat with one entry per parameter ({total}), got shape {tuple(vector.shape)}")
    pieces, offset = [], 0
    for p in params:
        pieces.append(vector[offset:offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    hv = torch.autograd.grad(grads, params, grad_outputs=pieces, retain_graph=True, allow_unused=True)
    return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, params)])


@checked_arguments
def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, iterations: int = 20, *,
            generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Ritz values (ascending) of the symmetric operator ``matvec`` on ``R^dim`` after ``iterations`` Lanczos steps
    with full re-orthogonalisation; at most ``dim`` steps (then they are its exact eigenvalues).

    Args:
        matvec: ``v ↦ A v`` for a symmetric ``A``; ``v`` is ``(dim,)`` in ``dtype``.
        dim: dimension (> 0).
        iterations: Lanczos steps m >= 1.
        generator: random source of the start vector.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an int >= 1, got {dim!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    steps = min(iterations, dim)
    q = torch.randn(dim, generator=generator, dtype=dtype, device=generator.device if generator else "cpu")
    q = (q / q.norm()).to(device)
    basis = torch.empty(steps, dim, dtype=dtype, device=device)
    alphas, betas = [], []
    for j in range(steps):
        basis[j] = q
        z = matvec(q).to(dtype)
        alpha = torch.dot(q, z)
        alphas.append(alpha)
        for _ in range(2):  # full re-orthogonalisation, twice ("twice is enough")
            z = z - basis[: j + 1].T @ (basis[: j + 1] @ z)
        beta = z.norm()
        if j + 1 == steps or beta <= 1e-10 * max(1.0, float(alpha.abs())):
            break  # an invariant subspace: the Ritz values found are exact
        betas.append(beta)
        q = z / beta
    m = len(alphas)
    t = torch.diag(torch.stack(alphas))
    if m > 1:
        off = torch.stack(betas[: m - 1])
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigvalsh(t)


def _trained_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


@checked_arguments
def top_hessian_eigenvalues(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], iterations: int = 20,
                            *, params: Sequence[torch.Tensor] | None = None,
                            generator: torch.Generator | None = None) -> tuple[float, float]:
    """``(λ_max, λ_min)`` Ritz estimates of the Hessian of ``loss_fn(model)`` w.r.t. ``params`` (default: the trained
    parameters) by :func:`lanczos` with Hessian-vector products. BatchNorm running statistics are left unchanged;
    the parameters' ``.grad`` is not touched. Parameters the loss does not reach (auxiliary heads) are left out (their
    rows of H are zero)."""
    params = list(_trained_params(model) if params is None else params)
    if not params:
        raise ValueError("the model has no trainable parameters")
    with frozen_bn_statistics(model), torch.enable_grad():
        loss = loss_fn(model)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        used = [(g, p) for g, p in zip(grads, params) if g is not None and g.requires_grad]
        if not used:  # a loss linear in every parameter (or none used): the Hessian is zero
            return 0.0, 0.0
        grads, params = [g for g, _ in used], [p for _, p in used]  # parameters the loss does not reach: H = 0 there
        dim = sum(p.numel() for p in params)
        ritz = lanczos(lambda v: hessian_vector_product(grads, params, v).detach().double(), dim, iterations,
                       generator=generator, device=params[0].device)
    return float(ritz[-1]), float(ritz[0])


@checked_arguments
def lanczos_step_size(lambda_max: float, lambda_min: float, rule: str = "polyak", *, min_ratio: float = 1e-3,
                      lr_scale: float = 1.0) -> tuple[float, float | None]:
    """``(lr, momentum)`` from the extreme curvatures (module docstring); ``momentum`` is ``None`` for "inverse"."""
    if not (lambda_max > 0 and math.isfinite(lambda_max)):
        raise ValueError(f"lambda_max must be a finite float > 0, got {lambda_max}")
    if not 0 < min_ratio <= 1:
        raise ValueError(f"min_ratio must be in (0, 1], got {min_ratio}")
    if not (lr_scale > 0 and math.isfinite(lr_scale)):
        raise ValueError(f"lr_scale must be a finite float > 0, got {lr_scale}")
    if rule == "inverse":
        return lr_scale / lambda_max, None
    if rule != "polyak":
        raise ValueError(f"rule must be 'polyak' or 'inverse', got {rule!r}")
    low = max(float(lambda_min), min_ratio * lambda_max)
    root_max, root_low = math.sqrt(lambda_max), math.sqrt(low)
    lr = 4.0 / (root_max + root_low) ** 2
    momentum = ((root_max - root_low) / (root_max + root_low)) ** 2
    return lr_scale * lr, momentum


@register_method
class LanczosLRMethod(Method):
    """Learning rate (and momentum) from the batch Hessian's extreme eigenvalues by Lanczos (Granziol et al. 2022),
    re-estimated every ``interval`` optimizer steps on that step's first micro-batch.

    Args:
        interval: optimizer steps between estimates (>= 1); the first step estimates.
        iterations: Lanczos steps per estimate (each one Hessian-vector product).
        rule: ``"inverse"`` (LR = lr_scale/λ_max; the default) or ``"polyak"`` (LR and momentum), see the module
            docstring. On Fashion-MNIST "polyak" trained unstably (reports/wave2/training_a.md).
        min_ratio: floor of λ_lo as a fraction of λ_max ("polyak").
        lr_scale: multiplies the estimated LR (> 0).
        max_lr: upper bound on the estimated LR (> 0), for flat regions where λ_max ≈ 0.

    The estimated LR replaces the recipe's ``optim.lr`` during the step (the schedule's shape is kept); logs
    ``lanczos_lr/lambda_max``, ``lambda_min``, ``lr`` and ``momentum``.
    """

    name = "lanczos_lr"
    paper_id = "arXiv:2006.09092"
    claim = ("a stochastic-Lanczos on-the-fly learning-rate and momentum learner avoids grid searches for these "
             "hyper-parameters and gives good preliminary results (PreResNet, CIFAR-100)")
    claimed_effect = "no_worse"

    def __init__(self, interval: int = 50, iterations: int = 20, rule: Literal["polyak", "inverse"] = "inverse",
                 min_ratio: float = 1e-3, lr_scale: float = 1.0, max_lr: float = 10.0) -> None:
        for name, value in (("interval", interval), ("iterations", iterations)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if rule not in ("polyak", "inverse"):
            raise ValueError(f"rule must be 'polyak' or 'inverse', got {rule!r}")
        if isinstance(min_ratio, bool) or not isinstance(min_ratio, int | float) or not 0 < min_ratio <= 1:
            raise ValueError(f"min_ratio must be a float in (0, 1], got {min_ratio!r}")
        for name, value in (("lr_scale", lr_scale), ("max_lr", max_lr)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not (value > 0 and
                                                                                     math.isfinite(value)):
                raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
        self.interval, self.iterations, self.rule = interval, iterations, rule
        self.min_ratio, self.lr_scale, self.max_lr = float(min_ratio), float(lr_scale), float(max_lr)
        self.base_lr: float | None = None
        self.lr: float | None = None
        self.momentum: float | None = None
        self._last_step = -1

    def setup(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("lanczos_lr needs the run's optimizer")
        self.base_lr = float(ctx.optimizer.param_groups[0]["lr"])

    def before_forward(self, x: Any, y: Any, ctx: Context) -> None:
        if ctx.step % self.interval or ctx.step == self._last_step:
            return  # one estimate per chosen step, on its first micro-batch
        self._last_step = ctx.step
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator)))
        with ctx.autocast():
            top, bottom = top_hessian_eigenvalues(model, lambda m: ctx.criterion(m(x), y), self.iterations,
                                                  generator=generator)
        if ctx.run.world_size > 1:
            pair = ctx.all_reduce(torch.tensor([top, bottom], dtype=torch.float64, device=ctx.run.device), "sum")
            top, bottom = (pair / ctx.run.world_size).tolist()
        self.log(ctx, "lambda_max", top)
        self.log(ctx, "lambda_min", bottom)
        if not (top > 0 and math.isfinite(top)):
            return  # keep the previous estimate
        lr, momentum = lanczos_step_size(top, bottom, self.rule, min_ratio=self.min_ratio, lr_scale=self.lr_scale)
        self.lr, self.momentum = min(lr, self.max_lr), momentum
        self.log(ctx, "lr", self.lr)
        if momentum is not None:
            self.log(ctx, "momentum", momentum)

    def optimizer_step(self, closure: Callable[[], torch.Tensor], next: Callable, ctx: Context) -> None:
        if self.lr is None or not self.base_lr:
            return next(closure)
        ratio = self.lr / self.base_lr
        saved = [(group["lr"], group.get("momentum")) for group in ctx.optimizer.param_groups]
        for group in ctx.optimizer.param_groups:
            group["lr"] = group["lr"] * ratio
            if self.momentum is not None and "momentum" in group:
                group["momentum"] = self.momentum
        try:
            return next(closure)
        finally:
            for group, (lr, momentum) in zip(ctx.optimizer.param_groups, saved):
                group["lr"] = lr
                if momentum is not None:
                    group["momentum"] = momentum

    def state_dict(self) -> dict[str, Any]:
        return {"base_lr": self.base_lr, "lr": self.lr, "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lr, self.lr, self.momentum = state["base_lr"], state["lr"], state["momentum"]
