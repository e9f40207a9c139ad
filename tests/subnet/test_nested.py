"""Nested widths: extraction equals the nested forward, prefix slicing by hand, sorting, BN per width, sandwich."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.errors import ConfigurationError
from regimen.method import (
    Context,
    check_exclusive_hooks,
    check_method_order,
    compose_criterion,
    compose_forward_loss,
    get_method,
)
from regimen.models import MLP, resnet
from regimen.subnet.nested import (
    NestedWidth,
    NestedWidthMethod,
    check_widths,
    inplace_distillation_loss,
    sandwich_widths,
    units_at_width,
)
from regimen.tasks import classification_criterion

try:
    from archs import ARCHS, randomize_norms
except ImportError:  # tests/subnet became a package
    from tests.subnet.archs import ARCHS, randomize_norms


def _train_a_little(nested: NestedWidth, x: torch.Tensor, steps: int = 1) -> None:
    optimizer = torch.optim.SGD(nested.parameters(), lr=0.05)
    nested.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(nested(x, width=w).float().square().mean() for w in nested.widths)
        loss.backward()
        optimizer.step()


def _build(arch: str):
    if arch == "resnet_small":  # the reference ResNet, narrower (same structure, faster test)
        return resnet(widths=(8, 16), depths=(1, 2)), torch.randn(1, 1, 28, 28)
    return ARCHS[arch]()


@pytest.mark.parametrize("arch", ["resnet_small", "resnet_downsample", "densenet_concat", "unet_concat_skips",
                                  "mlp", "mobilenetv2_depthwise"])
def test_extract_equals_the_nested_model_at_every_width(arch):
    torch.manual_seed(0)
    model, example = _build(arch)
    randomize_norms(model)
    x = torch.randn(2, *example.shape[1:])
    nested = NestedWidth(model, example, widths=(0.25, 0.5, 0.75, 1.0))
    _train_a_little(nested, x)  # per-width BN statistics now differ from the full model's
    nested.eval()
    for width in nested.widths:
        small = nested.extract(width).eval()
        torch.testing.assert_close(small(x), nested(x, width=width), atol=1e-5, rtol=0)
        assert sum(p.numel() for p in small.parameters()) == nested.width_params(width)
    assert nested.width_params(0.25) < nested.width_params(1.0)


def test_mlp_width_is_the_channel_prefix_computed_by_hand():
    torch.manual_seed(0)
    model = MLP(in_features=12, num_classes=5, hidden=(8, 6))
    nested = NestedWidth(model, torch.randn(2, 12), widths=(0.5, 1.0), sort_by="none").eval()
    x = torch.randn(4, 12)
    l1, l2, fc = model.stages[0][1], model.stages[1][0], model.stages[2].fc
    h = F.relu(F.linear(x, l1.weight[:4], l1.bias[:4]))
    h = F.relu(F.linear(h, l2.weight[:3, :4], l2.bias[:3]))
    expected = F.linear(h, fc.weight[:, :3], fc.bias)
    torch.testing.assert_close(nested(x, width=0.5), expected, atol=1e-6, rtol=0)
    small = nested.extract(0.5)
    assert small.stages[0][1].out_features == 4 and small.stages[1][0].weight.shape == (3, 4)


def test_sorting_preserves_the_function_and_orders_units_by_importance():
    from regimen.subnet.importance import group_scores

    torch.manual_seed(0)
    model = randomize_norms(resnet(widths=(8, 16), depths=(1, 1))).eval()
    x = torch.randn(3, 1, 28, 28)
    reference = model(x)
    nested = NestedWidth(model, x[:1], sort_by="l2").eval()
    torch.testing.assert_close(nested(x), reference, atol=1e-5, rtol=0)
    for group in nested.groups:
        scores = group_scores(model, group, "l2")
        assert torch.all(scores[1:] <= scores[:-1] + 1e-6)


def test_each_width_keeps_its_own_bn_statistics():
    torch.manual_seed(0)
    model = resnet(widths=(8, 16), depths=(1, 1))
    nested = NestedWidth(model, torch.randn(1, 1, 28, 28), widths=(0.5, 1.0))
    full_mean = model.stages[0][1].running_mean.clone()
    nested.train()
    nested(torch.randn(8, 1, 28, 28) * 3 + 1, width=0.5)
    assert torch.equal(model.stages[0][1].running_mean, full_mean)  # the full width is untouched
    index = nested._bn_names.index("stages.0.1")
    assert not torch.equal(nested.bn_stats["0"].get_buffer(f"bn{index}_running_mean"), full_mean[:4])


def test_recalibrated_statistics_equal_a_cumulative_average_by_hand():
    torch.manual_seed(0)
    model = resnet(widths=(8, 16), depths=(1, 1))
    nested = NestedWidth(model, torch.randn(1, 1, 28, 28), widths=(0.5, 1.0), sort_by="none")
    batches = [torch.randn(6, 1, 28, 28) + i for i in range(3)]
    nested.recalibrate_bn(batches, widths=[0.5])
    # by hand: the stem's BN sees conv outputs of the first 4 filters; cumulative average of the batch means
    conv = model.stages[0][0]
    means = [F.conv2d(b, conv.weight[:4], padding=1).mean(dim=(0, 2, 3)) for b in batches]
    index = nested._bn_names.index("stages.0.1")
    got = nested.bn_stats["0"].get_buffer(f"bn{index}_running_mean")
    torch.testing.assert_close(got, torch.stack(means).mean(0), atol=1e-5, rtol=1e-5)


def test_small_width_gradients_reach_only_the_kept_channels():
    torch.manual_seed(0)
    model = MLP(in_features=12, num_classes=5, hidden=(8,))
    nested = NestedWidth(model, torch.randn(2, 12), widths=(0.25, 1.0), sort_by="none")
    nested(torch.randn(4, 12), width=0.25).sum().backward()
    grad = model.stages[0][1].weight.grad
    assert grad[:2].abs().sum() > 0 and torch.all(grad[2:] == 0)


def test_sandwich_always_has_largest_and_smallest_and_is_seeded():
    widths = (0.25, 0.5, 0.75, 1.0)
    draws = [sandwich_widths(widths, 1, torch.Generator().manual_seed(s)) for s in range(10)]
    assert all(d[:2] == [1.0, 0.25] and len(d) == 3 and d[2] in (0.5, 0.75) for d in draws)
    assert {d[2] for d in draws} == {0.5, 0.75}
    assert draws == [sandwich_widths(widths, 1, torch.Generator().manual_seed(s)) for s in range(10)]
    assert sandwich_widths(widths, 5) == [1.0, 0.25, 0.75, 0.5]
    assert sandwich_widths((1.0,), 2) == [1.0]


def _context(model: nn.Module, **run) -> Context:
    """A hand-built context as the trainer makes one: classification criterion (index and soft targets)."""
    images = torch.rand(4, 1, 3, 4)
    data = ArrayDataset(images, torch.arange(4) % 5, 5)
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), num_classes=5, per_device_batch=4,
                  generator=torch.Generator().manual_seed(0), train_data=data, **run)
    ctx.criterion = compose_criterion([], classification_criterion(), ctx)
    return ctx


def _step(methods, ctx, x, y):
    """What the trainer does for one micro-batch: before_forward, then the composed forward_loss chain."""
    for method in methods:
        method.before_forward(x, y, ctx)
    return compose_forward_loss(methods, ctx)(ctx.model, x, y)


def test_method_loss_is_task_loss_of_largest_plus_detached_distillation_of_the_others():
    torch.manual_seed(0)
    model = MLP(in_features=12, num_classes=5, hidden=(8, 6))
    ctx = _context(model)
    method = NestedWidthMethod(widths=[0.25, 0.5, 1.0], n_random=1, sort_by="none", temperature=2.0)
    method.setup(ctx)
    nested = ctx.model
    assert isinstance(nested, NestedWidth) and ctx.log["nested_width/groups"] == 2
    x, y = torch.randn(4, 1, 3, 4), torch.randint(0, 5, (4,))
    loss, logits = _step([method], ctx, x, y)
    assert method.last_widths[:2] == [1.0, 0.25] and len(method.last_widths) == 3
    teacher = nested(x, width=1.0)
    expected = F.cross_entropy(teacher, y)
    for w in method.last_widths[1:]:
        target = F.softmax(teacher.detach() / 2.0, dim=1)
        expected = expected - 4.0 * (target * F.log_softmax(nested(x, width=w) / 2.0, dim=1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, teacher)
    assert {f"nested_width/loss_w{w:g}" for w in method.last_widths} <= set(ctx.log.pending)
    # the distillation term sends no gradient into the teacher's logits
    t = teacher.detach().requires_grad_()
    inplace_distillation_loss(nested(x, width=0.25), t).backward()
    assert t.grad is None


def test_without_distillation_every_width_trains_on_the_targets():
    torch.manual_seed(0)
    model = MLP(in_features=12, num_classes=5, hidden=(8, 6))
    ctx = _context(model)
    method = NestedWidthMethod(widths=[0.5, 1.0], n_random=0, sort_by="none", distill=False)
    method.setup(ctx)
    x, y = torch.randn(4, 1, 3, 4), torch.randint(0, 5, (4,))
    loss, _ = _step([method], ctx, x, y)
    expected = F.cross_entropy(ctx.model(x, width=1.0), y) + F.cross_entropy(ctx.model(x, width=0.5), y)
    torch.testing.assert_close(loss, expected)


def _z_loss_by_hand(logits: torch.Tensor, y: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """de Brébisson & Vincent's Z-loss, per row: softplus(a (b − z_y)) / a with z = (o − μ) / σ (population σ)."""
    rows = []
    for o, target in zip(logits.double(), y.tolist(), strict=True):
        mu = o.mean()
        sigma = ((o - mu).square().mean() + 1e-6).sqrt()
        z_y = (o[target] - mu) / sigma
        rows.append(torch.log1p(torch.exp(a * (b - z_y))) / a)
    return torch.stack(rows).mean()


