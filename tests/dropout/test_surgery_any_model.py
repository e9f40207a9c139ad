"""Drop-path, DropBlock and multi-sample dropout on models that are not regimen's: by the documented conventions or
by the module names the user gives, compared with hand-written expected outputs."""

import copy
import warnings

import pytest
import torch
from torch import nn

from regimen.dropout import (
    DropBlockMethod,
    DropPath,
    DropPathBranch,
    DropPathMethod,
    MultiSampleDropout,
    MultiSampleDropoutMethod,
    apply_drop_path,
    apply_dropblock,
    apply_multi_sample_dropout,
    default_dropblock_targets,
    drop_block2d,
)
from regimen.errors import ConfigurationError
from regimen.losses import classification_loss
from regimen.method import Context
from regimen.models import resnet


class Residual(nn.Module):
    """A user's residual block without any drop-path slot: x + body(x)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UserNet(nn.Module):
    def __init__(self, width: int = 6, depth: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Residual(width) for _ in range(depth))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc(x)


class TwoBranchBlock(nn.Module):
    """timm's ViT block shape: two residual branches, each with its own slot (drop_path1, drop_path2)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mix = nn.Linear(width, width)
        self.drop_path1 = nn.Identity()
        self.mlp = nn.Linear(width, width)
        self.drop_path2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mix(x))
        return x + self.drop_path2(self.mlp(x))


def test_named_branches_of_a_user_model_drop_whole_samples_of_the_branch_only():
    torch.manual_seed(0)
    model = UserNet()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    generator = torch.Generator().manual_seed(3)
    layers = apply_drop_path(model, 0.6, branches=["layers.0.body", "layers.1.body", "layers.2.body"],
                             generator=generator)
    assert [layer.p for layer in layers] == pytest.approx([0.2, 0.4, 0.6])
    assert all(isinstance(layer.body, DropPathBranch) for layer in model.layers)
    assert list(model.state_dict()) == keys
    x = torch.randn(200, 6)
    state = generator.get_state()
    out = model(x)
    # by hand: each block adds its body's output times m / (1 - p), one m ~ Bernoulli(1 - p) per sample, drawn
    # block by block from the same generator
    replay = torch.Generator().set_state(state)
    expected = x
    masks = []
    for layer, rate in zip(reference.layers, [0.2, 0.4, 0.6], strict=True):
        m = (torch.rand(200, generator=replay) < 1 - rate).float().view(200, 1)
        masks.append(m)
        expected = expected + layer.body(expected) * m / (1 - rate)
    torch.testing.assert_close(out, reference.fc(expected))
    assert all(0 < m.sum() < 200 for m in masks)  # some samples dropped, some kept in every block
    model.eval()
    reference.eval()
    torch.testing.assert_close(model(x), reference(x))  # eval is the plain model
    reference.load_state_dict(model.state_dict())  # and checkpoints interchange
    with pytest.raises(ValueError, match="already"):
        apply_drop_path(model, 0.1, branches=["layers.0.body"])


def test_blocks_following_the_convention_get_one_rate_per_block_in_every_slot():
    torch.manual_seed(0)
    model = nn.Sequential(TwoBranchBlock(5), TwoBranchBlock(5))
    reference = copy.deepcopy(model)
    layers = apply_drop_path(model, 0.5, generator=torch.Generator().manual_seed(0))
    assert [layer.p for layer in layers] == pytest.approx([0.25, 0.25, 0.5, 0.5])
    assert model[1].drop_path2 is layers[3] and all(isinstance(layer, DropPath) for layer in layers)
    x = torch.randn(64, 5)
    state = layers[0].generator.get_state()
    out = model(x)
    generator = torch.Generator().set_state(state)
    expected = x
    for block, rate in zip(reference, [0.25, 0.5], strict=True):
        m1 = (torch.rand(64, generator=generator) < 1 - rate).float().view(64, 1)
        expected = expected + block.mix(expected) * m1 / (1 - rate)
        m2 = (torch.rand(64, generator=generator) < 1 - rate).float().view(64, 1)
        expected = expected + block.mlp(expected) * m2 / (1 - rate)
    torch.testing.assert_close(out, expected)


