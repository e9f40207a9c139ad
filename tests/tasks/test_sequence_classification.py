"""The sequence_classification task and its dropout methods: ECE equals an explicit-loop reference, images are read
row by row, temporal / concrete temporal dropout fill the model's slot (masks as the formula says, the learned rate in
the optimizer, the regulariser added), MC inference evaluates the mean of the passes' softmax, and bad input is
refused naming the key."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.dropout import (
    ConcreteTemporalDropout,
    ConcreteTemporalDropoutMethod,
    MCDropoutClassifier,
    TemporalDropout,
    apply_temporal_dropout,
    mc_predict,
    time_dropout_slots,
)
from regimen.errors import ConfigurationError
from regimen.method import Context, compose_criterion
from regimen.models import SequenceRNN
from regimen.tasks import SequenceClassificationTask, expected_calibration_error
from regimen.tasks.sequence_classification import calibration_bins
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe


def seq_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-seq", "task": "sequence_classification", "seed": 0,
        "data": {"name": "digits", "val_fraction": 0.1, "options": {"mc_samples": 4, "ece_bins": 10}},
        "model": {"name": "rnn", "options": {"hidden": 16}},
        "optim": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 6, "eval_batch_size": 256, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def ece_by_loop(probs, labels, bins):
    """Guo et al. 2017 by hand: walk the bins (lo, hi], average accuracy and confidence of the samples in each."""
    total, n = 0.0, len(labels)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = []
        for i in range(n):
            confidence = max(probs[i].tolist())
            if (lo < confidence <= hi) or (b == 0 and confidence == 0.0):
                members.append(i)
        if not members:
            continue
        accuracy = sum(int(probs[i].argmax()) == int(labels[i]) for i in members) / len(members)
        confidence = sum(max(probs[i].tolist()) for i in members) / len(members)
        total += len(members) / n * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("bins", [1, 5, 15])
def test_ece_equals_an_explicit_loop_over_bins(bins):
    generator = torch.Generator().manual_seed(bins)
    probs = torch.softmax(3 * torch.randn(300, 7, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 7, (300,), generator=generator)
    assert expected_calibration_error(probs, labels, bins) == pytest.approx(ece_by_loop(probs, labels, bins), abs=1e-12)
    sums = calibration_bins(probs, labels, bins)
    assert sums[:, 0].sum().item() == 300


def test_ece_of_a_perfectly_calibrated_one_hot_predictor_is_zero():
    labels = torch.tensor([0, 1, 2, 1])
    assert expected_calibration_error(F.one_hot(labels, 3).double(), labels) == 0.0


def test_images_are_read_row_by_row_and_standardised():
    task = SequenceClassificationTask(parse_recipe(seq_recipe()))
    data = task.load_data()
    x, y = data.train.gather(torch.arange(3))
    images, _ = data.train.images.gather(torch.arange(3))
    assert x.shape == (3, 8, 8) and torch.equal(x, images[:, 0])  # step t = image row t
    normalize = task.normalizer(data, torch.device("cpu"))
    assert torch.allclose(normalize(x), (x - data.mean) / data.std)


def test_temporal_dropout_surgery_fills_the_slot_and_drops_whole_steps():
    model = SequenceRNN(in_features=5, num_classes=3, hidden=8)
    assert time_dropout_slots(model) == ["stages.0"]
    names = apply_temporal_dropout(model, 0.5, generator=torch.Generator().manual_seed(0))
    layer = model.get_submodule(names[0])
    assert names == ["stages.0.time_dropout"] and isinstance(layer, TemporalDropout)
    x = torch.rand(64, 10, 5) + 0.1
    y = layer.train()(x)
    dropped = (y == 0).all(dim=2)
    kept = ~dropped
    assert torch.allclose(y[kept], 2 * x[kept])  # kept steps scaled by 1 / (1 - p)
    assert 0.35 < dropped.float().mean().item() < 0.65
    assert set(model.state_dict()) == set(SequenceRNN(5, 3, 8).state_dict())
    with pytest.raises(ValueError, match="already holds TemporalDropout"):
        apply_temporal_dropout(model, 0.1)
    with pytest.raises(ValueError, match="no time-dropout slot"):
        apply_temporal_dropout(torch.nn.Linear(3, 3), 0.1)


def test_concrete_temporal_dropout_learns_its_rate_and_adds_the_regulariser():
    recipe = seq_recipe(methods=[{"name": "concrete_temporal_dropout", "init_p": 0.2, "dropout_regularizer": 1e-3}])
    result = fit(recipe)
    layer = result.model.get_submodule("stages.0.time_dropout")
    assert isinstance(layer, ConcreteTemporalDropout)
    p = result.history[-1]["concrete_temporal_dropout/p"]
    assert p != pytest.approx(0.2, abs=1e-6) and 0 < p < 1  # the rate trained
    # the criterion link adds R = wr ||W||^2 / (1 - p) + dr T (p log p + (1 - p) log (1 - p)), by hand
    method = ConcreteTemporalDropoutMethod(init_p=0.3, weight_regularizer=1e-2, dropout_regularizer=1e-3)
    model = SequenceRNN(in_features=4, num_classes=3, hidden=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = Context(model, optimizer, generator=torch.Generator().manual_seed(0), num_classes=3)
    method.setup(ctx)
    assert any(model.stages[0].time_dropout.p_logit is q for q in optimizer.param_groups[-1]["params"])
    assert optimizer.param_groups[-1]["weight_decay"] == 0.0
    logits = model(torch.rand(5, 7, 4))
    target = torch.randint(0, 3, (5,))
    criterion = compose_criterion([method], F.cross_entropy, ctx)
    p = 0.3
    square = sum(q.pow(2).sum() for q in model.stages[0].proj.parameters()).item()
    expected = F.cross_entropy(logits, target).item() + 1e-2 * square / (1 - p) \
        + 1e-3 * 7 * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert criterion(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_mc_classifier_is_the_log_mean_softmax_of_the_passes_by_hand():
    torch.manual_seed(0)
    model = SequenceRNN(in_features=4, num_classes=3, hidden=6, head_dropout=0.5).eval()
    x = torch.rand(5, 7, 4)
    wrapper = MCDropoutClassifier(model, samples=6, seed=3)
    out = wrapper(x)
    mean, variance = mc_predict(model, x, 6, generator=torch.Generator().manual_seed(3),
                                transform=lambda z: z.softmax(-1))
    assert torch.allclose(out, mean.log(), atol=1e-6)
    assert torch.allclose(wrapper.last_variance, variance)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(5))
    wrapper.reset()
    assert torch.equal(wrapper(x), out)  # re-seeded: the same passes again
    assert not model.training and not model.stages[-1].dropout.training  # modes restored


def test_task_metrics_and_mc_inference_end_to_end(tmp_path):
    base = fit(seq_recipe(), out_dir=tmp_path / "base").summary
    assert base["primary_metric"] == "test_acc" and base["higher_is_better"] is True
    assert base["final_test_mc_variance"] == 0.0 and 0.0 <= base["final_test_ece"] <= 1.0
    assert base["final_test_acc"] > 0.3
    methods = [{"name": "temporal_dropout", "p": 0.2}, {"name": "mc_inference", "samples": 4}]
    result = fit(seq_recipe(methods=methods))
    summary = result.summary
    assert summary["final_test_mc_variance"] > 0.0
    # by hand: the MC predictive distribution of the trained model on the test split
    task = SequenceClassificationTask(parse_recipe(seq_recipe(methods=methods)))
    data = task.load_data()
    x, y = data.test.gather(torch.arange(len(data.test)))
    x = task.normalizer(data, torch.device("cpu"))(x)
    wrapper = MCDropoutClassifier(result.model, 4, seed=0 * 1_000_003 + 1)  # seed, last epoch index
    with torch.no_grad():  # batch by batch, as the evaluation (eval_batch_size 256) draws the passes
        outputs = [(wrapper(part), wrapper.last_variance) for part in x.split(256)]
    log_probs = torch.cat([o for o, _ in outputs])
    variance = torch.cat([v for _, v in outputs])
    assert summary["final_test_acc"] == pytest.approx((log_probs.argmax(1) == y).double().mean().item())
    assert summary["final_test_loss"] == pytest.approx(F.nll_loss(log_probs, y).item(), rel=1e-5)
    assert summary["final_test_ece"] == pytest.approx(expected_calibration_error(log_probs.exp(), y, 10), abs=1e-6)
    assert summary["final_test_mc_variance"] == pytest.approx(variance.sum(1).mean().item(), rel=1e-5)


def test_mc_inference_without_dropout_and_bad_options_are_refused_naming_the_key():
    with pytest.raises(ConfigurationError, match="method 'mc_inference': the model has no dropout layer"):
        fit(seq_recipe(methods=[{"name": "mc_inference"}]))
    with pytest.raises(RecipeError, match="'temporal_dropout' must be listed before 'mc_inference'"):
        parse_recipe(seq_recipe(methods=[{"name": "mc_inference"}, {"name": "temporal_dropout"}]))
    with pytest.raises(RecipeError, match="cannot share a recipe"):
        parse_recipe(seq_recipe(methods=[{"name": "temporal_dropout"}, {"name": "concrete_temporal_dropout"}]))
    with pytest.raises(RecipeError, match="data.options.mc_samples: expected an int >= 1, got 0"):
        parse_recipe(seq_recipe(data={"options": {"mc_samples": 0}}))
    with pytest.raises(RecipeError, match="data.options.bins: unknown option of task 'sequence_classification'"):
        parse_recipe(seq_recipe(data={"options": {"bins": 3}}))
    with pytest.raises(RecipeError, match="methods.0 \\(temporal_dropout\\): p must be in \\[0, 1\\), got 1.5"):
        parse_recipe(seq_recipe(methods=[{"name": "temporal_dropout", "p": 1.5}]))
    with pytest.raises(RecipeError, match="method 'temporal_dropout' serves sequence inputs"):
        parse_recipe({"name": "x", "data": {"name": "digits"}, "methods": [{"name": "temporal_dropout"}]})
    with pytest.raises(RecipeError, match="data.name: task 'sequence_classification' reads"):
        parse_recipe(seq_recipe(data={"name": "npz"}))


def test_a_users_sequences_train():
    generator = torch.Generator().manual_seed(0)
    sequences = torch.randn(200, 6, 3, generator=generator)
    labels = (sequences[:, :, 0].sum(1) > 0).long()
    result = fit(seq_recipe(train={"epochs": 1}), data=(sequences, labels))
    assert math.isfinite(result.summary["final_val_acc"])
    with pytest.raises(Exception, match=r"sequences must be a floating-point tensor \(N, T, F\)"):
        fit(seq_recipe(), data=(torch.randn(20, 3), labels[:20]))