def test_nested_width_multi_sample_dropout_and_z_loss_compose_to_the_formula():
    """nested_width (no distillation) wraps the chain: for every width of the sandwich it calls multi-sample dropout,
    whose K dropout samples go through the z-loss criterion: L = Σ_w (1/K) Σ_k mean_n Z(o_{w,k,n}, y_n)."""
    torch.manual_seed(0)
    model = resnet(widths=(4, 8), depths=(1, 1), num_classes=5)
    ctx = _context(model)
    methods = [get_method("nested_width")(widths=[0.5, 0.75, 1.0], n_random=1, sort_by="none", distill=False),
               get_method("multi_sample_dropout")(num_samples=3, p=0.5),
               get_method("z_loss")(a=0.5, b=2.0)]
    check_method_order(methods)
    check_exclusive_hooks(methods)
    ctx.criterion = compose_criterion(methods, classification_criterion(), ctx)
    for method in methods:
        method.setup(ctx)
    nested = ctx.model
    nested.train()
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 5, (6,))
    state, sandwich_state = ctx.generator.get_state(), methods[0].generator.get_state()
    loss, output = _step(methods, ctx, x, y)
    widths = methods[0].last_widths
    assert widths[:2] == [1.0, 0.5] and len(widths) == 3

    # the same draws again: the sandwich (the method's own generator), then each width's K dropout masks
    ctx.generator.set_state(state)
    assert sandwich_widths((0.5, 0.75, 1.0), 1, methods[0].generator.set_state(sandwich_state)) == widths
    expected, first = 0.0, None
    for width in widths:
        logits_k = nested(x, width=width)  # (K, N, C): the K dropout samples of this width
        assert logits_k.shape == (3, 6, 5)
        first = logits_k if first is None else first
        expected = expected + sum(_z_loss_by_hand(logits_k[k], y, 0.5, 2.0) for k in range(3)) / 3
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output, first.mean(0).detach())  # the largest width's mean logits
    # the small widths' K samples really differ (dropout is on), so the mean over K is not trivial
    assert not torch.allclose(first[0], first[1])


