"""One recipe with a method from every pillar: it trains, is reproducible from its seed, and resumes bitwise.

The product's claim is that methods compose in one recipe. Each pillar tests its methods alone; this test runs them
together, so hook-order or state interactions between pillars (an augmentation that makes soft targets feeding a
multi-sample-dropout head, a BN swap under N:M masks, an EMA over all of it) show up here.
"""

import math

import torch
from torch.nn.utils import parametrize

from regimen.batch.ghost_bn import GhostBatchNorm2d
from regimen.dropout.multisample import MultiSampleDropout
from regimen.train import fit
from tests.helpers import reference_and_resumed_runs

COMPOSED = {
    "name": "composed",
    "seed": 3,
    "data": {"name": "digits", "val_fraction": 0.1},
    "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 0.5},
    "train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 6, "threads": 1},
    "methods": [
        {"name": "randaugment", "num_ops": 2, "magnitude": 9.0},  # augment
        {"name": "cutmix", "alpha": 1.0},  # augment: soft targets
        {"name": "lr_scaling", "base_batch_size": 64},  # batch
        {"name": "ghost_bn", "ghost_batch_size": 8},  # batch
        {"name": "logit_z_loss", "z_loss_coef": 1e-4},  # losses (cutmix gives soft targets: not z_loss)
        {"name": "multi_sample_dropout", "num_samples": 2, "p": 0.2},  # dropout
        {"name": "drop_path", "max_rate": 0.1},  # dropout
        {"name": "nm_sparsity", "n": 2, "m": 4},  # subnet
        {"name": "ema", "decay": 0.9},  # trainer-level
    ],
}


def _weights(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_a_method_from_every_pillar_trains_reproducibly(tmp_path):
    first = fit(COMPOSED, out_dir=tmp_path / "a")
    second = fit(COMPOSED, out_dir=tmp_path / "b")
    assert len(first.history) == 3
    assert all(math.isfinite(h["train_loss"]) and h["logit_z_loss/value"] > 0 for h in first.history)
    model = first.model
    assert any(isinstance(m, GhostBatchNorm2d) for m in model.modules())
    assert any(isinstance(m, MultiSampleDropout) for m in model.modules())
    # N:M sparsity was exported at the end: plain weights with at most 2 non-zeros in every group of 4 inputs
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] % 4 == 0]
    assert convs and not any(parametrize.is_parametrized(m) for m in convs)
    for conv in convs:
        groups = conv.weight.detach().permute(0, 2, 3, 1).reshape(-1, 4)
        assert int((groups != 0).sum(dim=1).max()) <= 2
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_composed_recipe_resumes_bitwise(tmp_path):
    recipe = dict(COMPOSED, methods=[*COMPOSED["methods"], {"name": "_test_interrupt_once", "epoch": 2}])
    reference, resumed = reference_and_resumed_runs(recipe, tmp_path, interrupted_epoch=2)
    a, b = _weights(reference), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
