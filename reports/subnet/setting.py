"""The shared setting of the pruning comparison (issue 17): one model, one data split, one training loop.

Every entry (``entries_a.py``, ``entries_b.py``) is a function ``entry(setting: PruneSetting) -> nn.Module`` that
returns a trained model, physically pruned so that ``count_macs(model) <= keep * dense_macs * 1.01`` — or, for an
unstructured method, masked (weights set to exactly zero; then ``nonzero_params <= keep * dense_params * 1.01``).
``compare.py`` runs entries × keeps × seeds and writes one JSON per run (see its docstring for the keys).

FROZEN CONTRACT (bug fixes only): the fields of ``PruneSetting``, ``build_setting``, ``train_model``, ``evaluate``,
``prune_to_macs``, ``dense_macs`` and ``SmallCNN``. Import it as ``from setting import ...`` (``compare.py`` puts
this folder on ``sys.path``).

Model: ``SmallCNN`` — conv3x3(1→16)+BN+ReLU+maxpool, conv3x3(16→32)+BN+ReLU+maxpool, conv3x3(32→64)+BN+ReLU,
conv3x3(64→64)+BN+ReLU, global average pool, linear(64→10): about 2.9 M MACs and 61 k parameters per 28×28
sample, every conv followed by BatchNorm (polarization / network-slimming scores apply), no residuals (every channel
group is a plain conv→BN→next-conv chain, so structured removal is exact and cheap).

Data: Fashion-MNIST through ``regimen.data.load_data``: an 8,000-image training subset, 2,000 validation images (from
the rest of the training split, for any selection an entry makes) and the first 5,000 official test images (for
reporting only; entries never see them). Images normalised with the training mean/std.

Budget: dense training ``DENSE_EPOCHS = 8`` epochs (SGD lr 0.05, momentum 0.9, Nesterov, weight decay 5e-4 on
conv/linear weights, cosine to 0, batch 128). ``setting.epochs = 3`` is what an entry may spend after pruning
(fine-tuning), or on its own training (from scratch: ``epochs`` + ``DENSE_EPOCHS``, see ``scratch_epochs``).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from regimen.data import load_data
from regimen.subnet import count_macs, plan_pruning, prune_groups, trace_dependencies

__all__ = [
    "DENSE_EPOCHS",
    "PruneSetting",
    "SmallCNN",
    "build_setting",
    "dense_macs",
    "evaluate",
    "prune_to_macs",
    "train_model",
]

DENSE_EPOCHS = 8
FINETUNE_EPOCHS = 3
BATCH_SIZE = 128
LR = 0.05
TRAIN_SUBSET = 8000
VAL_SIZE = 2000
TEST_SIZE = 5000
ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("REGIMEN_PRUNE_CACHE", ROOT / "runs" / "subnet_compare"))


class SmallCNN(nn.Module):
    """conv-BN-ReLU ×4 (16, 32, 64, 64 channels; max-pool after the first two), global average pool, linear."""

    def __init__(self, widths: tuple[int, int, int, int] = (16, 32, 64, 64), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _make_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmallCNN()


@dataclass
class PruneSetting:
    """Everything an entry gets. ``dense`` is this entry's own deep copy of the trained dense model."""

    dense: nn.Module
    make_model: Callable[[], nn.Module]
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    keep: float
    seed: int
    epochs: int
    batch_size: int
    example_input: Tensor
    test: tuple[Tensor, Tensor] = field(default=None, repr=False)  # reporting only: entries must not read it
    dense_epochs: int = DENSE_EPOCHS
    lr: float = LR

    @property
    def scratch_epochs(self) -> int:
        """Epochs for an entry that trains its sub-network from initialisation (dense budget + fine-tune budget)."""
        return self.dense_epochs + self.epochs

    def generator(self, salt: int = 0) -> torch.Generator:
        """A fresh generator seeded from ``seed`` (and ``salt`` for independent streams)."""
        return torch.Generator().manual_seed(self.seed * 1000 + 17 + salt)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode (train/eval flag restored)."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / max(1, len(x))


ExtraLoss = Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor]  # (model, inputs, targets, logits) -> scalar


