"""Mixture-of-Experts load-balancing loss with global-batch expert frequencies.

Switch Transformer form (Fedus, Zoph, Shazeer 2021, arXiv 2101.03961): for E experts,

    L = E · Σ_i f_i · P_i,   f_i = (tokens routed to expert i) / (tokens · top_k),   P_i = mean_t p_t,i

where p_t are the router probabilities of token t. "Demons in the Detail: On Implementing Load Balancing Loss for
Training Specialized Mixture-of-Expert Models" (Qiu et al., Qwen, 2025, arXiv 2501.11873) shows that computing
f_i per micro-batch (as most frameworks do) balances every *sequence* and hinders expert specialisation; computing
f_i over the **global batch** — counts all-reduced over data-parallel ranks and accumulated over the micro-batches
of one optimizer step — fixes it. P_i stays local (it carries the gradient; the counts are constants).

Implementation: ``load_balancing_loss(..., global_batch=True)`` all-reduces the (detached) per-expert counts with
``torch.distributed`` when a process group is initialised, and, given a :class:`LoadBalanceAccumulator`, adds them
to the counts of the earlier micro-batches of the step (the accumulator's ``reset()`` starts a new step). With W
ranks of equal local batches, the mean over ranks of the loss (which is what DDP's gradient averaging optimises)
equals the one-process loss on the concatenated batch, in value and gradient. With accumulation, micro-batch j uses
the counts of micro-batches 1..j (all that exists when its backward runs); the last one uses the step's full counts
(the same running scheme as Megatron-LM's global auxiliary loss).

Pitfalls handled: ``expert_indices`` may be ``(T,)`` (top-1) or ``(T, k)``; indices outside ``[0, E)`` and
NaN/inf probabilities raise ``ValueError``; counts are exact integers (int64) before the division; the all-reduce
is a collective — every rank must call the loss the same number of times. The trainer Method ``load_balance``
(:class:`LoadBalanceMethod`) adds it for every router of a mixture-of-experts model (regimen's GPT with
``moe_experts``) and logs the experts' token shares.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from regimen.method import Method, checked_arguments, register_method, require_data

__all__ = ["LoadBalanceAccumulator", "LoadBalanceMethod", "expert_counts", "load_balancing_loss"]


@checked_arguments
def expert_counts(expert_indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Number of assignments per expert (int64, shape ``(num_experts,)``) from ``(T,)`` or ``(T, k)`` indices."""
    require_data(expert_indices=expert_indices)
    if not isinstance(expert_indices, torch.Tensor) or expert_indices.is_floating_point():
        raise TypeError("expert_indices must be an integer tensor")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    flat = expert_indices.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= num_experts):
        raise ValueError(
            f"expert_indices must be in [0, {num_experts}), got range [{int(flat.min())}, {int(flat.max())}]"
        )
    return torch.bincount(flat, minlength=num_experts)


