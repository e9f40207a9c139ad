"""Sequence-length warm-up: the length schedule against Composer's formula by hand, truncation of the next-token
pairs, and a run on the language-model task."""

import pytest
import torch

from regimen.batch import SeqLengthWarmupMethod, seq_length_at, truncate_sequences
from regimen.method import Context


def test_length_follows_the_linear_schedule_in_steps_of_step_size():
    # min 8, max 128, duration 0.5: L = 8 + 8 * floor(120 * p / 0.5 / 8) until p = 0.5, then 128
    for p in (0.0, 0.01, 0.1, 0.25, 0.49, 0.5, 0.9):
        expected = 128 if p >= 0.5 else 8 + 8 * int(120 * (p / 0.5) // 8)
        assert seq_length_at(p, 8, 128, 0.5, 8) == expected
    assert seq_length_at(0.3, 8, 20, 1.0, 1) == 8 + int(12 * 0.3)
    with pytest.raises(ValueError, match="duration"):
        seq_length_at(0.1, 8, 128, 0.0)
    with pytest.raises(ValueError, match="min_len"):
        seq_length_at(0.1, 200, 128, 0.5)


def test_method_truncates_inputs_and_targets_alike():
    x = torch.arange(40).view(2, 20)
    y = x + 1
    method = SeqLengthWarmupMethod(duration=0.5, min_len=4, step_size=4)
    ctx = Context(torch.nn.Identity(), steps_per_epoch=10, epochs=1)
    ctx.step = 3  # p = 0.3: 4 + 4 * floor(16 * 0.6 / 4) = 12
    tx, ty = method.transform_batch(x, y, ctx)
    assert tx.tolist() == x[:, :12].tolist() and ty.tolist() == y[:, :12].tolist()
    ctx.step = 6
    assert method.transform_batch(x, y, ctx)[0].shape == (2, 20)
    with pytest.raises(ValueError, match="max_len"):
        SeqLengthWarmupMethod(min_len=16, max_len=8)
    with pytest.raises(ValueError, match="\\(N, T\\)"):
        truncate_sequences(torch.zeros(3), torch.zeros(3), 2)
