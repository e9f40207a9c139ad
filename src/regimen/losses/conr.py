"""ConR: a contrastive regulariser for (imbalanced) regression.

Paper: Keramati, Meng & Evans, "ConR: Contrastive Regularizer for Deep Imbalanced Regression", ICLR 2024,
arXiv 2309.06651 (reference: BorealisAI/ConR, ``agedb-dir/loss.py::ConR``, ``agedb-dir/train.py``).

With features ``q = normalize(z)`` (the input of the model's last linear layer), labels y, detached predictions ŷ,
window ``w`` (label units), temperature τ, pushing strength ``e`` and per-anchor weights ω::

    pos_ij = |y_i - y_j| <= w, j ≠ i            neg_ij = |y_i - y_j| > w  and  |ŷ_i - ŷ_j| <= w   ("confusions")
    s_ij = q_i · q_j / τ                        P_ij = ω_i · exp(e · |y_i - y_j|)
    L_i = -(1/|pos_i|) Σ_{j ∈ pos_i} log( e^{s_ij} / (D⁺_i + Σ_k neg_ik P_ik e^{s_ik}) )
    L = mean_i ω_i L_i   (L_i = 0 for an anchor without a negative or without a positive)

and the training loss is ``task_loss + β L``. Defaults follow ``agedb-dir/train.py``: w = 1, β = 4, e = 0.01,
τ = 0.07.

Pitfalls handled:

* **τ**: the reference hard-codes ``t = 0.07`` inside ``ConR`` and ignores its ``-t 0.2`` argument; 0.07 is our
  default and ``temperature`` sets it for real.
* **the denominator**: the reference's positive sum is ``exp(s · pos).sum(1)`` over *all* columns, so every
  non-positive column (and the anchor itself) adds e⁰ = 1: ``D⁺_i = Σ_k e^{s_ik·pos_ik}`` with ``faithful=True``
  (default, the reference's behaviour); ``faithful=False`` gives the masked form ``D⁺_i = Σ_k pos_ik e^{s_ik}``.
* anchors without a negative are zeroed but still counted in the mean (as in the reference), which dilutes the loss;
* the masked form's denominator is 0 for an anchor without positives and negatives: it is replaced by 1 before the
  log (the anchor is zeroed anyway), else its inf · 0 turns every gradient into NaN;
* the reference always has a positive (each image's second augmented view); a single-view batch may not, so
  ``|pos_i| = 0`` gives L_i = 0 instead of a division by zero;
* ``w`` is in label units: rescale it when targets are standardised (our regression task keeps its units);
* ω: ``reweight="none"`` (1) or ``"sqrt_inv"``: the inverse square root of the label-distribution-smoothed
  (LDS, Yang et al. 2021: Gaussian kernel, 5 bins wide, σ = 2 bins) training histogram at each anchor's label, scaled
  to mean 1 over the training set. Unlike the reference, ω does not reweight the task loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device

__all__ = ["ConRMethod", "conr_loss", "lds_weights"]


@checked_arguments
def conr_loss(features: torch.Tensor, target: torch.Tensor, prediction: torch.Tensor, window: float = 1.0,
              temperature: float = 0.07, push: float = 0.01, weights: torch.Tensor | None = None,
              faithful: bool = True, reduction: str = "mean") -> torch.Tensor:
    """ConR's contrastive term (module docstring), vectorised over the batch.

    Args:
        features: ``(N, d)`` features z (normalised here).
        target: ``(N,)`` labels y.
        prediction: ``(N,)`` predictions ŷ (detached here).
        window: w, in label units (> 0).
        temperature: τ (> 0).
        push: e, the pushing strength of far-label confusions.
        weights: ``(N,)`` anchor weights ω (default 1).
        faithful: keep the reference's denominator (every non-positive column adds 1) or mask it.
        reduction: ``"mean"`` (the reference's mean over all anchors), ``"sum"`` or ``"none"`` (``ω_i L_i``).
    """
    if features.dim() != 2 or target.dim() != 1 or prediction.dim() != 1 or not (
            features.shape[0] == target.shape[0] == prediction.shape[0]):
        raise ValueError(f"features (N, d), target (N,) and prediction (N,) must agree, got {tuple(features.shape)}, "
                         f"{tuple(target.shape)} and {tuple(prediction.shape)}")
    if not (window > 0 and temperature > 0):
        raise ValueError(f"window and temperature must be > 0, got {window} and {temperature}")
    require_same_device(features=features, target=target, prediction=prediction, weights=weights)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    n = features.shape[0]
    q = F.normalize(features.float(), dim=1)
    y, p = target.float(), prediction.detach().float()
    w = torch.ones(n, device=q.device) if weights is None else weights.float()
    label_gap = (y.unsqueeze(0) - y.unsqueeze(1)).abs()
    eye = torch.eye(n, dtype=torch.bool, device=q.device)
    pos = (label_gap <= window) & ~eye
    neg = (label_gap > window) & ((p.unsqueeze(0) - p.unsqueeze(1)).abs() <= window)
    s = q @ q.T / temperature
    if faithful:
        positive_sum = torch.exp(s * pos).sum(1)  # masked entries contribute exp(0) = 1, as in the reference
    else:
        positive_sum = (torch.exp(s) * pos).sum(1)
    pushing = w.unsqueeze(1) * torch.exp(push * label_gap)
    negative_sum = (pushing * torch.exp(s) * neg).sum(1)
    denominator = positive_sum + negative_sum
    # the masked form of an anchor without positives or negatives has a zero denominator: log(1) there (the anchor
    # is zeroed below) keeps inf and NaN out of the backward pass
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    log_ratio = s - torch.log(denominator).unsqueeze(1)  # log(e^{s_ij} / denominator_i)
    count = pos.sum(1)
    per_anchor = -torch.where(pos, log_ratio, torch.zeros_like(log_ratio)).sum(1) / count.clamp_min(1)
    per_anchor = torch.where(neg.any(1) & (count > 0), per_anchor, torch.zeros_like(per_anchor)) * w
    if reduction == "none":
        return per_anchor
    return per_anchor.sum() if reduction == "sum" else per_anchor.mean()


@checked_arguments
def lds_weights(train_targets: torch.Tensor, bin_width: float, kernel_size: int = 5,
                sigma: float = 2.0) -> tuple[torch.Tensor, float]:
    """Per-bin ``sqrt_inv`` weights of label-distribution smoothing (Yang et al., ICML 2021, arXiv 2102.09554): the
    training histogram (bins of ``bin_width`` from the smallest target) convolved with a Gaussian kernel, its inverse
    square root, scaled so the training samples' mean weight is 1. Returns ``(weights per bin, lowest target)``."""
    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0, got {bin_width}")
    if not sigma > 0 or kernel_size < 1:
        raise ValueError(f"sigma must be > 0 and kernel_size >= 1, got sigma={sigma}, kernel_size={kernel_size}")
    if not isinstance(train_targets, torch.Tensor) or train_targets.dim() != 1 or train_targets.numel() == 0:
        raise ValueError(f"train_targets must be a non-empty 1-d tensor, got "
                         f"{tuple(getattr(train_targets, 'shape', ()))}")
    require_data(train_targets=train_targets)
    if train_targets.dtype == torch.bool or not bool(torch.isfinite(train_targets).all()):
        raise ValueError("train_targets must be finite numbers")
    if float(train_targets.max() - train_targets.min()) / bin_width > 1e7:
        raise ValueError(f"train_targets span {float(train_targets.max() - train_targets.min()):g}: more than 10^7 "
                         f"bins of bin_width={bin_width:g}")
    low = float(train_targets.min())
    index = ((train_targets.double() - low) / bin_width).floor().long()
    counts = torch.bincount(index).double()
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets.square() / (2 * sigma**2))
    kernel = kernel / kernel.max()
    smoothed = F.conv1d(F.pad(counts.view(1, 1, -1), (half, half)), kernel.view(1, 1, -1)).flatten()
    weights = smoothed.clamp_min(1e-12).rsqrt()
    weights = weights / weights[index].mean()
    return weights.float(), low


