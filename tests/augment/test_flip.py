import pytest
import torch

from regimen.augment import FlipMethod, alternating_flip_mask, flip_images, random_flip_mask
from regimen.method import Context


def test_flip_images_mirrors_exactly_the_masked_rows():
    images = torch.rand(4, 2, 3, 5)
    mask = torch.tensor([True, False, True, False])
    out = flip_images(images, mask)
    for i in range(4):  # explicit per-image reference: columns reversed by index
        expected = images[i][..., [4, 3, 2, 1, 0]] if mask[i] else images[i]
        torch.testing.assert_close(out[i], expected)


def test_alternating_flip_alternates_each_image_and_flips_about_half():
    indices = torch.arange(10000)
    first, second, third = (alternating_flip_mask(indices, e, seed=3) for e in (0, 1, 2))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert 0.45 < first.float().mean().item() < 0.55
    assert not torch.equal(alternating_flip_mask(indices, 0, seed=4), first)  # the seed changes the bits


def test_alternating_flip_bit_is_the_documented_hash():
    """Bit 16 of ``(i + 7919·seed) · 2654435761 mod 2³²``, computed with Python integers: a run's flips (and a resumed
    run's) must not change when the implementation does."""
    for seed in (0, 3):
        for epoch in (0, 1):
            expected = [bool(((((i + 7919 * seed) * 2654435761) % 2**32) >> 16) & 1 ^ (epoch % 2)) for i in range(300)]
            assert alternating_flip_mask(torch.arange(300), epoch, seed=seed).tolist() == expected


def test_random_flip_mask_is_seeded_and_has_rate_p():
    a = random_flip_mask(20000, 0.3, torch.Generator().manual_seed(0))
    b = random_flip_mask(20000, 0.3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and abs(a.float().mean().item() - 0.3) < 0.02


def test_flip_method_uses_batch_indices_and_epoch():
    x, y = torch.rand(6, 1, 4, 4), torch.arange(6)
    ctx = Context(torch.nn.Identity(), seed=1)
    ctx.batch_indices, ctx.epoch = torch.arange(6), 1
    out, labels = FlipMethod().transform_batch(x, y, ctx)
    torch.testing.assert_close(out, flip_images(x, alternating_flip_mask(torch.arange(6), 1, seed=1)))
    assert labels is y


def test_flip_bad_input():
    with pytest.raises(ValueError, match="mask"):
        flip_images(torch.rand(2, 1, 4, 4), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        flip_images(torch.rand(1, 4, 4), torch.tensor([True]))
    with pytest.raises(ValueError, match="p must be"):
        FlipMethod(p=1.5)
    with pytest.raises(ValueError, match="integer"):
        alternating_flip_mask(torch.rand(3), 0)
