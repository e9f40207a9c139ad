import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.dropout import (
    DropBlock2d,
    DropBlockMethod,
    DropBlockOutput,
    DropPath,
    DropPathMethod,
    apply_drop_path,
    apply_dropblock,
    drop_block2d,
    drop_path,
    drop_path_rates,
    dropblock_mask,
)
from regimen.losses import classification_loss
from regimen.method import Context
from regimen.models import BasicBlock, resnet


def make_context(model, epochs=4):
    return Context(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=classification_loss,
        num_classes=10, per_device_batch=4, epochs=epochs, generator=torch.Generator().manual_seed(0),
    )


def is_union_of_whole_blocks(dropped: torch.Tensor, b: int) -> bool:
    """Morphological opening with a b x b square inside the map reproduces the dropped set exactly."""
    d = dropped.float()
    full = F.avg_pool2d(d, b, stride=1) > 1 - 1e-6  # windows (fully inside the map) that are entirely dropped
    opened = F.max_pool2d(F.pad(full.float(), (b - 1, b - 1, b - 1, b - 1)), b, stride=1)
    return torch.equal(opened.bool(), dropped)


@pytest.mark.parametrize("block_size", [1, 2, 3, 4])
def test_dropblock_zeros_are_unions_of_whole_blocks_inside_the_map(block_size):
    keep = dropblock_mask((6, 3, 9, 11), 0.3, block_size, torch.empty(0), generator=torch.Generator().manual_seed(0))
    dropped = keep == 0
    assert dropped.any() and not dropped.all()
    assert is_union_of_whole_blocks(dropped, block_size)


def test_dropblock_drop_rate_matches_the_seed_rate_formula():
    n, c, h, w, b, p = 2000, 4, 10, 10, 3, 0.2
    keep = dropblock_mask((n, c, h, w), p, b, torch.empty(0), generator=torch.Generator().manual_seed(1))
    gamma = p * h * w / (b * b * (h - b + 1) * (w - b + 1))
    # a pixel is dropped unless none of the seeds covering it fired: 1 - (1 - gamma)^(covering seeds)
    covers = torch.tensor([sum(1 for s in range(h - b + 1) if s <= i < s + b) for i in range(h)]).float()
    expected = 1 - (1 - gamma) ** (covers[:, None] * covers[None, :])
    torch.testing.assert_close((keep == 0).float().mean(dim=(0, 1)), expected, atol=0.02, rtol=0)


def test_dropblock_scaling_preserves_the_total_activation():
    x = torch.ones(8, 4, 7, 7)
    out = drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.sum(), x.sum())
    x = torch.rand(8, 4, 7, 7)
    means = torch.stack([drop_block2d(x, 0.3, 3).mean() for _ in range(300)])
    assert abs(means.mean().item() / x.mean().item() - 1) < 0.01


def test_dropblock_batchwise_shares_one_mask_and_eval_is_identity():
    x = torch.rand(5, 2, 8, 8) + 0.1
    out = drop_block2d(x, 0.3, 3, batchwise=True, generator=torch.Generator().manual_seed(0))
    zeros = out == 0
    assert zeros.any() and (zeros == zeros[:1]).all()
    layer = DropBlock2d(0.3, 3).eval()
    assert torch.equal(layer(x), x)
    a = DropBlock2d(0.3, 3, generator=torch.Generator().manual_seed(3))(x)
    b = DropBlock2d(0.3, 3, generator=torch.Generator().manual_seed(3))(x)
    assert torch.equal(a, b)


def test_apply_dropblock_wraps_the_last_two_groups_without_changing_keys():
    model = resnet()
    keys = list(model.state_dict())
    plain = copy.deepcopy(model)
    layers = apply_dropblock(model, 0.2, 3, generator=torch.Generator().manual_seed(0))
    assert [type(stage).__name__ for stage in model.stages[1:4]] == ["BasicBlock", "DropBlockOutput", "DropBlockOutput"]
    assert model.stages[2].dropblock is layers[0] and model.stages[3].dropblock is layers[1]
    assert list(model.state_dict()) == keys
    x = torch.randn(4, 1, 28, 28)
    model.eval()
    plain.eval()
    torch.testing.assert_close(model(x), plain(x))
    # in training the wrapped block's output is the block's output through drop_block2d with the same draws
    model.train()
    captured = {}
    model.stages[2].register_forward_hook(lambda m, args, out: captured.update(x=args[0], out=out))
    state = layers[0].generator.get_state()
    model(x)
    raw = BasicBlock.forward(model.stages[2].module, captured["x"])
    expected = drop_block2d(raw, 0.2, 3, generator=torch.Generator().set_state(state))
    torch.testing.assert_close(captured["out"], expected)
    with pytest.raises(ValueError, match="already"):
        apply_dropblock(model, 0.2, 3)
    # checkpoints move both ways between the plain and the changed model
    plain.load_state_dict(model.state_dict())
    model.load_state_dict(plain.state_dict())
    assert isinstance(model.stages[3], DropBlockOutput)


