"""``train.channels_last``: the model's convolution weights and every image batch in NHWC memory format; the same
values as the contiguous run within float32 tolerance (convolution kernels sum in another order)."""

import pytest
import torch

from regimen.errors import ConfigurationError
from regimen.models import build_model
from regimen.train import fit

RECIPE = {"data": {"name": "digits", "val_fraction": 0.0},
          "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
          "train": {"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 4, "threads": 1}}


def test_a_resnet_in_channels_last_gives_the_contiguous_outputs():
    torch.manual_seed(0)
    model = build_model("resnet", (3, 16, 16), 10, widths=[8, 16], depths=[1, 1]).eval()
    x = torch.randn(6, 3, 16, 16)
    want = model(x)
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_fit_with_channels_last_trains_nhwc_and_matches_the_contiguous_run():
    plain = fit(RECIPE)
    nhwc = fit({**RECIPE, "train": {**RECIPE["train"], "channels_last": True}})
    convs = [m.weight for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    for (name, a), b in zip(plain.model.state_dict().items(), nhwc.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)  # 4 SGD steps: float32 reordering only
    assert nhwc.summary["final_test_acc"] == pytest.approx(plain.summary["final_test_acc"], abs=0.01)


def test_channels_last_on_a_task_without_images_is_refused():
    with pytest.raises(ConfigurationError, match="channels_last"):
        fit({"task": "classification", "data": {"name": "iris"},
             "train": {"channels_last": True, "batch_size": 16}})
