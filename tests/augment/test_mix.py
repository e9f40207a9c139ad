"""CutMix / MixUp: pasted-area lambda, soft targets, pair form, label smoothing, masks, odd batches, errors."""

import pytest
import torch
import torch.nn.functional as F

from regimen.augment import cutmix, cutmix_boxes, mixup
from regimen.losses import mixed_cross_entropy, soft_target_cross_entropy


def _constant_images(n, h=16, w=20):
    """Image i is filled with the value i, so every pixel says which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("n", [1, 7, 8])
def test_cutmix_lambda_matches_pasted_area(n, per_sample):
    x = _constant_images(n)
    y = torch.arange(n) % 5
    out, ya, yb, lam = cutmix(x, y, alpha=1.0, generator=torch.Generator().manual_seed(n), return_pair=True,
                              per_sample=per_sample)
    for i in range(n):
        own = (out[i, 0] == i).float().mean()
        partner_value = out[i, 0][out[i, 0] != i].unique()
        assert partner_value.numel() <= 1  # one box from one partner
        if partner_value.numel() and int(partner_value) != i:
            assert torch.isclose(lam[i], own, atol=1e-6)
            assert yb[i] == y[int(partner_value)]
    if not per_sample:
        assert torch.all(lam == lam[0])


def test_cutmix_soft_targets_sum_to_one_and_equal_the_pair_form():
    x = torch.rand(9, 3, 12, 12)
    y = torch.randint(0, 4, (9,), generator=torch.Generator().manual_seed(0))
    out, soft = cutmix(x, y, num_classes=4, generator=torch.Generator().manual_seed(1))
    out2, ya, yb, lam = cutmix(x, y, num_classes=4, generator=torch.Generator().manual_seed(1), return_pair=True)
    assert torch.equal(out, out2)
    assert torch.allclose(soft.sum(1), torch.ones(9))
    by_hand = lam[:, None] * F.one_hot(ya, 4) + (1 - lam[:, None]) * F.one_hot(yb, 4)
    assert torch.allclose(soft, by_hand)
    logits = torch.randn(9, 4)
    assert torch.allclose(mixed_cross_entropy(logits, ya, yb, lam), soft_target_cross_entropy(logits, soft), atol=1e-6)


def test_mixup_images_and_targets_follow_the_formula():
    x = torch.rand(7, 1, 5, 5)
    y = torch.arange(7) % 3
    out, ya, yb, lam = mixup(x, y, alpha=0.4, generator=torch.Generator().manual_seed(2), return_pair=True)
    # recover the partner of each image from yb and the pixels: x_mix = lam x_i + (1 - lam) x_j
    for i in range(7):
        errors = [(out[i] - (lam[i] * x[i] + (1 - lam[i]) * x[j])).abs().max() for j in range(7)]
        j = int(torch.stack(errors).argmin())
        assert errors[j] < 1e-6 and yb[i] == y[j]
    _, soft = mixup(x, y, alpha=0.4, num_classes=3, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(soft.sum(1), torch.ones(7))
    assert torch.allclose(soft, lam[:, None] * F.one_hot(ya, 3) + (1 - lam[:, None]) * F.one_hot(yb, 3))


def test_label_smoothing_is_applied_to_both_sides():
    x = torch.rand(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    eps = 0.1
    _, soft = mixup(x, y, num_classes=3, label_smoothing=eps, generator=torch.Generator().manual_seed(0))
    _, ya, yb, lam = mixup(x, y, num_classes=3, generator=torch.Generator().manual_seed(0), return_pair=True)

    def smooth(t):
        return F.one_hot(t, 3) * (1 - eps) + eps / 3

    assert torch.allclose(soft, lam[:, None] * smooth(ya) + (1 - lam[:, None]) * smooth(yb))
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_masks_are_pasted_with_the_same_box():
    x = _constant_images(5)
    masks = torch.arange(5).view(5, 1, 1).expand(5, 16, 20).contiguous()
    out, _, masks_out = cutmix(x, torch.arange(5), num_classes=5, masks=masks,
                               generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[:, 0].long(), masks_out)
    soft_masks = torch.rand(5, 2, 16, 20)
    _, _, mixed = mixup(x, torch.arange(5), num_classes=5, masks=soft_masks, generator=torch.Generator().manual_seed(3))
    assert mixed.shape == soft_masks.shape


def test_box_is_clipped_and_lambda_corrected():
    lam = torch.full((200,), 0.3, dtype=torch.float64)
    boxes, corrected = cutmix_boxes(lam, 10, 10, torch.Generator().manual_seed(0))
    area = (boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])
    assert torch.allclose(corrected, 1 - area.double() / 100)
    assert (corrected >= 0.3 - 1e-9).all() and (corrected > 0.3).any()  # clipping only ever shrinks the box


def test_same_generator_same_result_inputs_untouched_uint8_kept():
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(5)
    before = x.clone()
    for fn in (cutmix, mixup):
        a = fn(x, y, num_classes=5, generator=torch.Generator().manual_seed(9))
        b = fn(x, y, num_classes=5, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].dtype == torch.uint8
    assert torch.equal(x, before)


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(ValueError, match="targets must have shape"):
        cutmix(x, torch.arange(3), num_classes=4)
    with pytest.raises(ValueError, match="num_classes"):
        mixup(x, torch.tensor([0, 1, 2, 4]), num_classes=4)
    with pytest.raises(ValueError, match="num_classes is required"):
        cutmix(x, torch.arange(4))
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, torch.arange(4), alpha=0.0, num_classes=4)
    with pytest.raises(ValueError, match="images must have shape"):
        cutmix(torch.rand(4, 8, 8), torch.arange(4), num_classes=4)
    with pytest.raises(TypeError, match="integer label maps"):
        mixup(x, torch.arange(4), num_classes=4, masks=torch.zeros(4, 8, 8, dtype=torch.long))


def test_trainer_smoothing_of_mixed_targets_equals_the_formula_by_hand():
    """The trainer's criterion smooths the *mixed* targets t: (1 - eps) t + eps / C. Because smoothing is affine in
    the target and lam + (1 - lam) = 1, that equals mixing the two smoothed one-hot targets, equals torch's
    cross-entropy with label smoothing on the one-hot mixture, and equals interpolating the two smoothed losses."""
    from regimen.losses import classification_loss

    x = torch.rand(9, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    logits = torch.randn(9, 4, generator=torch.Generator().manual_seed(5))
    eps, c = 0.1, 4
    for mix in (cutmix, mixup):
        _, t = mix(x, y, num_classes=c, generator=torch.Generator().manual_seed(1), per_sample=True)
        _, ya, yb, lam = mix(x, y, num_classes=c, generator=torch.Generator().manual_seed(1), per_sample=True,
                             return_pair=True)
        loss = classification_loss(logits, t, eps)  # what the trainer computes
        log_p = F.log_softmax(logits, dim=1)
        smoothed_a = (1 - eps) * F.one_hot(ya, c) + eps / c
        smoothed_b = (1 - eps) * F.one_hot(yb, c) + eps / c
        smoothed_then_mixed = lam[:, None] * smoothed_a + (1 - lam[:, None]) * smoothed_b
        mixed_then_smoothed = (1 - eps) * t + eps / c
        torch.testing.assert_close(smoothed_then_mixed, mixed_then_smoothed)
        torch.testing.assert_close(loss, -(smoothed_then_mixed * log_p).sum(1).mean())
        torch.testing.assert_close(loss, F.cross_entropy(logits, t, label_smoothing=eps))
        torch.testing.assert_close(loss, mixed_cross_entropy(logits, ya, yb, lam, label_smoothing=eps))


def test_mixed_cross_entropy_old_keywords_warn():
    logits = torch.randn(3, 2)
    a, b, lam = torch.tensor([0, 1, 0]), torch.tensor([1, 1, 0]), torch.tensor([0.2, 0.5, 1.0])
    with pytest.warns(DeprecationWarning, match="targets_a=...\\) is deprecated; use target_a="):
        old = mixed_cross_entropy(logits, targets_a=a, target_b=b, lam=lam)
    torch.testing.assert_close(old, mixed_cross_entropy(logits, target_a=a, target_b=b, lam=lam))


def test_mixed_cross_entropy_moved_to_losses_and_the_augment_name_is_a_deprecated_alias():
    import regimen.augment
    import regimen.augment.mix

    for module in (regimen.augment, regimen.augment.mix):
        with pytest.warns(DeprecationWarning, match=rf"{module.__name__}.mixed_cross_entropy is deprecated; use "
                                                    r"regimen.losses.mixed_cross_entropy"):
            assert module.mixed_cross_entropy is mixed_cross_entropy
    with pytest.raises(AttributeError, match="no attribute 'mixed_cross_entropi'"):
        regimen.augment.mixed_cross_entropi  # noqa: B018


# --------------------------------------------------------------------------------------- stacking cutmix, mixup
@pytest.mark.parametrize("per_sample", [False, True])
def test_stacking_cutmix_then_mixup_composes_the_targets_by_the_formula(per_sample):
    """cutmix then mixup on one batch (both Methods in a recipe): image i blends originals i, p(i), s(i), p(s(i))
    and t_i = l2 l1 e(y_i) + l2 (1 - l1) e(y_p(i)) + (1 - l2) l1 e(y_s(i)) + (1 - l2) (1 - l1) e(y_p(s(i)))."""
    from regimen.augment import CutMixMethod, MixUpMethod
    from regimen.method import Context

    n, c = 7, 5
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    ctx = Context(model=torch.nn.Linear(1, 1), num_classes=c, generator=torch.Generator().manual_seed(4))
    state = ctx.generator.get_state()
    x1, t1 = CutMixMethod(per_sample=per_sample).transform_batch(x, y, ctx)
    x2, t2 = MixUpMethod(per_sample=per_sample).transform_batch(x1, t1, ctx)

    # the same draws, with targets = arange(n) so the pair form hands back the permutations p and s
    g = torch.Generator()
    g.set_state(state)
    ref1, _, p, l1 = cutmix(x, torch.arange(n), alpha=1.0, generator=g, return_pair=True, per_sample=per_sample)
    ref2, _, s, l2 = mixup(ref1, torch.arange(n), alpha=0.2, generator=g, return_pair=True, per_sample=per_sample)
    assert torch.equal(x1, ref1) and torch.equal(x2, ref2)
    e = F.one_hot(y, c).float()
    a, b = l1[:, None], l2[:, None]
    by_hand = b * a * e + b * (1 - a) * e[p] + (1 - b) * a[s] * e[s] + (1 - b) * (1 - a[s]) * e[p[s]]
    torch.testing.assert_close(t2, by_hand)
    torch.testing.assert_close(x2, b.view(n, 1, 1, 1) * x1 + (1 - b.view(n, 1, 1, 1)) * x1[s])
    assert torch.allclose(t2.sum(1), torch.ones(n))
