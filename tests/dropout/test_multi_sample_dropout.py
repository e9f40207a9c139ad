import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.dropout import (
    MultiSampleDropout,
    MultiSampleDropoutMethod,
    apply_multi_sample_dropout,
    multi_sample_dropout,
    multi_sample_dropout_masks,
)
from regimen.losses import classification_loss, multi_sample_cross_entropy
from regimen.method import Context, Method, compose_criterion, compose_forward_loss, get_method
from regimen.models import ClassifierHead, resnet
from regimen.tasks.classification import classification_criterion


def make_context(model, seed=0):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Context(
        model=model, optimizer=optimizer, criterion=classification_loss, num_classes=10, per_device_batch=8,
        generator=torch.Generator().manual_seed(seed),
    )


def small_resnet():
    return resnet(widths=[4, 8], depths=[1, 1])


def training_step(methods, ctx, label_smoothing=0.0):
    """The trainer's chains for ``methods``: ctx.criterion over the task's cross-entropy, and the forward+loss."""
    ctx.criterion = compose_criterion(methods, classification_criterion(label_smoothing), ctx)
    return compose_forward_loss(methods, ctx)


class PerRowPenalty(Method):
    """A criterion link listed after multi-sample dropout: adds coef · logsumexp(z)² per row of what it receives
    (what logit z-loss does) and records the shapes it saw."""

    name = "_test_per_row_penalty"

    def __init__(self, coef):
        self.coef, self.shapes = coef, []

    def criterion(self, output, target, next, ctx, reduction="mean"):
        self.shapes.append(tuple(output.shape))
        penalty = self.coef * torch.logsumexp(output, dim=1) ** 2
        losses = next(output, target, reduction="none") + penalty
        return losses if reduction == "none" else losses.mean()


def test_vectorised_logits_equal_k_separate_head_calls_with_the_same_masks():
    head = ClassifierHead(6, 5, pool=True)
    msd = MultiSampleDropout(head, num_samples=4, p=0.3, generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, 6, 3, 3)
    masks = msd.sample_masks(head.features(x))
    out = msd(x, masks=masks)
    assert out.shape == (4, 7, 5)
    h = head.features(x)
    reference = torch.stack([head.fc(h * masks[k]) for k in range(4)])  # explicit loop of K head calls
    torch.testing.assert_close(out, reference)


def test_masks_are_inverted_bernoulli_with_one_probability_per_sample():
    g = torch.Generator().manual_seed(0)
    masks = multi_sample_dropout_masks(3, (400, 50), [0.0, 0.5, 0.8], generator=g)
    assert masks.shape == (3, 400, 50)
    assert torch.equal(masks[0], torch.ones(400, 50))
    assert set(masks[1].unique().tolist()) == {0.0, 2.0}
    torch.testing.assert_close(masks[2].unique(), torch.tensor([0.0, 5.0]))
    assert abs((masks[1] == 0).float().mean().item() - 0.5) < 0.02
    assert abs((masks[2] == 0).float().mean().item() - 0.8) < 0.02
    assert abs(masks.mean(dim=(1, 2)) - 1).max() < 0.05  # expectation preserved per sample
    assert not torch.equal(masks[1][:, :1].expand(-1, 50), masks[1])  # independent per unit


