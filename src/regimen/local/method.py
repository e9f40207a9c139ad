"""The ``local_learning`` recipe method: train the model as K gradient-isolated modules (DGL, InfoPro, AugLocal, MAN,
feature reconstruction).

Papers: DGL (Belilovsky et al., ICML 2020, arXiv 1901.08164), InfoPro (Wang et al., ICLR 2021, arXiv 2101.10832),
AugLocal (Ma et al., ICLR 2024, arXiv 2402.17318), MAN (Su et al., ECCV 2024, arXiv 2407.05623).

``setup`` checks that the model names its blocks (``stages``; else a ConfigurationError says how to provide them),
infers the feature shapes from ``ctx.example_batch()`` and replaces ``ctx.model`` by a ``LocalLearning`` wrapper
(sharing the model's parameters; its ``forward`` still returns logits, so evaluation is unchanged); the auxiliary
parameters join ``ctx.optimizer`` as new param groups copying the existing groups' hyperparameters.
``training_step`` runs the local step with ``ctx.backward`` for each module's loss; ``after_step`` updates MAN's EMA
copies.

The step is one of a kind: K backward passes, one per module, inside one training step. So the method owns
``training_step`` alone (``exclusive = ("training_step",)``: a recipe with another step-owning method is refused)
and it bypasses the device wrapper's forward (a DDP forward cannot serve K separate backward passes): with several
processes it averages the gradients itself with ``ctx.all_reduce`` and applies the run's precision with
``ctx.autocast()``.

Under DDP (W processes at per-device batch b) the averaged gradients are those of one process at the global batch
W·b, except through BatchNorm: the model's and the auxiliary networks' BatchNorm layers (the DGL, InfoPro, AugLocal
and MAN auxiliaries have them) normalise each process's share of the batch, and since the DDP forward (which would
broadcast rank 0's buffers) is bypassed, every process keeps its own running statistics; the checkpoint holds rank
0's. With ``ghost_bn`` listed after ``local_learning`` and a ghost size that divides b, the training is the same as
one process at W·b (``tests/distributed``).

Pitfalls handled: the InfoPro target is de-normalised by inverting ``ctx.normalize`` (an affine map;
``ctx.run.data_mean``/``data_std`` as fallback; the normalised input is reconstructed with MSE, with a warning, when
neither is available); each local loss is divided by ``ctx.run.accumulation`` like the trainer's own backward;
auxiliary networks never run at evaluation.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from regimen.errors import ConfigurationError
from regimen.local.learning import LocalLearning, apply_local_learning
from regimen.method import Context, Method, register_method

__all__ = ["LocalLearningMethod"]


def _unwrap(model: nn.Module) -> nn.Module:
    seen = 0
    while not isinstance(model, LocalLearning) and hasattr(model, "module") and seen < 8:
        model = model.module
        seen += 1
    return model


def _normalization_constants(ctx: Context, channels: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mean and std such that ``ctx.normalize(x) = (x - mean) / std``, read off the affine map itself (so a
    recipe with ``data.normalize = false`` gives mean 0, std 1); ``ctx.run.data_mean``/``data_std`` otherwise."""
    try:
        with torch.no_grad():
            zero = ctx.normalize(torch.zeros(1, channels, 1, 1, device=ctx.run.device)).flatten().float().cpu()
            one = ctx.normalize(torch.ones(1, channels, 1, 1, device=ctx.run.device)).flatten().float().cpu()
        scale = one - zero
        if zero.numel() == channels and bool((scale > 0).all()):
            return -zero / scale, 1.0 / scale
    except (RuntimeError, ValueError, TypeError):  # not an image normalisation
        pass
    if ctx.run.data_mean is not None and ctx.run.data_std is not None:
        return ctx.run.data_mean, ctx.run.data_std
    return None, None


def _check_structure(model: nn.Module, split_points: list[int] | None) -> None:
    """The model must say what its blocks are: ``stages`` (an ordered ModuleList ending in the head), or be a
    Sequential/ModuleList, or come with explicit ``split_points`` over its children."""
    if isinstance(model, LocalLearning):
        raise ConfigurationError("local_learning: the model is already a LocalLearning wrapper")
    if getattr(model, "stages", None) is None and not isinstance(model, nn.Sequential | nn.ModuleList) \
            and split_points is None:
        raise ConfigurationError(
            f"local_learning needs the model's blocks in order: {type(model).__name__} has no `stages`; give it a "
            "`stages` attribute (an nn.ModuleList of blocks ending in the classifier head, as regimen's resnet and "
            "mlp have) or pass split_points=[...] (its children, in registration order, are then the blocks)")