def test_a_head_wrapped_after_tracing_is_found_again():
    """Surgery after NestedWidth (multi-sample dropout wrapping the head) moves modules: they are found by identity."""
    from regimen.dropout import apply_multi_sample_dropout

    torch.manual_seed(0)
    model = randomize_norms(resnet(widths=(8, 16), depths=(1, 1)))
    x = torch.randn(3, 1, 28, 28)
    nested = NestedWidth(model, x[:1], widths=(0.5, 1.0)).eval()
    before = {w: nested(x, width=w) for w in nested.widths}
    apply_multi_sample_dropout(nested, num_samples=2)  # through NestedWidth.stages
    nested.eval()
    assert "model.stages.3.head.fc.weight" in dict(nested.named_parameters())
    for width in nested.widths:
        torch.testing.assert_close(nested(x, width=width), before[width], rtol=0, atol=0)
        torch.testing.assert_close(nested.extract(width).eval()(x), before[width], atol=1e-5, rtol=0)
        assert nested.width_params(width) == sum(p.numel() for p in nested.extract(width).parameters())
    nested.model.stages[3] = nn.Linear(1, 1)  # replacing (not wrapping) a traced module is an error
    with pytest.raises(RuntimeError, match="no longer in the model"):
        nested(x, width=0.5)


def test_distillation_needs_a_classification_task():
    model = MLP(in_features=12, num_classes=5, hidden=(8,))
    ctx = _context(model, task="regression", target_kind="values")
    with pytest.raises(ConfigurationError, match="distill = false"):
        NestedWidthMethod(widths=[0.5, 1.0]).setup(ctx)
    NestedWidthMethod(widths=[0.5, 1.0], distill=False).setup(ctx)


def test_a_model_without_sliceable_channels_is_a_configuration_error():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 5)

        def forward(self, x):
            return self.fc(torch.fft.fft(x.flatten(1)).real)

    ctx = _context(Untraceable())
    with pytest.raises(ConfigurationError, match="nested_width needs a model"):
        NestedWidthMethod(widths=[0.5, 1.0]).setup(ctx)