def test_loss_and_all_gradients_equal_mean_of_k_separate_losses():
    torch.manual_seed(3)
    model = small_resnet()
    reference_model = copy.deepcopy(model)
    x, y = torch.randn(6, 1, 12, 12), torch.randint(0, 10, (6,))
    apply_multi_sample_dropout(model, 5, 0.4, generator=torch.Generator().manual_seed(7))
    loss = multi_sample_cross_entropy(model(x), y)
    loss.backward()

    # explicit loop reference: backbone once, K separate dropout + head + CE, mean of the K losses
    g = torch.Generator().manual_seed(7)
    h = reference_model.stages[-1].features(reference_model.forward_features(x))
    masks = multi_sample_dropout_masks(5, h.shape, 0.4, like=h, generator=g)
    losses = [F.cross_entropy(reference_model.stages[-1].fc(h * masks[k]), y) for k in range(5)]
    reference_loss = sum(losses) / 5
    reference_loss.backward()

    torch.testing.assert_close(loss, reference_loss)
    grads = dict(model.named_parameters())
    for name, param in reference_model.named_parameters():
        name = name.replace("stages.3.", "stages.3.head.")
        torch.testing.assert_close(grads[name].grad, param.grad, msg=name)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_method_loss_equals_multi_sample_cross_entropy_and_honours_soft_targets(label_smoothing):
    torch.manual_seed(0)
    model = small_resnet()
    ctx = make_context(model)
    method = get_method("multi_sample_dropout")(num_samples=3, p=0.5)
    assert isinstance(method, MultiSampleDropoutMethod)
    method.setup(ctx)
    step = training_step([method], ctx, label_smoothing)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    state = ctx.generator.get_state()
    loss, output = step(model, x, y)
    ctx.generator.set_state(state)
    logits_k = model(x)
    torch.testing.assert_close(loss, multi_sample_cross_entropy(logits_k, y, label_smoothing=label_smoothing))
    torch.testing.assert_close(output, logits_k.mean(0).detach())  # the output the training metrics see
    soft = F.one_hot(y, 10).float() * 0.7 + 0.03
    ctx.generator.set_state(state)
    soft_loss, _ = step(model, x, soft)
    smoothed = soft * (1 - label_smoothing) + label_smoothing / 10
    reference = sum(-(smoothed * F.log_softmax(logits_k[k], 1)).sum(1).mean() for k in range(3)) / 3
    torch.testing.assert_close(soft_loss, reference)
    torch.testing.assert_close(soft_loss, multi_sample_cross_entropy(logits_k, soft, label_smoothing=label_smoothing))


def test_criterion_per_sample_losses_are_the_mean_over_k_and_sum_is_their_sum():
    torch.manual_seed(1)
    method = MultiSampleDropoutMethod(num_samples=4, p=0.5)
    ctx = make_context(small_resnet())
    ctx.criterion = compose_criterion([method], classification_criterion(0.1), ctx)
    logits_k, y = torch.randn(4, 5, 10), torch.randint(0, 10, (5,))
    per_sample = ctx.criterion(logits_k, y, reduction="none")
    by_hand = torch.stack([F.cross_entropy(logits_k[k], y, label_smoothing=0.1, reduction="none") for k in range(4)])
    torch.testing.assert_close(per_sample, by_hand.mean(0))
    torch.testing.assert_close(ctx.criterion(logits_k, y, reduction="sum"), by_hand.mean(0).sum())
    torch.testing.assert_close(ctx.criterion(logits_k, y), multi_sample_cross_entropy(logits_k, y, 0.1))
    # (N, C) outputs (e.g. an eval-mode forward another method runs) pass through unchanged
    torch.testing.assert_close(ctx.criterion(logits_k[0], y), F.cross_entropy(logits_k[0], y, label_smoothing=0.1))


def test_criterion_with_average_logits_scores_the_mean_logits():
    """``average = "logits"``: a (K, N, C) output given to the criterion (another method scoring the training-mode
    model) is the loss of the mean logits over the K samples, not of one sample."""
    torch.manual_seed(1)
    method = MultiSampleDropoutMethod(num_samples=4, p=0.5, average="logits")
    ctx = make_context(small_resnet())
    ctx.criterion = compose_criterion([method], classification_criterion(0.1), ctx)
    logits_k, y = torch.randn(4, 5, 10), torch.randint(0, 10, (5,))
    mean_logits = logits_k.mean(0)
    torch.testing.assert_close(ctx.criterion(logits_k, y, reduction="none"),
                               F.cross_entropy(mean_logits, y, label_smoothing=0.1, reduction="none"))
    torch.testing.assert_close(ctx.criterion(logits_k, y), F.cross_entropy(mean_logits, y, label_smoothing=0.1))


