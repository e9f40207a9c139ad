"""Z-loss against the paper's formula by hand; logit z-loss against its definition; their trainer Methods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.losses import LogitZLoss, ZLoss, logit_z_loss, z_loss
from regimen.losses.zloss import LogitZLossMethod, ZLossMethod
from regimen.method import (
    Context,
    MethodConflictError,
    check_method_order,
    compose_criterion,
    compose_forward_loss,
    get_method,
)


def _z_loss_by_hand(row: list[float], y: int, a: float, b: float) -> float:
    """de Brébisson & Vincent 2016, eq. for L_Z, written with scalars: population mean / std over the C outputs."""
    c = len(row)
    mu = sum(row) / c
    sigma = math.sqrt(sum(o * o for o in row) / c - mu * mu)
    z_y = (row[y] - mu) / sigma
    return (1.0 / a) * math.log(1.0 + math.exp(a * (b - z_y)))


@pytest.mark.parametrize(("a", "b"), [(0.1, 10.0), (1.0, 0.0), (3.0, 1.5)])
def test_z_loss_matches_paper_formula_written_by_hand(a, b):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 5, (7,), generator=g)
    per_row = z_loss(logits, target, a=a, b=b, reduction="none", eps=0.0)
    by_hand = [_z_loss_by_hand(logits[i].tolist(), int(target[i]), a, b) for i in range(7)]
    assert per_row.tolist() == pytest.approx(by_hand, rel=1e-6, abs=1e-7)
    assert float(z_loss(logits, target, a=a, b=b, eps=0.0)) == pytest.approx(sum(by_hand) / 7, rel=1e-6)
    assert float(z_loss(logits, target, a=a, b=b, reduction="sum", eps=0.0)) == pytest.approx(sum(by_hand), rel=1e-6)


def test_z_loss_is_shift_and_scale_invariant_unlike_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=g)
    target = torch.randint(0, 10, (6,), generator=g)
    moved = logits * 4.0 + 3.0
    torch.testing.assert_close(z_loss(moved, target, eps=0.0), z_loss(logits, target, eps=0.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(F.cross_entropy(moved, target), F.cross_entropy(logits, target))


def test_z_loss_ignore_index_and_equal_logits_stay_finite():
    logits = torch.zeros(3, 4, requires_grad=True)  # sigma = 0: eps keeps it finite
    target = torch.tensor([1, -100, 2])
    loss = z_loss(logits, target, a=1.0, b=0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert float(loss.detach()) == pytest.approx(math.log(2.0))  # softplus(0) for the two kept rows
    per_row = z_loss(logits.detach(), target, reduction="none")
    assert per_row[1] == 0


def test_logit_z_loss_is_z_loss_coef_times_squared_log_partition_masked_like_ce():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 6, generator=g) * 2
    target = torch.tensor([0, -100, 3, 5, -100])
    coef = 1e-2
    by_hand = [coef * math.log(sum(math.exp(v) for v in logits[i].tolist())) ** 2 for i in (0, 2, 3)]
    got = logit_z_loss(logits, target, z_loss_coef=coef)
    assert float(got) == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    unmasked = [coef * math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()]
    assert float(logit_z_loss(logits, z_loss_coef=coef)) == pytest.approx(sum(unmasked) / 5, rel=1e-5)
    assert float(LogitZLoss(coef)(logits, target)) == pytest.approx(float(got))


def test_old_keyword_coef_still_works_with_a_deprecation_warning():
    logits, target = torch.randn(4, 5), torch.tensor([0, 1, -100, 3])
    expected = logit_z_loss(logits, target, z_loss_coef=0.3)
    with pytest.warns(DeprecationWarning, match="z_loss_coef"):
        torch.testing.assert_close(logit_z_loss(logits, coef=0.3, target=target), expected)
    with pytest.warns(DeprecationWarning, match="z_loss_coef"):
        assert LogitZLoss(coef=0.3).z_loss_coef == 0.3
    with pytest.warns(DeprecationWarning, match="z_loss_coef"):
        assert LogitZLossMethod(coef=0.3).z_loss_coef == 0.3
    with pytest.raises(TypeError, match="both"):
        logit_z_loss(logits, coef=0.3, z_loss_coef=0.3)


def test_logit_z_loss_is_computed_in_fp32_for_half_logits():
    logits = (torch.randn(4, 8) * 20).to(torch.bfloat16)
    got = logit_z_loss(logits, z_loss_coef=1.0)
    assert got.dtype == torch.float32
    ref = torch.logsumexp(logits.float(), dim=-1).square().mean()
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: z_loss(torch.tensor([[0.0, float("nan")]]), torch.tensor([0])), ValueError, "NaN"),
        (lambda: z_loss(torch.randn(2, 3), torch.tensor([0, 3])), ValueError, r"\[0, 3\)"),
        (lambda: z_loss(torch.randn(2, 3), torch.tensor([0, 1, 2])), ValueError, "target shape"),
        (lambda: z_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0])), TypeError, "integer"),
        (lambda: z_loss(torch.randn(2, 1), torch.tensor([0, 0])), ValueError, "at least 2 classes"),
        (lambda: z_loss(torch.randn(2, 3), torch.tensor([0, 1]), a=0.0), ValueError, "a must be > 0"),
        (lambda: logit_z_loss(torch.tensor([[float("inf"), 0.0]])), ValueError, "NaN or inf"),
        (lambda: logit_z_loss(torch.randn(2, 3), z_loss_coef=-1.0), ValueError, "z_loss_coef"),
        (lambda: logit_z_loss(torch.randn(2, 3), 1e-4), TypeError, "z_loss_coef"),  # the old positional order
        (lambda: logit_z_loss(torch.randn(2, 3), target=torch.tensor([5, 0])), ValueError, "target values"),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _ctx(model: nn.Module, *methods) -> Context:
    """A context whose criterion is the chain of ``methods`` around cross-entropy, as the trainer composes it."""
    ctx = Context(model, torch.optim.SGD(model.parameters(), lr=0.1), num_classes=4, per_device_batch=6)
    ctx.criterion = compose_criterion(list(methods), F.cross_entropy, ctx)
    return ctx


def _linear_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A seeded 3 -> 4 linear model and a batch of 6."""
    torch.manual_seed(0)
    return nn.Linear(3, 4), torch.randn(6, 3), torch.randint(0, 4, (6,))


