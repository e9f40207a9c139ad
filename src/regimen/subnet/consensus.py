"""Consensus sub-network: per-input channel gates polarised into one static sub-network, extracted in one pass.

Paper: Zhi, Babbar, Liu, Sun, Silavong, Shi, Moran, "Learning a Consensus Sub-Network with Polarization
Regularization and One Pass Training", arXiv 2302.10798 (v5, 2025; v1 "A New Baseline for GreenAI"). No reference
code was released (Papers-with-Code: "no code implementations"); the loss forms below are regimen's reconstruction
from the abstract (binary gating module, straight-through estimator, polarizing loss, user-defined sparsity) and the
polarization regulariser of Zhuang et al., NeurIPS 2020, which the title names.

Gates. Every prunable channel group whose units are produced by one conv/linear (``groups=1``) and, optionally, the
BatchNorm right after it (``conv → BN``; no residual coupling, lossless) gets a ``ConsensusGate``: from the layer's
*input* ``x`` it computes ``p = σ(W·GAP(x) + b)`` (one logit per output channel) and multiplies the layer's output
(after the BN) per sample and channel by the hard gate ``g = 1[p > 0.5]``. Backward is the straight-through estimator:
``∂g/∂p = 1``, so ``g = 1[p > 0.5] + p − stopgrad(p)`` and ``∂g/∂logit = σ(l)(1 − σ(l))``. Because the gate is computed
before the layer runs, an off channel need not be computed at all, nor its input columns in the next layer.

Losses on the firing rates ``r_u = mean over the batch of g_u`` (value: the true fraction of inputs whose gate is on;
gradient through ``p``, by the STE):

    L_s = ( Σ_u c_u r_u / Σ_u c_u − κ )²                (user-set sparsity; c_u = MACs unit u costs per sample:
                                                          its filter in the producer plus its columns in consumers;
                                                          per_layer: the mean over gated layers of each one's term)
    L_p = (1/U) Σ_u ( t·r_u − |r_u − r̄| ),  r̄ = (1/U) Σ_u r_u      (A1a's polarization on the rates, global mean)

``L = task + λ_s·L_s + λ_p(τ)·L_p``, ``λ_p`` rising linearly from 0 over the first ``anneal`` of the run (with
``p ≈ 0`` or ``1`` the STE passes almost no gradient, so polarising too early freezes the gates). Polarization theorem
(A1a, Thm 3.2): on ``[0, 1]^U`` the minimisers of ``L_p`` put a fraction ``ρ = 1/2 − t/4`` of the rates at 1 and the
rest at 0. Regimen's defaults (chosen on a Fashion-MNIST CNN, see reports/subnet/consensus.md): ``t = 0`` (symmetric
push away from the mean rate; ``L_s`` sets the level) and one target per gated layer (``per_layer``: with one global
target the layer whose units are cheapest to switch off collapsed to ~10 % while the others stayed fully on).

Consensus. After training, firing rates over (training) inputs are measured in eval mode; units with ``r_u >
threshold`` (default 0.5: the majority of inputs) are kept, the rest removed. ``extract_consensus`` removes the gate
modules (the original layers go back in their places, same Parameters) and physically prunes the dependency groups with
``prune_groups``; optionally a MAC budget tops up the removal, lowest rates first. The extracted network equals the
gated network on every input whose gates agree with the consensus (``ConsensusGate.force``); pitfalls handled:
gated-off samples shift the statistics of the next BatchNorm, so the Method re-estimates BN statistics after the
extraction (``recalibrate``); the fraction of unpolarised units (``0.05 < r < 0.95``) is logged, since the static
extraction is lossless only for polarised gates.

Dynamic MACs (``consensus_dynamic_macs``): every conv/linear counts, per sample, ``dense MACs × (input columns not
gated off) / C_in × (output channels on) / C_out``, plus the predictors' ``C_in·C_out`` per gate. On CPU the gated
network still runs densely (the saving needs a gather kernel): MACs, not wall-clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, evaluating, is_ignored, run_model
from regimen.subnet._ranking import plan_to_macs
from regimen.subnet.dependency import Group, UntraceableError, trace_dependencies
from regimen.subnet.measure import count_macs, count_params
from regimen.subnet.ofa import recalibrate_batch_norm
from regimen.subnet.prune import prune_groups

__all__ = [
    "ConsensusGate",
    "ConsensusGatesMethod",
    "apply_consensus_gates",
    "consensus_dynamic_macs",
    "consensus_masks",
    "consensus_plan",
    "extract_consensus",
    "firing_rates",
    "gate_polarization",
    "gate_sparsity_loss",
    "remove_consensus_gates",
    "straight_through_gate",
]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm,)


# ------------------------------------------------------------------------------------------------- functional core
@checked_arguments
def straight_through_gate(logits: torch.Tensor) -> torch.Tensor:
    """Hard gates ``1[σ(logits) > 0.5]`` in the forward pass with the straight-through gradient ``∂g/∂σ = 1`` (so
    ``∂g/∂logits = σ(1 − σ)``): ``g = hard + σ − stopgrad(σ)``, exactly 0 or 1 in value."""
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if logits.is_meta:
        raise ValueError("logits must hold data; got a tensor on the meta device")
    p = torch.sigmoid(logits)
    hard = (logits > 0).to(logits.dtype)
    return hard + (p - p.detach())


def _rates(rates: Sequence[torch.Tensor] | torch.Tensor, name: str = "rates") -> torch.Tensor:
    if isinstance(rates, torch.Tensor):
        rates = [rates]
    rates = list(rates)
    if not rates or any(not isinstance(r, torch.Tensor) for r in rates):
        raise TypeError(f"{name} must be a tensor or a non-empty sequence of tensors")
    if any(not r.is_floating_point() for r in rates):
        raise TypeError(f"{name} must be floating-point tensors")
    if any(r.is_meta for r in rates):
        raise ValueError(f"{name} must hold data; got a tensor on the meta device")
    flat = torch.cat([r.reshape(-1) for r in rates])
    if flat.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return flat


@checked_arguments
def gate_sparsity_loss(rates: Sequence[torch.Tensor] | torch.Tensor, target: float,
                       costs: Sequence[torch.Tensor] | torch.Tensor | None = None,
                       per_layer: bool = False) -> torch.Tensor:
    """``L_s = (Σ_u c_u r_u / Σ_u c_u − target)²``: the cost-weighted firing rate against the keep target ``κ``
    (``costs`` one per unit, in the order of ``rates``; ``None``: every unit costs 1). ``per_layer``: the mean over
    the tensors of ``rates`` (one per gated layer) of each tensor's own term, so every layer keeps about ``κ``
    (a global target lets the cheapest layer collapse first)."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target must be in [0, 1], got {target!r}")
    flat = _rates(rates)
    if costs is None:
        weights = torch.ones_like(flat)
    else:
        weights = _rates(costs, "costs").to(flat)
        if weights.numel() != flat.numel():
            raise ValueError(f"costs must hold one value per rate ({flat.numel()}), got {weights.numel()}")
        if bool((weights < 0).any()) or not bool(weights.sum() > 0):
            raise ValueError("costs must be >= 0 with a positive sum")
    if not per_layer or isinstance(rates, torch.Tensor):
        return ((weights * flat).sum() / weights.sum() - target) ** 2
    terms, start = [], 0
    for r in rates:
        w, f = weights[start:start + r.numel()], flat[start:start + r.numel()]
        start += r.numel()
        if f.numel():
            terms.append(((w * f).sum() / w.sum().clamp_min(1e-12) - target) ** 2)
    return torch.stack(terms).mean()