def test_loss_links_listed_after_it_apply_per_dropout_sample():
    torch.manual_seed(2)
    model = small_resnet()
    ctx = make_context(model)
    method, penalty = MultiSampleDropoutMethod(num_samples=3, p=0.5), PerRowPenalty(0.01)
    method.setup(ctx)
    step = training_step([method, penalty], ctx)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    state = ctx.generator.get_state()
    loss, _ = step(model, x, y)
    assert penalty.shapes == [(12, 10)]  # K·N rows
    ctx.generator.set_state(state)
    logits_k = model(x)
    by_hand = sum(F.cross_entropy(logits_k[k], y) + 0.01 * (torch.logsumexp(logits_k[k], 1) ** 2).mean()
                  for k in range(3)) / 3
    torch.testing.assert_close(loss, by_hand)


def test_loss_links_see_every_dropout_sample_whatever_the_recipe_order():
    torch.manual_seed(3)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    for order in ("penalty first", "a v1 criterion replaced in setup"):
        model = small_resnet()
        ctx = make_context(model)
        method, penalty = MultiSampleDropoutMethod(num_samples=3, p=0.5), PerRowPenalty(0.01)
        method.setup(ctx)
        if order == "penalty first":
            step = training_step([penalty, method], ctx)
        else:  # v1 loss methods replaced ctx.criterion wholesale in setup, outside the chain
            step = training_step([method], ctx)
            ctx.criterion = functools.partial(penalty.criterion, next=classification_criterion(0.0), ctx=ctx)
        state = ctx.generator.get_state()
        loss, output = step(model, x, y)
        assert penalty.shapes == [(12, 10)], order  # K·N rows, not (K, N, C)
        ctx.generator.set_state(state)
        logits_k = model(x)
        by_hand = sum(F.cross_entropy(logits_k[k], y) + 0.01 * (torch.logsumexp(logits_k[k], 1) ** 2).mean()
                      for k in range(3)) / 3
        torch.testing.assert_close(loss, by_hand)
        torch.testing.assert_close(output, logits_k.mean(0))


def test_average_logits_option_is_cross_entropy_of_the_mean_logits():
    model = small_resnet()
    ctx = make_context(model)
    method = MultiSampleDropoutMethod(num_samples=4, p=0.5, average="logits")
    method.setup(ctx)
    step = training_step([method], ctx)
    x, y = torch.randn(4, 1, 12, 12), torch.randint(0, 10, (4,))
    state = ctx.generator.get_state()
    loss, _ = step(model, x, y)
    ctx.generator.set_state(state)
    torch.testing.assert_close(loss, F.cross_entropy(model(x).mean(0), y))
    ctx.generator.set_state(state)
    torch.testing.assert_close(loss, multi_sample_cross_entropy(model(x), y, average="logits"))
    ctx.generator.set_state(state)
    assert not torch.allclose(loss, multi_sample_cross_entropy(model(x), y))


def test_the_layer_keeps_the_context_generator():
    model = small_resnet()
    ctx = make_context(model)
    MultiSampleDropoutMethod(2, 0.5).setup(ctx)
    assert model.stages[-1].generator is ctx.generator


def test_eval_is_one_deterministic_pass_equal_to_the_plain_head():
    model = small_resnet()
    plain = copy.deepcopy(model).eval()
    apply_multi_sample_dropout(model, 8, 0.5)
    model.eval()
    x = torch.randn(3, 1, 12, 12)
    out = model(x)
    assert out.shape == (3, 10)
    torch.testing.assert_close(out, plain(x))
    torch.testing.assert_close(model(x), out)


def test_linear_head_runs_one_matmul_not_a_loop(monkeypatch):
    calls = []
    original = F.linear

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "linear", counting)
    msd = MultiSampleDropout(nn.Linear(6, 3), num_samples=8, p=0.5)
    assert msd(torch.randn(5, 6)).shape == (8, 5, 3)
    assert calls == [torch.Size([40, 6])]