def _lse_squared(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, 1).square()


def test_methods_are_registered_under_their_recipe_names_and_serve_class_labels():
    assert get_method("z_loss") is ZLossMethod
    assert get_method("logit_z_loss") is LogitZLossMethod
    assert ZLossMethod.targets == ("labels",)
    assert LogitZLossMethod.targets == ("labels", "tokens")  # class labels and next-token targets


def test_z_loss_method_replaces_cross_entropy_and_rejects_soft_targets():
    model, x, y = _linear_case()
    ctx = _ctx(model, ZLossMethod(a=0.5, b=2.0))
    torch.testing.assert_close(ctx.criterion(model(x), y), ZLoss(0.5, 2.0)(model(x), y))
    torch.testing.assert_close(ctx.criterion(model(x), y, reduction="none"),
                               z_loss(model(x), y, a=0.5, b=2.0, reduction="none"))
    with pytest.raises(ValueError, match="index targets"):
        ctx.criterion(model(x), F.one_hot(y, 4).float())


def test_logit_z_loss_method_adds_the_regulariser_to_the_next_link_per_sample_and_masked():
    model, x, y = _linear_case()
    ctx = _ctx(model, LogitZLossMethod(z_loss_coef=0.1))
    logits = model(x)
    loss = ctx.criterion(logits, y)
    torch.testing.assert_close(loss, F.cross_entropy(logits, y) + 0.1 * _lse_squared(logits).mean())
    assert ctx.log["logit_z_loss/value"] == pytest.approx(float(0.1 * _lse_squared(logits).mean()))
    per_sample = ctx.criterion(logits, y, reduction="none")
    torch.testing.assert_close(per_sample, F.cross_entropy(logits, y, reduction="none") + 0.1 * _lse_squared(logits))
    ignored = y.clone()
    ignored[[1, 4]] = -100  # masked in the cross-entropy and in the regulariser alike
    kept = torch.tensor([0, 2, 3, 5])
    expected = F.cross_entropy(logits[kept], y[kept]) + 0.1 * _lse_squared(logits[kept]).mean()
    torch.testing.assert_close(ctx.criterion(logits, ignored), expected)
    soft = F.one_hot(y, 4).float()  # soft targets: the regulariser on every row
    torch.testing.assert_close(ctx.criterion(logits, soft),
                               F.cross_entropy(logits, soft) + 0.1 * _lse_squared(logits).mean())
    loss.backward()
    assert model.weight.grad is not None


