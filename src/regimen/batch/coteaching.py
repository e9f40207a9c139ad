"""Co-teaching: two networks, each trained on the samples its peer finds easy (small loss), against noisy labels.

Paper: Bo Han, Quanming Yao, Xingrui Yu, Gang Niu, Miao Xu, Weihua Hu, Ivor Tsang, Masashi Sugiyama, "Co-teaching:
Robust Training of Deep Neural Networks with Extremely Noisy Labels", NeurIPS 2018, arXiv 1804.06872; used as the
second stage of Chen et al., "Compressing Features for Learning with Noisy Labels", TNNLS 2022, arXiv 2206.13140
(nested dropout + co-teaching; reference code github.com/yingyichen-cyy/Nested-Co-teaching, ``co_teaching_*/``).

Formula: for a batch of N samples with per-sample losses l_f, l_g of the two networks f and g, and forget rate
R(T) at epoch T, each network keeps its ``n = floor((1 - R(T)) N)`` smallest-loss samples,
S_f = argsort(l_f)[:n], S_g = argsort(l_g)[:n], and the peer trains on them:
L_f = mean_{i ∈ S_g} l_f(i), L_g = mean_{i ∈ S_f} l_g(i). Small-loss samples are likely clean, and the two networks
filter different errors. R(T) = τ · min(1, (T - start) / ramp) (Han et al.: ramp Tk = 10 epochs; Chen et al.'s
fine-tuning stage: no ramp, τ = 0.2), and R = 0 before ``start_epoch`` (both networks train on every sample: the
recipe's first stage).

Implementation: the trainer's model is f; :class:`CoTeachingMethod` builds g as a copy of f with freshly initialised
parameters (seeded from ``ctx.generator``) and its own optimizer of the same class and per-group settings, whose
learning rate follows the trainer's schedule (copied every step). The loss is ``forward_loss`` middleware: it calls
the inner chain for f, runs g, ranks both per-sample losses (``ctx.criterion(..., reduction="none")``, no extra
forward) and returns f's loss on g's selection; g's loss on f's selection is back-propagated into g at once and g
steps after f (``after_step``). :func:`coteaching_losses` is the functional core for any loop. Evaluation averages the
two networks' logits (``eval="average"``, as the reference's ``Evaluation``) or uses f alone (``eval="first"``); a
layer with an ``eval_k`` attribute (:class:`~regimen.dropout.NestedLinear`) in g takes f's chosen k, as the reference
uses one k for both networks.

Pitfalls handled:

- Both networks rank with the same loss the trainer uses (mixing methods' soft targets included), computed once on
  the whole batch (``reduction="none"``) and averaged over the kept samples; ties break by position (stable sort).
- ``forget_rate`` must be in [0, 1): at 1 no sample is kept.
- A step recomputed by an ``optimizer_step`` closure (SAM) back-propagates g only once per micro-batch.
- g's gradients are all-reduced over processes before its step (g is not wrapped by DDP).
- Differences from the reference: both networks see the whole batch (Han et al.; the reference gives each network
  one half of the batch) and rank in training mode on the forward pass that trains (the reference runs an extra
  eval-mode pass at the validation k).

The paper's separate second stage (reference ``co_teaching_resnet/main.py`` + ``run_cifar.sh``): two networks are
first trained alone with nested dropout (two stage-1 runs, different seeds), then fine-tuned together by
co-teaching — ``--resumePthList model1 model3``, lr 1e-3 (×0.1 at epoch 50 of 100), forget rate 0.2 without ramp,
``--freeze-bn``, nested dropout still drawn during the fine-tuning, evaluation of the averaged logits at the best k.
Here: ``init_from = [checkpoint_a, checkpoint_b]`` loads stage-1 run a's weights into the trainer's model and run
b's into the peer (both checked before either is changed; on ``--resume`` the run's own checkpoint wins), and
``freeze_bn = true`` keeps every BatchNorm layer of both networks in evaluation mode while training (running
statistics used and left unchanged, affine parameters still trained). The stage-2 recipe is
``recipes/noisy/coteaching_stage2.toml`` (its ``init_from`` is set on the command line).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device
from regimen.models import copy_module

__all__ = ["CoTeachingEnsemble", "CoTeachingMethod", "coteaching_losses", "coteaching_select", "forget_rate_at"]


def _check_forget_rate(forget_rate: object) -> float:
    if isinstance(forget_rate, bool) or not isinstance(forget_rate, int | float) or not 0.0 <= forget_rate < 1.0:
        raise ValueError(f"forget_rate must be a number in [0, 1) (1 would keep no sample), got {forget_rate!r}")
    return float(forget_rate)


@checked_arguments
def forget_rate_at(epoch: int, forget_rate: float, ramp_epochs: int = 0, start_epoch: int = 0) -> float:
    """R(T): 0 before ``start_epoch``, then τ · min(1, (T - start) / ramp) (τ at once when ``ramp_epochs`` = 0)."""
    forget_rate = _check_forget_rate(forget_rate)
    for name, value in (("epoch", epoch), ("ramp_epochs", ramp_epochs), ("start_epoch", start_epoch)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if epoch < start_epoch:
        return 0.0
    if ramp_epochs <= 0:
        return forget_rate
    return forget_rate * min(1.0, (epoch - start_epoch) / ramp_epochs)


@checked_arguments
def coteaching_select(loss_a: torch.Tensor, loss_b: torch.Tensor, forget_rate: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``max(1, floor((1 - forget_rate) N))`` smallest per-sample losses of each network
    (``(selected by a, selected by b)``, smallest first, ties by position)."""
    forget_rate = _check_forget_rate(forget_rate)
    if loss_a.dim() != 1 or loss_a.shape != loss_b.shape or loss_a.numel() == 0:
        raise ValueError(f"loss_a and loss_b (per-sample losses) must be two non-empty (N,) tensors of one shape, got "
                         f"{tuple(loss_a.shape)} and {tuple(loss_b.shape)}")
    keep = max(1, math.floor((1.0 - forget_rate) * loss_a.numel() + 1e-9))
    order_a = torch.sort(loss_a.detach(), stable=True).indices
    order_b = torch.sort(loss_b.detach(), stable=True).indices
    return order_a[:keep], order_b[:keep]


