"""``RegimenCallback``: regimen Methods inside a stock ``lightning.pytorch.Trainer`` reach the weights regimen's own
trainer reaches with the same methods, data order, optimizer and seed (Ghost BN + CutMix + EMA; selective backprop +
Z-loss; SAM + gradient clipping); the methods a callback cannot run are refused by name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from regimen.data import InMemoryLoader  # noqa: E402
from regimen.errors import ConfigurationError  # noqa: E402
from regimen.integrations.lightning import RegimenCallback, lightning_incompatibility  # noqa: E402
from regimen.train import fit  # noqa: E402
from regimen.train.optim import build_optimizer  # noqa: E402
from regimen.train.recipe import parse_recipe  # noqa: E402

SEED = 3
BATCH = 16


def _data():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (160,), generator=g)
    images = torch.rand(160, 1, 12, 12, generator=g) * 0.5
    images[torch.arange(160), 0, labels * 3, :] += 0.5  # a learnable stripe per class
    return images, labels


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def _recipe(methods):
    return parse_recipe({
        "seed": SEED, "data": {"val_fraction": 0.0, "normalize": False},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": BATCH, "threads": 1, "eval_every": 1},
        "methods": methods,
    })


class _Loader:
    """regimen's loader order (the trainer's seed and per-epoch shuffle), as a Lightning-iterable of [x, y] lists."""

    def __init__(self, dataset) -> None:
        self.loader = InMemoryLoader(dataset, BATCH, shuffle=True, drop_last=True, seed=SEED)
        self.epoch = 0
        self.batch_size = BATCH

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):  # lazily: Lightning calls iter() once to check the loader before the first epoch
        self.loader.set_epoch(self.epoch)
        self.epoch += 1
        for x, y, _ in self.loader.batches():
            yield [x, y]


def _one_batch(x, y):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))


class Module(pl.LightningModule):
    def __init__(self, net: nn.Module, recipe, regimen: RegimenCallback) -> None:
        super().__init__()
        self.net, self.recipe, self.regimen = net, recipe, regimen

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.regimen.criterion(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self):
        return build_optimizer(self.net, self.recipe.optim)


def _both(methods, callback_methods=None):
    """The same methods under regimen's trainer and under Lightning with RegimenCallback."""
    from regimen.data import ArrayDataset

    images, labels = _data()
    recipe = _recipe(methods)
    torch.manual_seed(0)
    net = Net()
    ours = fit(recipe, model=net, data={"train": (images, labels), "test": (images[:64], labels[:64])})
    regimen = RegimenCallback(callback_methods or methods, model_attr="net", num_classes=4, seed=SEED)
    module = Module(__import__("copy").deepcopy(net), recipe, regimen)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, callbacks=[regimen], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=_Loader(ArrayDataset(images, labels, 4, "test")))
    return ours, module, regimen, trainer


def test_ghost_bn_cutmix_and_ema_in_lightning_reach_regimens_weights():
    methods = [{"name": "ghost_bn", "ghost_batch_size": 8}, {"name": "cutmix", "alpha": 1.0}, {"name": "ema",
                                                                                               "decay": 0.9}]
    ours, module, regimen, trainer = _both(methods)
    theirs = module.net.state_dict()
    mine = ours.model.state_dict()
    assert list(mine) == list(theirs)
    assert type(module.net.bn).__name__ == type(ours.model.bn).__name__ != "BatchNorm2d"  # the surgery ran
    for key in mine:  # the same float operations in the same order: equal bit for bit (tolerance 0)
        assert torch.equal(mine[key], theirs[key]), key
    assert trainer.global_step == ours.summary["steps"] == 20
    # EMA: Lightning's test loop sees the averaged weights (regimen's summary evaluates them too), then the
    # training weights come back bit for bit
    images, labels = _data()
    ema = regimen.methods[2].ema.module
    expected = nn.functional.cross_entropy(ema(images[:64]), labels[:64]).item()
    assert expected == pytest.approx(ours.summary["final_test_loss"], rel=1e-5)
    result = trainer.validate(module, _one_batch(images[:64], labels[:64]), verbose=False)
    assert result[0]["val_loss"] == pytest.approx(expected, rel=1e-5)
    for key, value in module.net.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_selective_backprop_and_z_loss_in_lightning_reach_regimens_weights():
    methods = [{"name": "selective_backprop", "keep": 0.5, "start": 0.0, "end": 1.0, "interrupt": 2},
               {"name": "z_loss", "a": 0.1}]
    ours, module, _, _ = _both(methods)
    for key, value in ours.model.state_dict().items():
        assert torch.equal(value, module.net.state_dict()[key]), key


