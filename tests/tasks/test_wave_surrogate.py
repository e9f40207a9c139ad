"""The wave_surrogate task: the pairs are the simulated trajectories' consecutive frames (rebuilt independently), an
exact leapfrog model scores zero one-step and rollout error, the metrics of persistence equal a Python loop by hand,
training lowers the error, the cp_kernels recipe trains with fewer parameters, and bad recipes are refused naming
the key."""

from __future__ import annotations

import math

import pytest
import torch

from regimen.data.wave import wave_step, wave_trajectories
from regimen.subnet import CPKernelConv2d
from regimen.tasks import WaveSurrogateTask, get_task
from regimen.tasks.wave_surrogate import DEFAULTS, WaveSet, WaveUNet, relative_l2, rollout, wave_mse, wave_splits
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe

SMALL = {"size": 16, "train_trajectories": 8, "eval_trajectories": 4, "frames": 6, "stride": 2, "rollout_steps": 5}


def wave_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-wave", "task": "wave_surrogate", "seed": 0,
        "data": {"name": "wave", "val_fraction": 0.25, "options": dict(SMALL)},
        "model": {"name": "unet", "options": {"width": 4, "kernel_size": 3, "levels": 2}},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 64, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def test_the_task_is_registered_with_lower_is_better_metrics():
    task = get_task("wave_surrogate")
    assert task is WaveSurrogateTask
    assert task.primary_metric == "one_step_error" and task.higher_is_better is False
    instance = task.__new__(task)
    assert not instance.metric_higher_is_better("rollout_error") and not instance.metric_higher_is_better("loss")


def test_pairs_are_consecutive_frames_of_the_trajectories_standardised_by_the_training_std():
    options = {**DEFAULTS, **SMALL}
    train, val, test = wave_splits(options, val_fraction=0.25)
    # rebuilt independently: the same generator seed, all frames, then the held-out trajectories removed by hand
    frames = max(options["frames"], options["rollout_steps"] + 2)
    raw = wave_trajectories(8, size=16, frames=frames, stride=2, generator=torch.Generator().manual_seed(0))
    order = torch.randperm(8, generator=torch.Generator().manual_seed(2_000_003))
    held, kept = sorted(order[:2].tolist()), sorted(order[2:].tolist())
    scale = raw[kept, :options["frames"]].std().item()
    assert train.scale == pytest.approx(scale)
    assert len(train) == 6 * (options["frames"] - 2) and len(val) == 2 * (options["frames"] - 2)
    row = 0
    for i in kept:
        for t in range(options["frames"] - 2):
            torch.testing.assert_close(train.inputs[row, 0], raw[i, t] / scale)
            torch.testing.assert_close(train.inputs[row, 1], raw[i, t + 1] / scale)
            torch.testing.assert_close(train.targets[row, 0], raw[i, t + 2] / scale)
            row += 1
    torch.testing.assert_close(val.trajectories, raw[held] / scale)
    assert test.trajectories.shape == (4, frames, 16, 16)
    assert not any(torch.equal(test.trajectories[0], train.trajectories[j]) for j in range(len(train.trajectories)))
    # the test set does not depend on the training set's size
    bigger = wave_splits({**options, "train_trajectories": 12}, val_fraction=0.25)[2]
    torch.testing.assert_close(bigger.trajectories * bigger.scale, test.trajectories * test.scale)


def test_an_exact_leapfrog_model_has_zero_one_step_and_rollout_error():
    options = {**DEFAULTS, **SMALL, "stride": 1}  # one recorded frame per leapfrog step: the update is exact
    _, _, test = wave_splits(options)
    task = WaveSurrogateTask.__new__(WaveSurrogateTask)

    class Leapfrog(torch.nn.Module):
        def forward(self, x):
            return wave_step(x[:, 1:2], x[:, 0:1], options["courant"], options["boundary"])

    metrics = task.evaluate(Leapfrog(), test, lambda x: x, batch_size=7)
    assert metrics["one_step_error"] < 1e-5 and metrics["rollout_error"] < 1e-4 and metrics["loss"] < 1e-10


def test_metrics_of_persistence_equal_a_loop_by_hand():
    _, _, test = wave_splits({**DEFAULTS, **SMALL})
    task = WaveSurrogateTask.__new__(WaveSurrogateTask)

    class Persistence(torch.nn.Module):
        def forward(self, x):
            return x[:, 1:2]

    metrics = task.evaluate(Persistence(), test, lambda x: x, batch_size=5)
    one_step, mse = [], []
    for x, y in zip(test.inputs, test.targets, strict=True):
        one_step.append(math.sqrt(((x[1] - y[0]).double() ** 2).sum()) / math.sqrt((y[0].double() ** 2).sum()))
        mse.append(((x[1] - y[0]).double() ** 2).mean().item())
    steps = SMALL["rollout_steps"]
    roll = [math.sqrt(((t[1] - t[steps + 1]).double() ** 2).sum()) / math.sqrt((t[steps + 1].double() ** 2).sum())
            for t in test.trajectories]  # persistence keeps frame 1 forever
    assert metrics["one_step_error"] == pytest.approx(sum(one_step) / len(one_step), rel=1e-6)
    assert metrics["loss"] == pytest.approx(sum(mse) / len(mse), rel=1e-5)
    assert metrics["rollout_error"] == pytest.approx(sum(roll) / len(roll), rel=1e-6)