@checked_arguments
def gate_polarization(rates: Sequence[torch.Tensor] | torch.Tensor, t: float = 0.0) -> torch.Tensor:
    """``L_p = (1/U) Σ_u (t·|r_u| − |r_u − r̄|)`` with ``r̄`` the mean of all ``U`` rates of all tensors: the
    polarization regulariser of Zhuang et al. (NeurIPS 2020, eq. 2) on the gates' firing rates, per unit."""
    flat = _rates(rates)
    return (t * flat.abs() - (flat - flat.mean()).abs()).mean()


# --------------------------------------------------------------------------------------------------------- the gate
@checked_arguments
class ConsensusGate(nn.Module):
    """``layer`` (+ ``norm``) whose output channels are switched per input by hard gates predicted from its input.

    ``forward(x) = norm(layer(x)) · g``, ``g = straight_through_gate(predictor(GAP(x)))`` of shape ``(N, C_out)``
    (broadcast over the spatial dims of a conv, or over the leading dims of a linear layer's ``(N, ..., C)``). The
    predictor is ``nn.Linear(C_in, C_out)`` with zero weights and bias ``init_bias``: every gate starts on. After any
    forward ``last_gates`` holds the hard gates ``(N, C_out)``; in training mode ``rates`` holds the batch firing rates
    ``(C_out,)`` with the STE gradient (the Method reads and clears it). ``force(mask)`` fixes the gates to a static
    ``(C_out,)`` mask (the consensus sub-network as a masked network); ``force(None)`` restores the dynamic gates.
    """

    def __init__(self, layer: nn.Module, norm: nn.Module | None = None, init_bias: float = 1.0) -> None:
        super().__init__()
        if not isinstance(layer, _LAYERS):
            raise TypeError(f"layer must be an nn.Conv1d/2d/3d or nn.Linear, got {type(layer).__name__}")
        if isinstance(layer, nn.modules.conv._ConvNd) and (layer.groups != 1 or layer.transposed):
            raise ValueError(f"layer must be a dense convolution (groups=1), got groups={layer.groups}")
        in_c = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
        out_c = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if norm is not None:
            if not isinstance(norm, _NORMS):
                raise TypeError(f"norm must be a BatchNorm layer or None, got {type(norm).__name__}")
            if norm.num_features != out_c:
                raise ValueError(f"norm has {norm.num_features} features but layer produces {out_c} channels")
        self.layer = layer
        self.norm = norm
        self.predictor = nn.Linear(in_c, out_c)
        param = layer.weight
        self.predictor.to(device=param.device, dtype=param.dtype)
        with torch.no_grad():
            self.predictor.weight.zero_()
            self.predictor.bias.fill_(init_bias)
        self.channels_last = isinstance(layer, nn.Linear)
        self.forced: torch.Tensor | None = None
        self.last_gates: torch.Tensor | None = None
        self.rates: torch.Tensor | None = None
        self.norm_slot: str | None = None  # where the norm stood in the model (apply_consensus_gates)
        self.unit_cost = 0.0  # MACs per sample one unit costs (apply_consensus_gates; the sparsity loss's c_u)
        self.consumers: list[tuple[nn.Module, int]] = []  # (consumer layer, input columns per unit)

    @property
    def out_channels(self) -> int:
        return self.predictor.out_features

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The predictor's input: ``x`` averaged over every dim but batch and channels, ``(N, C_in)``."""
        if self.channels_last:
            return x.reshape(x.shape[0], -1, x.shape[-1]).mean(1)
        return x.reshape(x.shape[0], x.shape[1], -1).mean(2)

    def force(self, mask: torch.Tensor | None) -> None:
        """Fix the gates to ``mask`` (``(C_out,)``, bool or 0/1) for every input, or ``None``: dynamic again."""
        if mask is None:
            self.forced = None
            return
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a tensor or None, got {type(mask).__name__}")
        if mask.shape != (self.out_channels,):
            raise ValueError(f"mask must have shape ({self.out_channels},), got {tuple(mask.shape)}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must be boolean or hold only 0 and 1")
        self.forced = mask.detach().to(torch.bool).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        out = self.layer(x)
        if self.norm is not None:
            out = self.norm(out)
        if self.forced is not None:
            gates = self.forced.to(device=out.device, dtype=out.dtype).expand(out.shape[0], -1)
        else:
            gates = straight_through_gate(self.predictor(self.pooled(x)))
        self.last_gates = gates.detach()
        self.rates = gates.mean(0) if self.training and self.forced is None else None
        if self.channels_last:
            return out * gates.reshape(gates.shape[0], *([1] * (out.dim() - 2)), gates.shape[1])
        return out * gates.reshape(*gates.shape, *([1] * (out.dim() - 2)))

    def extra_repr(self) -> str:
        return f"channels={self.out_channels}, forced={self.forced is not None}"


