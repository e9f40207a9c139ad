"""Data-efficient augmentation: augment only a weighted coreset of the training set.

Paper: Liu & Mirzasoleiman, "Data-Efficient Augmentation for Training Neural Networks" (NeurIPS 2022,
arXiv 2210.08363). Augmentation (modelled as additive perturbations) enlarges the small singular values of the
network Jacobian while keeping its prominent directions; a subset whose gradients align with the full data's captures
that effect when only the subset is augmented. Every ``every`` epochs the selector

1. computes a per-example gradient proxy at the last layer on the un-augmented training set (as the authors' code
   does: ``grad_predictions`` runs over the training set with the evaluation transforms, in eval mode):
   ``g_i = softmax(z_i) - onehot(y_i)`` (the gradient of the loss w.r.t. the logits), or with
   ``proxy="last_layer"`` the full last-layer gradient ``g_i (x) h_i`` (``h_i`` the features entering the classifier,
   the authors' ``--use_linear``);
2. per class, greedily maximises the facility-location function ``F(S) = sum_i max_{j in S} (d_max - ||g_i - g_j||)``
   (CRAIG's weighted coreset: the subset whose weighted gradient sum best matches the full set's), with stochastic
   greedy (``ceil(n / k * ln(1 / 0.01))`` random candidates a step), picking ``round(fraction * n_c)`` examples;
3. weights each selected example by the number of examples closest to it (``gamma_j``).

Training then augments only the selected examples of each batch (the rest is used un-augmented), and with
``weighted=True`` scales their loss by ``gamma_j`` normalised to mean 1 over the subset (so the loss scale stays
that of plain training): a ``criterion`` middleware multiplies the per-sample losses of the next link (the task's
loss with ``train.label_smoothing``, and any loss method listed after this one) by the weights. The fraction of
augmentation work saved is logged each epoch (``aug_subset/work_saved``).

Pitfalls handled: selection is per class (a coreset must cover every class); ranks select identically (their own
generator seeded by ``(seed, epoch)``, not the per-rank training generator); the model runs in eval mode and without
gradients for the proxies and its train/eval mode is restored; all classes advance one greedy step at a time on
float32 similarity matrices batched under a 256 MB budget (memory ``O(max(256 MB, max_c n_c^2))``). The selection
(a forward pass over the training set plus the greedy) runs in ``on_epoch_start`` and is logged as
``aug_subset/selection_time``: count it when comparing wall time.
"""

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regimen.augment._common import augment_float_batch, check_single_smoothing, warn_method_smoothing
from regimen.augment.randaugment import RandAugment, TrivialAugment
from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["facility_location", "gradient_proxies", "model_gradient_proxies", "select_coreset", "AugSubsetMethod"]


