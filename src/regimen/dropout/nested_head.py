"""Nested dropout on the penultimate features, evaluated at the best prefix k: a defence against noisy labels.

Paper: Yingyi Chen, Shell Xu Hu, Xi Shen, Chunrong Ai, Johan A. K. Suykens, "Compressing Features for Learning with
Noisy Labels", IEEE TNNLS 2022, arXiv 2206.13140 (reference code: github.com/yingyichen-cyy/Nested-Co-teaching).

Formula: the classifier is z = W (m_k ⊙ h) + b on the D-dimensional penultimate feature h, with the prefix mask
m_k = (1, ..., 1, 0, ..., 0) (k ones). In training **one** k per batch is drawn from the half-Gaussian
p(k) ∝ exp(-((k - mu) / sigma)^2), k = 1..D, mu = 0 (:func:`regimen.dropout.half_gaussian_nested_index`); the
features are **not** rescaled. The leading units are then trained most and carry the signal: the feature is
compressed, which resists memorising the noisy labels. At evaluation every k is scored on the validation set and
the best one is kept (``TestNested`` in the reference; ties go to the smaller k, as the reference's
``acc - 1e-5 k``).

Implementation: :class:`NestedLinear` is an ``nn.Linear`` (built through its constructor, the old Parameters moved in,
so ``state_dict`` keys are unchanged) that masks its input. :func:`nested_prefix_logits` scores all D prefixes in one
pass: logits_k = b + Σ_{j<=k} h_j W[:, j] is a cumulative sum over j of h_j W[:, j] (N x D x C), never a loop over k.
:func:`apply_nested_dropout_head` swaps the model's final Linear (the head found as multi-sample dropout finds it:
``stages[-1]`` / ``head`` / ``fc`` / ``classifier``, or ``module=``); :func:`select_nested_k` picks k on a dataset.

Pitfalls handled:

- Per batch, not per sample: regimen's :class:`~regimen.dropout.NestedDropout` defaults to Rippel et al.'s
  per-sample Geometric draw; the paper's sampler is the per-batch half-Gaussian.
- Evaluate at the chosen k, not at full width (the method's ``eval_k``; ``None`` = full width before any selection).
- k is chosen on the validation split (clean labels: ``data.options.label_noise`` corrupts the training split only);
  without one the training split (noisy) is used, with a warning.
- A head with its own dropout (``ClassifierHead(dropout=...)``) keeps it: nested dropout is applied to the Linear's
  input, after it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from regimen.dropout._common import check_generator, locate_submodule
from regimen.dropout.multisample import default_head
from regimen.dropout.nested import _check_sigma, half_gaussian_nested_index
from regimen.method import Context, Method, checked_arguments, register_method, require_same_device

__all__ = [
    "NestedDropoutMethod",
    "NestedLinear",
    "apply_nested_dropout_head",
    "find_classifier_linear",
    "nested_prefix_logits",
    "select_nested_k",
]


@checked_arguments
def nested_prefix_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
                         ) -> torch.Tensor:
    """Logits of every prefix: ``(N, D, C)`` with ``[:, k-1]`` = ``W (m_k ⊙ h) + b`` for k = 1..D.

    Args:
        features: ``(N, D)`` penultimate features h.
        weight: ``(C, D)``; bias: ``(C,)`` or ``None``.
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(getattr(features, 'shape', ()))}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (C, {features.shape[1]}), got {tuple(weight.shape)}")
    require_same_device(features=features, weight=weight, bias=bias)
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},) like weight's rows, got {tuple(bias.shape)}")
    contributions = features.unsqueeze(2) * weight.t().unsqueeze(0)  # (N, D, C): h_j W[:, j]
    logits = torch.cumsum(contributions, dim=1)
    return logits if bias is None else logits + bias