def _gates(model: nn.Module) -> list[tuple[str, ConsensusGate]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ConsensusGate)]


# ------------------------------------------------------------------------------------------------------- surgery
def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


def _gateable(model: nn.Module, group: Group) -> tuple[str, str | None] | None:
    """``(producer name, norm name or None)`` when gating the producer's (normalised) output equals removing the
    group's units; else ``None``."""
    if group.kind != "channel" or not group.lossless or group.attention:
        return None
    producers = [s for s in group.slices if s.role == "out" and s.param == "weight" and s.dim == 0]
    out_modules = {s.module for s in group.slices if s.role == "out"}
    if len(producers) < 1:
        return None
    layer_names = [s.module for s in producers if isinstance(model.get_submodule(s.module), _LAYERS)]
    norm_names = [s.module for s in producers if isinstance(model.get_submodule(s.module), _NORMS)]
    if len(layer_names) != 1 or len(norm_names) > 1 or set(layer_names + norm_names) != out_modules:
        return None
    layer = model.get_submodule(layer_names[0])
    if isinstance(layer, nn.modules.conv._ConvNd) and (layer.groups != 1 or layer.transposed):
        return None
    out_c = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    producer = next(s for s in producers if s.module == layer_names[0])
    if group.size != out_c or producer.indices.shape[1] != 1:
        return None
    for s in group.slices:  # consumers: dense conv / linear input columns only
        if s.role == "in":
            consumer = model.get_submodule(s.module)
            if s.param != "weight" or s.dim != 1 or not isinstance(consumer, _LAYERS) or (
                    isinstance(consumer, nn.modules.conv._ConvNd) and (consumer.groups != 1 or consumer.transposed)):
                return None
    return layer_names[0], (norm_names[0] if norm_names else None)