@checked_arguments
def coteaching_losses(output_a: torch.Tensor, output_b: torch.Tensor, target: torch.Tensor, forget_rate: float,
                      loss_fn: Callable[..., torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_a, L_b)``: network a's mean loss on the samples b keeps, and b's on those a keeps.

    Args:
        output_a, output_b: the two networks' outputs ``(N, C)`` on the same batch.
        target: ``(N,)`` labels (or ``(N, C)`` soft targets).
        forget_rate: R in [0, 1), the fraction of each batch dropped.
        loss_fn: ``loss_fn(output, target, reduction=...)`` (default cross-entropy).
    """
    for name, value in (("output_a", output_a), ("output_b", output_b), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    require_data(output_a=output_a, output_b=output_b, target=target)  # the selection reads the losses' values
    require_same_device(output_a=output_a, output_b=output_b, target=target)
    if output_a.shape != output_b.shape or output_a.dim() < 1:
        raise ValueError(f"output_a and output_b must be the two networks' outputs of one shape (N, C), got "
                         f"{tuple(output_a.shape)} and {tuple(output_b.shape)}")
    if target.shape != output_a.shape[:1] and target.shape != output_a.shape:
        raise ValueError(f"target must be (N,) labels or (N, C) soft targets for outputs {tuple(output_a.shape)}, got "
                         f"shape {tuple(target.shape)}")
    if loss_fn is None:  # cross-entropy's inputs, refused by name instead of by torch's RuntimeError
        for name, value in (("output_a", output_a), ("output_b", output_b)):
            if not value.is_floating_point():
                raise TypeError(f"{name} must hold floating point logits, got {value.dtype}")
        if target.shape == output_a.shape[:1] and (target.dtype != torch.int64):
            raise TypeError(f"target must be int64 class indices (N,) or floating (N, C) soft targets, got "
                            f"{target.dtype} of shape {tuple(target.shape)}")
        if target.shape == output_a.shape and target.dim() > 1 and not target.is_floating_point():
            raise TypeError(f"target of shape {tuple(target.shape)} (soft targets) must be floating point, got "
                            f"{target.dtype}")
        loss_fn = torch.nn.functional.cross_entropy
    with torch.no_grad():
        per_a = loss_fn(output_a, target, reduction="none")
        per_b = loss_fn(output_b, target, reduction="none")
    kept_by_a, kept_by_b = coteaching_select(per_a, per_b, forget_rate)
    return loss_fn(output_a[kept_by_b], target[kept_by_b]), loss_fn(output_b[kept_by_a], target[kept_by_a])


@checked_arguments
class CoTeachingEnsemble(nn.Module):
    """Evaluation module: the mean of the two networks' outputs (neither is registered as a child, so the trainer's
    model and state_dict are untouched)."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_members", (first, second))

    def train(self, mode: bool = True) -> CoTeachingEnsemble:
        super().train(mode)
        for member in self._members:
            member.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = self._members
        return (first(x) + second(x)) * 0.5


