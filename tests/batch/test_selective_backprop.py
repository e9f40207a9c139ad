"""Selective backprop: the selection distribution equals numpy's weighted sampling without replacement; only the
selected examples are trained on; the schedule window; any batch structure; bad input."""

import numpy as np
import pytest
import torch
from torch import nn

from regimen.batch import SelectiveBackpropMethod, select_by_loss_percentile, selection_weights
from regimen.errors import ConfigurationError
from regimen.method import Context
from regimen.train import fit


def test_weights_are_the_loss_percentile_to_the_power_one_over_keep_minus_one():
    losses = torch.tensor([0.3, 2.0, 0.1, 0.7])
    # by hand: ranks 1, 3, 0, 2 -> percentiles (r + 0.5) / 4; keep = 0.25 -> beta = 3
    want = torch.tensor([1.5, 3.5, 0.5, 2.5], dtype=torch.float64).div(4) ** 3
    torch.testing.assert_close(selection_weights(losses, 0.25), want)


def test_selection_frequencies_match_numpy_weighted_choice_without_replacement():
    losses = torch.tensor([0.5, 0.1, 3.0, 1.0, 0.2, 0.8])
    keep, draws = 0.5, 6000
    generator = torch.Generator().manual_seed(0)
    ours = np.zeros(6)
    for _ in range(draws):
        ours[select_by_loss_percentile(losses, keep, generator).numpy()] += 1
    weights = selection_weights(losses, keep).numpy()
    rng = np.random.default_rng(0)
    theirs = np.zeros(6)
    for _ in range(draws):
        theirs[rng.choice(6, 3, replace=False, p=weights / weights.sum())] += 1
    np.testing.assert_allclose(ours / draws, theirs / draws, atol=0.03)
    assert ours[2] > ours[1]  # the largest loss is kept more often than the smallest


def _ctx(model, step=0, epochs=10, steps=10):
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), epochs=epochs, steps_per_epoch=steps)
    ctx.step = step
    return ctx


def test_transform_batch_keeps_the_sampled_rows_of_every_tensor_and_the_indices():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    ctx = _ctx(model, step=6)  # progress 0.06 .. inside [0, 0.9); step 7 is not an interrupt step
    ctx.batch_indices = torch.arange(100, 110)
    method = SelectiveBackpropMethod(keep=0.3, start=0.0, end=0.9, interrupt=2)
    running = model[1].running_mean.clone()
    generator_state = ctx.generator.get_state()
    xs, ys = method.transform_batch(x, y, ctx)
    assert torch.equal(model[1].running_mean, running)  # scoring left BN statistics alone
    losses = nn.functional.cross_entropy(model(x), y, reduction="none")
    ctx.generator.set_state(generator_state)
    index = select_by_loss_percentile(losses.detach(), 0.3, ctx.generator)
    assert len(ys) == 3 and torch.equal(xs, x[index]) and torch.equal(ys, y[index])
    assert torch.equal(ctx.batch_indices, 100 + index)


def test_outside_the_window_and_on_interrupt_steps_the_whole_batch_trains():
    model = nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    method = SelectiveBackpropMethod(keep=0.5, start=0.5, end=0.9, interrupt=2)
    for step, selects in [(10, False), (50, True), (51, False), (52, True), (95, False)]:
        xs, _ = method.transform_batch(x, y, _ctx(model, step=step))
        assert (len(xs) == 4) == selects, step


@pytest.mark.parametrize("kwargs, match", [({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"),
                                           ({"start": 0.9, "end": 0.5}, "start must be < end"),
                                           ({"interrupt": 1}, "interrupt"), ({"end": 2.0}, "end")])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SelectiveBackpropMethod(**kwargs)
    with pytest.raises(ConfigurationError, match=match.split()[0]):
        fit({"task": "classification", "data": {"name": "iris"},
             "methods": [dict(name="selective_backprop", **kwargs)]})


def test_nan_losses_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        selection_weights(torch.tensor([1.0, float("nan")]), 0.5)


def test_fit_trains_on_the_selected_examples_only():
    recipe = {"name": "sb", "seed": 0, "data": {"name": "digits", "val_fraction": 0.1},
              "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
              "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
              "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1},
              "methods": [{"name": "selective_backprop", "keep": 0.25, "start": 0.0, "end": 1.0, "interrupt": 0}]}
    result = fit(recipe)
    assert result.history[-1]["selective_backprop/kept"] == 0.25
    assert result.summary["samples_per_s"] > 0 and len(result.history) == 2


def test_scale_factor_scores_downsampled_images_and_trains_the_full_size_rows():
    from regimen.batch import downsample_for_scoring

    seen = []

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, x):
            seen.append(tuple(x.shape))
            return self.conv(x).mean(dim=(2, 3))

    model = Pooled()
    x, y = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.randint(0, 5, (12,))
    ctx = _ctx(model, step=6)
    method = SelectiveBackpropMethod(keep=0.5, start=0.0, end=0.9, interrupt=0, scale_factor=0.5)
    state = ctx.generator.get_state()
    xs, ys = method.transform_batch(x, y, ctx)
    assert seen == [(12, 3, 8, 8)] and xs.shape == (6, 3, 16, 16)
    small = nn.functional.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False)  # Composer's resize
    assert torch.equal(downsample_for_scoring(x, 0.5), small)
    ctx.generator.set_state(state)
    index = select_by_loss_percentile(nn.functional.cross_entropy(model(small), y, reduction="none").detach(), 0.5,
                                      ctx.generator)
    assert torch.equal(xs, x[index]) and torch.equal(ys, y[index])
    # a 2x2 mean of the image is what bilinear at scale 1/2 gives (align_corners=False samples between pixels)
    torch.testing.assert_close(small, nn.functional.avg_pool2d(x, 2))


def test_scale_factor_is_refused_out_of_range_and_for_non_image_tasks():
    with pytest.raises(ValueError, match="scale_factor"):
        SelectiveBackpropMethod(scale_factor=0.0)
    with pytest.raises(ValueError, match="scale_factor"):
        SelectiveBackpropMethod(scale_factor=1.5)
    with pytest.raises(ConfigurationError, match="scale_factor"):
        fit({"task": "classification", "data": {"name": "iris"}, "train": {"batch_size": 16},
             "methods": [{"name": "selective_backprop", "scale_factor": 0.5}]})
