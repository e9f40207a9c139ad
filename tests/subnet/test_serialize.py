"""save_pruned / load_pruned on a model regimen did not define: no spec, round trip, clear errors on a wrong model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.errors import ConfigurationError
from regimen.subnet import FactorizedConv2d, count_params, factorize, load_pruned, prune, save_pruned


class YourNet(nn.Module):
    """A user's CNN: stem, one residual block (the add couples its output to the stem), pooled Linear head."""

    def __init__(self, width: int = 16, kernel: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, kernel, padding=kernel // 2, bias=False)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, 2 * width, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * width)
        self.conv2 = nn.Conv2d(2 * width, width, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.hidden = nn.Linear(width, 2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.relu(x + y)
        return self.head(F.relu(self.hidden(x.mean(dim=(2, 3)))))


class OtherNet(YourNet):
    """Same submodules and shapes, another class."""


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics and affine values, so an equality check cannot pass by fresh-BN identity."""
    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _pruned(tmp_path):
    torch.manual_seed(0)
    model = _trained_like(YourNet(), seed=1).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    prune(model, x, ratio=0.5)
    path = tmp_path / "yournet.pt"
    save_pruned(model, path)  # no spec
    return model, x, path


def test_own_model_round_trip_without_spec(tmp_path):
    model, x, path = _pruned(tmp_path)
    assert model.conv1.out_channels < 32 and model.stem.out_channels < 16  # both groups were pruned
    assert model.head.out_features == 5  # outputs are never pruned
    loaded = load_pruned(path, model=YourNet()).eval()
    assert isinstance(loaded, YourNet)
    assert count_params(loaded) == count_params(model) == sum(p.numel() for p in model.parameters())
    for name, module in model.named_modules():  # size attributes follow the shapes (forward code may read them)
        for attr in ("in_channels", "out_channels", "num_features", "in_features", "out_features"):
            if hasattr(module, attr):
                assert getattr(loaded.get_submodule(name), attr) == getattr(module, attr), (name, attr)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_loading_is_weights_only(tmp_path, monkeypatch):
    _, _, path = _pruned(tmp_path)
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_pruned(path, model=YourNet())
    assert calls == [True]


def test_own_model_without_model_argument_names_the_fix(tmp_path):
    _, _, path = _pruned(tmp_path)
    with pytest.raises(ConfigurationError, match=r"load with load_pruned\(path, model=YourNet\(\)\)"):
        load_pruned(path)


def _unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(("make", "message"), [
    (OtherNet, r"holds a .*YourNet, but model= is a .*OtherNet"),
    (lambda: YourNet(width=4), r"'stem.weight' has shape \(\d+, 3, 3, 3\) in .* but \(4, 3, 3, 3\) in model="),
    (lambda: YourNet(kernel=5), r"module 'stem' has kernel_size=\(3, 3\) in .* but kernel_size=\(5, 5\) in model="),
])
def test_wrong_model_is_a_clear_error_and_stays_unchanged(tmp_path, make, message):
    _, _, path = _pruned(tmp_path)
    wrong = make()
    before = {k: v.clone() for k, v in wrong.state_dict().items()}
    with pytest.raises(ConfigurationError, match=message):
        load_pruned(path, model=wrong)
    assert _unchanged(wrong, before)
    assert wrong.stem.out_channels == before["stem.weight"].shape[0]


def test_other_submodules_are_named(tmp_path):
    _, _, path = _pruned(tmp_path)

    class Renamed(YourNet):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = self.head
            del self.head

    Renamed.__module__, Renamed.__qualname__ = YourNet.__module__, YourNet.__qualname__  # same class name
    wrong = Renamed()
    with pytest.raises(ConfigurationError, match=r"missing in model= 'head'; not in the file 'classifier'"):
        load_pruned(path, model=wrong)


def test_own_model_pruned_then_factorised_round_trip(tmp_path):
    model, x, _ = _pruned(tmp_path)
    with torch.no_grad():  # a rank-2 stem weight, so that factorising it saves parameters
        u, v = torch.randn(model.stem.out_channels, 2), torch.randn(2, 27)
        model.stem.weight.copy_((u @ v).reshape_as(model.stem.weight))
    assert "stem" in factorize(model, energy=0.999)
    path = tmp_path / "factorised.pt"
    save_pruned(model, path)
    loaded = load_pruned(path, model=YourNet()).eval()
    assert isinstance(loaded.stem, FactorizedConv2d)
    assert count_params(loaded) == count_params(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_file_without_module_record_still_loads_into_its_model(tmp_path):
    model, x, _ = _pruned(tmp_path)
    path = tmp_path / "old.pt"  # as written before the class and submodules were recorded
    torch.save({"format": "regimen-pruned-v1", "architecture": {"class": "YourNet"}, "model": model.state_dict(),
                "extra": {}}, path)
    loaded = load_pruned(path, model=YourNet()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
