"""TSCNC: a transformed-ℓ1 sparsity constraint joined with a condition-number constraint, for robust pruned networks.

Paper: Feng, Lin, Gao, Wei, "Lipschitz Constant Meets Condition Number: Learning Robust and Compact Deep Neural
Networks", 2025, arXiv 2503.20454. Idea (abstract): heavily pruned weight matrices become ill-conditioned, and the
growing condition number — more than a lower Lipschitz bound — costs adversarial robustness; adding a smooth sparsity
constraint and a differentiable condition-number constraint to adversarial training with pruning restores it.

What is implemented (the paper's method section could not be read here; no official code exists — see
``reports/subnet/methods_b.md``):

* Transformed sparse constraint (transformed ℓ1, Zhang & Xin; the penalty the name refers to), per weight tensor
  ``TL1_a(W) = Σ (a + 1)|w| / (a + |w|)`` — ℓ0-like for small ``a``, ℓ1-like for large ``a``.
* Condition-number constraint, scale-invariant, on each weight reshaped to ``(out, -1)`` with singular values
  ``σ_i`` (``torch.linalg.svdvals``): ``kind="frobenius"`` (default) ``log κ_F = ½ log Σσ_i² + ½ log Σσ_i⁻²``
  (``κ_F = ‖W‖_F ‖W⁺‖_F ≥ κ_2``, smooth in every σ), or ``kind="spectral"`` ``log κ_2 = log σ_max − log σ_min``.
  ``σ`` is clamped below at ``eps`` (the gradient of ``svdvals`` is unstable at zero or repeated σ).
* Loss: ``L(x_adv) + λ_s Σ_l TL1_a(W_l) / N + λ_c Σ_l log κ(W_l) / L`` with ``x_adv`` an FGSM example
  (``epsilon``; 0 trains on clean inputs) and the weights magnitude-pruned once at ``sparsity`` in ``setup`` (masks
  re-applied after every step), i.e. adversarial fine-tuning of a pruned network.

``pgd_attack`` (L∞ PGD with a random start, Madry et al. 2018) evaluates the robustness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore
from regimen.subnet._sparse import apply_masks, check_sparsity, global_magnitude_masks, prunable_layers

__all__ = ["TSCNCMethod", "condition_number_penalty", "condition_numbers", "fgsm_example", "pgd_attack",
           "transformed_l1", "tscnc_penalty"]

KINDS = ("frobenius", "spectral")


@checked_arguments
def transformed_l1(weight: torch.Tensor, a: float = 1.0) -> torch.Tensor:
    """``Σ (a + 1)|w| / (a + |w|)`` over every entry of ``weight`` (a scalar)."""
    if not a > 0:
        raise ValueError(f"a must be > 0, got {a}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    w = weight.abs()
    return ((a + 1.0) * w / (a + w)).sum()


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")
    if weight.dim() < 2:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


@checked_arguments
def condition_number_penalty(weight: torch.Tensor, kind: str = "frobenius", eps: float = 1e-6) -> torch.Tensor:
    """Log condition number of ``weight`` viewed as ``(out, -1)``: ``log κ_F`` (``"frobenius"``) or ``log κ_2``
    (``"spectral"``), singular values clamped at ``eps``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    sigma = torch.linalg.svdvals(_matrix(weight).float()).clamp_min(eps)
    if kind == "spectral":
        return sigma.max().log() - sigma.min().log()
    return 0.5 * (sigma.pow(2).sum().log() + sigma.pow(-2).sum().log())


@checked_arguments
def condition_numbers(model: nn.Module, ignore: Iterable[str] = ()) -> dict[str, float]:
    """``κ_2 = σ_max / σ_min`` of every conv/linear weight viewed as ``(out, -1)`` (``inf`` when rank-deficient)."""
    out = {}
    for name, module in prunable_layers(model, check_ignore(model, ignore)):
        sigma = torch.linalg.svdvals(_matrix(module.weight.detach()).float())
        out[name] = float(sigma.max() / sigma.min()) if float(sigma.min()) > 0 else float("inf")
    return out


@checked_arguments
def tscnc_penalty(model: nn.Module, sparse_weight: float = 1e-4, cond_weight: float = 1e-2, a: float = 1.0,
                  kind: str = "frobenius", layers: Sequence[str] | None = None, eps: float = 1e-6) -> torch.Tensor:
    """``sparse_weight · Σ TL1_a(W) / N + cond_weight · mean_l log κ(W_l)`` over ``layers`` (default: every
    conv/linear); ``N`` = number of weights."""
    if sparse_weight < 0 or cond_weight < 0:
        raise ValueError(f"sparse_weight and cond_weight must be >= 0, got {sparse_weight} and {cond_weight}")
    names = list(layers) if layers is not None else [n for n, _ in prunable_layers(model)]
    if not names:
        raise ValueError("tscnc_penalty found no conv/linear layer")
    weights = [model.get_submodule(n).weight for n in names]
    total = weights[0].new_zeros(())
    if sparse_weight > 0:
        n = sum(w.numel() for w in weights)
        total = total + sparse_weight * sum(transformed_l1(w, a) for w in weights) / n
    if cond_weight > 0:
        total = total + cond_weight * sum(condition_number_penalty(w, kind, eps) for w in weights) / len(weights)
    return total


def _check_attack(epsilon: float, steps: int | None = None, alpha: float | None = None) -> None:
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if alpha is not None and not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")