def _check_loadable(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """A ConfigurationError naming ``init_from`` unless ``state`` has exactly the model's keys and shapes."""
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) + [k for k in own if k in state and own[k].shape != state[k].shape]
    if bad:
        raise ConfigurationError(f"co_teaching.init_from: {path!r} holds another model's weights (e.g. {bad[0]!r}); "
                                 "stage 1 must train the same model and surgery (e.g. nested_dropout) as stage 2")


def _reinitialise(module: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()


@register_method
class CoTeachingMethod(Method):
    """Co-teaching (Han et al. 2018): a peer network; each trains on the other's small-loss samples (noisy labels).

    Args:
        forget_rate: τ, the fraction of each batch each network drops, in [0, 1) (Chen et al.: 0.2).
        ramp_epochs: epochs over which R(T) rises linearly from 0 to τ (Han et al.: 10; Chen et al.: 0).
        start_epoch: epochs of plain training of both networks (R = 0) before co-teaching starts: the first stage
            of a one-recipe "train, then co-teach" run.
        eval: ``"average"`` (mean logits of both networks) or ``"first"`` (the trainer's network only).
        init_from: the paper's second stage: two stage-1 checkpoints (``checkpoint.pt`` of runs of the same model,
            e.g. nested dropout with two seeds); the first initialises the trainer's network, the second the peer.
            ``None``: the peer starts from fresh random weights (Han et al.'s co-teaching from scratch).
        freeze_bn: keep both networks' BatchNorm layers in evaluation mode while training (the reference's
            ``--freeze-bn`` of the fine-tuning stage).
    """

    name = "co_teaching"
    targets = ("labels",)
    after = ("nested_dropout",)
    conflicts = ("multi_sample_dropout",)
    constraint_reason = ("the peer network is a copy of the model after nested dropout's surgery; per-sample "
                         "selection needs (N, C) logits, not multi-sample dropout's (K, N, C)")
    paper_id = "arXiv:1804.06872 (with arXiv:2206.13140)"
    claim = ("two networks that train each other on their small-loss samples resist label noise; with nested "
             "dropout: Clothing1M 74.9 vs co-teaching 69.2 vs CE 67.2 top-1")
    claimed_effect = "better"

    def __init__(self, forget_rate: float = 0.2, ramp_epochs: int = 0, start_epoch: int = 0,
                 eval: str = "average", init_from: list[str] | None = None, freeze_bn: bool = False) -> None:
        self.forget_rate = _check_forget_rate(forget_rate)
        for name, value in (("ramp_epochs", ramp_epochs), ("start_epoch", start_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if eval not in ("average", "first"):
            raise ValueError(f"eval must be 'average' or 'first', got {eval!r}")
        if init_from is not None and (isinstance(init_from, str) or not isinstance(init_from, list | tuple)
                                      or len(init_from) != 2
                                      or not all(isinstance(path, str) and path for path in init_from)):
            raise ValueError(f"init_from must be a list of two checkpoint paths (the two stage-1 runs) or None, got "
                             f"{init_from!r}")
        if not isinstance(freeze_bn, bool):
            raise TypeError(f"freeze_bn must be true or false, got {freeze_bn!r}")
        self.ramp_epochs, self.start_epoch, self.eval = ramp_epochs, start_epoch, eval
        self.init_from = list(init_from) if init_from is not None else None
        self.freeze_bn = freeze_bn
        self._norms: list[nn.Module] = []
        self.peer: nn.Module | None = None
        self.peer_optimizer: torch.optim.Optimizer | None = None
        self._seen: list[int] = []
        self._pending_state: dict[str, Any] | None = None

    # --------------------------------------------------------------------------------------------------- setup
    def setup(self, ctx: Context) -> None:
        if ctx.optimizer is None:
            raise ValueError("co_teaching needs the trainer's optimizer to build the peer's")
        model = ctx.model
        stage_one = None
        if self.init_from is not None and self._pending_state is None:  # on resume, the run's checkpoint wins
            stage_one = [self._stage_one_weights(path) for path in self.init_from]
            inner = model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
            _check_loadable(inner, stage_one[0], self.init_from[0])
            _check_loadable(inner, stage_one[1], self.init_from[1])  # both checked before the model changes
            inner.load_state_dict(stage_one[0])
        peer = copy_module(model)
        seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator))
        _reinitialise(peer, seed)
        if stage_one is not None:
            peer_inner = peer.module if hasattr(peer, "module") and isinstance(peer.module, nn.Module) else peer
            peer_inner.load_state_dict(stage_one[1])
        for mine, theirs in zip(model.modules(), peer.modules()):  # random layers draw from the run's generators
            if isinstance(getattr(mine, "generator", None), torch.Generator):  # (a deep copy's would not be saved)
                theirs.generator = mine.generator
        index = {id(p): i for i, p in enumerate(model.parameters())}
        peer_params = list(peer.parameters())
        groups = []
        for group in ctx.optimizer.param_groups:
            missing = [p for p in group["params"] if id(p) not in index]
            if missing:
                raise ValueError("co_teaching: the optimizer holds parameters that are not the model's; list "
                                 "co_teaching after the methods that replace the optimizer's parameters")
            settings = {k: v for k, v in group.items() if k != "params"}
            groups.append(dict(settings, params=[peer_params[index[id(p)]] for p in group["params"]]))
        self.peer = peer.to(ctx.run.device)
        self.peer.train(model.training)
        accepted = inspect.signature(type(ctx.optimizer).__init__).parameters
        settings = {k: v for k, v in ctx.optimizer.defaults.items() if k in accepted}  # constructor arguments only
        self.peer_optimizer = type(ctx.optimizer)(groups, **settings)
        if self._pending_state is not None:
            self._load_peer(self._pending_state)
        self._norms = [m for net in (model, self.peer) for m in net.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm)] if self.freeze_bn else []

    @staticmethod
    def _stage_one_weights(path: str) -> dict[str, torch.Tensor]:
        from regimen.train.checkpoint import load_checkpoint

        if not Path(path).is_file():
            raise ConfigurationError(f"co_teaching.init_from: {path!r} is not a file (give the checkpoint.pt of a "
                                     "stage-1 run)")
        return load_checkpoint(path)["model"]

    def current_forget_rate(self, ctx: Context) -> float:
        return forget_rate_at(ctx.epoch, self.forget_rate, self.ramp_epochs, self.start_epoch)

    # ---------------------------------------------------------------------------------------------------- step
    def forward_loss(self, model: Callable, x: Any, y: Any, next: Callable, ctx: Context):
        peer = self.peer
        peer.train(True)
        for norm in self._norms:  # freeze_bn: running statistics used, not updated (the reference's --freeze-bn)
            norm.eval()
        loss_full, output = next(model, x, y)
        backward_peer = torch.is_grad_enabled() and id(x) not in self._seen
        if backward_peer:
            self._seen.append(id(x))
        with ctx.autocast():
            peer_output = peer(x)
        rate = self.current_forget_rate(ctx)
        if rate == 0.0:
            loss, peer_loss = loss_full, ctx.criterion(peer_output, y)
        else:
            own = ctx.criterion(output, y, reduction="none")  # whole-batch calls: criterion middleware (e.g.
            other = ctx.criterion(peer_output, y, reduction="none")  # aug_subset) sees the batch it expects
            kept_by_model, kept_by_peer = coteaching_select(own.detach(), other.detach(), rate)
            loss = own[kept_by_peer].mean()
            peer_loss = other[kept_by_model].mean()
            self.log(ctx, "forget_rate", rate)
        if backward_peer:
            (peer_loss / ctx.run.accumulation).backward()
        self.log(ctx, "peer_loss", peer_loss.detach())
        return loss, output

    def after_step(self, ctx: Context) -> None:
        self._seen = []
        peer_optimizer = self.peer_optimizer
        for mine, main in zip(peer_optimizer.param_groups, ctx.optimizer.param_groups):
            mine["lr"] = main["lr"]
        if ctx.run.world_size > 1:
            for group in peer_optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad = ctx.all_reduce(p.grad, "sum") / ctx.run.world_size
        peer_optimizer.step()
        peer_optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------------------------------------- evaluation
    def _share_eval_k(self, model: nn.Module) -> None:
        inner = model.module if hasattr(model, "module") else model
        for mine, theirs in zip(inner.modules(), self.peer.modules()):
            if hasattr(mine, "eval_k") and hasattr(theirs, "eval_k"):
                theirs.eval_k = mine.eval_k

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module | None:
        if self.eval == "first" or self.peer is None:
            return None
        self._share_eval_k(ctx.model)
        return CoTeachingEnsemble(model, self.peer)

    # ----------------------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        if self.peer is None:
            return {}
        return {"peer": self.peer.state_dict(), "peer_optimizer": self.peer_optimizer.state_dict()}

    def _load_peer(self, state: dict[str, Any]) -> None:
        self.peer.load_state_dict(state["peer"])
        self.peer_optimizer.load_state_dict(state["peer_optimizer"])
        self._pending_state = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.peer is None:
            self._pending_state = state
        else:
            self._load_peer(state)
