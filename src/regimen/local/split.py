"""Split an ordered list of blocks into K gradient-isolated modules for supervised local learning.

A network given as stages ``[s_0, s_1, ..., s_{n-1}, head]`` (the reference models' ``model.stages``) is cut into
K contiguous *modules*. Module k covers ``stages[start_k:end_k]``; the last module always ends with the head, and
every module holds at least one backbone block (the head alone is never a module).

Split points are either given (``split_points=[p_1, ..., p_{K-1}]``: module k starts at stage ``p_k``) or chosen to
balance a per-block cost: its parameter count (``balance="params"``, the issue's default), its output activation
size per sample (``balance="activations"``, needs an example input; this is what balances *memory*, since the
early, wide blocks of a CNN have few parameters but most of the activations) or one per block (``"blocks"``).
Balancing minimises the largest module cost (linear partition, solved exactly by dynamic programming).

``min_last_blocks`` forces the last module to contain at least that many backbone blocks (AugLocal trains its last
d+1 blocks with the real head, so their auxiliary networks would only duplicate the rest of the network).

Pitfalls handled: K larger than the number of blocks, stages that are not ``nn.Module``, a model without
``stages`` and no split points, split points out of order or leaving the head alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from regimen._compat import renamed_arguments
from regimen.method import checked_arguments

__all__ = ["BALANCE_MODES", "balanced_split_points", "block_costs", "resolve_stages", "split_points_to_ranges"]

BALANCE_MODES = ("params", "activations", "blocks")
Balance = Literal["params", "activations", "blocks"]


@checked_arguments
def resolve_stages(model_or_stages: nn.Module | Sequence[nn.Module], split_points: Sequence[int] | None = None
                   ) -> list[nn.Module]:
    """The ordered blocks of ``model_or_stages``: its ``.stages``, the children of a Sequential/ModuleList, a list.

    A plain ``nn.Module`` without ``stages`` is only accepted with explicit ``split_points`` (its children, in
    registration order, are then taken as the blocks; that order must be the execution order).

    Raises:
        TypeError: an element is not an ``nn.Module`` or the argument is neither a module nor a sequence.
        ValueError: fewer than two stages (a backbone block and a head), or a model without ``stages`` and no
            split points.
    """
    if isinstance(model_or_stages, nn.Module):
        stages_attr = getattr(model_or_stages, "stages", None)
        if stages_attr is not None:
            stages = list(stages_attr)
        elif isinstance(model_or_stages, nn.Sequential | nn.ModuleList):
            stages = list(model_or_stages)
        elif split_points is not None:
            stages = list(model_or_stages.children())
        else:
            raise ValueError(
                f"stages: {type(model_or_stages).__name__} has no `stages` attribute; pass a model with `stages` "
                "(an ordered ModuleList ending in the head), a list of blocks, or explicit split_points"
            )
    elif isinstance(model_or_stages, Sequence) and not isinstance(model_or_stages, str | bytes):
        stages = list(model_or_stages)
    else:
        raise TypeError(f"stages must be an nn.Module or a sequence of nn.Module, got {type(model_or_stages).__name__}")
    for index, stage in enumerate(stages):
        if not isinstance(stage, nn.Module):
            raise TypeError(f"stages[{index}] must be an nn.Module, got {type(stage).__name__}")
    if len(stages) < 2:
        raise ValueError(f"stages must hold at least one block and a head (2 stages), got {len(stages)}")
    return stages


@renamed_arguments(example_input="example_inputs")
@checked_arguments
def block_costs(
    stages: Sequence[nn.Module], balance: Balance = "params", example_inputs: torch.Tensor | None = None,
) -> list[float]:
    """Cost of each backbone block (all stages but the head) under ``balance``; the head's cost is added to the last.

    ``"activations"`` runs ``example_inputs`` through the stages once (eval mode, no grad, training flags restored)
    and counts the elements of every tensor each block's submodules output per sample — a proxy for the
    activations autograd keeps for the backward pass. ``example_input`` is the deprecated name of ``example_inputs``.
    """
    if balance not in BALANCE_MODES:
        raise ValueError(f"balance must be one of {BALANCE_MODES}, got {balance!r}")
    blocks = list(stages[:-1])
    if balance == "blocks":
        return [1.0] * len(blocks)
    if balance == "params":
        costs = [float(sum(p.numel() for p in block.parameters())) for block in blocks]
        costs[-1] += float(sum(p.numel() for p in stages[-1].parameters()))
        return costs
    if example_inputs is None:
        raise ValueError("balance='activations' needs example_inputs (a batch shaped like the training input)")
    costs = []
    modes = [m.training for s in stages for m in s.modules()]
    try:
        for s in stages:
            s.eval()
        x = example_inputs
        with torch.no_grad():
            for block in blocks:
                counted = [0]

                def hook(_module: nn.Module, _inputs: object, output: object, counted: list[int] = counted) -> None:
                    if isinstance(output, torch.Tensor):
                        counted[0] += output[0].numel()

                leaves = [m for m in block.modules() if not list(m.children())] or [block]
                handles = [m.register_forward_hook(hook) for m in leaves]
                try:
                    x = block(x)
                finally:
                    for handle in handles:
                        handle.remove()
                costs.append(float(max(counted[0], x[0].numel())))
    finally:
        iterator = iter(modes)
        for s in stages:
            for m in s.modules():
                m.training = next(iterator)
    return costs


@checked_arguments
def balanced_split_points(costs: Sequence[float], num_modules: int, min_last_blocks: int = 1) -> list[int]:
    """Split points (start index of modules 2..K) minimising the largest module cost; exact dynamic programme.

    Args:
        costs: cost of each backbone block (length n).
        num_modules: K, 1 <= K <= n.
        min_last_blocks: the last module holds at least this many blocks.

    Returns:
        ``[p_1, ..., p_{K-1}]`` strictly increasing, module k = blocks ``[p_{k-1}, p_k)`` with ``p_0 = 0``.
        Ties prefer earlier cuts (smaller early modules, which hold the largest activations in CNNs).
    """
    n = len(costs)
    if num_modules < 1:
        raise ValueError(f"num_modules must be >= 1, got {num_modules}")
    if min_last_blocks < 1:
        raise ValueError(f"min_last_blocks must be >= 1, got {min_last_blocks}")
    if num_modules - 1 + min_last_blocks > n:
        raise ValueError(
            f"num_modules={num_modules} needs at least {num_modules - 1 + min_last_blocks} blocks "
            f"(the last module holds >= {min_last_blocks}), but there are only {n} blocks before the head"
        )
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[k][j]: minimal max-cost of splitting blocks[0:j] into k modules; choice[k][j]: start of the k-th module.
    best = [[inf] * (n + 1) for _ in range(num_modules + 1)]
    choice = [[0] * (n + 1) for _ in range(num_modules + 1)]
    best[0][0] = 0.0
    for k in range(1, num_modules + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                if k == num_modules and j - i < min_last_blocks:
                    continue
                value = max(best[k - 1][i], prefix[j] - prefix[i])
                if value < best[k][j] - 1e-9:
                    best[k][j] = value
                    choice[k][j] = i
    points = []
    j = n
    for k in range(num_modules, 0, -1):
        i = choice[k][j]
        if k > 1:
            points.append(i)
        j = i
    return sorted(points)


@checked_arguments
def split_points_to_ranges(split_points: Sequence[int], num_stages: int, min_last_blocks: int = 1
                           ) -> list[tuple[int, int]]:
    """Validate split points over ``num_stages`` stages (head last) and return each module's ``(start, end)``.

    Raises:
        TypeError: a split point is not an int.
        ValueError: points not strictly increasing, outside ``1 .. num_stages - 2`` (a module would be empty or the
            head would be alone), or the last module holds fewer than ``min_last_blocks`` blocks.
    """
    points = list(split_points)
    for p in points:
        if isinstance(p, bool) or not isinstance(p, int):
            raise TypeError(f"split_points must be ints, got {p!r}")
    if num_stages < 2:
        raise ValueError(f"num_stages must be >= 2 (at least one block and the head), got {num_stages}")
    if min_last_blocks < 0:
        raise ValueError(f"min_last_blocks must be >= 0, got {min_last_blocks}")
    num_blocks = num_stages - 1
    if any(b <= a for a, b in zip(points, points[1:], strict=False)):
        raise ValueError(f"split_points must be strictly increasing, got {points}")
    if points and (points[0] < 1 or points[-1] > num_blocks - 1):
        raise ValueError(
            f"split_points must lie in 1..{num_blocks - 1} (module starts after the first block, the head never "
            f"alone) for {num_stages} stages, got {points}"
        )
    if points and num_blocks - points[-1] < min_last_blocks:
        raise ValueError(
            f"the last module must hold at least {min_last_blocks} blocks before the head, but split point "
            f"{points[-1]} leaves {num_blocks - points[-1]}"
        )
    bounds = [0, *points, num_stages]
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]
