"""Monte-Carlo dropout inference: keep dropout on at test time and report the mean and variance of K passes.

Paper: Yarin Gal, Zoubin Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty in Deep
Learning", 2016, arXiv 1506.02142.

Formula: with dropout masks m_k, k = 1..K, the predictive mean is (1/K) Σ_k f(x; m_k) and the spread
(1/K) Σ_k f(x; m_k)² - mean² estimates the model's uncertainty.

Pitfalls handled:

- Only dropout layers (``torch.nn`` dropout layers and this pillar's stochastic layers) are switched to training
  mode; BatchNorm and every other layer stay in eval mode, and all modes are restored afterwards, even on error.
- The K passes are one forward of the input repeated K times (optionally in chunks), not a Python loop; this is
  valid because every layer then treats samples independently (BatchNorm in eval mode).
- Reproducible: with ``generator`` the passes run under a forked RNG seeded from it, and this pillar's layers draw
  from that RNG too; the caller's global RNG state is untouched.
- Multi-sample dropout heads stay deterministic (their training output has another shape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from regimen.dropout._common import StochasticLayer, check_generator
from regimen.method import checked_arguments

__all__ = ["is_mc_dropout_layer", "mc_dropout_mode", "mc_predict"]


@checked_arguments
def is_mc_dropout_layer(module: nn.Module) -> bool:
    """True for layers that MC inference keeps stochastic."""
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return True
    return isinstance(module, StochasticLayer) and getattr(module, "mc_dropout", False)


@checked_arguments
@contextmanager
def mc_dropout_mode(model: nn.Module, generator: torch.Generator | None = None) -> Iterator[nn.Module]:
    """Context: ``model`` in eval mode except its dropout layers; modes (and layer generators) restored on exit."""
    modes = {module: module.training for module in model.modules()}
    generators = {m: m.generator for m in model.modules() if isinstance(m, StochasticLayer)}
    try:
        model.eval()
        for module in model.modules():
            if is_mc_dropout_layer(module):
                module.train()
                if isinstance(module, StochasticLayer) and generator is not None:
                    module.generator = None  # draw from the forked, seeded global RNG
        yield model
    finally:
        for module, mode in modes.items():
            module.training = mode
        for module, gen in generators.items():
            module.generator = gen


@checked_arguments
def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 16,
    *,
    generator: torch.Generator | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance over ``samples`` stochastic forward passes with dropout active.

    Args:
        model: any module; its dropout layers are kept active, everything else runs in eval mode.
        x: input batch ``(N, ...)``.
        samples: K >= 1 passes.
        generator: seeds the passes (same generator state -> same result); None uses the global RNG.
        transform: applied to each pass's output before averaging (e.g. ``lambda z: z.softmax(-1)``).
        chunk_size: at most this many rows per forward (memory bound); default all K·N rows at once.

    Returns:
        ``(mean, variance)`` of shape ``model(x).shape``; the variance divides by K (0 when K = 1).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    check_generator(generator)
    n = x.shape[0]
    stacked = x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * n, *x.shape[1:])
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices, enabled=generator is not None):
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            torch.manual_seed(seed)
        with mc_dropout_mode(model, generator):
            rows = chunk_size or samples * n
            out = torch.cat([model(part) for part in stacked.split(rows)])
    out = out.view(samples, n, *out.shape[1:])
    if transform is not None:
        out = transform(out)
    mean = out.mean(dim=0)
    variance = out.var(dim=0, correction=0)
    return mean, variance