@checked_arguments
class NestedLinear(nn.Linear):
    """``nn.Linear`` whose input keeps only a prefix of k units: in training one half-Gaussian k per batch, in eval
    ``eval_k`` (``None``: all units).

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        sigma, mu: the half-Gaussian p(k) ∝ exp(-((k - mu) / sigma)^2) over k = 1..in_features.
        generator: random source of k (the layer keeps this object).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, sigma: float = 10.0, mu: float = 0.0,
                 generator: torch.Generator | None = None, device: Any = None, dtype: Any = None) -> None:
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features} and {out_features}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.sigma, self.mu = _check_sigma(sigma, mu)
        self.generator = check_generator(generator)
        self.eval_k: int | None = None
        self.last_k: int | None = None

    def sample_k(self) -> int:
        return half_gaussian_nested_index(self.in_features, self.sigma, self.mu, self.generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        k = self.sample_k() if self.training else self.eval_k
        self.last_k = k
        if k is None or k >= self.in_features:
            return F.linear(x, self.weight, self.bias)
        mask = (torch.arange(self.in_features, device=x.device) < k).to(x.dtype)
        return F.linear(x * mask, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma}, mu={self.mu}, eval_k={self.eval_k}"


@checked_arguments
def find_classifier_linear(model: nn.Module, module: str | None = None) -> str:
    """Dotted name of the model's final Linear: ``module`` itself when it is a Linear, else its child ``fc`` (a
    :class:`~regimen.models.ClassifierHead`); by default the head found by convention (``stages[-1]``, ``head``,
    ``fc``, ``classifier``)."""
    name = default_head(model, "nested dropout (find_classifier_linear)") if module is None else module
    found = locate_submodule(model, name, "module")[2]
    if isinstance(found, nn.Linear):
        return name
    child = getattr(found, "fc", None)
    if isinstance(child, nn.Linear):
        return f"{name}.fc"
    raise ValueError(f"module: {name!r} is a {type(found).__name__}, neither an nn.Linear nor a head with a Linear "
                     "`fc`; pass module='<dotted name of the classifier Linear>'")


@checked_arguments
def apply_nested_dropout_head(model: nn.Module, sigma: float = 10.0, mu: float = 0.0, *, module: str | None = None,
                              optimizer: torch.optim.Optimizer | None = None,
                              generator: torch.Generator | None = None) -> NestedLinear:
    """Replace the model's classifier Linear by a :class:`NestedLinear` (same Parameters) in place; returns it.

    Args:
        model: any model whose classifier is an ``nn.Linear`` (see :func:`find_classifier_linear`).
        sigma, mu: the half-Gaussian over the kept-unit count.
        module: dotted name of the classifier Linear or of a head holding it as ``fc``.
        optimizer: checked to hold the Linear's parameters (they are moved, not copied, so it stays bound).
        generator: random source of k.

    Raises:
        ValueError/TypeError naming the argument; the model is unchanged then.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_sigma(sigma, mu)
    check_generator(generator)
    name = find_classifier_linear(model, module)
    holder, key, old = locate_submodule(model, name, "module")
    if isinstance(old, NestedLinear):
        raise ValueError(f"module: nested dropout is already applied to {name!r}")
    if parametrize.is_parametrized(old):
        raise ValueError(f"module: {name!r} has a parametrized weight (e.g. N:M sparsity); apply nested dropout first")
    if optimizer is not None:
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not all(id(p) in held for p in old.parameters() if p.requires_grad):
            raise ValueError("optimizer does not hold the classifier's parameters; build it from this model")
    new = NestedLinear(old.in_features, old.out_features, old.bias is not None, sigma, mu, generator,
                       device="meta")
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    setattr(holder, key, new)
    return new


def nested_layers(model: nn.Module) -> list[NestedLinear]:
    return [m for m in model.modules() if isinstance(m, NestedLinear)]