def test_dropblock_method_ramps_p_linearly():
    model = resnet()
    ctx = make_context(model, epochs=4)
    method = DropBlockMethod(p=0.2, block_size=3, ramp=True)
    method.setup(ctx)
    assert ctx.log["dropblock/layers"] == 2
    seen = []
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    for epoch in range(4):
        ctx.epoch = epoch  # p follows the epoch at every step, so a run resumed mid-epoch gets the same p
        method.before_forward(x, y, ctx)
        seen.append(method._layers[0].p)
        assert ctx.log["dropblock/p"] == seen[-1]
    torch.testing.assert_close(torch.tensor(seen), torch.tensor([0.05, 0.1, 0.15, 0.2]))
    assert all(layer.generator is ctx.generator for layer in method._layers)


def test_drop_path_drops_whole_samples_and_preserves_the_expectation():
    x = torch.rand(4000, 3, 2) + 0.5
    out = drop_path(x, 0.3, generator=torch.Generator().manual_seed(0))
    dropped = (out == 0).flatten(1).all(1)
    assert ((out == 0).flatten(1).any(1) == dropped).all()
    torch.testing.assert_close(out[~dropped], x[~dropped] / 0.7)
    assert abs(dropped.float().mean().item() - 0.3) < 0.03
    assert abs(out.mean().item() / x.mean().item() - 1) < 0.03
    unscaled = drop_path(x, 0.3, scale_by_keep=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(unscaled * 1 / 0.7, out)
    assert torch.equal(DropPath(0.5).eval()(x), x)


def test_drop_path_rates_grow_linearly_to_max_rate():
    assert drop_path_rates(4, 0.2) == pytest.approx([0.05, 0.1, 0.15, 0.2])
    model = resnet(depths=[2, 1, 1])
    layers = apply_drop_path(model, 0.2)
    assert [layer.p for layer in layers] == pytest.approx([0.05, 0.1, 0.15, 0.2])


def test_drop_path_block_drops_only_the_residual_branch():
    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2)
    reference = copy.deepcopy(block)
    model = nn.Sequential(block)
    keys = list(model.state_dict())
    (layer,) = apply_drop_path(model, 0.5, generator=torch.Generator().manual_seed(1))
    assert block.drop_path is layer and type(block) is BasicBlock
    assert list(model.state_dict()) == keys
    x = torch.randn(64, 4, 6, 6)
    state = layer.generator.get_state()
    out = block(x)
    branch = reference.bn2(reference.conv2(reference.relu(reference.bn1(reference.conv1(x)))))
    shortcut = reference.shortcut(x)
    keep = (torch.rand(64, generator=torch.Generator().set_state(state)) < 0.5).float().view(64, 1, 1, 1)
    torch.testing.assert_close(out, torch.relu(branch * keep / 0.5 + shortcut))
    assert 0 < keep.sum() < 64
    block.eval()
    reference.eval()
    torch.testing.assert_close(block(x), reference(x))


def test_drop_path_method_and_surgery_errors():
    model = resnet()
    ctx = make_context(model)
    DropPathMethod(max_rate=0.3).setup(ctx)
    assert ctx.log["drop_path/layers"] == 3
    assert [b.drop_path.p for b in model.stages[1:4]] == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="already"):
        apply_drop_path(model, 0.1)
    with pytest.raises(ValueError, match="needs residual blocks"):
        apply_drop_path(nn.Linear(2, 2), 0.1)


def dropblock_model(block_size):
    model = resnet()
    apply_dropblock(model, 0.1, block_size)
    return model


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: drop_block2d(torch.rand(1, 1, 4, 4), 0.1, 5), ValueError, "larger than the feature map"),
        (lambda: drop_block2d(torch.rand(1, 1, 4, 4), 1.0, 3), ValueError, "p must be in"),
        (lambda: drop_block2d(torch.rand(1, 4, 4), 0.1, 3), ValueError, "4 dimensions"),
        (lambda: DropBlock2d(0.1, 0), ValueError, "block_size"),
        (lambda: DropBlock2d(0.1, 2.5), TypeError, "block_size"),
        (lambda: drop_path(torch.rand(3, 2), 1.0), ValueError, "p must be in"),
        (lambda: DropPath(-0.1), ValueError, "p must be in"),
        (lambda: DropPathMethod(max_rate=1.5), ValueError, "max_rate"),
        (lambda: apply_dropblock(resnet(), 0.1, 3, modules=["nope"]), ValueError, "nope"),
        (lambda: apply_dropblock(resnet(), 0.1, 3, modules="stages.1"), TypeError, "modules must be a list"),
        (lambda: dropblock_model(9)(torch.rand(2, 1, 28, 28)), ValueError, "larger"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
