"""Multi-sample dropout: K dropout masks on the head's features, one shared classifier, the mean of the K losses.

Paper: Hiroshi Inoue, "Multi-Sample Dropout for Accelerated Training and Better Generalization", 2019,
arXiv 1905.09788.

Formula: h = features(x) (the backbone and the head's pooling run once); for k = 1..K,
z_k = W (m_k ⊙ h) / (1 - p_k) + b with m_k ~ Bernoulli(1 - p_k) elementwise; the loss is
L = (1/K) Σ_k CE(z_k, y) (:func:`regimen.losses.multi_sample_cross_entropy`). At evaluation the layer is one
deterministic pass z = W h + b, shape (N, C).

Implementation: the K masks are one tensor (K, N, D), the K dropped copies one broadcasted product, and for a Linear
classifier the K logits one batched matmul (K·N rows) — never a Python loop of K head calls. A head that is not a
Linear / :class:`~regimen.models.ClassifierHead` runs once on the (K·N, ...) stacked batch.

Pitfalls handled:

- The paper averages the K *losses*. Averaging the logits first is a different objective (it is ordinary dropout
  with a smaller effective noise on the loss), available only as ``average="logits"``.
- The loss is applied to the K logits z_k, never to the dropped features m_k ⊙ h themselves.
- A :class:`~regimen.models.ClassifierHead` with its own dropout: the multi-sample masks replace it (the head's
  dropout is skipped), so the features are not dropped twice.
- Wrapping the head keeps ``state_dict`` keys unchanged (the wrapper renames ``head.*`` on save/load), so a
  checkpoint of a model trained with multi-sample dropout loads into the plain reference model and vice versa.
- In training the wrapped model returns (K, N, C): only a loss that knows it (this module's Method, or
  :func:`~regimen.losses.multi_sample_cross_entropy`) should consume it; in eval it returns (N, C).

Which head (:func:`apply_multi_sample_dropout`), on any model: the module named by ``module=``, or by convention
``model.stages[-1]`` when the model has a ``stages`` list (regimen's staged models), else its child ``head``, ``fc``
or ``classifier`` (timm, torchvision), the first that exists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from regimen._compat import renamed_arguments
from regimen.dropout._common import (
    TransparentWrapper,
    check_generator,
    check_probabilities,
    check_tensor,
    locate_submodule,
    rand,
    replace_submodule,
)
from regimen.errors import ConfigurationError
from regimen.losses import multi_sample_cross_entropy
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = [
    "HEAD_NAMES",
    "INNER_MODEL_NAMES",
    "MultiSampleDropout",
    "MultiSampleDropoutMethod",
    "apply_multi_sample_dropout",
    "default_head",
    "multi_sample_dropout",
    "multi_sample_dropout_masks",
]


def _keep_probabilities(p: float | Sequence[float], num_samples: int) -> list[float]:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise TypeError(f"num_samples must be an int >= 1, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    probs = check_probabilities(p, "p")
    if len(probs) == 1:
        probs = probs * num_samples
    if len(probs) != num_samples:
        raise ValueError(f"p must be one probability or a list of num_samples={num_samples} of them, got {len(probs)}")
    return probs


@checked_arguments
def multi_sample_dropout_masks(
    num_samples: int,
    shape: Sequence[int],
    p: float | Sequence[float] = 0.5,
    *,
    like: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One tensor of K inverted-dropout masks of shape ``(K, *shape)``: ``mask_k = Bernoulli(1 - p_k) / (1 - p_k)``.

    Args:
        num_samples: K, the number of dropout samples (>= 1).
        shape: shape of one sample's input, e.g. ``(N, D)``.
        p: drop probability in [0, 1), or a list of K of them (one per sample).
        like: tensor giving dtype and device of the masks (float32 on CPU when None).
        generator: random source (the global RNG when None).
    """
    probs = _keep_probabilities(p, num_samples)
    like = torch.empty(0) if like is None else like
    keep = torch.tensor([1.0 - q for q in probs], dtype=like.dtype, device=like.device)
    keep = keep.view(num_samples, *([1] * len(shape)))
    noise = rand((num_samples, *shape), like, generator)
    return (noise < keep).to(like.dtype) / keep