@checked_arguments
def gradient_proxies(logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example last-layer gradient proxies ``(N, D)``: ``softmax(z) - onehot(y)``, times ``features`` if given."""
    require_data(logits=logits, labels=labels, features=features)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    residual = logits.float().softmax(dim=1) - F.one_hot(labels.long(), logits.shape[1]).float()
    if features is None:
        return residual
    if features.dim() != 2 or features.shape[0] != logits.shape[0]:
        raise ValueError(f"features must be (N, F) with N = {logits.shape[0]}, got {tuple(features.shape)}")
    return (residual.unsqueeze(2) * features.float().unsqueeze(1)).flatten(1)


def _greedy_batched(
    sim: torch.Tensor, sizes: torch.Tensor, ks: torch.Tensor, generator: torch.Generator | None, epsilon: float
) -> list[torch.Tensor]:
    """Stochastic greedy facility location on ``G`` padded similarity matrices ``sim`` ``(G, n, n)`` at once.

    Group ``g`` has ``sizes[g]`` real points and picks ``ks[g]`` of them; all groups advance one pick per step, so
    the Python loop runs ``max(ks)`` times, not ``sum(ks)``."""
    g, n, _ = sim.shape
    arange = torch.arange(n)
    real = arange.view(1, n) < sizes.view(g, 1)  # (G, n)
    sim = sim * (real.view(g, n, 1) & real.view(g, 1, n))  # padded rows/columns contribute nothing
    best = torch.zeros(g, n, dtype=sim.dtype)
    chosen = ~real  # padding can never be picked
    k_max = int(ks.max())
    picks = torch.zeros(g, k_max, dtype=torch.long)
    if epsilon <= 0:
        pool = n
    else:
        pool = min(n, max(math.ceil(int(s) / max(int(k), 1) * math.log(1.0 / epsilon)) for s, k in zip(sizes, ks)))
    rows = torch.arange(g)
    for step in range(k_max):
        active = ks > step  # (G,)
        scores = torch.rand(g, n, generator=generator).masked_fill_(chosen, -1.0)
        if pool < n:
            candidates = scores.topk(pool, dim=1).indices  # random free points (chosen ones only if too few are free)
        else:
            candidates = arange.expand(g, n)
        free = ~chosen.gather(1, candidates)  # (G, r)
        columns = sim.gather(2, candidates.unsqueeze(1).expand(g, n, candidates.shape[1]))  # (G, n, r)
        gains = (columns - best.unsqueeze(2)).clamp_(min=0).sum(dim=1).masked_fill_(~free, -1.0)
        pick = candidates.gather(1, gains.argmax(dim=1, keepdim=True)).squeeze(1)  # (G,)
        picks[:, step] = pick
        update = active.nonzero().squeeze(1)
        chosen[update, pick[update]] = True
        best[update] = torch.maximum(best[update], sim[update, :, pick[update]])
    return [picks[i, : int(ks[i])] for i in rows.tolist()]


@checked_arguments
def facility_location(
    points: torch.Tensor, k: int, generator: torch.Generator | None = None, epsilon: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy facility location on ``points`` ``(n, D)``: ``k`` indices and their weights (cluster sizes, sum ``n``).

    Stochastic greedy (Mirzasoleiman et al. 2015): each step evaluates ``ceil(n / k * ln(1 / epsilon))`` random
    unselected candidates (all of them when that is >= n); ``epsilon = 0`` is the exact greedy.
    """
    require_data(points=points)
    if points.dim() != 2 or not points.is_floating_point():
        raise ValueError(f"points must be a floating point (n, D) tensor, got {points.dtype} {tuple(points.shape)}")
    if not 0 <= epsilon < 1:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    n = points.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    if k == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0)
    index, weights = _coresets([points], [k], generator, epsilon)[0]
    return index, weights


_SIM_BUDGET = 1 << 26  # similarity entries per batched greedy (float32: 256 MB)


def _coresets(groups: list[torch.Tensor], ks: list[int], generator, epsilon: float = 0.01):
    """Facility-location coresets of several point sets, batched under a memory budget: ``[(indices, weights)]``."""
    out, start = [], 0
    while start < len(groups):
        n = max(1, groups[start].shape[0])
        stop = start + 1
        while stop < len(groups) and (stop - start + 1) * max(n, groups[stop].shape[0]) ** 2 <= _SIM_BUDGET:
            n = max(n, groups[stop].shape[0])
            stop += 1
        out.extend(_coresets_batch(groups[start:stop], ks[start:stop], generator, epsilon))
        start = stop
    return out


def _coresets_batch(groups: list[torch.Tensor], ks: list[int], generator, epsilon: float):
    sizes = torch.tensor([p.shape[0] for p in groups])
    n = int(sizes.max())
    dim = groups[0].shape[1]
    padded = torch.zeros(len(groups), n, dim, dtype=torch.float32)
    for i, points in enumerate(groups):  # one copy per class, not per sample
        padded[i, : points.shape[0]] = points.float()
    dist = torch.cdist(padded, padded)  # (G, n, n)
    d_max = torch.stack([dist[i, : int(s), : int(s)].max() for i, s in enumerate(sizes)])
    sim = d_max.view(-1, 1, 1) - dist
    picks = _greedy_batched(sim, sizes, torch.tensor(ks), generator, epsilon)
    out = []
    for i, index in enumerate(picks):
        size = int(sizes[i])
        owner = sim[i, :size, index].argmax(dim=1)
        out.append((index, torch.bincount(owner, minlength=index.numel()).to(torch.float32)))
    return out


