"""LA-GNN: local augmentation for graph neural networks (generated neighbour features as extra inputs).

Paper: Liu, Ying, Wang, Xie, Xia, Chen, "Local Augmentation for Graph Neural Networks", ICML 2022, arXiv 2109.03856
(reference: SongtaoLiu0823/LAGNN, ``Citation/``). A conditional VAE learns the distribution of a neighbour's
features given the centre node's, ``p_φ(x_u | x_v)`` for every edge ``(v, u)``; while the GNN trains, every step
draws, for every node, ``concat`` feature vectors "like its neighbours'" and feeds them as extra inputs, each
through its own first GCN layer, concatenated before the second layer (LA-GCN)::

    CVAE:  q(z | x_u, x_v) = N(μ, σ²) (MLP [2F → 256] → μ, log σ²),   x̂_u = sigmoid(MLP [z, x_v] → 256 → F)
           loss = (BCE_sum(x̂_u, x_u) + KL(q ‖ N(0, I))) / batch                 (z: 10 dims)
    X̄_k = rownorm(x̂(z_k, X)), z_k ~ N(0, I)                     (row-normalised like the input features)
    H = [ReLU(Â X W1⁰), ReLU(Â X̄_1 W1¹), ...],   logits = Â H W2
    loss = (1/S) Σ_s CE(logits_s[train], y) + λ · (1/S) Σ_s mean_v ‖p_s(v) − sharpen(p̄(v), T)‖²

with S = ``samples`` forward passes per step (fresh X̄ each), p̄ their mean prediction, sharpened with temperature
T = 0.5 and not back-propagated (the consistency term runs over all nodes, as the reference does). Since
``Â [H⁰, H¹, ...] W2 = Σ_k Â H^k W2^k``, the wider second layer is the original one plus one bias-free layer per
generated block: the original model's parameters stay in place and the optimizer stays bound.

Departures (documented): the reference selects the CVAE checkpoint by an ensemble-disagreement "U-score" of a
pre-trained GCN; regimen trains the CVAE ``cvae_epochs`` epochs and keeps the last one (the spec's default).
Evaluation draws its generated features from a fixed seed (the reference draws fresh ones), so a model's scores
are reproducible. The CVAE learns from the raw (binary) features; its outputs are row-normalised before the GCN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, Method, checked_arguments, register_method, require_data, require_same_device
from regimen.models.gcn import GCN, GraphConv, row_normalize

__all__ = ["LAGNNMethod", "LocalAugmentedGCN", "NeighbourCVAE", "consistency_loss", "cvae_loss",
           "train_neighbour_cvae"]

#: Seed of the generated features at evaluation (a constant: every evaluation of a model scores the same).
EVAL_SEED = 20_220_717


@checked_arguments
class NeighbourCVAE(nn.Module):
    """The conditional VAE of a neighbour's features ``x`` given its centre's ``c`` (the reference's sizes)."""

    def __init__(self, features: int, latent: int = 10, hidden: int = 256) -> None:
        super().__init__()
        for name, value in (("features", features), ("latent", latent), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.features, self.latent = features, latent
        self.encoder = nn.Sequential(nn.Linear(2 * features, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, latent)
        self.log_var = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent + features, hidden), nn.ReLU(), nn.Linear(hidden, features),
                                     nn.Sigmoid())

    def forward(self, x: torch.Tensor, c: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(x̂, μ, log σ²)`` with ``z = μ + σ · noise``."""
        self._check_inputs(c, noise, "noise", x=x)
        h = self.encoder(torch.cat([x, c], dim=1))
        mean, log_var = self.mean(h), self.log_var(h)
        return self.generate(c, mean + noise * torch.exp(0.5 * log_var)), mean, log_var

    def generate(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Neighbour-like features of the centres ``c`` for latent codes ``z``."""
        self._check_inputs(c, z, "z")
        return self.decoder(torch.cat([z, c], dim=1))

    def _check_inputs(self, c: torch.Tensor, z: torch.Tensor, z_name: str, **x: torch.Tensor) -> None:
        """``c`` (and ``x``) ``(N, features)``, the latent codes ``(N, latent)``: named errors, not torch's."""
        tensors = {**x, "c": c, z_name: z}
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        for name, value in tensors.items():
            width = self.latent if name == z_name else self.features
            if value.dim() != 2 or value.shape != (c.shape[0], width):
                raise ValueError(f"{name} must be ({c.shape[0]}, {width}) (c: (N, features = {self.features}), "
                                 f"latent = {self.latent}), got {tuple(value.shape)}")
        require_same_device(**tensors)


@checked_arguments
def cvae_loss(recon: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``(BCE_sum(x̂, x) − ½ Σ (1 + log σ² − μ² − σ²)) / batch`` (the reference's ``loss_fn``)."""
    if recon.shape != x.shape or mean.shape != log_var.shape or recon.dim() != 2 or mean.dim() != 2 or (
            mean.shape[0] != x.shape[0]):
        raise ValueError(f"recon and x must be (N, F) and mean and log_var (N, latent), got {tuple(recon.shape)}, "
                         f"{tuple(x.shape)}, {tuple(mean.shape)} and {tuple(log_var.shape)}")
    require_same_device(recon=recon, x=x, mean=mean, log_var=log_var)
    try:
        bce = F.binary_cross_entropy(recon, x, reduction="sum")
    except RuntimeError as error:  # torch's own checks: values outside [0, 1] (NaN included), dtypes, devices
        raise ValueError(f"recon must be probabilities in [0, 1] of x's dtype and device: "
                         f"{str(error).splitlines()[0]}") from None
    kld = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp())
    return (bce + kld) / x.shape[0]


@checked_arguments
def train_neighbour_cvae(features: torch.Tensor, edge_index: torch.Tensor, latent: int = 10, hidden: int = 256,
                         epochs: int = 10, batch_size: int = 64, lr: float = 0.01,
                         generator: torch.Generator | None = None) -> NeighbourCVAE:
    """A :class:`NeighbourCVAE` trained (Adam) on every edge's ``(neighbour, centre)`` features; returned in eval
    mode with its parameters frozen."""
    if batch_size < 1 or epochs < 0 or not lr > 0:
        raise ValueError(f"batch_size must be >= 1, epochs >= 0 and lr > 0, got {batch_size}, {epochs} and {lr}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point() or (
            edge_index.dtype == torch.bool):
        raise ValueError(f"edge_index must be (2, E) integer node indices, got {edge_index.dtype} "
                         f"{tuple(edge_index.shape)}")
    require_data(features=features, edge_index=edge_index)
    if features.dim() != 2 or not features.is_floating_point() or features.numel() == 0:
        raise ValueError(f"features must be a non-empty floating (N, F) tensor, got {features.dtype} "
                         f"{tuple(features.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= features.shape[0]):
        raise ValueError(f"edge_index holds node indices outside [0, {features.shape[0]})")
    if not (features.min() >= 0 and features.max() <= 1):  # NaN fails too
        raise ValueError("lagnn: the CVAE learns features in [0, 1] (a Bernoulli decoder), got values in "
                         f"[{float(features.min()):.3g}, {float(features.max()):.3g}]")
    if edge_index.shape[1] == 0:
        raise ValueError("lagnn: the graph has no edges to learn neighbour features from")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    cvae = NeighbourCVAE(features.shape[1], latent, hidden).to(features.dtype)  # trained in the features' dtype
    for p in cvae.parameters():  # a seeded initialisation from the run's generator (not the global RNG)
        if p.dim() > 1:
            bound = 1.0 / p.shape[1] ** 0.5
            p.data.uniform_(-bound, bound, generator=generator)
        else:
            p.data.zero_()
    optimizer = torch.optim.Adam(cvae.parameters(), lr=lr)
    centres, neighbours = edge_index[0], edge_index[1]
    for _ in range(epochs):
        order = torch.randperm(centres.shape[0], generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            x, c = features[neighbours[batch]], features[centres[batch]]
            noise = torch.randn(len(batch), latent, generator=generator, dtype=features.dtype)
            recon, mean, log_var = cvae(x, c, noise)
            loss = cvae_loss(recon, x, mean, log_var)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    cvae.eval()
    for p in cvae.parameters():
        p.requires_grad_(False)
    return cvae


@checked_arguments
def consistency_loss(probabilities: list[torch.Tensor], temperature: float = 0.5) -> torch.Tensor:
    """``(1/S) Σ_s mean_v ‖p_s(v) − sharpen(p̄(v))‖²`` with ``sharpen(p)_c = p_c^{1/T} / Σ_c' p_c'^{1/T}``, the
    sharpened mean prediction detached (the reference's ``consis_loss``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (sharpening raises p to 1/temperature), got {temperature}")
    if not probabilities:
        raise ValueError("consistency_loss needs at least one prediction")
    mean = torch.stack(probabilities).mean(dim=0)
    sharp = mean.pow(1.0 / temperature)
    sharp = (sharp / sharp.sum(dim=1, keepdim=True)).detach()
    return torch.stack([(p - sharp).pow(2).sum(dim=1).mean() for p in probabilities]).mean()


@checked_arguments
class LocalAugmentedGCN(nn.Module):
    """A :class:`GCN` plus ``concat`` generated-feature blocks (LA-GCN): each block has its own first layer and a
    bias-free share of the second. ``forward(nodes)`` draws the blocks' latent codes from ``generator`` in training
    mode and from a fixed seed in eval mode; ``last_logits`` keeps every node's logits of the last forward."""

    def __init__(self, gcn: GCN, cvae: NeighbourCVAE, concat: int = 1, generator: torch.Generator | None = None
                 ) -> None:
        super().__init__()
        if concat < 1:
            raise ValueError(f"concat must be >= 1 (generated-feature blocks), got {concat}")
        hidden, classes = gcn.conv1.weight.shape[1], gcn.conv2.weight.shape[1]
        self.gcn, self.cvae, self.concat = gcn, cvae, concat
        self.extra_first = nn.ModuleList(GraphConv(gcn.in_features, hidden) for _ in range(concat))
        self.extra_second = nn.ModuleList(GraphConv(hidden, classes, bias=False) for _ in range(concat))
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.last_logits: torch.Tensor | None = None

    def generated_features(self, generator: torch.Generator) -> list[torch.Tensor]:
        raw = self.gcn.raw_features
        with torch.no_grad():
            return [row_normalize(self.cvae.generate(raw, torch.randn(raw.shape[0], self.cvae.latent,
                                                                      generator=generator).to(raw.device)))
                    for _ in range(self.concat)]

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        if not isinstance(nodes, torch.Tensor) or nodes.is_floating_point() or nodes.dtype == torch.bool or (
                nodes.dim() != 1):
            raise TypeError(f"nodes must be a 1-d tensor of integer node indices, got "
                            f"{getattr(nodes, 'dtype', type(nodes).__name__)} {tuple(getattr(nodes, 'shape', ()))}")
        gcn = self.gcn
        generator = self.generator if self.training else torch.Generator().manual_seed(EVAL_SEED)
        logits = gcn.logits(gcn.hidden(gcn.features))
        for features, first, second in zip(self.generated_features(generator), self.extra_first, self.extra_second):
            hidden = F.dropout(gcn.hidden(features, first), gcn.dropout, training=self.training)
            logits = logits + second(hidden, gcn.adj_index, gcn.adj_weight)
        self.last_logits = logits
        return logits[nodes]


@register_method
class LAGNNMethod(Method):
    """LA-GNN: generated neighbour features (a CVAE given the centre node) as extra GCN inputs (Liu et al. 2022).

    Args:
        concat: generated feature matrices per forward (reference: 1 on Cora/Citeseer, 3 on Pubmed).
        samples: forward passes per step, each with fresh generated features (reference: 4).
        consistency: weight λ of the consistency term (reference: 1.0); temperature: its sharpening T (0.5).
        latent, cvae_hidden, cvae_epochs, cvae_batch_size, cvae_lr: the CVAE (reference: 10, 256, -, 64, -).
    """

    name = "lagnn"
    paper_id = "arXiv:2109.03856"
    claim = ("local augmentation (CVAE-generated neighbour features as extra inputs) raises GCN test accuracy "
             "(+3.4 % on average over Cora/Citeseer/Pubmed), most for low-degree nodes")
    claimed_effect = "better"
    inputs = ("graph_nodes",)

    def __init__(self, concat: int = 1, samples: int = 4, consistency: float = 1.0, temperature: float = 0.5,
                 latent: int = 10, cvae_hidden: int = 256, cvae_epochs: int = 10, cvae_batch_size: int = 64,
                 cvae_lr: float = 0.01) -> None:
        for key, value in (("concat", concat), ("samples", samples), ("latent", latent), ("cvae_hidden", cvae_hidden),
                           ("cvae_epochs", cvae_epochs), ("cvae_batch_size", cvae_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"lagnn: {key} must be an int >= 1, got {value!r}")
        if not consistency >= 0 or not temperature > 0 or not cvae_lr > 0:
            raise ValueError(f"lagnn: need consistency >= 0, temperature > 0 and cvae_lr > 0, got {consistency}, "
                             f"{temperature}, {cvae_lr}")
        self.concat, self.samples, self.consistency, self.temperature = concat, samples, consistency, temperature
        self.cvae_args = {"latent": latent, "hidden": cvae_hidden, "epochs": cvae_epochs,
                          "batch_size": cvae_batch_size, "lr": cvae_lr}
        self.augmented: LocalAugmentedGCN | None = None

    def setup(self, ctx: Context) -> None:
        gcn = ctx.model
        if not isinstance(gcn, GCN) or gcn.features is None:
            raise ValueError("lagnn needs regimen.models.GCN with its graph set (task 'node_classification'), got "
                             f"{type(gcn).__name__}")
        cvae = train_neighbour_cvae(gcn.raw_features, gcn.edge_index, generator=ctx.generator, **self.cvae_args)
        self.augmented = LocalAugmentedGCN(gcn, cvae, self.concat, ctx.generator)
        new = [p for m in (self.augmented.extra_first, self.augmented.extra_second) for p in m.parameters()]
        groups = ctx.optimizer.param_groups
        no_decay = next((g for g in groups if g.get("weight_decay", 0.0) == 0.0), groups[0])
        for p in new:
            (groups[0] if p.ndim > 1 else no_decay)["params"].append(p)
        ctx.model = self.augmented

    def forward_loss(self, model, x, y, next, ctx: Context):
        losses, probabilities, first = [], [], None
        for _ in range(self.samples):
            loss, output = next(model, x, y)
            first = output if first is None else first
            losses.append(loss)
            probabilities.append(torch.softmax(self.augmented.last_logits.float(), dim=1))
        total = torch.stack(losses).mean()
        if self.consistency > 0:
            consistency = consistency_loss(probabilities, self.temperature)
            self.log(ctx, "consistency", consistency)
            total = total + self.consistency * consistency
        return total, first