def test_a_model_without_blocks_names_what_drop_path_needs():
    with pytest.raises(ConfigurationError, match=r"drop_path needs residual blocks.*drop_path = nn.Identity\(\)"
                                                 r".*branches=\["):
        apply_drop_path(UserNet(), 0.1)
    with pytest.raises(ConfigurationError, match="'layers.0' .*has no drop_path child"):
        apply_drop_path(UserNet(), 0.1, blocks=["layers.0"])
    with pytest.raises(ValueError, match="not both"):
        apply_drop_path(UserNet(), 0.1, blocks=["layers.0"], branches=["layers.0.body"])
    foreign = TwoBranchBlock(3)
    foreign.drop_path1 = nn.Dropout(0.1)  # e.g. a block built with its own drop_path_rate
    with pytest.raises(ConfigurationError, match="drop_path1 is a Dropout, not an nn.Identity placeholder"):
        apply_drop_path(nn.Sequential(foreign), 0.1)
    assert isinstance(foreign.drop_path2, nn.Identity)  # nothing was changed


def test_drop_path_method_on_named_branches_keeps_the_context_generator():
    model = UserNet()
    ctx = Context(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=classification_loss,
                  num_classes=4, per_device_batch=4, generator=torch.Generator().manual_seed(0))
    method = DropPathMethod(max_rate=0.3, branches=["layers.1.body", "layers.2.body"])
    method.setup(ctx)
    assert [layer.p for layer in method._layers] == pytest.approx([0.15, 0.3])
    assert all(layer.generator is ctx.generator for layer in method._layers)
    with pytest.raises(ConfigurationError, match="needs residual blocks"):
        DropPathMethod().setup(Context(model=UserNet(), optimizer=ctx.optimizer, criterion=classification_loss,
                                       num_classes=4, per_device_batch=4))


def test_dropblock_on_named_modules_of_a_user_model_runs_once_per_forward():
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = nn.Sequential(nn.Sequential(conv), nn.ReLU())
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(0)
    (layer,) = apply_dropblock(model, 0.3, 3, modules=["0"], generator=generator)
    calls = []
    layer.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(4, 1, 9, 9)
    state = generator.get_state()
    out = model(x)
    assert len(calls) == 1  # a forward hook on a Sequential target ran the layer twice before
    expected = torch.relu(drop_block2d(reference[0](x), 0.3, 3, generator=torch.Generator().set_state(state)))
    torch.testing.assert_close(out, expected)
    assert layer.generator is generator


def test_dropblock_default_targets_are_the_blocks_of_the_last_two_resolution_groups():
    assert default_dropblock_targets(resnet(depths=[2, 1, 1])) == ["stages.3", "stages.4"]
    assert default_dropblock_targets(resnet(widths=[8], depths=[2])) == ["stages.1", "stages.2"]
    with pytest.raises(ConfigurationError, match=r"dropblock needs target modules: pass modules=\[\.\.\.\]"):
        apply_dropblock(UserNet(), 0.1, 3)


def test_names_are_those_of_the_plain_model_after_other_surgery():
    torch.manual_seed(0)
    model = resnet(widths=[4, 8], depths=[1, 1])
    apply_dropblock(model, 0.1, 3, modules=["stages.1", "stages.2"])
    # stages.2 is now wrapped; its conv and its drop_path slot keep their plain names
    apply_drop_path(model, 0.2, blocks=["stages.1", "stages.2"])
    assert isinstance(model.stages[2].module.drop_path, DropPath)
    apply_drop_path(model, 0.2, branches=["stages.2.conv2"])
    assert isinstance(model.stages[2].module.conv2, DropPathBranch)
    keys = list(resnet(widths=[4, 8], depths=[1, 1]).state_dict())
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("attribute", ["head", "fc", "classifier"])
def test_multi_sample_dropout_finds_the_head_by_convention(attribute):
    model = nn.Module()
    model.add_module("body", nn.Linear(4, 6))
    model.add_module(attribute, nn.Linear(6, 3))
    model.forward = lambda x: getattr(model, attribute)(model.body(x))
    apply_multi_sample_dropout(model, 5, 0.5)
    assert isinstance(getattr(model, attribute), MultiSampleDropout)
    assert model(torch.randn(2, 4)).shape == (5, 2, 3)


