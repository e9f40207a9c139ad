"""OT-CFM: conditional flow matching on minibatch exact optimal-transport pairs.

Paper: Tong, Fatras, Malkin, Huguet, Zhang, Rector-Brooks, Wolf, Bengio, "Improving and generalizing flow-based
generative models with minibatch optimal transport", TMLR 2024, arXiv 2302.00482 (Algorithm 2); Pooladian et al.,
"Multisample Flow Matching", ICML 2023, arXiv 2304.14772. Within a batch of N source and N data samples, the
independent pairing is replaced by the exact OT assignment for the squared Euclidean cost::

    π* = argmin_{π ∈ S_N} Σ_i ‖x0_{π(i)} − x1_i‖²,   x_t = (1 − t) x0_{π(i)} + t x1_i,   u_t = x1_i − x0_{π(i)}

With uniform weights the exact OT plan is a permutation (Birkhoff), so scipy's Hungarian solver
(``scipy.optimize.linear_sum_assignment``, O(N³)) gives it; the reference (torchcfm) uses POT's ``ot.emd`` and then
*samples* pairs from the plan, which for a permutation plan is the same pairing. The straighter, less crossing
pairs give lower-variance targets and straighter learnt flows, so few ODE steps suffice.

Pitfalls: the assignment runs on CPU in float64 (a GPU batch is copied); each data sample keeps its own t (only the
source samples move), so the times stay uniform.
"""

from __future__ import annotations

import numpy as np
import torch

from regimen.losses.cfm import cfm_pairs, split_cfm_target
from regimen.method import Context, Method, checked_arguments, register_method, require_data

__all__ = ["OTCFMMethod", "ot_pairing"]


@checked_arguments
def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The permutation ``p`` for which ``Σ_i ‖x0[p[i]] − x1[i]‖²`` is least (exact, Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment

    if x0.dim() != 2 or x0.shape != x1.shape:
        raise ValueError(f"x0 and x1 must be (N, d) of one shape, got {tuple(x0.shape)} and {tuple(x1.shape)}")
    require_data(x0=x0, x1=x1)
    if not (bool(torch.isfinite(x0).all()) and bool(torch.isfinite(x1).all())):
        raise ValueError("x0 and x1 must be finite (the pairing's squared distances)")
    cost = torch.cdist(x0.detach().double().cpu(), x1.detach().double().cpu()).pow(2).numpy()
    rows, cols = linear_sum_assignment(cost)  # rows = 0..N-1; x0[rows[k]] goes to x1[cols[k]]
    source = np.empty_like(rows)
    source[cols] = rows
    return torch.from_numpy(source).to(x0.device)


@register_method
class OTCFMMethod(Method):
    """OT-CFM: pair each batch's source and data samples by exact minibatch optimal transport (Tong et al. 2023)."""

    name = "otcfm"
    paper_id = "arXiv:2302.00482"
    claim = ("OT-CFM's minibatch OT pairs give straighter flows and lower-variance targets than I-CFM: better samples, "
             "especially with few ODE steps")
    claimed_effect = "better"
    inputs = ("flow",)
    conflicts = ("wcfm",)
    constraint_reason = "W-CFM replaces minibatch OT by Gibbs weights on independent pairs"

    def transform_batch(self, x: torch.Tensor, y: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        x0, x1, t = split_cfm_target(y)
        x0 = x0[ot_pairing(x0, x1)]
        return cfm_pairs(x0, x1, t)
