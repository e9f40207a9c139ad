"""Batched RandAugment / TrivialAugment: per-sample ops, equality with one-at-a-time and with Pillow, tables."""

import math

import pytest
import torch

from regimen.augment import OPS, AugmentParams, RandAugment, TrivialAugment, apply_ops
from regimen.augment.pillow_reference import pillow_apply


def _batch(n=24, c=3, h=20, w=18, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("aug", [RandAugment(num_ops=3, magnitude=9), RandAugment(magnitude=20, magnitude_std=3.0),
                                 TrivialAugment()], ids=["ra", "ra_mstd", "ta"])
def test_batch_equals_one_image_at_a_time_and_pillow(aug, test_images, uint8_backend):
    x = _batch()
    params = aug.sample(x.shape[0], 20, 18, torch.Generator().manual_seed(1))
    assert len(set(params.ops[:, 0].tolist())) > 5  # images really draw different ops
    out = aug.apply(x, params)
    singles = torch.cat([aug.apply(x[i : i + 1], AugmentParams(params.ops[i : i + 1], params.values[i : i + 1]))
                         for i in range(x.shape[0])])
    assert torch.equal(out, singles)
    pillow = torch.stack([pillow_apply(x[i], ops) for i, ops in enumerate(params.as_lists())])
    assert torch.equal(out, pillow)  # the chained uint8 ops reproduce Pillow level for level


@pytest.mark.parametrize("shape", [(40, 3, 70, 90), (30, 1, 80, 66), (60, 1, 28, 28), (20, 3, 33, 17)],
                         ids=["rgb-large", "grey-large", "grey-small", "rgb-small"])
def test_grouped_uint8_path_equals_explicit_loop_and_pillow(shape, uint8_backend):
    """The uint8 fast path (op groups; one warp for every geometric op of small images, op-specific copies for large
    ones) against the functional ops applied image by image, op by op, and against Pillow."""
    from regimen.augment.randaugment import _apply_one

    n, c, h, w = shape
    x = _batch(n, c, h, w, seed=3)
    fill = 17 if c == 1 else (10, 200, 30)
    for aug in (RandAugment(num_ops=3, magnitude=9, magnitude_std=float("inf"), fill=fill), TrivialAugment(fill=fill)):
        params = aug.sample(n, h, w, torch.Generator().manual_seed(2))
        out = aug.apply(x, params)
        expected = []
        for i, chain in enumerate(params.as_lists()):
            image = x[i : i + 1]
            for name, value in chain:
                image = _apply_one(name, image, torch.tensor([value], dtype=torch.float64), "nearest", fill)
            expected.append(image)
        assert torch.equal(out, torch.cat(expected))
        pillow = torch.stack([pillow_apply(x[i], ops, fill=fill) for i, ops in enumerate(params.as_lists())])
        assert torch.equal(out, pillow)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (5, 1, 1, 1), (7, 3, 2, 2), (6, 3, 1, 5), (3, 1, 2, 2100)],
                         ids=["empty", "1x1", "2x2", "1x5", "2x2100-large"])
def test_grouped_uint8_path_on_degenerate_shapes(shape, uint8_backend):
    from regimen.augment.randaugment import _apply_one

    n, c, h, w = shape
    x = _batch(n, c, h, w, seed=5)
    aug = RandAugment(num_ops=3, magnitude=25, magnitude_std=float("inf"), fill=3)
    params = aug.sample(n, h, w, torch.Generator().manual_seed(6))
    expected = x
    for k in range(params.ops.shape[1]):
        expected = torch.cat([expected[:0]] + [
            _apply_one(OPS[int(params.ops[i, k])], expected[i : i + 1], params.values[i : i + 1, k], "nearest", 3)
            for i in range(n)
        ])
    out = aug.apply(x, params)
    assert out.shape == x.shape and torch.equal(out, expected)


@pytest.mark.parametrize("size", [(29, 31), (96, 80)], ids=["small", "large"])
def test_grouped_geometric_ops_at_exact_angles_and_shears(size, uint8_backend):
    """Right angles and zero shears/translations take Pillow's scale-only path: the fast path must agree."""
    from regimen.augment import functional as AF

    h, w = size
    cases = {
        "Rotate": ([0.0, 90.0, 180.0, 270.0, -90.0, 135.0, -135.0, 45.0, 1e-9, 359.5], AF.rotate),
        "ShearX": ([0.0, 0.3, -0.99, 1.5], AF.shear_x),
        "ShearY": ([0.0, 0.3, -0.99, 1.5], AF.shear_y),
        "TranslateX": ([0.0, 4.5, -4.5, 3.49, 1000.0], AF.translate_x),
        "TranslateY": ([0.0, 4.5, -4.5, -1000.0], AF.translate_y),
    }
    image = _batch(1, 3, h, w, seed=4)
    for name, (values, op) in cases.items():
        v = torch.tensor(values, dtype=torch.float64)
        batch = image.expand(len(values), -1, -1, -1)
        params = AugmentParams(torch.full((len(values), 1), OPS.index(name)), v.view(-1, 1))
        assert torch.equal(apply_ops(batch, params, fill=77), op(batch, v, fill=77)), name


def test_every_op_on_real_photos_matches_pillow(test_images, uint8_backend):
    for image in test_images:
        n = len(OPS)
        ops = torch.arange(n).view(n, 1)
        values = torch.tensor([0, 0, 0, -21.0, 140.0, 1.6, 5, 0.4, 1.3, 0.3, 0.27, -0.2, 4.0, -6.5]).view(n, 1)
        params = AugmentParams(ops, values.double())
        out = apply_ops(image.expand(n, -1, -1, -1), params)
        for i, chain in enumerate(params.as_lists()):
            assert (out[i].int() - pillow_apply(image, chain).int()).abs().max() <= 1, chain