@register_method
class LocalLearningMethod(Method):
    """Supervised local learning: K gradient-isolated modules trained by auxiliary losses (DGL/InfoPro/AugLocal/MAN).

    Args:
        num_modules: K (ignored when ``split_points`` is given).
        aux: ``dgl``, ``infopro``, ``auglocal``, ``man`` or ``recon``.
        aux_depth: auxiliary depth (type default when omitted).
        split_points: start stage of modules 2..K (else balanced by ``balance``).
        balance: ``params``, ``activations`` or ``blocks``.
        pyramid_coeff: AugLocal depth decay. momentum: MAN EMA momentum. man_learnable: ``bias`` or ``copy``.
        infopro_first, infopro_last: InfoPro (reconstruction, CE) weights of the first and last auxiliary.
        recon_weight: feature-reconstruction weight of ``recon``.
    """

    name = "local_learning"
    paper_id = "arXiv:1901.08164"
    claim = (
        "gradient-isolated modules trained by local auxiliary losses approach end-to-end accuracy with less "
        "activation memory"
    )
    claimed_effect = "no_worse"
    targets = ("labels",)
    exclusive = ("training_step",)

    def __init__(
        self,
        num_modules: int = 2,
        aux: Literal["dgl", "infopro", "auglocal", "man", "recon"] = "dgl",
        aux_depth: int | None = None,
        split_points: list[int] | None = None,
        balance: Literal["params", "activations", "blocks"] = "params",
        pyramid_coeff: float = 0.5,
        momentum: float = 0.995,
        man_learnable: Literal["bias", "copy"] = "bias",
        infopro_first: tuple[float, float] = (5.0, 1.0),
        infopro_last: tuple[float, float] = (0.0, 1.0),
        recon_weight: float = 1.0,
    ) -> None:
        if num_modules < 1:
            raise ValueError(f"num_modules must be >= 1, got {num_modules}")
        if aux not in ("dgl", "infopro", "auglocal", "man", "recon"):
            raise ValueError(f"aux must be dgl, infopro, auglocal, man or recon, got {aux!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.options = dict(
            num_modules=None if split_points is not None else num_modules,
            aux=aux,
            aux_depth=aux_depth,
            split_points=split_points,
            balance=balance,
            pyramid_coeff=pyramid_coeff,
            momentum=momentum,
            man_learnable=man_learnable,
            infopro_first=tuple(infopro_first),
            infopro_last=tuple(infopro_last),
            recon_weight=recon_weight,
        )
        self.wrapper: LocalLearning | None = None

    def setup(self, ctx: Context) -> None:
        model = _unwrap(ctx.model)
        _check_structure(model, self.options["split_points"])
        options = dict(self.options)
        num_modules = options.pop("num_modules")
        aux = options.pop("aux")
        example_inputs, _ = ctx.example_batch(2)
        device = next((p.device for p in model.parameters()), example_inputs.device)
        mean, std = _normalization_constants(ctx, int(example_inputs.shape[1]))
        self.wrapper = apply_local_learning(
            model, num_modules, aux, optimizer=ctx.optimizer, example_inputs=example_inputs.to(device),
            num_classes=ctx.run.num_classes, criterion=ctx.criterion, data_mean=mean, data_std=std, **options,
        )
        ctx.model = self.wrapper

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: Context):
        wrapper = self.wrapper if self.wrapper is not None else _unwrap(model)
        if not isinstance(wrapper, LocalLearning):
            raise RuntimeError("local_learning: setup() did not run (no LocalLearning wrapper)")
        accumulation = ctx.run.accumulation

        def backward(loss: torch.Tensor) -> None:
            ctx.backward(loss / accumulation if accumulation > 1 else loss)

        with ctx.autocast():  # the step bypasses the wrapped module's forward, so apply the precision here
            out = wrapper.local_step(x, y, backward=backward, criterion=ctx.criterion)
        if ctx.run.world_size > 1:  # the step bypassed DDP's gradient hooks: average across processes here
            for p in wrapper.parameters():
                if p.grad is not None:
                    p.grad.copy_(ctx.all_reduce(p.grad, op="mean"))
        aux_losses = [loss.detach().float().reshape(()) for loss in out.losses[:-1]]
        if aux_losses and ctx.run.world_size > 1:  # log the global batch's losses, as one process would
            aux_losses = list(ctx.all_reduce(torch.stack(aux_losses).to(ctx.run.device), op="mean").unbind())
        for k, loss in enumerate(aux_losses):
            self.log(ctx, f"aux{k}_loss", loss)
        return out.loss, out.logits

    def after_step(self, ctx: Context) -> None:
        if self.wrapper is not None:
            self.wrapper.update_momentum()