def test_generic_head_is_applied_once_to_the_stacked_dropped_batch():
    head = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    msd = MultiSampleDropout(head, num_samples=3, p=[0.1, 0.5, 0.7])
    x = torch.randn(5, 6)
    masks = multi_sample_dropout_masks(3, x.shape, [0.1, 0.5, 0.7], generator=torch.Generator().manual_seed(0))
    out = msd(x, masks=masks)
    torch.testing.assert_close(out, torch.stack([head(x * masks[k]) for k in range(3)]))
    msd.eval()
    torch.testing.assert_close(msd(x), head(x))


def test_state_dict_keys_unchanged_so_checkpoints_interchange_with_the_plain_model():
    model = small_resnet()
    keys = list(model.state_dict())
    apply_multi_sample_dropout(model, 4, 0.5)
    assert list(model.state_dict()) == keys
    fresh = small_resnet()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        fresh.stages[-1].fc.weight.add_(1.0)
    model.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(model.stages[-1].head.fc.weight, fresh.stages[-1].fc.weight)


def test_same_generator_seed_gives_same_logits():
    head = ClassifierHead(4, 3, pool=False)
    x = torch.randn(5, 4)
    a = MultiSampleDropout(head, 4, 0.5, generator=torch.Generator().manual_seed(5))(x)
    b = MultiSampleDropout(head, 4, 0.5, generator=torch.Generator().manual_seed(5))(x)
    torch.testing.assert_close(a, b)


def test_apply_to_a_named_module_and_optimizer_check():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 6))
    model.add_module("out", nn.Linear(6, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    apply_multi_sample_dropout(model, 2, 0.5, module="out", optimizer=optimizer)
    assert isinstance(model.out, MultiSampleDropout)
    assert model(torch.randn(3, 4)).shape == (2, 3, 3)
    other = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="optimizer"):
        apply_multi_sample_dropout(other, 2, 0.5, module="0", optimizer=torch.optim.SGD(model.parameters()))
    assert isinstance(other[0], nn.Linear)  # a failed surgery leaves the model untouched
    with pytest.raises(ValueError, match="module: 'missing'"):
        apply_multi_sample_dropout(model, 2, 0.5, module="missing")
    with pytest.raises(ValueError, match="already applied"):
        apply_multi_sample_dropout(model, 2, 0.5, module="out")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(p=1.0), ValueError, "p must be in"),
        (dict(p=-0.1), ValueError, "p must be in"),
        (dict(p=[0.5, 0.5]), ValueError, "num_samples=3"),
        (dict(p=[]), ValueError, "non-empty"),
        (dict(p="0.5"), TypeError, "p must be"),
        (dict(num_samples=0), ValueError, "num_samples must be >= 1"),
        (dict(num_samples=2.0), TypeError, "num_samples"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    params = dict(num_samples=3, p=0.5) | kwargs
    with pytest.raises(error, match=match):
        MultiSampleDropout(nn.Linear(2, 2), **params)


def test_bad_head_masks_and_features_raise():
    with pytest.raises(TypeError, match="head must be an nn.Module"):
        MultiSampleDropout(lambda x: x, 2, 0.5)
    msd = MultiSampleDropout(nn.Linear(4, 2), 2, 0.5)
    with pytest.raises(ValueError, match="masks must have shape"):
        msd(torch.randn(3, 4), masks=torch.ones(3, 3, 4))
    with pytest.raises(ValueError, match="masks must have shape"):
        MultiSampleDropout(nn.Sequential(nn.Linear(4, 2)), 2, 0.5)(torch.randn(3, 4), masks=torch.ones(2, 3, 5))
    with pytest.raises(ValueError, match="features must have 2"):
        multi_sample_dropout(torch.randn(3, 4, 1), torch.randn(2, 4))
    with pytest.raises(ValueError, match="weight must be"):
        multi_sample_dropout(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="average"):
        MultiSampleDropoutMethod(average="mean")  # type: ignore[arg-type]
