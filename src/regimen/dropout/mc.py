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

Trainer method: ``mc_inference`` (:class:`MCInferenceMethod`) evaluates classifiers through
:class:`MCDropoutClassifier`, whose output is the log of the mean of the K passes' softmax probabilities (the MC
predictive distribution: cross-entropy on it is the predictive NLL, its argmax the MC prediction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from regimen.dropout._common import StochasticLayer, check_generator
from regimen.method import Context, Method, checked_arguments, register_method

__all__ = ["MCDropoutClassifier", "MCInferenceMethod", "is_mc_dropout_layer", "mc_dropout_mode", "mc_predict"]


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
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}")
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


@checked_arguments
class MCDropoutClassifier(nn.Module):
    """Wraps a classifier: ``forward(x)`` = log of the mean over ``samples`` dropout passes of ``softmax(model(x))``.

    The passes draw from the wrapper's own generator, seeded with ``seed`` at construction and by :meth:`reset`, so an
    evaluation (a sequence of calls after a reset) is reproducible and leaves the training random streams alone.
    ``last_variance`` holds the variance over the passes of the probabilities ``(N, C)`` of the last call.
    """

    def __init__(self, model: nn.Module, samples: int = 10, seed: int = 0, chunk_size: int | None = None) -> None:
        super().__init__()
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.model = model
        self.samples, self.seed, self.chunk_size = samples, int(seed), chunk_size
        self.generator = torch.Generator().manual_seed(self.seed)
        self.last_variance: torch.Tensor | None = None

    def reset(self) -> None:
        """Re-seed the passes: the next calls draw the masks the first calls after construction drew."""
        self.generator.manual_seed(self.seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, variance = mc_predict(self.model, x, self.samples, generator=self.generator,
                                    transform=lambda z: z.float().softmax(dim=-1), chunk_size=self.chunk_size)
        self.last_variance = variance
        return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


@register_method
class MCInferenceMethod(Method):
    """Monte-Carlo dropout inference: evaluate with dropout on, averaging the softmax of ``samples`` passes.

    ``eval_model`` returns :class:`MCDropoutClassifier` around the model (seeded per epoch, so evaluations are
    reproducible); training is unchanged. The model needs dropout layers (``nn.Dropout``, temporal or concrete
    dropout): list ``temporal_dropout`` / ``concrete_temporal_dropout`` before this method, or give the model
    dropout (``model.options.head_dropout``).

    Args:
        samples: K, stochastic passes per evaluated batch (cost: K forwards).
        chunk_size: at most this many rows per forward (memory bound); default all K·N rows at once.
    """

    name = "mc_inference"
    paper_id = "arXiv:1506.02142"
    claim = ("averaging stochastic forward passes with dropout kept on (MC dropout) predicts better than the "
             "standard weight-scaled pass (lower test error and NLL) and gives model uncertainty")
    claimed_effect = "better"
    targets = ("labels",)
    after = ("temporal_dropout", "concrete_temporal_dropout", "ema", "swa")
    constraint_reason = "it needs the dropout layers their surgery adds, and wraps the weights EMA/SWA evaluate"

    def __init__(self, samples: int = 10, chunk_size: int | None = None) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.samples, self.chunk_size = samples, chunk_size

    def setup(self, ctx: Context) -> None:
        if not any(is_mc_dropout_layer(m) for m in ctx.model.modules()):
            raise ValueError("the model has no dropout layer to keep on at inference; list temporal_dropout or "
                             "concrete_temporal_dropout before mc_inference, or give the model dropout "
                             "(model.options.head_dropout)")
        self.log(ctx, "samples", self.samples)

    def eval_model(self, model: nn.Module, ctx: Context) -> nn.Module:
        return MCDropoutClassifier(model, self.samples, seed=ctx.run.seed * 1_000_003 + ctx.epoch,
                                   chunk_size=self.chunk_size)
