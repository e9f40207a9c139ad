"""AugMix: the batched mixture equals the authors' per-image augment_and_mix with Pillow on the same draws; severity
is sampled per op (timm #404); bad input is named."""

import numpy as np
import pytest
import torch

from regimen.augment import AugMixMethod, augmix, augmix_params
from regimen.augment.functional import OPS
from regimen.augment.pillow_reference import from_pil, pillow_op, to_pil
from regimen.errors import ConfigurationError
from regimen.train import fit


def test_augmix_equals_the_per_image_pillow_mixture_on_the_same_draws():
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    got = augmix(images, severity=3, width=3, depth=-1, alpha=1.0, augmentation_set="all",
                 generator=torch.Generator().manual_seed(4), interpolation="nearest")
    chains, weights, m = augmix_params(5, 16, 16, 3, 3, -1, 1.0, "all", torch.Generator().manual_seed(4))
    for i in range(5):  # augment_and_mix, one image at a time, each op through Pillow
        mix = np.zeros((3, 16, 16), dtype=np.float64)
        for j, params in enumerate(chains):
            image = to_pil(images[i])
            for op, value in zip(params.ops[i].tolist(), params.values[i].tolist()):
                image = pillow_op(image, OPS[op], value)
            mix += float(weights[i, j]) * from_pil(image).double().numpy() / 255.0
        want = (1 - float(m[i])) * images[i].double().numpy() / 255.0 + float(m[i]) * mix
        np.testing.assert_allclose(got[i].double().numpy(), want, atol=1e-5)


def test_severity_is_sampled_per_op_and_chains_have_one_to_three_ops():
    chains, weights, m = augmix_params(2000, 32, 32, severity=3, width=1, generator=torch.Generator().manual_seed(0))
    ops, values = chains[0].ops, chains[0].values
    rotate = values[ops == OPS.index("Rotate")].abs()
    assert set(rotate.unique().tolist()) == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}  # floor(3 l), l < 3
    depth = (ops != OPS.index("Identity")).sum(1)
    assert set(depth.tolist()) == {1, 2, 3}
    assert torch.allclose(weights.sum(1), torch.ones(2000)) and ((m >= 0) & (m <= 1)).all()


@pytest.mark.parametrize("kwargs, match", [({"width": 0}, "width"), ({"depth": 0}, "depth"),
                                           ({"severity": 11}, "severity"), ({"alpha": 0.0}, "alpha"),
                                           ({"jsd": True, "jsd_weight": 0.0}, "jsd_weight")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugMixMethod(**kwargs)
    with pytest.raises(ConfigurationError, match=match):
        fit({"data": {"name": "digits"}, "methods": [dict(name="augmix", **kwargs)]})


def _js_by_hand(views):
    """JS of softmax rows with plain floats: (1/K) sum_k KL(p_k || M), M clamped to [1e-7, 1], mean over rows."""
    import math

    total = 0.0
    for rows in zip(*[v.tolist() for v in views]):
        probs = []
        for row in rows:
            top = max(row)
            e = [math.exp(a - top) for a in row]
            probs.append([a / sum(e) for a in e])
        mix = [min(max(sum(p[c] for p in probs) / len(probs), 1e-7), 1.0) for c in range(len(probs[0]))]
        total += sum(sum(p[c] * (math.log(p[c]) - math.log(mix[c])) for c in range(len(mix)) if p[c] > 0)
                     for p in probs) / len(probs)
    return total / len(views[0])


def test_jensen_shannon_consistency_matches_the_formula_by_hand():
    from regimen.augment import jensen_shannon_consistency

    g = torch.Generator().manual_seed(0)
    views = [torch.randn(6, 5, generator=g, dtype=torch.float64) * 3 for _ in range(3)]
    views[2][0] = torch.tensor([80.0, -80.0, 0.0, 0.0, 0.0])  # a near one-hot row: the clamp of M matters little
    assert jensen_shannon_consistency(views).item() == pytest.approx(_js_by_hand(views), rel=1e-5)
    same = jensen_shannon_consistency([views[0], views[0].clone(), views[0].clone()])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        jensen_shannon_consistency([views[0]])


def test_jsd_loss_is_clean_cross_entropy_plus_12_times_js_of_the_three_views():
    from regimen.method import Context, compose_forward_loss

    method = AugMixMethod(jsd=True)
    assert method.overrides("forward_loss") and not AugMixMethod().overrides("forward_loss")
    ctx = Context(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 4)), num_classes=4)
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    batch, targets = method.transform_batch(x, y, ctx)
    assert batch.shape == (15, 3, 4, 4) and torch.equal(batch[:5], x) and targets is y
    loss, output = compose_forward_loss([method], ctx)(ctx.model, batch, targets)
    logits = ctx.model(batch)
    expected = (torch.nn.functional.cross_entropy(logits[:5], y).item()
                + 12 * _js_by_hand(list(logits.detach().double().split(5))))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(output, logits[:5])
    with pytest.raises(RuntimeError, match="list augmix after"):
        compose_forward_loss([method], ctx)(ctx.model, batch[:10], targets)


def test_a_recipe_with_jsd_trains():
    result = fit({"data": {"name": "digits", "val_fraction": 0.0}, "model": {"name": "mlp"},
                  "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1},
                  "methods": [{"name": "augmix", "jsd": True, "width": 1}]})
    assert result.summary["steps"] == 4 and result.history[0]["augmix/jsd"] >= 0