def test_multi_sample_dropout_without_a_head_names_what_it_needs():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 3))
    with pytest.raises(ConfigurationError, match="needs the classifier head: pass module="):
        apply_multi_sample_dropout(model, 2, 0.5)
    ctx = Context(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=classification_loss,
                  num_classes=3, per_device_batch=4)
    with pytest.raises(ConfigurationError, match="head, fc or classifier"):
        MultiSampleDropoutMethod(2, 0.5).setup(ctx)
    MultiSampleDropoutMethod(2, 0.5, module="1").setup(ctx)
    assert isinstance(model[1], MultiSampleDropout)


def test_old_names_still_work_with_a_deprecation_warning():
    import regimen.dropout as dropout
    from regimen.models import BasicBlock

    with pytest.warns(DeprecationWarning, match="DropPathBasicBlock is deprecated"):
        assert dropout.DropPathBasicBlock is BasicBlock
    with pytest.warns(DeprecationWarning, match="module_name=...\\) is deprecated; use module="):
        apply_multi_sample_dropout(nn.Sequential(nn.Linear(2, 2)), 2, 0.5, module_name="0")
    with pytest.warns(DeprecationWarning, match="module_names=...\\) is deprecated; use modules="):
        apply_dropblock(resnet(), 0.1, 3, module_names=["stages.3"])
    with pytest.warns(DeprecationWarning, match="module_names is deprecated"):
        assert DropBlockMethod(module_names=["stages.3"]).modules == ["stages.3"]
    with pytest.raises(TypeError, match="both"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_dropblock(resnet(), 0.1, 3, modules=["stages.3"], module_names=["stages.3"])


def test_wrapped_modules_keep_their_names_for_methods_that_recorded_them_before():
    torch.manual_seed(0)
    model = resnet(widths=[4, 8], depths=[1, 1])
    conv = model.stages[2].conv1
    weight = model.get_parameter("stages.2.conv1.weight")
    apply_dropblock(model, 0.1, 3, modules=["stages.2"])
    apply_multi_sample_dropout(model, 2, 0.5)
    # names recorded on the plain model still resolve through the wrappers (e.g. a tracer's, a pruner's)
    assert model.get_submodule("stages.2.conv1") is conv
    assert model.get_parameter("stages.2.conv1.weight") is weight
    assert model.get_submodule("stages.3.fc") is model.stages[3].head.fc
    replacement = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
    model.set_submodule("stages.2.conv1", replacement)  # lands in the wrapped block, not on the wrapper
    assert model.stages[2].module.conv1 is replacement and "conv1" not in model.stages[2]._modules
    copied = copy.deepcopy(model)
    assert list(copied.state_dict()) == list(resnet(widths=[4, 8], depths=[1, 1]).state_dict())
    copied.eval()
    model.eval()
    x = torch.randn(2, 1, 12, 12)
    torch.testing.assert_close(copied(x), model(x))


class Wrapper(nn.Module):
    """Another library's wrapper around a model (nested widths, DDP): the model is its child ``model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_the_head_convention_looks_into_a_wrappers_inner_model():
    model = Wrapper(resnet(widths=[4, 8], depths=[1, 1]))
    apply_multi_sample_dropout(model, 3, 0.5)
    assert isinstance(model.model.stages[-1], MultiSampleDropout)
    assert model(torch.randn(2, 1, 12, 12)).shape == (3, 2, 10)