def test_sam_and_gradient_clipping_wrap_lightnings_step_and_reach_regimens_weights():
    methods = [{"name": "sam", "rho": 0.05}, {"name": "gradient_clipping", "mode": "norm", "threshold": 0.5}]
    ours, module, _, _ = _both(methods)
    for key, value in ours.model.state_dict().items():
        assert torch.equal(value, module.net.state_dict()[key]), key
    assert "optimizer_step" not in module.__dict__  # the wrapper is gone after fit


def test_step_methods_with_gradient_accumulation_are_refused():
    images, labels = _data()
    regimen = RegimenCallback(["sam"], model_attr="net", num_classes=4)
    module = Module(Net(), _recipe([]), regimen)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[regimen], logger=False, accumulate_grad_batches=2,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigurationError, match="sam.*accumulate_grad_batches"):
        trainer.fit(module, train_dataloaders=_one_batch(images[:16], labels[:16]))


@pytest.mark.parametrize("name, hook", [("multi_sample_dropout", "forward_loss"),
                                        ("high_loss_batches", "select_batches"), ("local_learning", "training_step")])
def test_methods_whose_hooks_have_no_lightning_counterpart_are_refused_by_name(name, hook):
    from regimen.method import get_method

    cls = get_method(name)
    assert hook in (lightning_incompatibility(cls) or "")
    with pytest.raises(ConfigurationError, match=rf"{name}.*{hook}"):
        RegimenCallback([name])


def test_a_loss_method_whose_criterion_is_not_called_is_an_error_not_a_silent_no_op():
    images, labels = _data()
    regimen = RegimenCallback([{"name": "z_loss"}], model_attr="net", num_classes=4)

    class Plain(Module):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

    module = Plain(Net(), _recipe([]), regimen)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", callbacks=[regimen], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigurationError, match="z_loss.*RegimenCallback.criterion"):
        trainer.fit(module, train_dataloaders=_one_batch(images[:16], labels[:16]))


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ConfigurationError, match="unknown method"):
        RegimenCallback(["no_such_method"])
    with pytest.raises(ConfigurationError, match="ghost_batch_size"):
        RegimenCallback([{"name": "ghost_bn", "ghost_batch_size": -1}])
    with pytest.raises(TypeError, match="methods must be a list"):
        RegimenCallback("ema")
    with pytest.raises(ValueError, match="num_classes"):
        RegimenCallback(["ema"], num_classes=1)


def test_without_lightning_the_import_error_says_which_extra_to_install(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "lightning", None)  # what an environment without the package gives
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "regimen.integrations.lightning")  # restored after the test
    with pytest.raises(ImportError, match=r"pip install 'regimen\[lightning\]'"):
        importlib.import_module("regimen.integrations.lightning")


def test_a_lightning_checkpoint_resumes_the_methods_state_bit_for_bit(tmp_path):
    from regimen.data import ArrayDataset

    images, labels = _data()
    dataset = ArrayDataset(images, labels, 4, "test")
    methods = [{"name": "cutmix", "alpha": 1.0}, {"name": "ema", "decay": 0.9}]
    torch.manual_seed(0)
    net = Net()

    def run(max_epochs, start_epoch=0, ckpt=None):
        regimen = RegimenCallback(methods, model_attr="net", num_classes=4, seed=SEED)
        module = Module(__import__("copy").deepcopy(net), _recipe(methods), regimen)
        trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", callbacks=[regimen], logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0)
        loader = _Loader(dataset)
        loader.epoch = start_epoch
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt)
        return module, regimen, trainer

    whole, whole_cb, _ = run(2)
    _, _, first = run(1)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed, resumed_cb, _ = run(2, start_epoch=1, ckpt=tmp_path / "epoch1.ckpt")
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    for key, value in whole_cb.methods[1].ema.module.state_dict().items():  # the EMA copy came back from the state
        assert torch.equal(value, resumed_cb.methods[1].ema.module.state_dict()[key]), key