def test_relative_l2_wave_mse_and_rollout_by_hand_and_their_errors():
    a, b = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    expected = [((a[i] - b[i]).norm() / b[i].norm()).item() for i in range(3)]
    torch.testing.assert_close(relative_l2(a, b), torch.tensor(expected, dtype=torch.float64))
    assert wave_mse(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)
    torch.testing.assert_close(wave_mse(a, b, "none"), ((a - b) ** 2).mean(dim=(1, 2, 3)))
    calls = []
    last = rollout(lambda x: calls.append(x) or x[:, 0:1] + x[:, 1:2], a, b, 3)  # Fibonacci: a+b, a+2b, 2a+3b
    torch.testing.assert_close(last, 2 * a + 3 * b)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="one shape"):
        relative_l2(a, b[:2])
    with pytest.raises(ValueError, match="reduction must be"):
        wave_mse(a, b, "max")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        rollout(lambda x: x, a, b, 0)


def test_unet_predicts_the_newest_frame_plus_an_increment_and_checks_its_arguments():
    net = WaveUNet(in_channels=2, width=4, kernel_size=3, levels=3)
    x = torch.randn(2, 2, 16, 16)
    assert net(x).shape == (2, 1, 16, 16)
    torch.nn.init.zeros_(net.head.weight)
    torch.nn.init.zeros_(net.head.bias)
    torch.testing.assert_close(net(x), x[:, 1:2])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        WaveUNet(kernel_size=4)
    with pytest.raises(ValueError, match="levels must be an int >= 1"):
        WaveUNet(levels=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.randn(1, 2, 10, 10))


def test_training_lowers_the_one_step_error():
    result = fit(wave_recipe(train={"epochs": 4, "eval_every": 1}), quiet=True)
    errors = [h["val_one_step_error"] for h in result.history]
    assert errors[-1] < errors[0]
    assert result.summary["primary_metric"].endswith("one_step_error") and result.summary["higher_is_better"] is False
    assert math.isfinite(result.summary["final_test_rollout_error"])


def test_cp_kernels_train_on_the_surrogate_with_fewer_parameters():
    dense = fit(wave_recipe(train={"epochs": 1}), quiet=True)
    cp = fit(wave_recipe(train={"epochs": 1}, methods=[{"name": "cp_kernels", "rank": 1}]), quiet=True)
    assert any(isinstance(m, CPKernelConv2d) for m in cp.model.modules())
    count = sum(p.numel() for p in cp.model.parameters())
    assert count < sum(p.numel() for p in dense.model.parameters())
    assert math.isfinite(cp.summary["final_test_one_step_error"])


def test_users_trajectories_are_split_whole_and_fitted():
    trajectories = wave_trajectories(6, size=8, frames=5, stride=1, generator=torch.Generator().manual_seed(3))
    result = fit(wave_recipe(train={"epochs": 1}, data={"val_fraction": 0.34}), data=trajectories, quiet=True)
    assert isinstance(result.summary["final_test_one_step_error"], float)
    with pytest.raises(Exception, match=r"trajectories, a float tensor \(N >= 2, T >= 3, n, m\)"):
        fit(wave_recipe(), data=trajectories[:, :2])


@pytest.mark.parametrize("options, match", [
    ({"size": 2}, "data.options.size must be >= 4"),
    ({"courant": 0.9}, r"data.options.courant must be in \(0, 1/sqrt\(2\)\]"),
    ({"boundary": "open"}, "data.options.boundary must be one of dirichlet, neumann, periodic"),
    ({"frames": 2}, "data.options.frames must be >= 3"),
    ({"grid": 64}, "data.options.grid: unknown option of task 'wave_surrogate'"),
    ({"size": "64"}, "data.options.size: expected int"),
    ({"size": 18}, r"data.options.size = 18 is not divisible by 2\^\(levels - 1\) = 4"),
])
def test_bad_data_options_are_errors_naming_the_key(options, match):
    recipe = wave_recipe(data={"options": {**SMALL, **options}}, model={"options": {"levels": 3}})
    with pytest.raises(RecipeError, match=match):
        parse_recipe(recipe)


def test_a_test_subset_a_bad_model_option_and_an_image_method_are_refused():
    with pytest.raises(RecipeError, match="data.test_subset: the wave_surrogate task tests on"):
        parse_recipe(wave_recipe(data={"test_subset": 10}))
    with pytest.raises(RecipeError, match="model.options.in_channels: set by the task"):
        parse_recipe(wave_recipe(model={"options": {"in_channels": 2}}))
    with pytest.raises(RecipeError, match="model.options.depth: unknown option"):
        parse_recipe(wave_recipe(model={"options": {"depth": 2}}))
    with pytest.raises(RecipeError, match="task 'wave_surrogate' has field inputs"):
        parse_recipe(wave_recipe(methods=[{"name": "cutout"}]))


def test_a_64_grid_is_an_option():
    options = {**DEFAULTS, **SMALL, "size": 64, "train_trajectories": 2, "eval_trajectories": 1}
    train, _, test = wave_splits(options)
    assert train.inputs.shape[-2:] == (64, 64) and isinstance(test, WaveSet)