def train_model(model: nn.Module, setting: PruneSetting, epochs: int, extra_loss: ExtraLoss | None = None, *,
                lr: float | None = None, after_step: Callable[[nn.Module], None] | None = None,
                loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, salt: int = 0,
                steps: int | None = None) -> nn.Module:
    """Train ``model`` in place on ``setting.train`` for ``epochs`` epochs and return it.

    SGD (momentum 0.9, Nesterov), weight decay 5e-4 on conv/linear weights only (not on BN/biases), cosine from
    ``lr`` (default ``setting.lr``) to 0 over the run, batch ``setting.batch_size``, shuffling from
    ``setting.generator(salt)``. ``extra_loss(model, x, y, logits)`` is added to the loss (``loss_fn(logits, y)``,
    default cross-entropy); ``after_step(model)`` runs after every optimizer step (clamp, re-apply masks...).
    ``steps`` stops early after that many steps (a short proxy training); the schedule still spans ``epochs``.
    """
    x, y = setting.train
    n = len(x)
    per_epoch = math.ceil(n / setting.batch_size)
    total = max(1, epochs * per_epoch)
    decay = [p for name, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for name, p in model.named_parameters() if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr if lr is not None else setting.lr, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    loss_fn = loss_fn or F.cross_entropy
    generator = setting.generator(salt)
    model.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, setting.batch_size):
            index = order[i:i + setting.batch_size]
            inputs, targets = x[index], y[index]
            logits = model(inputs)
            loss = loss_fn(logits, targets)
            if extra_loss is not None:
                loss = loss + extra_loss(model, inputs, targets, logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(model)
            step += 1
            if steps is not None and step >= steps:
                return model
    return model


def dense_macs(setting: PruneSetting) -> int:
    """MACs per sample of the dense model."""
    return count_macs(setting.dense, setting.example_input)


def prune_to_macs(model: nn.Module, example_input: Tensor, target_macs: float,
                  importance: str | Callable = "l1", ignore: tuple[str, ...] = ()) -> nn.Module:
    """Physically remove the globally lowest-scoring channels of ``model`` (in place) until its MACs per sample are
    at most ``target_macs``: bisection on ``plan_pruning``'s global ratio (scores normalised per group), each trial on
    a copy; returns ``model``. ``importance`` is any ``regimen.subnet`` importance (``"l1"``, ``"bn_scale"``,
    a callable ``f(model, group) -> scores``)."""
    groups = [g for g in trace_dependencies(model, example_input).groups
              if not any(m == name or m.startswith(name + ".") for m in g.modules for name in ignore)]
    if count_macs(model, example_input) <= target_macs:
        return model

    def attempt(ratio: float) -> tuple[int, dict]:
        plan = plan_pruning(model, groups, ratio, importance, "global")
        trial = copy.deepcopy(model)
        # the plan's groups refer to module names, which the copy shares
        prune_groups(trial, plan)
        return count_macs(trial, example_input), plan

    low, high = 0.0, 0.99
    best = None
    for _ in range(30):
        mid = (low + high) / 2
        macs, plan = attempt(mid)
        if macs <= target_macs:
            high, best = mid, plan
        else:
            low = mid
        if high - low < 1e-4:
            break
    if best is None:
        best = attempt(high)[1]
    prune_groups(model, best, example_inputs=example_input)
    return model


def _dense_path(seed: int) -> Path:
    return CACHE / f"dense_seed{seed}.pt"


def build_setting(seed: int, keep: float, epochs: int = FINETUNE_EPOCHS) -> PruneSetting:
    """The setting for ``seed``/``keep``: the data tensors and the trained dense model (cached under
    ``runs/subnet_compare/dense_seed<seed>.pt``, trained on first use; ``REGIMEN_PRUNE_CACHE`` moves the folder).

    The validation split and the training subset are drawn with ``seed`` (``load_data(seed=seed)``), so a seed varies
    data subset, order and initialisation together; the test images are the same for every seed. ``make_model()``
    returns the same fresh initialisation (seeded from ``seed``) on every call.
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep!r}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    splits = load_data("auto", val_fraction=VAL_SIZE / 60000, train_subset=TRAIN_SUBSET, seed=seed,
                       test_subset=TEST_SIZE)
    mean, std = splits.mean.view(1, -1, 1, 1), splits.std.view(1, -1, 1, 1)

    def tensors(dataset) -> tuple[Tensor, Tensor]:
        x, y = dataset.gather(torch.arange(len(dataset)))
        return (x - mean) / std, y

    train, val, test = tensors(splits.train), tensors(splits.val), tensors(splits.test)
    setting = PruneSetting(dense=_make_model(seed), make_model=lambda: _make_model(seed + 10_000), train=train,
                           val=val, keep=keep, seed=seed, epochs=epochs, batch_size=BATCH_SIZE,
                           example_input=train[0][:2].clone(), test=test)
    path = _dense_path(seed)
    if path.exists():
        setting.dense.load_state_dict(torch.load(path, weights_only=True))
    else:
        start = time.perf_counter()
        train_model(setting.dense, setting, DENSE_EPOCHS, salt=999)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(setting.dense.state_dict(), tmp)
        os.replace(tmp, path)
        print(f"dense seed {seed}: trained in {time.perf_counter() - start:.0f} s, "
              f"val acc {evaluate(setting.dense, *val):.4f}", flush=True)
    setting.dense.eval()
    return setting