@checked_arguments
def multi_sample_dropout(
    features: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_samples: int = 8,
    p: float | Sequence[float] = 0.5,
    *,
    training: bool = True,
    masks: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits of K dropout samples through one linear classifier: ``(K, N, C)`` (``(N, C)`` when not training).

    Args:
        features: ``(N, D)`` features (the backbone's pooled output).
        weight: ``(C, D)`` classifier weight; ``bias``: ``(C,)`` or None.
        num_samples: K; p: drop probability or a list of K of them.
        training: when False, one deterministic pass ``features @ weight.T + bias`` of shape ``(N, C)``.
        masks: replay these ``(K, N, D)`` masks (already scaled) instead of drawing new ones.
        generator: random source for the masks.
    """
    check_tensor(features, "features", exact_dim=2)
    check_tensor(weight, "weight", exact_dim=2)
    if weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (C, {features.shape[1]}) to match features, got {tuple(weight.shape)}")
    for name, other in (("weight", weight), ("bias", bias)):
        if other is not None and (other.dtype != features.dtype or other.device != features.device):
            raise ValueError(f"{name} must have the dtype and device of features ({features.dtype}, {features.device}),"
                             f" got {other.dtype}, {other.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be ({weight.shape[0]},) like weight's rows, got {tuple(bias.shape)}")
    if not training:
        _keep_probabilities(p, num_samples)
        return F.linear(features, weight, bias)
    if masks is None:
        masks = multi_sample_dropout_masks(num_samples, features.shape, p, like=features, generator=generator)
    elif masks.shape != (num_samples, *features.shape):
        raise ValueError(f"masks must have shape {(num_samples, *features.shape)}, got {tuple(masks.shape)}")
    dropped = features.unsqueeze(0) * masks  # (K, N, D), one broadcasted product
    # one matmul over the K*N stacked rows
    return F.linear(dropped.reshape(-1, features.shape[1]), weight, bias).view(num_samples, features.shape[0],
                                                                             weight.shape[0])


@checked_arguments
class MultiSampleDropout(TransparentWrapper):
    """Wrap a classifier head: K dropout samples of its features in training (``(K, N, C)``), ``(N, C)`` in eval.

    Args:
        head: the head module. A :class:`~regimen.models.ClassifierHead` (``features`` + ``fc``) or an
            ``nn.Linear`` gets the vectorised path (one batched matmul); any other module is applied once to the
            (K·N, ...) stacked dropped inputs.
        num_samples: K >= 1.
        p: drop probability in [0, 1), or a list of K probabilities.
        generator: random source for the masks (``None``: the global RNG); the layer keeps this object.

    ``forward(x, masks=None)``: ``masks`` of shape ``(K, N, D)`` replays given masks (tests, analysis).
    """

    mc_dropout = False  # MC inference over this layer would change the output shape; it is off at inference.
    wrapped_name = "head"  # state_dict keys are the head's own

    def __init__(
        self,
        head: nn.Module,
        num_samples: int = 8,
        p: float | Sequence[float] = 0.5,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(head, nn.Module):
            raise TypeError(f"head must be an nn.Module, got {type(head).__name__}")
        if isinstance(head, MultiSampleDropout):
            raise TypeError("head is already a MultiSampleDropout")
        self.probs = _keep_probabilities(p, num_samples)
        self.num_samples = num_samples
        self.head = head
        self.generator = check_generator(generator)

    def _parts(self) -> tuple[Any, nn.Module | None]:
        """(features function, Linear classifier or None)."""
        head = self.head
        if isinstance(head, nn.Linear):
            return (lambda x: x), head
        fc = getattr(head, "fc", None)
        features = getattr(head, "features", None)
        if isinstance(fc, nn.Linear) and callable(features):
            return features, fc
        return (lambda x: x), None

    def sample_masks(self, features: torch.Tensor) -> torch.Tensor:
        """Draw ``(K, N, D)`` masks for ``features (N, D)`` from this layer's generator."""
        return multi_sample_dropout_masks(
            self.num_samples, features.shape, self.probs, like=features, generator=self.generator
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the masks multiply: the head's pooled features (or the input itself for other heads)."""
        return self._parts()[0](x)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        features_fn, fc = self._parts()
        if fc is None:  # generic head: dropout on its input, head applied once to the stacked K*N batch
            if not self.training:
                return self.head(x)
            if masks is None:
                masks = multi_sample_dropout_masks(
                    self.num_samples, x.shape, self.probs, like=x, generator=self.generator
                )
            elif masks.shape != (self.num_samples, *x.shape):
                raise ValueError(f"masks must have shape {(self.num_samples, *x.shape)}, got {tuple(masks.shape)}")
            stacked = (x.unsqueeze(0) * masks).reshape(-1, *x.shape[1:])
            out = self.head(stacked)
            return out.view(self.num_samples, x.shape[0], *out.shape[1:])
        h = features_fn(x)
        if not self.training:
            return fc(h)
        if masks is None:
            masks = self.sample_masks(h)
        return multi_sample_dropout(
            h, fc.weight, fc.bias, self.num_samples, self.probs, training=True, masks=masks
        )

    def extra_repr(self) -> str:
        probs = self.probs[0] if len(set(self.probs)) == 1 else self.probs
        return f"num_samples={self.num_samples}, p={probs}"


#: Children that :func:`default_head` takes for the classifier head, in this order, when there is no ``stages`` list.
HEAD_NAMES = ("head", "fc", "classifier")
#: Children of a wrapper (nested widths, DDP) whose inner model :func:`default_head` searches when the wrapper itself
#: has no head.
INNER_MODEL_NAMES = ("model", "module")


def _find_head(model: nn.Module) -> str | None:
    stages = model._modules.get("stages")
    if isinstance(stages, nn.ModuleList) and len(stages) > 0:
        return f"stages.{len(stages) - 1}"
    for name in HEAD_NAMES:
        if model._modules.get(name) is not None:
            return name
    for name in INNER_MODEL_NAMES:
        inner = model._modules.get(name)
        found = _find_head(inner) if inner is not None else None
        if found is not None:
            return f"{name}.{found}"
    return None


@checked_arguments
def default_head(model: nn.Module, what: str = "this surgery") -> str:
    """Dotted name of the classifier head by convention: ``stages.<last>`` when the model has a non-empty ``stages``
    ModuleList, else the first of its children named ``head``, ``fc``, ``classifier``; a wrapper without either is
    searched through its child ``model`` or ``module`` (the inner model). ``what`` names the caller in the error.

    Raises:
        ConfigurationError: none of them exists.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found = _find_head(model)
    if found is None:
        raise ConfigurationError(
            f"{what} needs the classifier head: pass module='<dotted name>' (e.g. module='fc'), or give "
            f"the model a `stages` ModuleList ending in the head or a child named head, fc or classifier; "
            f"{type(model).__name__} has none of them"
        )
    return found


@renamed_arguments(module_name="module")
@checked_arguments
def apply_multi_sample_dropout(
    model: nn.Module,
    num_samples: int = 8,
    p: float | Sequence[float] = 0.5,
    *,
    module: str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Replace the model's head by ``MultiSampleDropout(head, num_samples, p)`` in place and return the model.

    Args:
        model: any model; its head is ``module`` or found by convention (:func:`default_head`).
        num_samples, p: as in :class:`MultiSampleDropout`.
        module: dotted name of the head to wrap (e.g. ``"classifier"``); ``module_name=`` is the deprecated
            spelling.
        optimizer: accepted for the surgery contract; the wrapper holds the head itself (the same Parameters), so
            the optimizer stays bound to them (checked).
        generator: random source for the masks (the layer keeps this object).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _keep_probabilities(p, num_samples)
    name = default_head(model, "multi_sample_dropout") if module is None else module
    head = locate_submodule(model, name, "module")[2]
    if isinstance(head, MultiSampleDropout):
        raise ValueError(f"multi-sample dropout is already applied to {name!r}")
    if optimizer is not None:
        params = {id(q) for group in optimizer.param_groups for q in group["params"]}
        if not all(id(q) in params for q in head.parameters() if q.requires_grad):
            raise ValueError("optimizer does not hold the head's parameters; build it from this model")
    replace_submodule(model, name, lambda old: MultiSampleDropout(old, num_samples, p, generator), "module")
    return model


def _repeat_rows(target: torch.Tensor, times: int) -> torch.Tensor:
    """``[t, t, ..., t]`` along the rows: row ``k N + i`` is ``t[i]``, matching a (K, N, C) -> (K N, C) reshape."""
    return target.repeat(times, *([1] * (target.dim() - 1)))


@register_method
class MultiSampleDropoutMethod(Method):
    """Multi-sample dropout on the head (Inoue 2019): K dropout samples, mean of the K losses.

    Args:
        num_samples: K >= 1.
        p: drop probability, or a list of K of them.
        average: ``"losses"`` (the paper: mean of K cross-entropies) or ``"logits"`` (CE of the mean logits).
        module: dotted name of the head to wrap; default by convention (:func:`default_head`).

    In training the wrapped model returns (K, N, C). The ``forward_loss`` link hands the inner links a model whose
    output is flattened to K·N rows and targets repeated K times, so every loss after it (the task's loss with its
    label smoothing and soft targets, logit z-loss, aug_subset's weights ...) applies per dropout sample, whatever
    the recipe order; it returns the mean over K of the logits as the output (for the training metrics and for
    methods wrapping it, such as nested widths). The ``criterion`` link does the same flattening for a (K, N, C)
    output handed to ``ctx.criterion`` directly; ``reduction="none"`` gives each sample's mean over K, ``"sum"``
    their sum. With the task's cross-entropy the loss equals :func:`regimen.losses.multi_sample_cross_entropy`.
    """

    name = "multi_sample_dropout"
    paper_id = "arXiv:1905.09788"
    claim = (
        "several dropout samples per batch through one shared head accelerate training and improve "
        "generalisation"
    )
    claimed_effect = "better"
    targets = ("labels",)

    def __init__(
        self,
        num_samples: int = 8,
        p: float | list[float] = 0.5,
        average: Literal["losses", "logits"] = "losses",
        module: str | None = None,
    ) -> None:
        _keep_probabilities(p, num_samples)
        if average not in ("losses", "logits"):
            raise ValueError(f"average must be 'losses' or 'logits', got {average!r}")
        self.num_samples = num_samples
        self.p = p
        self.average = average
        self.module = module

    def setup(self, ctx: Context) -> None:
        apply_multi_sample_dropout(
            ctx.model, self.num_samples, self.p, module=self.module, optimizer=ctx.optimizer, generator=ctx.generator
        )

    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        num_samples = self.num_samples
        logits_mean = self.average == "logits"

        def flat_model(*args: Any, **kwargs: Any) -> torch.Tensor:  # keyword options too (nested widths' width=)
            output = model(*args, **kwargs)
            if not (isinstance(output, torch.Tensor) and output.dim() == 3 and output.shape[0] == num_samples):
                raise RuntimeError(f"multi_sample_dropout expected ({num_samples}, N, C) logits from the model in "
                                   f"training, got {tuple(getattr(output, 'shape', ()))}")
            return output.mean(dim=0) if logits_mean else output.reshape(-1, output.shape[-1])

        target = y if logits_mean else _repeat_rows(y, num_samples)
        loss, output = next(flat_model, x, target)
        if not logits_mean:
            output = output.view(num_samples, -1, output.shape[-1]).mean(dim=0)  # (N, C)
        return loss, output

    def criterion(self, output: Any, target: Any, next: Callable, ctx: Context, reduction: str = "mean"):
        if not (isinstance(output, torch.Tensor) and output.dim() == 3):
            return next(output, target, reduction=reduction)  # (N, C): not from the K-sample head
        num_samples, batch, classes = output.shape
        if target.shape[0] != batch:
            raise ValueError(f"multi_sample_dropout: target has {target.shape[0]} rows for logits of shape "
                             f"{tuple(output.shape)} (K, N, C)")
        if self.average == "logits":
            return next(output.mean(dim=0), target, reduction=reduction)
        losses = next(output.reshape(num_samples * batch, classes), _repeat_rows(target, num_samples),
                      reduction=reduction)
        if reduction == "none":
            return losses.view(num_samples, batch, *losses.shape[1:]).mean(dim=0)
        return losses / num_samples if reduction == "sum" else losses  # sum over samples of the mean over K

    @staticmethod
    def loss(logits_k: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, average: str = "losses"):
        """Convenience alias of :func:`regimen.losses.multi_sample_cross_entropy` for users' own loops."""
        return multi_sample_cross_entropy(logits_k, target, label_smoothing=label_smoothing, average=average)
