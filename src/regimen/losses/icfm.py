"""I-CFM: independent coupling with Gaussian probability paths of width σ.

Paper: Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio, "Improving and generalizing flow-based
generative models with minibatch optimal transport", TMLR 2024, arXiv 2302.00482 (Algorithm 1). Source and data
samples are drawn independently, ``(x0, x1) ~ q0 ⊗ q1``, and joined by a Gaussian path around the straight line::

    x_t = (1 − t) x0 + t x1 + σ ε,   ε ~ N(0, I),   u_t = x1 − x0

The ``flow_matching`` task already draws independent pairs with σ = 0 (its baseline is I-CFM at σ = 0, i.e.
rectified flow); this method adds the σ ε term to the batch's ``x_t`` (the target ``u_t`` is unchanged for a
constant σ). Listed after ``otcfm`` it gives OT-CFM with σ > 0 (OT-CFM re-pairs and rebuilds ``x_t`` first).
"""

from __future__ import annotations

import torch

from regimen.losses.cfm import split_cfm_target
from regimen.method import Context, Method, checked_arguments, register_method, require_same_device

__all__ = ["ICFMMethod", "add_path_noise"]


@checked_arguments
def add_path_noise(inputs: torch.Tensor, sigma: float, noise: torch.Tensor) -> torch.Tensor:
    """``[x_t + σ ε, t]`` from a flow-matching input ``[x_t, t]`` ``(N, d + 1)`` and ``ε`` ``(N, d)``."""
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2 or inputs.shape[1] < 2:
        raise ValueError(f"inputs must be [x_t, t] of shape (N, d + 1), got {tuple(getattr(inputs, 'shape', ()))}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if noise.shape != (inputs.shape[0], inputs.shape[1] - 1):
        raise ValueError(f"noise must be (N, d) = {(inputs.shape[0], inputs.shape[1] - 1)}, got {tuple(noise.shape)}")
    require_same_device(inputs=inputs, noise=noise)
    return torch.cat([inputs[:, :-1] + sigma * noise.to(inputs.dtype), inputs[:, -1:]], dim=1)


@register_method
class ICFMMethod(Method):
    """I-CFM's Gaussian path: x_t += σ ε on the independent pairs (Tong et al. 2023).

    Args:
        sigma: the path's width σ (Tong et al.'s 2-D experiments: 0.1); ε comes from ``ctx.generator``.
    """

    name = "icfm"
    paper_id = "arXiv:2302.00482"
    claim = ("I-CFM: independent pairs on Gaussian paths of width sigma train a continuous flow simulation-free from "
             "any source, matching flow matching's sample quality")
    claimed_effect = "no_worse"
    inputs = ("flow",)
    after = ("otcfm",)
    constraint_reason = "OT-CFM rebuilds x_t from its re-paired batch, so the path noise is added after it"

    def __init__(self, sigma: float = 0.1) -> None:
        if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not sigma >= 0:
            raise ValueError(f"icfm: sigma must be a number >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        split_cfm_target(y)  # a flow-matching batch, or a ValueError naming the layout
        noise = torch.randn(x.shape[0], x.shape[1] - 1, generator=ctx.generator).to(x.device)
        return add_path_noise(x, self.sigma, noise), y