def test_z_loss_is_the_innermost_link_listed_after_logit_z_loss():
    model, x, y = _linear_case()
    ctx = _ctx(model, LogitZLossMethod(z_loss_coef=0.1), ZLossMethod(a=0.5, b=2.0))  # z-loss plus the regulariser
    expected = ZLoss(0.5, 2.0)(model(x), y) + 0.1 * _lse_squared(model(x)).mean()
    torch.testing.assert_close(ctx.criterion(model(x), y), expected)
    check_method_order([LogitZLossMethod(), ZLossMethod()])
    with pytest.raises(MethodConflictError, match="'logit_z_loss' must be listed before 'z_loss'"):
        check_method_order([ZLossMethod(), LogitZLossMethod()])


def test_multi_sample_dropout_calls_the_wrapped_criterion_on_every_samples_logits():
    """Against the formula: mean over K samples of (cross-entropy + z_loss_coef * lse^2), from the K logit sets."""
    from regimen.dropout.multisample import MultiSampleDropoutMethod
    from regimen.models import MLP

    torch.manual_seed(0)
    model = MLP(16, 4, hidden=[8])
    x, y = torch.randn(6, 16), torch.randint(0, 4, (6,))
    ctx = _ctx(model, LogitZLossMethod(z_loss_coef=0.1))
    msd = MultiSampleDropoutMethod(num_samples=3, p=0.3)
    msd.setup(ctx)
    ctx.model.train()
    state = ctx.generator.get_state()
    loss, _ = compose_forward_loss([msd], ctx)(ctx.model, x, y)
    ctx.generator.set_state(state)
    logits_k = ctx.model(x)  # the same K dropout samples again
    assert logits_k.shape[0] == 3
    flat = logits_k.reshape(-1, 4)
    expected = F.cross_entropy(flat, y.repeat(3)) + 0.1 * _lse_squared(flat).mean()
    torch.testing.assert_close(loss, expected)


def test_loss_methods_compose_with_multi_sample_dropout_in_a_recipe(tiny_recipe):
    """Multi-sample dropout calls the criterion chain on all K samples' logits; the regulariser is logged."""
    from regimen.train import fit

    recipe = dict(tiny_recipe, methods=[{"name": "logit_z_loss", "z_loss_coef": 1e-3},
                                        {"name": "multi_sample_dropout", "num_samples": 3, "p": 0.2}])
    result = fit(recipe)
    assert all(h["logit_z_loss/value"] > 0 for h in result.history)


def test_a_recipe_refuses_z_loss_before_logit_z_loss_and_trains_the_other_order(tiny_recipe):
    from regimen.train import RecipeError, fit

    with pytest.raises(RecipeError, match="'logit_z_loss' must be listed before 'z_loss'"):
        fit(dict(tiny_recipe, methods=[{"name": "z_loss"}, {"name": "logit_z_loss"}]))
    recipe = dict(tiny_recipe, methods=[{"name": "logit_z_loss"}, {"name": "z_loss", "a": 1.0, "b": 2.0}])
    recipe["train"] = dict(recipe["train"], epochs=1)
    assert fit(recipe).history[0]["logit_z_loss/value"] > 0


@pytest.mark.parametrize("loss", [{"name": "z_loss"}, {"name": "logit_z_loss", "z_loss_coef": 1e-3}])
def test_loss_methods_run_under_adaptive_batchs_per_sample_gradients(tiny_recipe, loss):
    """adaptive_batch takes per-sample gradients of ctx.criterion with torch.func.vmap: the loss methods' criteria
    must not look at the data (no NaN/range checks, no .item() for logging) inside the transform."""
    from regimen.train import fit

    recipe = dict(tiny_recipe, methods=[loss, {"name": "adaptive_batch", "interval": 1, "max_samples": 8}])
    result = fit(recipe)
    assert all(h["train_loss"] == h["train_loss"] for h in result.history)  # finite, trained


def test_check_values_false_skips_only_the_data_dependent_checks():
    logits = torch.tensor([[float("nan"), 0.0]])
    assert torch.isnan(z_loss(logits, torch.tensor([0]), check_values=False))
    with pytest.raises(TypeError, match="integer"):
        z_loss(torch.randn(2, 3), torch.tensor([0.0, 1.0]), check_values=False)  # static checks stay


@pytest.mark.parametrize("mixing", ["cutmix", "mixup", "mix"])
def test_z_loss_refuses_every_mixing_method(mixing):
    """The Z-loss needs index targets; every mixing Method hands the criterion soft targets."""
    from regimen.method import MethodConflictError, check_method_order, get_method

    with pytest.raises(MethodConflictError, match=f"'z_loss' and '{mixing}' cannot share a recipe"):
        check_method_order([get_method(mixing)(), ZLossMethod()])
