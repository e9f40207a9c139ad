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
                                           ({"severity": 11}, "severity"), ({"alpha": 0.0}, "alpha")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AugMixMethod(**kwargs)
    with pytest.raises(ConfigurationError, match=match):
        fit({"data": {"name": "digits"}, "methods": [dict(name="augmix", **kwargs)]})
