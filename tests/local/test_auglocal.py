"""AugLocal: layer indices and pyramid depths follow the paper's formulas; auxiliaries are new layers."""

from __future__ import annotations

import pytest
import torch

from regimen.local import LocalLearning, auglocal_layer_indices, pyramid_depths
from regimen.models import resnet


def _paper_indices(layer, n, d):
    """Paper, Sec. 3: idx_i = round(l + (n - l - 1) / d * i), i = 1..d; every later layer when d >= n - l - 1."""
    if d >= n - layer - 1:
        return list(range(layer + 1, n))
    out = []
    for i in range(1, d + 1):
        out.append(round(layer + (n - layer - 1) / d * i))
    return out


@pytest.mark.parametrize(
    ("layer", "n", "d", "expected"),
    [
        (0, 16, 2, [8, 15]),  # 7.5 rounds half to even (the authors' Python round)
        (3, 16, 3, [7, 11, 15]),
        (1, 10, 4, [3, 5, 7, 9]),
        (2, 9, 4, [4, 5, 6, 8]),  # 3.5 -> 4, 6.5 -> 6
        (5, 8, 3, [6, 7]),  # d >= n - l - 1: all later layers
        (0, 55, 5, [11, 22, 32, 43, 54]),  # 10.8, 21.6, 32.4, 43.2, 54
    ],
)
def test_auglocal_indices_match_the_paper_formula(layer, n, d, expected):
    assert auglocal_layer_indices(layer, n, d) == expected == _paper_indices(layer, n, d)


def test_auglocal_indices_always_end_at_the_last_layer_and_increase():
    for n in range(3, 20):
        for layer in range(n - 1):
            for d in range(1, 6):
                idx = auglocal_layer_indices(layer, n, d)
                assert idx[-1] == n - 1
                assert all(b > a for a, b in zip([layer, *idx], idx, strict=False))
                assert len(idx) == min(d, n - layer - 1)


def test_pyramid_depths_shrink_linearly_by_the_coefficient():
    # d_i = max(1, round(d (1 - i c / (M - 1)) + i c / (M - 1))), M auxiliaries, by hand for d=3, c=0.5, M=5:
    # i=0: 3, i=1: 2.75 -> 3, i=2: 2.5 -> 2, i=3: 2.25 -> 2, i=4: 2.0 -> 2
    assert pyramid_depths(5, 3, 0.5) == [3, 3, 2, 2, 2]
    assert pyramid_depths(3, 4, 1.0) == [4, 2, 1]  # 4, 2.5 -> 2, 1
    assert pyramid_depths(1, 3, 0.5) == [3]
    assert pyramid_depths(4, 2, 0.0) == [2, 2, 2, 2]
    # the last depth is d(1 - c) + c, not d(1 - c): 6·0.5 + 0.5 = 3.5 -> 4 (half to even); 7·0.6 + 0.4 = 4.6 -> 5
    assert pyramid_depths(3, 6, 1.0) == [6, 4, 1]
    assert pyramid_depths(4, 7, 0.6) == [7, 6, 5, 3]  # 7, 5.8, 4.6, 3.4


def test_auglocal_auxiliaries_are_new_layers_shaped_like_the_sampled_ones():
    model = resnet(widths=(4, 8, 16), depths=(2, 2, 2))  # 7 backbone layers
    wrapper = LocalLearning(model, split_points=[1, 2, 3], num_modules=None, aux="auglocal", aux_depth=2,
                            pyramid_coeff=0.0, input_shape=(1, 16, 16))
    backbone = {id(p) for p in wrapper.backbone_parameters()}
    assert not any(id(p) in backbone for p in wrapper.auxiliary_parameters())
    # module 0 ends at layer 0: indices round(0 + 6/2 * i) = [3, 6] -> blocks of 8 and 16 channels, then a Linear
    aux0 = wrapper.auxiliaries[0].head
    blocks = [m for m in aux0 if hasattr(m, "conv1")]
    assert [b.conv2.out_channels for b in blocks] == [8, 16]
    assert isinstance(aux0[-1], torch.nn.Linear) and aux0[-1].out_features == 10
    x = torch.randn(3, 1, 16, 16)
    assert aux0(wrapper.stages[0](x)).shape == (3, 10)


def test_auglocal_trains_the_last_d_plus_one_blocks_with_the_real_head():
    model = resnet(widths=(4, 8, 16), depths=(2, 2, 2))  # 7 backbone layers
    wrapper = LocalLearning(model, num_modules=4, aux="auglocal", aux_depth=2, balance="blocks",
                            input_shape=(1, 16, 16))
    start, end = wrapper.ranges[-1]
    assert (end - 1) - start >= 3  # at least d + 1 = 3 backbone blocks before the head
    with pytest.raises(ValueError, match="at least 3 blocks"):
        LocalLearning(model, split_points=[5], num_modules=None, aux="auglocal", aux_depth=2, input_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="num_modules=6"):
        LocalLearning(model, num_modules=6, aux="auglocal", aux_depth=2, input_shape=(1, 16, 16))


@pytest.mark.parametrize(
    ("args", "error"), [((0, 3, 0), ValueError), ((2, 3, 1), ValueError), ((0.5, 3, 1), TypeError)]
)
def test_auglocal_indices_reject_bad_input(args, error):
    with pytest.raises(error):
        auglocal_layer_indices(*args)
