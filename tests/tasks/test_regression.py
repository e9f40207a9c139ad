"""The regression task: the long-tailed rotation data (angles by inverse CDF, rotation against rot90), metrics against
explicit computation, ConR against an explicit loop (faithful and masked denominators), the aggregate losses against
loops and the instance = bag + spread identity, and bad input refused naming the key."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.data import DataError
from regimen.losses import aggregate_loss, conr_loss, lds_weights
from regimen.tasks import RegressionTask, regression_loss
from regimen.tasks.regression import rotate_images, truncated_exponential
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe


def reg_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-reg", "task": "regression", "seed": 0,
        "data": {"name": "diabetes", "val_fraction": 0.1, "test_fraction": 0.2},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "optim": {"name": "adamw", "lr": 1e-2},
        "schedule": {"name": "constant"},
        "train": {"epochs": 3, "batch_size": 16, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def test_truncated_exponential_has_the_analytic_mean_and_range():
    s, high = 20.0, 90.0
    draws = truncated_exponential(200_000, s, high, torch.Generator().manual_seed(0))
    assert 0.0 <= draws.min() and draws.max() < high
    mean = s - high * math.exp(-high / s) / (1 - math.exp(-high / s))  # mean of the truncated exponential
    assert draws.mean().item() == pytest.approx(mean, rel=0.01)
    assert (draws > 60).double().mean().item() == pytest.approx(
        (math.exp(-60 / s) - math.exp(-high / s)) / (1 - math.exp(-high / s)), abs=0.003)


def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
    image = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    rotated = rotate_images(image, torch.tensor([90.0, 0.0]))
    assert torch.allclose(rotated[0], torch.rot90(image[0], 1, dims=(1, 2)), atol=1e-5)
    assert torch.allclose(rotated[1], image[1], atol=1e-6)


def _conr_loop(z, y, p, w, tau, e, weights, faithful):
    q = F.normalize(z.double(), dim=1).tolist()
    n = len(q)
    total = []
    for i in range(n):
        s = [sum(a * b for a, b in zip(q[i], q[j])) / tau for j in range(n)]
        pos = [j for j in range(n) if j != i and abs(y[i] - y[j]) <= w]
        neg = [j for j in range(n) if abs(y[i] - y[j]) > w and abs(p[i] - p[j]) <= w]
        if not pos or not neg:
            total.append(0.0)
            continue
        if faithful:  # exp(s * mask) over every column: a masked column adds exp(0) = 1
            positive = sum(math.exp(s[k]) if k in pos else 1.0 for k in range(n))
        else:
            positive = sum(math.exp(s[k]) for k in pos)
        negative = sum(weights[i] * math.exp(e * abs(y[i] - y[k])) * math.exp(s[k]) for k in neg)
        li = -sum(math.log(math.exp(s[j]) / (positive + negative)) for j in pos) / len(pos)
        total.append(weights[i] * li)
    return total


@pytest.mark.parametrize("faithful", [True, False])
def test_conr_matches_an_explicit_loop(faithful):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(12, 5, generator=g)
    y = torch.tensor([0.0, 0.5, 0.8, 3.0, 3.2, 6.0, 6.1, 6.5, 9.0, 12.0, 12.4, 20.0])
    p = torch.tensor([0.2, 3.1, 0.9, 0.4, 3.0, 6.2, 9.5, 6.0, 9.1, 12.2, 20.5, 12.1])
    weights = torch.rand(12, generator=g) + 0.5
    want = _conr_loop(z, y.tolist(), p.tolist(), 1.0, 0.07, 0.01, weights.tolist(), faithful)
    got = conr_loss(z, y, p, window=1.0, temperature=0.07, push=0.01, weights=weights, faithful=faithful,
                    reduction="none")
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert conr_loss(z, y, p, weights=weights, faithful=faithful).item() == pytest.approx(sum(want) / 12, rel=1e-4)
    if faithful:  # the reference's denominator is never smaller: it adds 1 per non-positive column
        masked = conr_loss(z, y, p, weights=weights, faithful=False, reduction="none")
        assert (got >= masked - 1e-6).all()


def test_masked_conr_keeps_gradients_finite_for_an_isolated_anchor():
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(4), requires_grad=True)
    y, p = torch.tensor([0.0, 0.5, 10.0, 30.0]), torch.tensor([0.0, 0.5, 10.0, 50.0])  # anchors 2, 3: nothing
    loss = conr_loss(z, y, p, faithful=False)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def test_lds_weights_are_the_inverse_sqrt_of_the_smoothed_histogram():
    targets = torch.tensor([0.25, 0.5, 1.0, 1.5, 1.75, 4.5])
    weights, low = lds_weights(targets, 1.0, kernel_size=3, sigma=1.0)
    counts = [3, 2, 0, 0, 1]  # bins [0.25, 1.25), [1.25, 2.25), ...
    k = [math.exp(-0.5), 1.0, math.exp(-0.5)]
    smooth = [sum(k[j + 1] * counts[i + j] for j in (-1, 0, 1) if 0 <= i + j < 5) for i in range(5)]
    raw = [1 / math.sqrt(v) for v in smooth]
    index = [0, 0, 0, 1, 1, 4]
    scale = sum(raw[i] for i in index) / len(index)
    assert low == pytest.approx(0.25)
    assert weights.tolist() == pytest.approx([r / scale for r in raw], rel=1e-5)


def test_aggregate_losses_match_loops_and_the_instance_equals_bag_plus_spread_identity():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(9, generator=g)
    bags = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    ybar = torch.tensor([0.5, -1.0, 2.0])
    for rho in (0.0, 0.3, 1.0):
        want = []
        for a in range(3):
            members = [f[i].item() for i in range(9) if bags[i] == a]
            mean = sum(members) / len(members)
            want.append((ybar[a].item() - mean) ** 2 + rho * sum((v - mean) ** 2 for v in members) / len(members))
        assert aggregate_loss(f, bags, ybar, rho, reduction="none").tolist() == pytest.approx(want, rel=1e-5)
    instance = [sum((ybar[a].item() - f[i].item()) ** 2 for i in range(9) if bags[i] == a) / int((bags == a).sum())
                for a in range(3)]
    assert aggregate_loss(f, bags, ybar, 1.0, reduction="none").tolist() == pytest.approx(instance, rel=1e-5)
    # fixed-size bags through the task's default loss: the instance-level loss
    even = torch.randn(3, 4, generator=g)
    assert regression_loss(even, ybar).item() == pytest.approx(
        aggregate_loss(even.reshape(-1), torch.arange(3).repeat_interleave(4), ybar, 1.0).item(), rel=1e-5)
    with pytest.raises(ValueError, match="bags: bag 1 has no members"):
        aggregate_loss(f[:3], torch.tensor([0, 0, 2]), ybar)


def test_rotation_data_is_long_tailed_for_training_and_uniform_for_testing():
    recipe = reg_recipe(data={"name": "rotation", "train_subset": 3000, "test_subset": 2000},
                        model={"name": "resnet", "options": {"widths": [8], "depths": [1]}})
    task = RegressionTask(parse_recipe(recipe))
    data = task.load_data()
    train, test = data.train.targets, data.test.targets
    assert train.median() < 15 < test.median()  # exponential (scale 20) vs uniform on [0, 90)
    assert (test > 60).double().mean().item() == pytest.approx(1 / 3, abs=0.04)
    groups = task.shot_groups(test)
    assert (groups[test > 60] == 2).all() and (groups[test < 5] == 0).all()  # tail bins few-shot, head many-shot


def test_bags_train_and_metrics_are_computed_per_patient(tmp_path):
    recipe = reg_recipe(data={"options": {"bag_size": 5, "bin_width": 20.0}},
                        methods=[{"name": "aggregate_loss", "rho": 0.5}])
    result = fit(recipe, out_dir=tmp_path / "bags")
    task = RegressionTask(parse_recipe(recipe))
    data = task.load_data()
    assert data.train.inputs.shape[1:] == (5, 10) and len(data.test) == 88
    x, y = data.test.gather(torch.arange(len(data.test)))
    with torch.no_grad():
        error = (result.model.eval()(x).double() - y.double()).abs()
    summary = result.summary
    assert summary["primary_metric"] == "test_mae" and summary["higher_is_better"] is False
    assert summary["final_test_mae"] == pytest.approx(error.mean().item(), rel=1e-5)
    assert summary["final_test_mse"] == pytest.approx(error.square().mean().item(), rel=1e-5)
    few = task.shot_groups(y) == 2
    assert summary["final_test_mae_few"] == pytest.approx(error[few].mean().item(), rel=1e-5)


def test_conr_trains_inside_the_trainer():
    recipe = reg_recipe(data={"name": "rotation", "train_subset": 256, "test_subset": 100},
                        model={"name": "resnet", "options": {"widths": [8], "depths": [1]}},
                        train={"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "threads": 1},
                        methods=[{"name": "conr", "window": 2.0, "reweight": "sqrt_inv"}])
    result = fit(recipe)
    assert math.isfinite(result.summary["final_test_mae"])


@pytest.mark.parametrize("change, match", [
    ({"data": {"options": {"bag_size": 0}}}, r"data.options.bag_size must be >= 1 \(a bag needs members\)"),
    ({"data": {"name": "rotation", "options": {"bag_size": 4}}}, "data.options.bag_size: bags are built for"),
    ({"data": {"options": {"tail_scale": -1.0}}}, "data.options.tail_scale must be > 0"),
    ({"data": {"options": {"shots": 3}}}, "data.options.shots: unknown option"),
])
def test_bad_recipes_name_the_key(change, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(reg_recipe(**change))


def test_a_nan_target_is_refused_naming_the_key():
    inputs, targets = torch.randn(20, 3), torch.randn(20)
    targets[7] = float("nan")
    with pytest.raises(DataError, match=r"data\['train'\] targets: regression target nan at row 7"):
        fit(reg_recipe(), data={"train": (inputs, targets)})
