import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here uses tiny tensors (see ``one_thread`` in tests/conftest.py)."""
