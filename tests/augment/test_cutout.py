"""CutOut: the batched mask equals the authors' per-image loop (DeVries & Taylor's Cutout.__call__) on the same
centres; every image gets its own holes; dtype kept; replayable; bad input named."""

import pytest
import torch

from regimen.augment import CutOutMethod, cutout, cutout_boxes
from regimen.errors import ConfigurationError
from regimen.method import Context
from regimen.train import fit


def _reference(images, centres, side, fill):
    """The authors' loop: for each image and hole, y1 = clip(y - length // 2), y2 = clip(y + length // 2), ..."""
    out = images.clone()
    n, _, h, w = images.shape
    for i in range(n):
        for y, x in centres[i]:
            y1, y2 = min(max(y - side // 2, 0), h), min(max(y + side // 2, 0), h)
            x1, x2 = min(max(x - side // 2, 0), w), min(max(x + side // 2, 0), w)
            out[i, :, y1:y2, x1:x2] = fill
    return out


@pytest.mark.parametrize("holes, length", [(1, 0.5), (3, 0.25), (2, 1.0)])
def test_cutout_matches_the_authors_per_image_loop(holes, length):
    images = torch.rand(6, 3, 12, 10, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(7)  # the centres cutout draws from the same seed: rows, then columns
    cy = torch.randint(0, 12, (6, holes), generator=gen)
    cx = torch.randint(0, 10, (6, holes), generator=gen)
    centres = [list(zip(cy[i].tolist(), cx[i].tolist())) for i in range(6)]
    got = cutout(images, holes, length, fill=0.25, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, _reference(images, centres, round(length * 10), 0.25))


def test_every_image_has_its_own_holes_and_boxes_replay():
    images = torch.ones(16, 1, 16, 16, dtype=torch.uint8) * 200
    boxes = cutout_boxes(16, 16, 16, 1, 0.25, generator=torch.Generator().manual_seed(0))
    out = cutout(images, boxes=boxes, fill=0)
    assert out.dtype == torch.uint8
    masks = out == 0
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 8  # per-image positions
    assert torch.equal(out, cutout(images, boxes=boxes, fill=0))


def test_p_zero_cuts_nothing_and_the_method_fills_with_the_data_mean():
    images = torch.rand(4, 3, 8, 8)
    assert torch.equal(cutout(images, p=0.0), images)
    mean = torch.tensor([0.1, 0.2, 0.3])
    ctx = Context(torch.nn.Identity(), data_mean=mean, data_std=torch.ones(3))
    out, _ = CutOutMethod(length=1.0).transform_batch(images, None, ctx)
    holes = (out != images).all(dim=1)  # (N, H, W) pixels whose every channel was replaced
    assert holes.any()
    pixels = out.permute(0, 2, 3, 1)[holes]  # (P, C)
    assert torch.allclose(pixels, mean.expand_as(pixels))


@pytest.mark.parametrize("kwargs, match", [({"num_holes": 0}, "num_holes"), ({"length": 0.0}, "length"),
                                           ({"length": 1.5}, "length"), ({"p": 2.0}, "p must")])
def test_bad_arguments_are_refused_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cutout(torch.rand(2, 1, 4, 4), **kwargs)
    with pytest.raises(ConfigurationError, match=match.split()[0]):
        fit({"data": {"name": "digits"}, "methods": [dict(name="cutout", **kwargs)]})


def test_non_image_input_is_refused():
    with pytest.raises(ValueError, match="images must be"):
        cutout(torch.rand(2, 4))


def test_uint8_and_float_paths_agree_pixel_for_pixel():
    from regimen.augment import CutOutMethod
    from regimen.method import Context

    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor([0.3, 0.6, 0.2])
    ctx_u8 = Context(torch.nn.Identity(), data_mean=mean, seed=5)
    ctx_f = Context(torch.nn.Identity(), data_mean=mean, seed=5)
    method = CutOutMethod(num_holes=2, length=0.4, p=0.7)
    out_u8, _ = method.transform_batch(images, None, ctx_u8)
    out_f, _ = method.transform_batch(images.float() / 255.0, None, ctx_f)
    assert out_u8.dtype == torch.uint8 and out_f.dtype == torch.float32
    assert torch.equal(out_u8, (out_f * 255.0).round().to(torch.uint8))  # holes: round(255 * mean); the rest exact
    assert (out_u8 != images).any()