@checked_arguments
class LoadBalanceAccumulator:
    """Running expert counts over the micro-batches of one optimizer step (gradient accumulation).

    Call :meth:`reset` after every optimizer step (or construct a new one). ``state_dict`` / ``load_state_dict``
    make it checkpointable.
    """

    def __init__(self, num_experts: int) -> None:
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be an int >= 1, got {num_experts!r}")
        self.num_experts = num_experts
        self.counts = torch.zeros(num_experts, dtype=torch.int64)
        self.micro_batches = 0

    def update(self, counts: torch.Tensor) -> torch.Tensor:
        """Add one micro-batch's (already all-reduced) counts; return the running total."""
        if counts.shape != (self.num_experts,):
            raise ValueError(f"counts must have shape ({self.num_experts},), got {tuple(counts.shape)}")
        self.counts = self.counts.to(counts.device) + counts.long()
        self.micro_batches += 1
        return self.counts.clone()

    def reset(self) -> None:
        self.counts = torch.zeros_like(self.counts)
        self.micro_batches = 0

    def state_dict(self) -> dict[str, Any]:
        return {"num_experts": self.num_experts, "counts": self.counts.clone(), "micro_batches": self.micro_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_experts"]) != self.num_experts:
            raise ValueError(f"state is for {state['num_experts']} experts, this accumulator has {self.num_experts}")
        self.counts = state["counts"].clone().long()
        self.micro_batches = int(state["micro_batches"])


@checked_arguments
def load_balancing_loss(
    router_probs: torch.Tensor,
    expert_indices: torch.Tensor,
    num_experts: int,
    global_batch: bool = True,
    accumulator: LoadBalanceAccumulator | None = None,
    process_group: Any = None,
) -> torch.Tensor:
    """Switch load-balancing loss ``E · Σ_i f_i P_i`` with f over the global batch, P local.

    Args:
        router_probs: ``(T, E)`` (or ``(..., E)``) router probabilities of the local tokens (carries the gradient).
        expert_indices: ``(T,)`` or ``(T, k)`` experts each token was dispatched to (or ``(..., k)`` matching the
            leading dimensions of ``router_probs``).
        num_experts: E.
        global_batch: all-reduce the counts over ``process_group`` when ``torch.distributed`` is initialised and
            accumulate them in ``accumulator`` (the "Demons in the Detail" global-batch form). ``False`` gives the
            classic per-micro-batch Switch loss.
        accumulator: running counts over micro-batches of the current step (only used with ``global_batch``).
        process_group: ``torch.distributed`` group for the all-reduce (``None``: the default group).

    Returns:
        Scalar loss; 1.0 for perfectly uniform routing and probabilities. Multiply by your coefficient.
    """
    require_data(router_probs=router_probs, expert_indices=expert_indices)
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts must be an int >= 1, got {num_experts!r}")
    if not isinstance(router_probs, torch.Tensor) or not router_probs.is_floating_point():
        raise TypeError("router_probs must be a floating tensor")
    if router_probs.dim() < 1 or router_probs.shape[-1] != num_experts:
        raise ValueError(f"router_probs must be (T, {num_experts}), got shape {tuple(router_probs.shape)}")
    if not torch.isfinite(router_probs).all():
        raise ValueError("router_probs contain NaN or inf")
    probs = router_probs.reshape(-1, num_experts)
    tokens = probs.shape[0]
    if tokens == 0:
        raise ValueError("router_probs has no tokens")
    lead = tuple(router_probs.shape[:-1])
    idx_shape = tuple(expert_indices.shape)
    if idx_shape != lead and idx_shape[:-1] != lead:
        raise ValueError(
            f"expert_indices shape {idx_shape} must be router_probs.shape[:-1] {lead} or that plus a top-k dimension"
        )
    if accumulator is not None and accumulator.num_experts != num_experts:
        raise ValueError(f"accumulator is for {accumulator.num_experts} experts, not {num_experts}")
    counts = expert_counts(expert_indices, num_experts).to(probs.device)
    if global_batch:
        if dist.is_available() and dist.is_initialized():
            counts = counts.clone()
            dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=process_group)
        if accumulator is not None:
            counts = accumulator.update(counts)
    total = counts.sum()
    f = counts.to(torch.float32) / total.clamp_min(1).to(torch.float32)
    p_mean = probs.float().mean(dim=0)
    return num_experts * (f * p_mean).sum()


