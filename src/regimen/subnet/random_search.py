"""Random search over node (channel) masks: the neutral baseline for sub-network search.

Paper: Rezsa Farahani, "Random Search as a Baseline for Sparse Neural Network Architecture Search", arXiv 2403.08265
(no reference code; the protocol below is regimen's reading of the abstract).

Protocol. Draw ``N`` node masks uniformly at random at the same sparsity — every unit of every dependency group gets
an independent uniform score ``u ~ U(0, 1)`` from a seeded ``torch.Generator`` and the lowest-scoring units are
removed, either the same fraction ``s`` in every group (``random_node_plan(..., sparsity=s)``, the paper's "fraction
of nodes removed per layer") or across groups until a MAC budget holds (``macs=``: random layer widths) — build each
candidate physically (``prune_groups``), score it with a user proxy (higher is better: validation accuracy after a
short training, or minus the loss of the initialised network on a fixed batch), keep the best. The paper's finding
is that the selected sub-network neither trains better nor converges faster than its random counterparts, which is
why it serves as the "random mask at equal cost" control of every pruning report.

Pitfalls handled: every candidate starts from the same parent initialisation (``make_model()`` returns the same
weights each call in the caller's protocol); the search's own cost (``N`` proxy evaluations) is returned so a report
can charge it; masks are physical (the speed is real).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.method import Context, Method, checked_arguments, register_method
from regimen.subnet._common import check_ignore, evaluating, is_ignored
from regimen.subnet._ranking import plan_to_macs
from regimen.subnet.dependency import Group, UntraceableError, trace_dependencies
from regimen.subnet.measure import count_macs, count_params
from regimen.subnet.prune import prune_groups

__all__ = ["RandomSearchMethod", "SearchResult", "random_node_plan", "random_search"]


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


@checked_arguments
def random_node_plan(model: nn.Module, example_inputs: Any, generator: torch.Generator,
                     sparsity: float | None = None, macs: float | None = None,
                     ignore: Sequence[str] = ()) -> dict[Group, torch.Tensor]:
    """A uniformly random node mask of ``model`` as a keep plan ``{group: kept units}``.

    Exactly one of ``sparsity`` (remove ``floor(sparsity·size)`` random units of every group, at least one kept) and
    ``macs`` (remove random units across groups until at most ``macs`` MACs per sample remain) must be given.
    """
    if (sparsity is None) == (macs is None):
        raise ValueError("give exactly one of sparsity (fraction of units per group) and macs (a MAC budget)")
    if sparsity is not None:
        sparsity = _check_sparsity(sparsity)
    if macs is not None and not macs > 0:
        raise ValueError(f"macs must be > 0, got {macs!r}")
    ignore = check_ignore(model, ignore)
    groups = [g for g in trace_dependencies(model, example_inputs).groups if not is_ignored(g.modules, ignore)]
    if not groups:
        raise ValueError("model has no prunable dependency group (outside ignore)")
    scored = {g: torch.rand(g.size, generator=generator) for g in groups}
    if macs is not None:
        return plan_to_macs(model, example_inputs, scored, macs)
    plan = {}
    for g in groups:
        n_keep = max(1, g.size - int(math.floor(sparsity * g.size + 1e-9)))
        plan[g] = torch.argsort(scored[g], descending=True)[:n_keep].sort().values
    return plan


@dataclass
class SearchResult:
    """What ``random_search`` found: the best candidate (pruned, and as the scorer left it), every score, the
    index of the best, and each candidate's plan as ``{group name: kept units}``."""

    model: nn.Module
    scores: list[float]
    best: int
    widths: list[dict[str, list[int]]] = field(default_factory=list)


