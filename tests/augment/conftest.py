"""Shared test images: scikit-image sample photos (RGB and greyscale) and Fashion-MNIST digits (greyscale)."""

import pytest
import torch


def _photos() -> list[torch.Tensor]:
    skdata = pytest.importorskip("skimage.data")
    astronaut = torch.from_numpy(skdata.astronaut()[::8, ::8].copy()).permute(2, 0, 1).contiguous()  # 64x64
    coffee = torch.from_numpy(skdata.coffee()[::8, ::8][:40, :52].copy()).permute(2, 0, 1).contiguous()  # 40x52
    camera = torch.from_numpy(skdata.camera()[::10, ::10][:, :45].copy())[None]  # 52x45, greyscale
    return [astronaut, coffee, camera]


def _fashion(count: int = 3) -> list[torch.Tensor]:
    try:
        from regimen.data import load_fashion_mnist

        data = load_fashion_mnist(split="test")
    except Exception:  # noqa: BLE001 - data not installed: photos only
        return []
    return [data.images[i].clone() for i in range(count)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here uses tiny tensors (see ``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="session")
def test_images() -> list[torch.Tensor]:
    """uint8 (C, H, W) images: two RGB photos, one greyscale photo, Fashion-MNIST items (odd sizes included)."""
    return _photos() + _fashion()


@pytest.fixture(params=["native", "torch"])
def uint8_backend(request):
    """Run a test once with the compiled uint8 kernel and once with the torch implementation of the uint8 path."""
    from regimen.augment import native

    if request.param == "torch":
        with native.disabled():
            yield request.param
        return
    if not native.available():
        pytest.skip(f"compiled kernel unavailable: {native.build_error()}")
    yield request.param