def test_bad_input_is_rejected_with_clear_errors():
    for bad, error in [((0.0, 1.0), ValueError), ((0.5, 1.5), ValueError), ((1.0, 0.5), ValueError),
                       ((0.5, 0.5, 1.0), ValueError), ((), ValueError), ("0.5", TypeError)]:
        with pytest.raises(error, match="widths"):
            check_widths(bad)
    with pytest.raises(ValueError, match="width"):
        units_at_width(8, 0.0)
    nested = NestedWidth(MLP(in_features=12, num_classes=5, hidden=(8,)), torch.randn(2, 12), widths=(0.5, 1.0))
    with pytest.raises(ValueError, match="trained widths"):
        nested(torch.randn(2, 12), width=0.3)
    with pytest.raises(ValueError, match="sort_by"):
        NestedWidth(MLP(in_features=12, hidden=(8,)), torch.randn(2, 12), sort_by="random")
    with pytest.raises(ValueError, match="widths"):
        NestedWidthMethod(widths=[0.5, 0.25])
    with pytest.raises(ValueError, match="eval_width"):
        NestedWidthMethod(widths=[0.5, 1.0], eval_width=0.75)


def test_units_round_up_and_keep_at_least_one():
    assert [units_at_width(16, w) for w in (0.25, 0.5, 0.75, 1.0)] == [4, 8, 12, 16]
    assert units_at_width(3, 0.25) == 1 and units_at_width(10, 0.25) == 3


def test_method_is_registered_and_nested_copy_is_independent():
    assert get_method("nested_width") is NestedWidthMethod
    model = MLP(in_features=12, num_classes=5, hidden=(8,))
    nested = NestedWidth(model, torch.randn(2, 12), widths=(0.5, 1.0))
    small = nested.extract(0.5)
    before = copy.deepcopy(small.state_dict())
    with torch.no_grad():
        model.stages[0][1].weight.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert isinstance(small, nn.Module)


def test_nested_width_recipe_trains_through_fit_and_resumes_bitwise(tmp_path):
    from regimen.train import fit

    recipe = {"name": "n", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 3},
              "methods": [{"name": "nested_width", "widths": [0.5, 1.0], "n_random": 1}]}
    reference = fit(recipe, out_dir=tmp_path / "ref")
    assert isinstance(reference.model, NestedWidth)
    fit(recipe, out_dir=tmp_path / "run", stop_epoch=1)  # stopped after epoch 1, as a killed run would be
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    for key, value in reference.model.state_dict().items():  # weights and per-width BN statistics
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_nested_width_multi_sample_dropout_and_z_loss_train_together_through_fit(tmp_path):
    """The same recipe in the trainer: multi-sample dropout finds the head through NestedWidth.stages."""
    from regimen.train import fit

    recipe = {"name": "n", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [4, 8], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05}, "train": {"epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2},
              "methods": [{"name": "nested_width", "widths": [0.5, 1.0], "n_random": 0, "distill": False},
                          {"name": "multi_sample_dropout", "num_samples": 2}, {"name": "z_loss"}]}
    result = fit(recipe, out_dir=tmp_path)
    row = result.history[-1]
    assert isinstance(result.model, NestedWidth) and row["nested_width/groups"] > 0
    assert row["nested_width/loss_w1"] > 0 and row["nested_width/loss_w0.5"] > 0


def test_distillation_and_z_loss_are_refused_by_the_recipe_without_it_they_compose():
    from regimen.train import RecipeError, parse_recipe
    from regimen.train.recipe import build_methods

    base = {"name": "n", "data": {"name": "digits"}, "model": {"name": "mlp"}}
    for methods in ([{"name": "nested_width"}, {"name": "z_loss"}], [{"name": "z_loss"}, {"name": "nested_width"}]):
        with pytest.raises(RecipeError, match="distill = false"):
            build_methods(parse_recipe({**base, "methods": methods}))
    build_methods(parse_recipe({**base, "methods": [{"name": "nested_width", "distill": False}, {"name": "z_loss"}]}))


def test_resumed_run_draws_the_same_sandwiches(tiny_recipe, tmp_path):
    """The sandwich's generator (shared by every rank, not ctx.generator) is in the method's state: a run stopped
    after epoch 1 and resumed trains the same widths, bit for bit."""
    from tests.helpers import reference_and_resumed_runs

    recipe = dict(tiny_recipe, methods=[{"name": "nested_width", "widths": [0.25, 0.5, 0.75, 1.0], "n_random": 1,
                                         "sort_by": "none"}, {"name": "_test_interrupt_once", "epoch": 1}])
    recipe["train"] = {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4}
    reference, resumed = reference_and_resumed_runs(recipe, tmp_path, interrupted_epoch=1)
    for (name, a), b in zip(reference.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
