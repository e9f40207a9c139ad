"""Progressive resizing: Composer's schedule by hand, resize equals F.interpolate, crop equals per-image slicing,
bad input named."""

import pytest
import torch
import torch.nn.functional as F

from regimen.augment import ProgressiveResizingMethod, progressive_scale, resize_batch
from regimen.errors import ConfigurationError
from regimen.train import fit


def test_schedule_by_hand():
    # s0 = 0.5, delay 0.5, finetune 0.2: flat to t = 0.5, linear to 1 at t = 0.8, then 1
    assert [progress for progress in map(lambda t: progressive_scale(t, 0.5, 0.5, 0.2), (0.0, 0.5, 0.65, 0.8, 0.9))
            ] == pytest.approx([0.5, 0.5, 0.75, 1.0, 1.0])


def test_resize_is_bilinear_antialiased_to_multiples_of_the_increment():
    x = torch.rand(3, 2, 28, 20)
    out = resize_batch(x, 0.5, "resize", 4)
    assert out.shape == (3, 2, 12, 8)  # 14 -> 12, 10 -> 8
    torch.testing.assert_close(out, F.interpolate(x, size=(12, 8), mode="bilinear", antialias=True))
    assert resize_batch(x, 1.0) is x


def test_crop_takes_one_window_per_image():
    x = torch.rand(4, 1, 16, 16)
    out = resize_batch(x, 0.5, "crop", 4, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    oy, ox = torch.randint(0, 9, (4,), generator=g), torch.randint(0, 9, (4,), generator=g)
    for i in range(4):
        assert torch.equal(out[i], x[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8])


@pytest.mark.parametrize("kwargs, match", [({"initial_scale": 0.0}, "initial_scale"),
                                           ({"delay": 0.6, "finetune": 0.4}, "delay"), ({"mode": "warp"}, "mode")])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProgressiveResizingMethod(**kwargs)
    with pytest.raises(ConfigurationError, match=match):
        fit({"data": {"name": "digits"}, "methods": [dict(name="progressive_resizing", **kwargs)]})
