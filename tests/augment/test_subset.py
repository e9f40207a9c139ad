"""Data-efficient augmentation subsets: facility-location greedy against a Python loop, per-class coresets,
weights, and the Method augmenting only the selected examples."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.augment import facility_location, gradient_proxies, model_gradient_proxies, select_coreset
from regimen.augment.subset import AugSubsetMethod
from regimen.errors import ConfigurationError
from regimen.method import Context, compose_criterion, compose_forward_loss
from regimen.tasks.classification import classification_criterion


def _objective(points, chosen):
    d = torch.cdist(points.double(), points.double())
    sim = (d.max() - d).tolist()
    return sum(max(row[j] for j in chosen) for row in sim)


def test_exact_greedy_matches_a_python_loop_and_is_near_optimal():
    points = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    index, weights = facility_location(points, 3, epsilon=0.0)
    chosen: list[int] = []
    for _ in range(3):  # the greedy by hand
        gains = [(_objective(points, chosen + [j]) if j not in chosen else -1.0) for j in range(12)]
        chosen.append(max(range(12), key=lambda j: gains[j]))
    assert index.tolist() == chosen
    best = max(_objective(points, list(c)) for c in itertools.combinations(range(12), 3))
    assert _objective(points, chosen) >= (1 - 1 / 2.718281828) * best
    # weights: how many points are closest (most similar) to each chosen point
    owner = torch.cdist(points, points[index]).argmin(dim=1)
    assert weights.tolist() == torch.bincount(owner, minlength=3).float().tolist()
    assert weights.sum() == 12


def test_coreset_is_per_class_with_the_requested_fraction():
    g = torch.Generator().manual_seed(1)
    labels = torch.tensor([0] * 20 + [1] * 10 + [2] * 3)
    proxies = torch.randn(33, 4, generator=g)
    index, gamma = select_coreset(proxies, labels, 0.3, generator=g)
    assert torch.equal(index, index.sort().values) and index.unique().numel() == index.numel()
    assert torch.bincount(labels[index]).tolist() == [6, 3, 1]
    for cls, size in ((0, 20), (1, 10), (2, 3)):
        assert gamma[labels[index] == cls].sum() == size


def test_gradient_proxies_are_logit_gradients():
    logits = torch.randn(5, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    (F.cross_entropy(logits, labels, reduction="sum")).backward()
    assert torch.allclose(gradient_proxies(logits.detach(), labels), logits.grad, atol=1e-6)
    feats = torch.randn(5, 3)
    assert gradient_proxies(logits.detach(), labels, feats).shape == (5, 12)


class _Data:
    def __init__(self, n=40):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
        self.labels = torch.arange(n) % 4


def _ctx(model, data, label_smoothing=0.0):
    return Context(model=model, optimizer=None,
                   criterion=lambda logits, y: F.cross_entropy(logits, y), num_classes=4, per_device_batch=8,
                   generator=torch.Generator().manual_seed(0), train_data=data, label_smoothing=label_smoothing)


def _training_step(method, ctx, label_smoothing=0.0):
    ctx.criterion = compose_criterion([method], classification_criterion(label_smoothing), ctx)
    return compose_forward_loss([method], ctx)


def test_method_augments_only_the_subset_and_weights_its_loss():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    data = _Data()
    ctx = _ctx(model, data)
    method = AugSubsetMethod(fraction=0.3)
    method.setup(ctx)
    step = _training_step(method, ctx)
    method.on_epoch_start(ctx)
    assert method.in_subset.sum() == 12  # 3 of 10 per class
    ctx.batch_indices = torch.arange(16)
    x = data.images[:16].float() / 255
    y = data.labels[:16]
    out, _ = method.transform_batch(x, y, ctx)
    chosen = method.in_subset[:16]
    assert torch.equal(out[~chosen], x[~chosen])  # the rest is used un-augmented
    assert not torch.equal(out[chosen], x[chosen])
    loss, logits = step(model, out, y)
    by_hand = sum(method.weight[i] * F.cross_entropy(logits[i : i + 1], y[i : i + 1]) for i in range(16)) / 16
    assert torch.allclose(loss, by_hand, atol=1e-6)
    assert torch.allclose(method.weight[method.in_subset].mean(), torch.tensor(1.0))
    # outside the training step (another method scoring batches) the criterion is the plain loss
    torch.testing.assert_close(ctx.criterion(logits, y), F.cross_entropy(logits, y))
    weighted = ctx.criterion  # per-sample weights inside the step, for reduction="none" too
    method._in_step = True
    torch.testing.assert_close(weighted(logits, y, reduction="none"),
                               method.weight[:16] * F.cross_entropy(logits, y, reduction="none"))
    method._in_step = False
    method.on_epoch_end(ctx)
    assert ctx.log["aug_subset/augmented_fraction"] == pytest.approx(chosen.float().mean().item())
    assert ctx.log["aug_subset/work_saved"] == pytest.approx(1 - chosen.float().mean().item())
    assert "aug_subset/selection_time" in ctx.log
    state = method.state_dict()
    other = AugSubsetMethod(fraction=0.3)
    other.load_state_dict(state)
    assert torch.equal(other.in_subset, method.in_subset)


def test_weighted_loss_applies_the_trainers_label_smoothing_once():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    data = _Data()
    ctx = _ctx(model, data, label_smoothing=0.1)
    method = AugSubsetMethod(fraction=0.3)
    method.setup(ctx)
    step = _training_step(method, ctx, label_smoothing=0.1)
    method.on_epoch_start(ctx)
    ctx.batch_indices = torch.arange(16)
    x, y = data.images[:16].float() / 255, data.labels[:16]
    x, y = method.transform_batch(x, y, ctx)
    loss, logits = step(model, x, y)
    per_sample = F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(loss, (method.weight[:16] * per_sample).mean())


def test_setup_refuses_data_without_images():
    ctx = _ctx(nn.Linear(2, 2), object())
    with pytest.raises(ConfigurationError, match="aug_subset needs an image training set"):
        AugSubsetMethod().setup(ctx)


def test_proxies_restore_training_mode_and_match_direct_computation():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    model.train()
    data = _Data(10)
    proxies = model_gradient_proxies(model, data.images, data.labels, batch_size=3)
    assert model.training
    expected = gradient_proxies(model(data.images.float() / 255), data.labels)
    assert torch.allclose(proxies, expected, atol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="fraction"):
        AugSubsetMethod(fraction=0.0)
    with pytest.raises(ValueError, match="augment"):
        AugSubsetMethod(augment="cutout")
    with pytest.raises(ValueError, match="k must be"):
        facility_location(torch.randn(3, 2), 4)