def _router_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules that expose a router's last ``router_probs`` and ``expert_indices`` and their ``num_experts``
    (regimen's :class:`regimen.models.MoEFeedForward`)."""
    return [m for m in model.modules() if hasattr(m, "router_probs") and hasattr(m, "expert_indices")
            and isinstance(getattr(m, "num_experts", None), int)]


@register_method
class LoadBalanceMethod(Method):
    """Add the global-batch MoE load-balancing loss coef · E·Σ f_i P_i of every router; log expert token shares.

    A ``forward_loss`` link that wraps the next one: after the forward it reads each MoE layer's router
    probabilities and expert choices (``router_probs``, ``expert_indices``), adds ``coef`` times the mean over layers
    of :func:`load_balancing_loss` with the expert counts over the global batch (all ranks, and the micro-batches of
    the step so far, through one :class:`LoadBalanceAccumulator` per layer, reset after every optimizer step). At
    every epoch end it logs each layer's share of token assignments per expert (``load_balance/share_l{layer}_e{i}``)
    and the largest share (``load_balance/max_share``; ``1/E`` is perfectly balanced). ``coef = 0`` only logs.

    Args:
        coef: weight of the auxiliary loss (Switch Transformer: 1e-2).
        global_batch: counts over the global batch (Qiu et al. 2025); ``False``: per micro-batch (classic Switch).
    """

    name = "load_balance"
    paper_id = "arXiv:2501.11873"
    claim = ("computing the load-balancing loss's expert frequencies over the global batch instead of each "
             "micro-batch lets experts specialise and improves pre-training perplexity and downstream results")
    claimed_effect = "better"

    def __init__(self, coef: float = 0.01, global_batch: bool = True) -> None:
        if not coef >= 0.0:
            raise ValueError(f"load_balance: coef must be >= 0, got {coef}")
        self.coef, self.global_batch = float(coef), bool(global_batch)
        self.accumulators: list[LoadBalanceAccumulator] = []
        self.epoch_counts: list[torch.Tensor] = []

    def setup(self, ctx) -> None:
        layers = _router_layers(ctx.model)
        if not layers:
            raise ValueError(f"load_balance needs a mixture-of-experts model (modules with router_probs, "
                             f"expert_indices and num_experts: regimen's GPT with model.options.moe_experts >= 2); "
                             f"{type(ctx.model).__name__} has none")
        self.accumulators = [LoadBalanceAccumulator(m.num_experts) for m in layers]
        self.epoch_counts = [torch.zeros(m.num_experts, dtype=torch.int64) for m in layers]

    def forward_loss(self, model, x, y, next, ctx):  # noqa: A002 - the hook's argument name
        loss, output = next(model, x, y)
        layers = _router_layers(model)
        terms = []
        for index, (layer, accumulator) in enumerate(zip(layers, self.accumulators)):
            probs, experts = layer.router_probs, layer.expert_indices
            if probs is None or experts is None:
                continue
            self.epoch_counts[index] += expert_counts(experts.detach(), layer.num_experts).cpu()
            terms.append(load_balancing_loss(probs, experts, layer.num_experts, self.global_batch,
                                             accumulator if self.global_batch else None))
        if not terms:
            return loss, output
        aux = torch.stack(terms).mean()
        self.log(ctx, "aux_loss", aux.detach())
        return (loss + self.coef * aux if self.coef else loss), output

    def after_step(self, ctx) -> None:
        for accumulator in self.accumulators:
            accumulator.reset()

    def on_epoch_end(self, ctx) -> None:
        largest = 0.0
        for layer, counts in enumerate(self.epoch_counts):
            total = ctx.all_reduce(counts.clone().to(ctx.run.device), "sum").cpu().double()
            shares = total / total.sum().clamp_min(1.0)
            for expert, share in enumerate(shares.tolist()):
                self.log(ctx, f"share_l{layer}_e{expert}", share)
            largest = max(largest, float(shares.max()))
            counts.zero_()
        self.log(ctx, "max_share", largest)

    def state_dict(self) -> dict[str, Any]:
        return {"accumulators": [a.state_dict() for a in self.accumulators],
                "epoch_counts": [c.clone() for c in self.epoch_counts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for accumulator, saved in zip(self.accumulators, state.get("accumulators", [])):
            accumulator.load_state_dict(saved)
        self.epoch_counts = [c.clone() for c in state.get("epoch_counts", self.epoch_counts)]