def _clamp(x: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


@checked_arguments
def fgsm_example(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                 epsilon: float = 0.1, bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """``x + ε · sign(∇_x CE(model(x), target))`` (detached; clamped to ``bounds`` when given)."""
    _check_attack(epsilon)
    x0 = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x0), target)
        grad, = torch.autograd.grad(loss, x0)
    return _clamp(x.detach() + epsilon * grad.sign(), bounds)


@checked_arguments
def pgd_attack(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
               epsilon: float = 0.1, alpha: float = 0.025, steps: int = 10, random_start: bool = True,
               bounds: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ PGD: ``x_{t+1} = Π_{‖x' - x‖∞ ≤ ε}(x_t + α sign ∇ CE)`` from a uniform random start in the ε-ball."""
    _check_attack(epsilon, steps, alpha)
    x = x.detach()
    adv = x.clone()
    if random_start and epsilon > 0:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        adv = _clamp(x + (2 * noise - 1) * epsilon, bounds)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(adv), target)
            grad, = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * grad.sign()
        adv = _clamp(torch.min(torch.max(adv, x - epsilon), x + epsilon), bounds)
    return adv.detach()


@register_method
class TSCNCMethod(Method):
    """TSCNC: magnitude-prune once at ``sparsity`` in ``setup``, then train adversarially (FGSM, ``epsilon``) with
    the transformed-ℓ1 and condition-number penalties; masks are re-applied after every step.

    Logs ``tscnc/penalty`` and, at epoch ends, ``tscnc/max_log_cond`` (the largest ``log κ_2`` over layers).

    Args:
        sparsity: fraction of conv/linear weights removed by one global magnitude ranking (0: no pruning).
        sparse_weight: λ_s of the transformed-ℓ1 term (normalised by the number of weights).
        cond_weight: λ_c of the condition-number term (mean over layers).
        a: the transformed-ℓ1 shape parameter.
        kind: ``"frobenius"`` (log κ_F) or ``"spectral"`` (log κ_2).
        epsilon: FGSM radius in model-input units (0: clean training).
        keep_classifier: leave the last layer dense.
        ignore: module names left out (neither pruned nor penalised).
    """

    name = "tscnc"
    paper_id = "arXiv:2503.20454"
    claim = ("a condition-number constraint with a transformed sparse constraint makes highly pruned networks "
             "markedly more robust to adversarial attacks")
    claimed_effect = "no_worse"
    # found by training pairs: layers are masked by module name, so methods that replace layers go first
    after = ("batchformer", "blurpool", "squeeze_excite", "multi_sample_dropout")
    conflicts = ("weight_std", "nm_sparsity", "hesso", "maestro", "trp", "lottery_jackpots", "layer_dp")
    constraint_reason = ("tscnc masks individual weights by name and penalises their singular values: other weight "
                         "pruning, parametrizations or factorised layers would fight over them")

    def __init__(self, sparsity: float = 0.9, sparse_weight: float = 1e-4, cond_weight: float = 1e-2,
                 a: float = 1.0, kind: str = "frobenius", epsilon: float = 0.1, keep_classifier: bool = False,
                 ignore: list[str] | None = None) -> None:
        check_sparsity(sparsity)
        if sparse_weight < 0 or cond_weight < 0:
            raise ValueError(f"sparse_weight and cond_weight must be >= 0, got {sparse_weight} and {cond_weight}")
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        _check_attack(epsilon)
        self.sparsity, self.sparse_weight, self.cond_weight, self.a = sparsity, sparse_weight, cond_weight, a
        self.kind, self.epsilon, self.keep_classifier = kind, epsilon, keep_classifier
        self.ignore = list(ignore or [])
        self.layers: list[str] = []
        self.masks: dict[str, torch.Tensor] = {}
        self._model: nn.Module | None = None

    def setup(self, ctx: Context) -> None:
        try:
            ignore = check_ignore(ctx.model, self.ignore)
        except ValueError as error:
            raise ConfigurationError(f"tscnc: {error}") from error
        layers = prunable_layers(ctx.model, ignore, skip_last=self.keep_classifier)
        if not layers:
            raise ConfigurationError("tscnc found no conv/linear layer to prune and penalise")
        self._model = ctx.model
        self.layers = [n for n, _ in layers]
        if self.sparsity > 0 and not self.masks:
            self.masks = global_magnitude_masks({n: m.weight for n, m in layers}, self.sparsity)
        if self.masks:
            apply_masks(ctx.model, self.masks)

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        if self.epsilon > 0 and isinstance(x, torch.Tensor) and x.is_floating_point():
            x = fgsm_example(model, x, y, self.epsilon)
        loss, output = next(model, x, y)
        penalty = tscnc_penalty(self._model, self.sparse_weight, self.cond_weight, self.a, self.kind, self.layers)
        self.log(ctx, "penalty", penalty)
        return loss + penalty, output

    def after_step(self, ctx: Context) -> None:
        if self._model is not None and self.masks:
            apply_masks(self._model, self.masks)

    def on_epoch_end(self, ctx: Context) -> None:
        if self._model is not None and self.layers:
            kappas = condition_numbers(self._model)
            finite = [v for n, v in kappas.items() if n in self.layers]
            if finite:
                self.log(ctx, "max_log_cond", float(torch.tensor(max(finite)).log()))

    def state_dict(self) -> dict[str, Any]:
        return {"masks": {k: v.clone() for k, v in self.masks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.masks = {k: torch.as_tensor(v, dtype=torch.bool) for k, v in state.get("masks", {}).items()}
        if self._model is not None and self.masks:
            apply_masks(self._model, self.masks)