def test_same_generator_same_result_and_input_untouched():
    x = _batch()
    before = x.clone()
    aug = RandAugment()
    a = aug(x, generator=torch.Generator().manual_seed(5))
    b = aug(x, generator=torch.Generator().manual_seed(5))
    c = aug(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_and_dtype_are_kept(c, dtype):
    x = _batch(8, c, 12, 10)
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    for aug in (RandAugment(), TrivialAugment()):
        out = aug(x, generator=torch.Generator().manual_seed(0))
        assert out.shape == x.shape and out.dtype == dtype
        if dtype != torch.uint8:
            assert out.min() >= 0 and out.max() <= 1


def test_float_batch_agrees_with_uint8_within_a_level_for_single_ops():
    x = _batch(28, 3, 16, 16)
    aug = RandAugment(num_ops=1, magnitude=9)
    params = aug.sample(28, 16, 16, torch.Generator().manual_seed(3))
    keep = params.ops[:, 0] != OPS.index("Solarize")  # solarize flips a pixel exactly at the threshold by 255
    u8 = aug.apply(x, params).int()
    fl = (aug.apply(x.float() / 255, params) * 255).round().int()
    assert (u8[keep] - fl[keep]).abs().max() <= 1


def test_magnitude_tables_match_torchvision_definitions():
    # RandAugment, M = 9 of 31 bins, W = H = 331 -> torchvision's linspace tables (by hand)
    aug = RandAugment(num_ops=1, magnitude=9)
    n = 4000
    params = aug.sample(n, 331, 331, torch.Generator().manual_seed(0))
    r = 9 / 30
    expected = {"Rotate": 30 * r, "ShearX": 0.3 * r, "TranslateX": 150 * r, "TranslateY": 150 * r,
                "Brightness": 0.9 * r, "Posterize": 8 - round(4 * r), "Solarize": 255 * (1 - r)}
    ops, values = params.ops[:, 0], params.values[:, 0]
    for name, value in expected.items():
        got = values[ops == OPS.index(name)]
        if name == "Brightness":
            assert torch.allclose((got - 1).abs(), torch.tensor(value, dtype=torch.float64))
            assert (got > 1).any() and (got < 1).any()  # random sign per sample
        elif name in ("Posterize", "Solarize"):
            assert torch.allclose(got, torch.tensor(float(value), dtype=torch.float64))
        else:
            assert torch.allclose(got.abs(), torch.tensor(value, dtype=torch.float64))
            assert (got > 0).any() and (got < 0).any()
    # ops are drawn uniformly: every op appears about n / 14 times
    counts = torch.bincount(ops, minlength=14).float()
    assert (counts - n / 14).abs().max() < 5 * math.sqrt(n / 14)
    # TrivialAugment: uniform bins, wide ranges
    ta = TrivialAugment()
    p = ta.sample(n, 32, 32, torch.Generator().manual_seed(0))
    rot = p.values[p.ops[:, 0] == OPS.index("Rotate"), 0].abs()
    assert rot.max() <= 135 and rot.max() > 120
    bits = p.values[p.ops[:, 0] == OPS.index("Posterize"), 0]
    assert set(bits.tolist()) <= set(range(2, 9)) and 2 in bits.tolist()


def test_zero_ops_is_identity_copy():
    x = _batch(4)
    out = RandAugment(num_ops=0)(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="num_ops"):
        RandAugment(num_ops=-1)
    with pytest.raises(ValueError, match="magnitude must be in"):
        RandAugment(magnitude=31)
    with pytest.raises(ValueError, match="magnitude_std"):
        RandAugment(magnitude_std=-1.0)
    with pytest.raises(ValueError, match="num_magnitude_bins"):
        TrivialAugment(num_magnitude_bins=1)
    aug = RandAugment()
    with pytest.raises(ValueError, match="images must have shape"):
        aug(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        aug(torch.zeros(2, 4, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aug(torch.full((2, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="params.ops"):
        apply_ops(_batch(2), AugmentParams(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("op, value, message", [
    ("Rotate", math.nan, "finite"), ("Solarize", math.inf, "finite"), ("Posterize", 0.0, "Posterize"),
    ("Posterize", 3.5, "Posterize"), ("Brightness", -0.5, "enhancement"), ("Sharpness", -1.0, "enhancement"),
])
def test_apply_ops_rejects_bad_values_on_every_path(dtype, op, value, message):
    x = _batch(3, 3, 9, 7)
    x = x if dtype == torch.uint8 else x.to(dtype) / 255
    params = AugmentParams(torch.full((3, 1), OPS.index(op)), torch.full((3, 1), value, dtype=torch.float64))
    with pytest.raises(ValueError, match=message):
        apply_ops(x, params)
    with pytest.raises(TypeError, match="params.ops"):
        apply_ops(x, AugmentParams(params.ops.float(), params.values))


@pytest.mark.parametrize("op, value", [("TranslateX", 1e30), ("TranslateY", -1e12), ("ShearX", 1e20), ("ShearY", -3e9)])
def test_huge_geometric_values_give_pillows_all_fill_result(op, value, uint8_backend):
    x = _batch(2, 3, 9, 7)
    params = AugmentParams(torch.full((2, 1), OPS.index(op)), torch.full((2, 1), value, dtype=torch.float64))
    expected = torch.stack([pillow_apply(x[i], [(op, value)], fill=5) for i in range(2)])
    assert torch.equal(apply_ops(x, params, fill=5), expected)
    assert torch.equal(apply_ops(x.float() / 255, params, fill=5).mul(255).round().to(torch.uint8), expected)