def _perturbed_norm_stats(norms: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Give the norms' running statistics deterministic non-trivial values (a fresh BN in eval mode is nearly the
    identity, which would hide a gate placed on the wrong side of it); returns the saved statistics."""
    saved = []
    with torch.no_grad():
        for norm in norms:
            if norm.running_mean is None:
                saved.append(None)
                continue
            saved.append((norm.running_mean.clone(), norm.running_var.clone()))
            c = torch.arange(norm.num_features, device=norm.running_mean.device, dtype=norm.running_mean.dtype)
            norm.running_mean.copy_(0.3 * (c % 7 - 3))
            norm.running_var.copy_(0.5 + 0.25 * (c % 5))
    return saved


def _restore_norm_stats(norms: list[nn.Module], saved: list) -> None:
    with torch.no_grad():
        for norm, stats in zip(norms, saved, strict=True):
            if stats is not None:
                norm.running_mean.copy_(stats[0])
                norm.running_var.copy_(stats[1])


def _outputs(model: nn.Module, example_inputs: Any) -> list[torch.Tensor]:
    with evaluating(model):
        out = run_model(model, example_inputs)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [o for o in out if isinstance(o, torch.Tensor)]
    if isinstance(out, dict):
        return [o for o in out.values() if isinstance(o, torch.Tensor)]
    return []


def _same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.allclose(x, y, rtol=tol, atol=tol)
                                    for x, y in zip(a, b, strict=True))


def _unit_costs(model: nn.Module, example_inputs: Any, plan: list[tuple[str, str | None, Group]]) -> dict[str, float]:
    """MACs per sample that one unit of each gated group costs: its filter in the producer plus its input columns in
    every consumer (per gate, keyed by the producer name)."""
    macs: dict[int, float] = {}

    def hook(module, inputs, output):
        out = output[0] if isinstance(output, tuple) else output
        per_sample = out.numel() / max(1, out.shape[0])
        if isinstance(module, nn.Linear):
            macs[id(module)] = per_sample * module.in_features
        else:
            macs[id(module)] = per_sample * module.in_channels * math.prod(module.kernel_size)

    layers = [m for m in model.modules() if isinstance(m, _LAYERS)]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        _outputs(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    costs = {}
    for producer, _, group in plan:
        layer = model.get_submodule(producer)
        out_c = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        cost = macs.get(id(layer), 0.0) / out_c
        for s in group.slices:
            if s.role == "in":
                consumer = model.get_submodule(s.module)
                cost += macs.get(id(consumer), 0.0) * s.indices.shape[1] / consumer.weight.shape[1]
        costs[producer] = cost
    return costs


@checked_arguments
def apply_consensus_gates(model: nn.Module, example_inputs: Any, init_bias: float = 1.0,
                          ignore: Sequence[str] = (), optimizer: torch.optim.Optimizer | None = None) -> list[str]:
    """Put a ``ConsensusGate`` on every gateable channel group of ``model`` (in place); return the gates' names.

    A group is gateable when one dense conv/linear produces its units, optionally followed directly by a BatchNorm,
    nothing else (no residual coupling) and only dense conv/linear layers consume them. The gate takes the layer's
    slot (``layer`` and ``norm`` move inside it, same Parameters) and the norm's slot becomes ``nn.Identity``. Each
    gate is verified: with every gate on, the model's outputs on ``example_inputs`` must be unchanged (checked with
    perturbed norm statistics); a gate that changes them (the norm is not applied right after the layer, or the
    layer's raw output is used elsewhere) is taken out again. With ``optimizer`` the predictors join it as a new
    param group without weight decay.

    Raises:
        ValueError: no gateable group (or ``ignore`` names unknown modules); ``UntraceableError`` from the tracer.
        Either way ``model`` is left unchanged.
    """
    ignore = check_ignore(model, ignore)
    if any(isinstance(m, ConsensusGate) for m in model.modules()):
        raise ValueError("model already has ConsensusGates (call remove_consensus_gates first)")
    graph = trace_dependencies(model, example_inputs)
    candidates = []
    for group in graph.groups:
        if is_ignored(group.modules, ignore):
            continue
        found = _gateable(model, group)
        if found is not None:
            candidates.append((*found, group))
    if not candidates:
        raise ValueError("model has no channel group that a ConsensusGate can switch (one dense conv/linear, "
                         "optionally followed by a BatchNorm, feeding dense conv/linear layers; no residual coupling)")
    costs = _unit_costs(model, example_inputs, candidates)
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    saved = _perturbed_norm_stats(norms)
    applied: list[tuple[str, str | None, ConsensusGate]] = []
    try:
        reference = _outputs(model, example_inputs)
        for producer, norm_name, group in candidates:
            layer = model.get_submodule(producer)
            norm = model.get_submodule(norm_name) if norm_name is not None else None
            gate = ConsensusGate(layer, norm, init_bias=init_bias)
            gate.norm_slot = norm_name
            gate.unit_cost = costs[producer]
            consumers = [(model.get_submodule(s.module), int(s.indices.shape[1])) for s in group.slices
                         if s.role == "in"]
            gate.consumers = [(c.layer if isinstance(c, ConsensusGate) else c, k) for c, k in consumers]
            _set(model, producer, gate)
            if norm_name is not None:
                _set(model, norm_name, nn.Identity())
            gate.force(torch.ones(gate.out_channels, dtype=torch.bool))
            try:
                same = _same(reference, _outputs(model, example_inputs))
            except ValueError:
                same = False
            gate.force(None)
            if same:
                applied.append((producer, norm_name, gate))
            else:
                _set(model, producer, layer)
                if norm_name is not None:
                    _set(model, norm_name, norm)
    except BaseException:
        for producer, norm_name, gate in reversed(applied):
            _set(model, producer, gate.layer)
            if norm_name is not None:
                _set(model, norm_name, gate.norm)
        raise
    finally:
        _restore_norm_stats(norms, saved)
    if not applied:
        raise ValueError("no ConsensusGate could be placed without changing model's outputs: every candidate "
                         "layer's norm is not applied directly to its output, or its output is used elsewhere")
    if optimizer is not None:
        optimizer.add_param_group({"params": [p for _, _, g in applied for p in g.predictor.parameters()],
                                   "weight_decay": 0.0})
    return [producer for producer, _, _ in applied]


@checked_arguments
def remove_consensus_gates(model: nn.Module) -> dict[str, ConsensusGate]:
    """Undo ``apply_consensus_gates`` (in place): each gate's layer goes back in the gate's slot and its norm back in
    its own slot; returns ``{slot name: removed gate}``."""
    removed = {}
    for name, gate in _gates(model):
        _set(model, name, gate.layer)
        if gate.norm is not None:
            if gate.norm_slot is None:
                raise ValueError(f"gate {name!r} holds a norm but does not know the norm's slot")
            _set(model, gate.norm_slot, gate.norm)
        removed[name] = gate
    return removed


def _reinsert(model: nn.Module, removed: dict[str, ConsensusGate]) -> None:
    for name, gate in removed.items():
        _set(model, name, gate)
        if gate.norm is not None:
            _set(model, gate.norm_slot, nn.Identity())


# ------------------------------------------------------------------------------------------------ rates and MACs
def _batches(inputs: Any, batch_size: int) -> Iterable[Any]:
    if isinstance(inputs, torch.Tensor):
        for i in range(0, max(1, inputs.shape[0]), batch_size):
            yield inputs[i:i + batch_size]
    elif isinstance(inputs, list):
        yield from inputs
    else:
        yield inputs


@checked_arguments
def firing_rates(model: nn.Module, inputs: Any, batch_size: int = 500) -> dict[str, torch.Tensor]:
    """Fraction of ``inputs`` for which each gate is on, in eval mode: ``{gate name: (C_out,) rates}``. ``inputs`` is
    a tensor (run in chunks of ``batch_size``), a list of batches, or one model input (see ``example_inputs``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    gates = _gates(model)
    if not gates:
        raise ValueError("model has no ConsensusGate (apply_consensus_gates first)")
    if isinstance(inputs, torch.Tensor) and inputs.shape[0:1] == (0,):
        raise ValueError("inputs must hold at least one sample")
    sums = {name: torch.zeros(g.out_channels) for name, g in gates}
    count = 0
    with evaluating(model):
        for batch in _batches(inputs, batch_size):
            run_model(model, batch, "inputs do not run the model")
            for name, g in gates:
                sums[name] += g.last_gates.float().sum(0).cpu()
            count += gates[0][1].last_gates.shape[0]
    return {name: s / max(1, count) for name, s in sums.items()}


@checked_arguments
def consensus_dynamic_macs(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Executed multiply-accumulates of every sample of ``inputs`` in eval mode, ``(N,)``.

    Every conv/linear counts ``dense MACs × (1 − input columns gated off / C_in) × (output channels on / C_out)``
    (output channels on: its gate's, else all); every gate adds its predictor's ``C_in × C_out``.
    """
    gates = [g for _, g in _gates(model)]
    if not gates:
        raise ValueError("model has no ConsensusGate (apply_consensus_gates first)")
    predictors = {id(m) for g in gates for m in g.predictor.modules()}
    layers = [m for m in model.modules() if isinstance(m, _LAYERS) and id(m) not in predictors]
    dense: dict[int, float] = {}

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        per_sample = out[0].numel()
        if isinstance(module, nn.Linear):
            dense[id(module)] = per_sample * module.in_features
        else:
            dense[id(module)] = per_sample * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with evaluating(model):
            out = run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    n = gates[0].last_gates.shape[0]
    device = gates[0].last_gates.device
    off_columns = {id(m): torch.zeros(n, device=device) for m in layers}
    out_fraction = {id(m): torch.ones(n, device=device) for m in layers}
    extra = torch.zeros(n, device=device)
    for g in gates:
        on = g.last_gates.float()
        out_fraction[id(g.layer)] = on.mean(1)
        off = (1 - on).sum(1)
        for consumer, columns in g.consumers:
            if id(consumer) in off_columns:
                off_columns[id(consumer)] += off * columns
        extra += g.predictor.in_features * g.predictor.out_features
    total = extra
    for m in layers:
        if id(m) not in dense:
            continue
        c_in = m.weight.shape[1] if isinstance(m, nn.Linear) else m.in_channels
        total = total + dense[id(m)] * (1 - off_columns[id(m)] / c_in) * out_fraction[id(m)]
    del out
    return total


# ------------------------------------------------------------------------------------------------------ extraction
@checked_arguments
def consensus_plan(model: nn.Module, example_inputs: Any, rates: dict[str, torch.Tensor], threshold: float = 0.5,
                   macs: float | None = None) -> dict[Group, torch.Tensor]:
    """Units to keep per dependency group of the (gate-free) ``model``: those with ``rate > threshold`` (at least the
    highest-rate unit); with ``macs``, instead the highest-rate units until the MACs per sample are at most ``macs``.
    ``rates`` maps producer names (the gates' names) to per-unit rates; groups without rates are kept whole."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if macs is not None and not macs > 0:
        raise ValueError(f"macs must be > 0, got {macs!r}")
    if any(isinstance(m, ConsensusGate) for m in model.modules()):
        raise ValueError("model still has ConsensusGates: call remove_consensus_gates(model) first")
    if not rates:
        raise ValueError("rates must map at least one gate name to its rates")
    scored: dict[Group, torch.Tensor] = {}
    for group in trace_dependencies(model, example_inputs).groups:
        producers = [s.module for s in group.slices if s.role == "out" and s.param == "weight" and s.dim == 0
                     and s.module in rates]
        if len(producers) == 1:
            r = rates[producers[0]]
            if not isinstance(r, torch.Tensor) or r.shape != (group.size,):
                raise ValueError(f"rates[{producers[0]!r}] must be a tensor of shape ({group.size},)")
            scored[group] = r.detach().float().cpu()
    missing = set(rates) - {s.module for g in scored for s in g.slices}
    if missing:
        raise ValueError(f"rates name layers that produce no dependency group of model: {sorted(missing)}")
    if macs is not None:
        return plan_to_macs(model, example_inputs, scored, macs)
    plan = {}
    for group, r in scored.items():
        keep = (r > threshold).nonzero().reshape(-1)
        plan[group] = keep if keep.numel() else r.argmax().reshape(1)
    return plan


@checked_arguments
def extract_consensus(model: nn.Module, example_inputs: Any, inputs: Any = None,
                      rates: dict[str, torch.Tensor] | None = None, threshold: float = 0.5, macs: float | None = None,
                      optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Turn the gated ``model`` into its static consensus sub-network, in place: firing rates on ``inputs`` (or the
    given ``rates``), gates removed, ``consensus_plan`` pruned physically (``prune_groups``, ``optimizer`` rebound).

    Returns ``{"rates": ..., "kept": {gate: units kept}, "units": (kept, total), "unpolarized": fraction of units
    with 0.05 < r < 0.95}``. On any failure the gates are put back and ``model`` is unchanged.
    """
    if not _gates(model):
        raise ValueError("model has no ConsensusGate (apply_consensus_gates first)")
    if rates is None:
        if inputs is None:
            raise ValueError("pass inputs (to measure the firing rates) or rates")
        rates = firing_rates(model, inputs)
    removed = remove_consensus_gates(model)
    try:
        plan = consensus_plan(model, example_inputs, rates, threshold, macs)
        prune_groups(model, plan, optimizer=optimizer, example_inputs=example_inputs)
    except BaseException:
        _reinsert(model, removed)
        raise
    for gate in removed.values():
        gate.force(None)
    kept = {}
    for group, keep in plan.items():
        name = next(s.module for s in group.slices if s.role == "out" and s.param == "weight" and s.dim == 0
                    and s.module in rates)
        kept[name] = keep.tolist()
    flat = torch.cat([r.reshape(-1) for r in rates.values()])
    return {"rates": {k: v.tolist() for k, v in rates.items()}, "kept": kept,
            "units": (sum(len(k) for k in kept.values()), int(flat.numel())),
            "unpolarized": float(((flat > 0.05) & (flat < 0.95)).float().mean())}


@checked_arguments
def consensus_masks(model: nn.Module, rates: dict[str, torch.Tensor], threshold: float = 0.5) -> None:
    """Force every gate of ``model`` to its consensus mask (``rate > threshold``, at least the top unit): the masked
    network that the extracted one equals (``ConsensusGate.force``; undo with ``force(None)``)."""
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    gates = _gates(model)
    if not gates:
        raise ValueError("model has no ConsensusGate (apply_consensus_gates first)")
    for name, gate in gates:
        if name not in rates or not isinstance(rates[name], torch.Tensor) or rates[name].shape != (gate.out_channels,):
            raise ValueError(f"rates must map gate {name!r} to a tensor of shape ({gate.out_channels},)")
    for name, gate in gates:
        r = rates[name].detach().cpu()
        mask = r > threshold
        if not bool(mask.any()):
            mask[r.argmax()] = True
        gate.force(mask)


# ------------------------------------------------------------------------------------------------------ the Method
@register_method
class ConsensusGatesMethod(Method):
    """Per-input channel gates (STE) polarised into one consensus sub-network, extracted physically at the end.

    ``setup`` gates every gateable channel group (``apply_consensus_gates``; the predictors join the optimizer, no
    weight decay, learning rate ``gate_lr`` or the optimizer's); ``forward_loss`` adds ``lam_sparsity·L_s +
    λ_p·L_p`` on the batch firing rates (``λ_p`` annealed from 0 to ``lam_polar`` over the first ``anneal`` of the
    run); ``on_train_end`` measures the firing rates on ``calibration_samples`` training samples, logs the mean
    executed MACs of the gated network, extracts the consensus (``threshold``) and re-estimates BatchNorm statistics.
    Logs ``consensus_gates/reg``, at epoch ends ``consensus_gates/kept`` (cost-weighted rate) and
    ``consensus_gates/unpolarized``; at the end ``dynamic_macs_ratio``, ``macs_ratio``, ``param_ratio``,
    ``units_kept``.

    Args:
        keep: κ, the target cost-weighted firing rate (fraction of gated channels' MACs kept, per layer side).
        lam_sparsity: λ_s, weight of the sparsity term.
        lam_polar: final λ_p, weight of the polarization term.
        t: polarization strength (0: symmetric around the mean rate; ``2 − 4κ``: Thm 3.2's split at κ).
        per_layer: one sparsity target per gated layer (else one global, cost-weighted target).
        anneal: fraction of the run over which λ_p rises from 0 (pitfall: STE gates freeze once polarised).
        init_bias: initial predictor bias (every gate on).
        gate_lr: learning rate of the predictors (``None``: the optimizer's).
        threshold: consensus rule, keep units on for more than this fraction of inputs.
        calibration_samples: training samples the final firing rates are measured on.
        recalibrate: re-estimate BatchNorm statistics of the extracted network on those samples.
        ignore: module names whose groups are not gated.
        extract_at_end: remove the gates and prune in ``on_train_end`` (else the gated network stays).
    """

    name = "consensus_gates"
    paper_id = "arXiv:2302.10798"
    claim = ("one-pass training with binary gates and a polarizing loss finds a static sub-network that removes 50% "
             "of connections at <1% accuracy loss (CIFAR-10/100, Tiny-ImageNet ResNets)")
    claimed_effect = "no_worse"
    inputs = ("image",)
    before = ("nm_sparsity", "hesso", "lottery_jackpots", "layer_dp", "tscnc", "trp", "swa")
    after = ("multi_sample_dropout", "lora", "allora", "squeeze_excite")
    conflicts = ("polarization", "ftwt", "nested_dropout", "random_search", "nested_width", "ofa", "weight_std",
                 "maestro", "blurpool", "cp_kernels", "lost")
    constraint_reason = ("consensus_gates traces the channel-dependency graph in setup and again at the end, wraps "
                         "conv/linear layers in gates and removes channels at the end: layers that other methods "
                         "replace after it (LoRA, squeeze-excitation) are no longer the traced ones, and the tracer "
                         "cannot map weight-standardized, low-rank, CP-factorised, LOST or blur-pooled layers; SWA "
                         "must load its average before the extraction; polarization, ftwt, random_search, nested and "
                         "once-for-all widths gate or prune the same channels")

    def __init__(self, keep: float = 0.5, lam_sparsity: float = 20.0, lam_polar: float = 5.0, t: float = 0.0,
                 per_layer: bool = True, anneal: float = 0.3, init_bias: float = 1.0, gate_lr: float | None = None,
                 threshold: float = 0.5, calibration_samples: int = 512, recalibrate: bool = True,
                 ignore: list[str] | None = None, extract_at_end: bool = True) -> None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep!r}")
        if not lam_sparsity >= 0:
            raise ValueError(f"lam_sparsity must be >= 0, got {lam_sparsity!r}")
        if not lam_polar >= 0:
            raise ValueError(f"lam_polar must be >= 0, got {lam_polar!r}")
        if not 0.0 <= anneal <= 1.0:
            raise ValueError(f"anneal must be in [0, 1], got {anneal!r}")
        if gate_lr is not None and not gate_lr > 0:
            raise ValueError(f"gate_lr must be > 0 or None, got {gate_lr!r}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        if calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {calibration_samples!r}")
        self.keep, self.lam_sparsity, self.lam_polar, self.anneal = keep, lam_sparsity, lam_polar, anneal
        self.t, self.per_layer = t, per_layer
        self.init_bias, self.gate_lr, self.threshold = init_bias, gate_lr, threshold
        self.calibration_samples, self.recalibrate = calibration_samples, recalibrate
        self.ignore, self.extract_at_end = list(ignore or []), extract_at_end
        self.gates: list[ConsensusGate] = []
        self._example: Any = None
        self._costs: torch.Tensor | None = None
        self._dense = (1, 1)

    def setup(self, ctx: Context) -> None:
        model = ctx.model
        self._example, _ = ctx.example_batch()
        try:
            check_ignore(model, self.ignore)
            self._dense = (count_macs(model, self._example), count_params(model))
            names = apply_consensus_gates(model, self._example, self.init_bias, self.ignore)
        except (ValueError, UntraceableError) as error:
            raise ConfigurationError(f"consensus_gates: {error}") from error
        self.gates = [model.get_submodule(name) for name in names]
        if ctx.optimizer is not None:
            group = {"params": [p for g in self.gates for p in g.predictor.parameters()], "weight_decay": 0.0}
            if self.gate_lr is not None:
                group["lr"] = self.gate_lr
            ctx.optimizer.add_param_group(group)
        self._costs = torch.cat([torch.full((g.out_channels,), float(g.unit_cost)) for g in self.gates])
        self.log(ctx, "gates", len(self.gates))

    def _lam_polar(self, ctx: Context) -> float:
        total = max(1, ctx.run.epochs * ctx.run.steps_per_epoch)
        progress = ctx.step / total
        return self.lam_polar * (min(1.0, progress / self.anneal) if self.anneal > 0 else 1.0)

    def forward_loss(self, model, x, y, next, ctx: Context):
        loss, output = next(model, x, y)
        rates = [g.rates for g in self.gates]
        for g in self.gates:
            g.rates = None
        if self.gates and all(r is not None for r in rates):
            costs = self._costs.to(rates[0])
            reg = self.lam_sparsity * gate_sparsity_loss(rates, self.keep, costs, self.per_layer)
            lam_p = self._lam_polar(ctx)
            if lam_p > 0:
                reg = reg + lam_p * gate_polarization(rates, self.t)
            self.log(ctx, "reg", reg.detach())
            loss = loss + reg
        return loss, output

    def on_epoch_end(self, ctx: Context) -> None:
        gates = [g.last_gates for g in self.gates if g.last_gates is not None]
        if len(gates) != len(self.gates) or not gates:
            return
        rates = torch.cat([g.float().mean(0).cpu() for g in gates])
        costs = self._costs
        self.log(ctx, "kept", float((costs * rates).sum() / costs.sum()))
        self.log(ctx, "unpolarized", float(((rates > 0.05) & (rates < 0.95)).float().mean()))

    def on_train_end(self, ctx: Context) -> None:
        if not self.extract_at_end or not self.gates:
            return
        model = ctx.model.module if hasattr(ctx.model, "module") else ctx.model
        calib, _ = ctx.example_batch(self.calibration_samples)
        batches = list(_batches(calib, 256))
        dense_macs, before_params = self._dense
        dynamic = torch.cat([consensus_dynamic_macs(model, b) for b in batches])
        self.log(ctx, "dynamic_macs_ratio", float(dynamic.mean()) / max(1, dense_macs))
        summary = extract_consensus(model, self._example, batches, threshold=self.threshold,
                                    optimizer=ctx.optimizer)
        if self.recalibrate:
            recalibrate_batch_norm(model, batches)
        self.gates = []
        self.log(ctx, "units_kept", summary["units"][0])
        self.log(ctx, "unpolarized", summary["unpolarized"])
        self.log(ctx, "macs_ratio", count_macs(model, self._example) / max(1, dense_macs))
        self.log(ctx, "param_ratio", count_params(model) / max(1, before_params))