@checked_arguments
def select_coreset(
    proxies: torch.Tensor, labels: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class weighted coreset of ``round(fraction * n_c)`` examples (at least one per present class), all
    classes selected together by the batched stochastic greedy.

    Returns ``(indices, weights)``: dataset indices (sorted) and ``gamma`` (examples each one represents)."""
    require_data(proxies=proxies, labels=labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if proxies.dim() != 2 or labels.shape != (proxies.shape[0],):
        raise ValueError(
            f"proxies must be (N, D) and labels (N,), got {tuple(proxies.shape)} and {tuple(labels.shape)}"
        )
    labels = labels.cpu()
    proxies = proxies.cpu()
    members = [(labels == cls).nonzero().squeeze(1) for cls in torch.unique(labels).tolist()]
    ks = [max(1, round(fraction * m.numel())) for m in members]
    results = _coresets([proxies[m] for m in members], ks, generator)
    index = torch.cat([m[i] for m, (i, _) in zip(members, results, strict=True)])
    weight = torch.cat([w for _, w in results])
    order = torch.argsort(index)
    return index[order], weight[order]


def _smoothed(target: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """Soft targets ``(1 - eps) t + eps / C`` (one-hot ``t`` for index targets)."""
    probs = target.float() if target.dim() == 2 else F.one_hot(target.long(), num_classes).float()
    return probs * (1.0 - eps) + eps / num_classes


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    return last


@checked_arguments
@torch.no_grad()
def model_gradient_proxies(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalize=lambda x: x,
    batch_size: int = 1024,
    last_layer: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Gradient proxies of ``model`` on a dataset of uint8 (or [0, 1] float) ``images``, in eval mode, no grad."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor) or images.dim() < 1:
        raise TypeError("images and labels must be tensors with a leading sample dimension")
    if images.device.type == "meta" or labels.device.type == "meta":
        raise ValueError("images and labels must hold data; got a tensor on the meta device")
    if labels.shape != images.shape[:1] or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices of shape ({images.shape[0]},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    features: list[torch.Tensor] = []
    handle = None
    if last_layer:
        linear = _last_linear(model)
        if linear is None:
            raise ValueError("proxy='last_layer' needs a model whose classifier is an nn.Linear")
        handle = linear.register_forward_hook(lambda module, args, out: features.append(args[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device)
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
            logits = model(normalize(x)).float()
            feats = features.pop() if last_layer else None
            out.append(gradient_proxies(logits, labels[start : start + batch_size].to(device), feats).cpu())
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    return torch.cat(out)


@register_method
class AugSubsetMethod(Method):
    """Data-efficient augmentation: augment only a weighted coreset of the data (Liu & Mirzasoleiman 2022).

    Args:
        fraction: share of each class in the coreset. every: reselect every this many epochs.
        augment: ``"randaugment"`` (with ``num_ops``, ``magnitude``) or ``"trivialaugment"``.
        weighted: scale the subset's losses by their coreset weights (mean 1). proxy: ``"logits"`` or
            ``"last_layer"`` gradient proxies. batch_size: batch of the proxy pass. seed: selection seed.
        label_smoothing: deprecated; set ``train.label_smoothing`` (refused in ``setup`` when both are set).
    """

    name = "aug_subset"
    paper_id = "arXiv:2210.08363"
    claim = (
        "augmenting a weighted ~30 % coreset recovers most of full augmentation's accuracy gain at a fraction "
        "of its cost"
    )
    claimed_effect = "better"
    inputs = ("image",)
    targets = ("labels",)

    def __init__(
        self,
        fraction: float = 0.3,
        every: int = 1,
        augment: str = "randaugment",
        num_ops: int = 2,
        magnitude: float = 9.0,
        weighted: bool = True,
        proxy: str = "logits",
        label_smoothing: float = 0.0,
        batch_size: int = 1024,
        seed: int = 0,
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if augment not in ("randaugment", "trivialaugment"):
            raise ValueError(f"augment must be 'randaugment' or 'trivialaugment', got {augment!r}")
        if proxy not in ("logits", "last_layer"):
            raise ValueError(f"proxy must be 'logits' or 'last_layer', got {proxy!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        warn_method_smoothing(self.name, label_smoothing)
        self.fraction = fraction
        self.every = every
        self.augment = RandAugment(num_ops, magnitude) if augment == "randaugment" else TrivialAugment()
        self.weighted = weighted
        self.proxy = proxy
        self.label_smoothing = label_smoothing
        self.batch_size = batch_size
        self.seed = seed
        self.in_subset: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self._batch_weight: torch.Tensor | None = None  # weights of the current micro-batch (transform_batch)
        self._in_step = False  # True inside this method's forward_loss: the criterion weights only these calls
        self._counts = [0, 0]  # augmented, seen (this epoch)

    def setup(self, ctx: Context) -> None:
        check_single_smoothing(self.name, self.label_smoothing, ctx)
        data = ctx.train_data
        if not (isinstance(getattr(data, "images", None), torch.Tensor) and hasattr(data, "labels")):
            raise ConfigurationError("aug_subset needs an image training set with .images (N, C, H, W) and .labels "
                                     f"(N,), got {type(data).__name__}")

    def on_epoch_start(self, ctx: Context) -> None:
        self._counts = [0, 0]
        if self.in_subset is not None and ctx.epoch % self.every != 0:
            return
        data = ctx.train_data
        started = time.perf_counter()
        proxies = model_gradient_proxies(
            ctx.model, data.images, data.labels, ctx.normalize, self.batch_size, self.proxy == "last_layer",
            device=ctx.run.device,
        )
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + ctx.epoch)
        index, gamma = select_coreset(proxies, data.labels, self.fraction, generator)
        n = data.labels.shape[0]
        self.in_subset = torch.zeros(n, dtype=torch.bool)
        self.in_subset[index] = True
        self.weight = torch.ones(n)
        self.weight[index] = gamma / gamma.mean()
        self.log(ctx, "selection_time", time.perf_counter() - started)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        if self.in_subset is None or ctx.batch_indices is None:
            raise RuntimeError("aug_subset needs on_epoch_start to run and ctx.batch_indices for every batch")
        index = ctx.batch_indices.cpu()
        mask = self.in_subset[index]
        self._batch_weight = self.weight[index]
        self._counts[0] += int(mask.sum())
        self._counts[1] += int(mask.numel())
        if mask.any():
            rows = mask.nonzero().squeeze(1).to(x.device)
            augmented = augment_float_batch(self.augment, x.index_select(0, rows), ctx.generator, quantize=True)
            x = x.index_copy(0, rows, augmented)
        return x, y

    def forward_loss(self, model: Callable, x: torch.Tensor, y: torch.Tensor, next: Callable, ctx: Context):
        """Marks the training step, so the criterion weights this micro-batch's losses and no other call's."""
        self._in_step = True
        try:
            return next(model, x, y)
        finally:
            self._in_step = False

    def criterion(self, output: torch.Tensor, target: torch.Tensor, next: Callable, ctx: Context,
                  reduction: str = "mean") -> torch.Tensor:
        """``reduce(w_i · l_i)`` with ``l_i`` the next link's per-sample losses and ``w_i`` the coreset weights."""
        if self.label_smoothing:  # deprecated own smoothing (setup refused it together with the trainer's)
            target = _smoothed(target, output.shape[-1], self.label_smoothing)
        if not (self.weighted and self._in_step and self._batch_weight is not None):
            return next(output, target, reduction=reduction)
        per_sample = next(output, target, reduction="none")
        weight = self._batch_weight.to(device=per_sample.device, dtype=per_sample.dtype)
        if per_sample.shape[0] != weight.shape[0]:
            if per_sample.dim() != 1 or per_sample.shape[0] % weight.shape[0]:
                raise ValueError(f"aug_subset: the next criterion gave per-sample losses of shape "
                                 f"{tuple(per_sample.shape)} for a batch of {weight.shape[0]}")
            weight = weight.repeat(per_sample.shape[0] // weight.shape[0])  # K stacked copies (multi-sample dropout)
        weighted = weight * per_sample
        if reduction == "none":
            return weighted
        if reduction == "sum":
            return weighted.sum()
        if reduction == "mean":
            return weighted.mean()
        raise ValueError(f"aug_subset: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")

    def on_epoch_end(self, ctx: Context) -> None:
        augmented, seen = self._counts
        if seen:
            self.log(ctx, "augmented_fraction", augmented / seen)
            self.log(ctx, "work_saved", 1.0 - augmented / seen)

    def state_dict(self) -> dict[str, Any]:
        return {"in_subset": self.in_subset, "weight": self.weight, "counts": list(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.in_subset = state.get("in_subset")
        self.weight = state.get("weight")
        self._counts = list(state.get("counts", [0, 0]))