def _last_linear(model: nn.Module) -> nn.Linear:
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise ValueError("conr needs a model with an nn.Linear read-out (its input is the feature ConR contrasts)")
    return layers[-1]


@register_method
class ConRMethod(Method):
    """Add ConR's contrastive regulariser β·L_ConR to the regression loss (Keramati et al., ICLR 2024)."""

    name = "conr"
    paper_id = "arXiv:2309.06651"
    claim = ("a contrastive regulariser that pushes apart far-label samples with close predictions improves deep "
             "imbalanced regression, most on the few-shot region (AgeDB-DIR, IMDB-WIKI-DIR, NYUD2-DIR, MPIIGaze-DIR)")
    claimed_effect = "better"
    targets = ("real",)

    def __init__(self, beta: float = 4.0, window: float = 1.0, temperature: float = 0.07, push: float = 0.01,
                 faithful: bool = True, reweight: str = "none", bin_width: float = 1.0) -> None:
        if not beta >= 0:
            raise ValueError(f"conr: beta must be >= 0, got {beta}")
        if not (window > 0 and temperature > 0 and bin_width > 0):
            raise ValueError(f"conr: window, temperature and bin_width must be > 0, got {window}, {temperature} and "
                             f"{bin_width}")
        if reweight not in ("none", "sqrt_inv"):
            raise ValueError(f"conr: reweight must be 'none' or 'sqrt_inv', got {reweight!r}")
        self.beta, self.window, self.temperature, self.push = float(beta), float(window), float(temperature), push
        self.faithful, self.reweight, self.bin_width = bool(faithful), reweight, float(bin_width)
        self.features: torch.Tensor | None = None
        self.bin_weights: torch.Tensor | None = None
        self.low = 0.0

    def setup(self, ctx: Context) -> None:
        _last_linear(ctx.model).register_forward_hook(self._capture)
        if self.reweight == "sqrt_inv":
            targets = getattr(ctx.train_data, "targets", None)
            if not isinstance(targets, torch.Tensor) or not targets.is_floating_point() or targets.dim() != 1:
                raise ValueError("conr: reweight='sqrt_inv' needs float training targets (N,)")
            self.bin_weights, self.low = lds_weights(targets, self.bin_width)
            self.bin_weights = self.bin_weights.to(ctx.run.device)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module.training:
            self.features = inputs[0]

    def _weights(self, target: torch.Tensor) -> torch.Tensor | None:
        if self.bin_weights is None:
            return None
        index = ((target.double() - self.low) / self.bin_width).floor().long().clamp(0, len(self.bin_weights) - 1)
        return self.bin_weights[index]

    def criterion(self, output: Any, target: torch.Tensor, next, ctx: Context, reduction: str = "mean"):
        base = next(output, target, reduction=reduction)
        features, self.features = self.features, None
        if features is None or not isinstance(output, torch.Tensor) or output.shape != target.shape:
            return base  # no captured training features (evaluation, bags): the task loss alone
        if features.shape[0] != target.shape[0]:
            features = features.reshape(target.shape[0], -1)
        term = conr_loss(features, target, output, self.window, self.temperature, self.push, self._weights(target),
                         self.faithful, reduction=reduction)
        return base + self.beta * term
