"""``summary["train_cpu_time"]``: process CPU seconds inside training epochs only, kept across a resume."""

import torch

from regimen.train import fit


def test_train_cpu_time_excludes_start_up_and_survives_a_resume(tiny_recipe, tmp_path):
    first = fit(tiny_recipe, out_dir=tmp_path, stop_epoch=1).summary
    assert 0 < first["train_cpu_time"] < first["process_cpu_time"]  # start-up and evaluation are excluded
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["train_cpu_time"]
    assert saved == first["train_cpu_time"]
    # a resume that trains no further epoch reports exactly the restored seconds
    restored = fit(tiny_recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt", stop_epoch=1).summary
    assert restored["train_cpu_time"] == saved
    resumed = fit(tiny_recipe, out_dir=tmp_path, resume=tmp_path / "checkpoint.pt").summary
    assert resumed["train_cpu_time"] > saved  # the second epoch's seconds are added to the restored first's