@checked_arguments
def random_search(make_model: Callable[[], nn.Module], example_inputs: Any, score: Callable[[nn.Module], float],
                  generator: torch.Generator, candidates: int = 8, sparsity: float | None = None,
                  macs: float | None = None, ignore: Sequence[str] = ()) -> SearchResult:
    """Best of ``candidates`` random node masks: each candidate is ``make_model()`` pruned by ``random_node_plan``
    and scored by ``score(candidate)`` (higher is better; it may train the candidate in place)."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}")
    if not callable(make_model) or not callable(score):
        raise TypeError("make_model and score must be callables")
    best_model, best_score, best_index, scores, widths = None, -math.inf, -1, [], []
    for i in range(candidates):
        model = make_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"make_model must return an nn.Module, got {type(model).__name__}")
        plan = random_node_plan(model, example_inputs, generator, sparsity=sparsity, macs=macs, ignore=ignore)
        widths.append({g.name or str(g.id): keep.tolist() for g, keep in plan.items()})
        prune_groups(model, plan, example_inputs=example_inputs)
        value = float(score(model))
        if math.isnan(value):
            raise ValueError(f"score returned NaN for candidate {i}")
        scores.append(value)
        if value > best_score:
            best_model, best_score, best_index = model, value, i
    return SearchResult(best_model, scores, best_index, widths)


@register_method
class RandomSearchMethod(Method):
    """Random node-mask search at setup: the best of ``candidates`` random masks (by the initialised network's loss
    on a fixed batch) is removed physically, then the sub-network trains as usual.

    Logs ``random_search/best_loss``, ``random_search/mean_loss``, ``random_search/params`` and
    ``random_search/param_ratio``.

    Args:
        sparsity: fraction of the units of every channel group removed (in [0, 1)).
        candidates: number of random masks drawn.
        proxy_samples: size of the fixed training batch the candidates are scored on.
        ignore: module names whose groups are never pruned.
    """

    name = "random_search"
    paper_id = "arXiv:2403.08265"
    claim = ("initialised sparse networks found by random search neither perform better nor converge more efficiently "
             "than their random counterparts: random search is a neutral baseline")
    claimed_effect = "no_worse"
    # batchformer / tscnc first: the search's physical pruning leaves them holding the unpruned widths
    before = ("weight_std", "nm_sparsity", "batchformer", "tscnc")
    after = ("trp", "multi_sample_dropout")
    conflicts = ("maestro", "hesso", "polarization")
    constraint_reason = ("random_search traces the channel-dependency graph and removes channels by name in setup: it "
                         "cannot trace weight-standardized, N:M-parametrized or low-rank layers, must see the head "
                         "that multi-sample dropout and TRP wrap, and other channel pruners would prune it again")

    def __init__(self, sparsity: float = 0.5, candidates: int = 8, proxy_samples: int = 512,
                 ignore: list[str] | None = None) -> None:
        self.sparsity = _check_sparsity(sparsity)
        if candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates!r}")
        if proxy_samples < 1:
            raise ValueError(f"proxy_samples must be >= 1, got {proxy_samples!r}")
        self.candidates, self.proxy_samples, self.ignore = candidates, proxy_samples, list(ignore or [])

    def setup(self, ctx: Context) -> None:
        model = ctx.model
        x, y = ctx.example_batch(self.proxy_samples)  # normalised, on the device
        try:
            check_ignore(model, self.ignore)
            plans = [random_node_plan(model, x, ctx.generator, sparsity=self.sparsity, ignore=self.ignore)
                     for _ in range(self.candidates)]
        except UntraceableError as error:
            raise ConfigurationError(
                f"random_search cannot trace this model's channel dependencies: {error}") from error
        except ValueError as error:
            raise ConfigurationError(f"random_search: {error}") from error
        losses = []
        for plan in plans:
            trial = copy.deepcopy(model)
            prune_groups(trial, plan)
            with evaluating(trial):
                losses.append(float(ctx.criterion(trial(x), y)))
        best = min(range(len(losses)), key=losses.__getitem__)
        before = count_params(model)
        prune_groups(model, plans[best], optimizer=ctx.optimizer, example_inputs=x)
        self.log(ctx, "best_loss", losses[best])
        self.log(ctx, "mean_loss", sum(losses) / len(losses))
        self.log(ctx, "params", count_params(model))
        self.log(ctx, "param_ratio", count_params(model) / max(1, before))
        self.log(ctx, "macs", count_macs(model, x[:1]))
