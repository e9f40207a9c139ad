import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("REGIMEN_TEST_THREADS", "2")))


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on tiny tensors it avoids OpenMP barrier stalls on a loaded 2-core
    machine. Folders of tiny-tensor tests request it from an autouse fixture."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def tiny_recipe() -> dict:
    """A seconds-long recipe: MLP on scikit-learn digits."""
    return {
        "name": "tiny",
        "seed": 0,
        "data": {"name": "digits", "val_fraction": 0.1},
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "train": {"epochs": 2, "batch_size": 64},
    }
