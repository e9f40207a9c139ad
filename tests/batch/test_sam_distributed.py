"""SAM under DDP (two CPU processes, gloo): with the first gradient synchronised the run equals one process at the
same global batch; with the default local ascent (each process perturbs by its own gradient, the second gradient is
synchronised) the processes still end with one set of weights, different from the synchronised ascent."""

import pytest
import torch

from regimen.train import load_checkpoint
from tests.distributed.launch import regimen_train

RECIPE = """
name = "sam-ddp"
seed = 0
[data]
name = "digits"
[model]
name = "mlp"
options = {{ hidden = [32] }}
[optim]
name = "sgd"
lr = 0.05
[train]
epochs = 1
max_steps_per_epoch = 6
batch_size = {batch}
[[methods]]
name = "sam"
rho = 0.1
local_ascent = {local}
"""


def train(tmp_path, name, batch, local, devices=1):
    path = tmp_path / f"{name}.toml"
    path.write_text(RECIPE.format(batch=batch, local=str(local).lower()))
    out = tmp_path / name
    regimen_train(out, "--recipe", str(path), "--devices", str(devices))  # reserved port, timeout with a message
    return load_checkpoint(out / "checkpoint.pt")["model"]


@pytest.mark.slow
def test_sam_under_ddp_synchronised_matches_one_process_and_local_ascent_differs(tmp_path):
    single = train(tmp_path, "one", 32, local=False)
    synced = train(tmp_path, "synced", 16, local=False, devices=2)
    local = train(tmp_path, "local", 16, local=True, devices=2)
    for key in single:
        assert torch.allclose(single[key], synced[key], atol=1e-6), key
    assert any(not torch.allclose(local[key], synced[key], atol=1e-6) for key in single)
