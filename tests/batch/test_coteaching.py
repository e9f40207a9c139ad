"""Co-teaching (Han et al. 2018; stage 2 of Chen et al. 2022): selection by a hand loop, the schedule, the method."""

import pytest
import torch
import torch.nn.functional as F

from regimen.batch import CoTeachingMethod, coteaching_losses, coteaching_select, forget_rate_at
from regimen.train import fit


def test_each_network_trains_on_the_peers_small_loss_samples():
    torch.manual_seed(0)
    a, b, y = torch.randn(10, 4), torch.randn(10, 4), torch.randint(0, 4, (10,))
    loss_a, loss_b = coteaching_losses(a, b, y, forget_rate=0.3)
    per_a = [float(F.cross_entropy(a[i:i + 1], y[i:i + 1])) for i in range(10)]
    per_b = [float(F.cross_entropy(b[i:i + 1], y[i:i + 1])) for i in range(10)]
    keep = 7  # floor((1 - 0.3) * 10)
    small_a = sorted(range(10), key=lambda i: per_a[i])[:keep]
    small_b = sorted(range(10), key=lambda i: per_b[i])[:keep]
    assert loss_a.item() == pytest.approx(sum(per_a[i] for i in small_b) / keep, rel=1e-5)
    assert loss_b.item() == pytest.approx(sum(per_b[i] for i in small_a) / keep, rel=1e-5)


def test_forget_rate_schedule_ramps_after_the_start_epoch():
    assert forget_rate_at(0, 0.2, ramp_epochs=0, start_epoch=2) == 0.0
    assert forget_rate_at(2, 0.2, ramp_epochs=0, start_epoch=2) == 0.2
    assert [forget_rate_at(e, 0.4, ramp_epochs=4) for e in (0, 2, 4, 9)] == pytest.approx([0.0, 0.2, 0.4, 0.4])


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1])
def test_forget_rate_outside_0_1_is_refused_naming_it(rate):
    with pytest.raises(ValueError, match="forget_rate"):
        CoTeachingMethod(forget_rate=rate)
    with pytest.raises(ValueError, match="forget_rate"):
        coteaching_select(torch.ones(4), torch.ones(4), rate)


RECIPE = {"seed": 0, "data": {"name": "digits", "options": {"label_noise": 0.3}},
          "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1]}},
          "optim": {"name": "sgd", "lr": 0.05},
          "train": {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3, "threads": 1},
          "methods": [{"name": "nested_dropout", "sigma": 4.0}, {"name": "co_teaching", "forget_rate": 0.25,
                                                                  "start_epoch": 1}]}


@pytest.mark.slow
def test_co_teaching_resumes_bit_identically(tmp_path):
    whole = fit(RECIPE)
    fit(RECIPE, out_dir=tmp_path, stop_epoch=1)
    resumed = fit(RECIPE, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt")
    for p, q in zip(whole.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert whole.summary["final_test_acc"] == resumed.summary["final_test_acc"]
    assert whole.history[-1]["co_teaching/forget_rate"] == 0.25
