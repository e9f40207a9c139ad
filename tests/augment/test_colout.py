"""ColOut: the batched gather equals deleting the drawn rows and columns image by image; per-image choices; Composer's
batch form; models that cannot take smaller images and bad fractions are refused."""

import pytest
import torch

from regimen.augment import colout, colout_indices
from regimen.errors import ConfigurationError
from regimen.train import fit


def test_colout_equals_keeping_the_drawn_rows_and_columns_image_by_image():
    images = torch.arange(4 * 2 * 10 * 8, dtype=torch.float32).view(4, 2, 10, 8)
    out = colout(images, 0.3, 0.25, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    rows, cols = colout_indices(4, 10, 0.3, generator=g), colout_indices(4, 8, 0.25, generator=g)
    assert out.shape == (4, 2, 7, 6)
    for i in range(4):  # the reference: plain indexing of one image
        assert torch.equal(out[i], images[i][:, rows[i].tolist()][:, :, cols[i].tolist()])
    assert len({tuple(r.tolist()) for r in rows}) > 1  # each image its own rows
    assert all(torch.equal(r, torch.sort(r).values) for r in rows)  # kept in order


def test_batch_form_drops_the_same_rows_from_every_image():
    rows = colout_indices(5, 12, 0.5, per_sample=False, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(r, rows[0]) for r in rows)


def test_bad_fractions_and_fixed_size_models_are_refused():
    with pytest.raises(ValueError, match="p_row"):
        colout(torch.rand(1, 1, 4, 4), p_row=1.0)
    with pytest.raises(ConfigurationError, match="colout feeds the model smaller images"):
        fit({"data": {"name": "digits"}, "model": {"name": "mlp"}, "methods": [{"name": "colout"}]})


def test_uint8_and_float_paths_agree_pixel_for_pixel():
    images = torch.randint(0, 256, (6, 3, 20, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out_u8 = colout(images, 0.2, 0.25, generator=torch.Generator().manual_seed(9))
    out_f = colout(images.float() / 255.0, 0.2, 0.25, generator=torch.Generator().manual_seed(9))
    assert out_u8.dtype == torch.uint8 and out_u8.shape == (6, 3, 16, 12)
    assert torch.equal(out_u8, (out_f * 255.0).round().to(torch.uint8))