@torch.no_grad()
@checked_arguments
def select_nested_k(model: nn.Module, dataset: Any, normalize=None, batch_size: int = 1000,
                    device: torch.device | str = "cpu") -> tuple[int, float]:
    """Score every prefix k of the model's (single) :class:`NestedLinear` on ``dataset`` (``gather(indices)`` ->
    inputs, labels) and set its ``eval_k`` to the best; returns ``(k, accuracy at k)``. Ties go to the smaller k."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = nested_layers(model)
    if len(layers) != 1:
        raise ValueError(f"model must hold exactly one NestedLinear, found {len(layers)}; apply "
                         "apply_nested_dropout_head first")
    layer = layers[0]
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    was_training = model.training
    model.eval()
    correct = torch.zeros(layer.in_features, dtype=torch.float64)
    total = 0
    try:
        for start in range(0, len(dataset), batch_size):
            x, y = dataset.gather(torch.arange(start, min(start + batch_size, len(dataset))), device)
            captured.clear()
            model(normalize(x) if normalize is not None else x)
            features = captured[-1].flatten(1)
            logits = nested_prefix_logits(features.float(), layer.weight.float(),
                                          None if layer.bias is None else layer.bias.float())
            correct += (logits.argmax(dim=2) == y.unsqueeze(1)).sum(0).double().cpu()
            total += len(y)
    finally:
        handle.remove()
        model.train(was_training)
    accuracy = correct / max(total, 1)
    best = int(torch.argmax(accuracy - 1e-9 * torch.arange(len(accuracy), dtype=torch.float64)))  # first maximum
    layer.eval_k = best + 1
    return best + 1, float(accuracy[best])


@register_method
class NestedDropoutMethod(Method):
    """Nested dropout (one half-Gaussian prefix k per batch) on the penultimate features, evaluated at the best k
    (Chen et al. 2022, noisy labels).

    Args:
        sigma: width of p(k) ∝ exp(-((k - mu) / sigma)^2), in units (paper: 10 for CIFAR-10 with D = 512).
        mu: its centre (paper: 0).
        module: dotted name of the classifier Linear (default: found by convention).
        select_every: choose k on the validation split every this many epochs (and always after the last epoch).
    """

    name = "nested_dropout"
    inputs = ()
    targets = ("labels",)
    before = ("nm_sparsity",)
    conflicts = ("nested_width",)
    constraint_reason = ("nested dropout swaps the classifier Linear for a NestedLinear, which needs a plain weight "
                         "(nm_sparsity parametrizes it, so list nested_dropout first); nested_width slices the same "
                         "features by its own prefix")
    paper_id = "arXiv:2206.13140"
    claim = ("nested dropout on the penultimate features compresses them and resists label noise: Clothing1M "
             "73.1 vs CE 67.2 top-1 (74.9 with co-teaching)")
    claimed_effect = "better"

    def __init__(self, sigma: float = 10.0, mu: float = 0.0, module: str | None = None, select_every: int = 1) -> None:
        self.sigma, self.mu = _check_sigma(sigma, mu)
        if isinstance(select_every, bool) or not isinstance(select_every, int) or select_every < 1:
            raise ValueError(f"select_every must be an int >= 1, got {select_every!r}")
        self.module, self.select_every = module, select_every
        self.eval_k: int | None = None

    def setup(self, ctx: Context) -> None:
        self.layer = apply_nested_dropout_head(ctx.model, self.sigma, self.mu, module=self.module,
                                               optimizer=ctx.optimizer, generator=ctx.generator)
        self.layer.eval_k = self.eval_k

    def on_epoch_end(self, ctx: Context) -> None:
        last = ctx.epoch + 1 == ctx.run.epochs
        if (ctx.epoch + 1) % self.select_every and not last:
            return
        data = getattr(ctx, "val_data", None)
        if data is None:
            warnings.warn("nested_dropout: no validation split; choosing k on the (possibly noisy) training split",
                          UserWarning, stacklevel=2)
            data = ctx.train_data
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        self.eval_k, accuracy = select_nested_k(model, data, ctx.normalize, device=ctx.run.device)
        self.log(ctx, "k", self.eval_k)
        self.log(ctx, "val_acc_at_k", accuracy)

    def state_dict(self) -> dict[str, Any]:
        return {"eval_k": self.eval_k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eval_k = state.get("eval_k")
        if getattr(self, "layer", None) is not None:
            self.layer.eval_k = self.eval_k
