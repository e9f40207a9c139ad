"""Global-batch load balancing: 2-process DDP (gloo) equals one process on the concatenated batch."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from regimen.losses import LoadBalanceAccumulator, expert_counts, load_balancing_loss
from tests.distributed.launch import spawn

E, D, T, K = 6, 5, 16, 2  # experts, router input dim, tokens per rank, top-k


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * T, D, generator=g)
    # skew the router so the two halves of the batch route very differently (local f != global f)
    x[:T] += 2.0 * torch.arange(D, dtype=torch.float32) / D
    w = torch.randn(D, E, generator=g)
    return x, w


def _loss_and_grad(x: torch.Tensor, w: torch.Tensor, **kwargs):
    w = w.clone().requires_grad_()
    probs = torch.softmax(x @ w, dim=-1)
    idx = probs.topk(K, dim=-1).indices
    loss = load_balancing_loss(probs, idx, E, **kwargs)
    loss.backward()
    return loss.detach(), w.grad


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, w = _data()
        local = x[rank * T : (rank + 1) * T]
        loss, grad = _loss_and_grad(local, w, global_batch=True)
        local_loss, _ = _loss_and_grad(local, w, global_batch=False)
        # what DDP optimises: the mean over ranks of the loss, with gradients averaged
        for t in (loss, grad, local_loss):
            dist.all_reduce(t)
            t /= world
        torch.save({"loss": loss, "grad": grad, "local_loss": local_loss}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_concatenated_batch():
    x, w = _data()
    ref_loss, ref_grad = _loss_and_grad(x, w)  # not initialised: one process, whole batch
    with tempfile.TemporaryDirectory() as tmp:
        spawn(_worker, (2, os.path.join(tmp, "init"), tmp), what="load-balance DDP workers")  # with a deadline
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(2)]
    for res in results:
        torch.testing.assert_close(res["loss"], ref_loss, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(res["grad"], ref_grad, rtol=1e-5, atol=1e-6)
    # the per-rank (local f) form is measurably different here, so the test can tell them apart
    assert abs(float(results[0]["local_loss"]) - float(ref_loss)) > 1e-3


def test_switch_formula_by_hand():
    probs = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    idx = probs.argmax(dim=-1)
    f = [sum(1 for i in idx.tolist() if i == e) / 10 for e in range(4)]
    p = [sum(probs[t, e].item() for t in range(10)) / 10 for e in range(4)]
    want = 4 * sum(fi * pi for fi, pi in zip(f, p, strict=True))
    assert float(load_balancing_loss(probs, idx, 4)) == pytest.approx(want, rel=1e-6)
    uniform = torch.full((8, 4), 0.25)
    assert float(load_balancing_loss(uniform, torch.arange(8) % 4, 4)) == pytest.approx(1.0)


def test_accumulator_makes_last_micro_batch_see_the_whole_step_counts():
    x, w = _data()
    probs = torch.softmax(x @ w, dim=-1)
    idx = probs.topk(K, dim=-1).indices
    acc = LoadBalanceAccumulator(E)
    chunks = list(zip(probs.split(8), idx.split(8), strict=True))
    losses = [load_balancing_loss(p, i, E, accumulator=acc) for p, i in chunks]
    assert acc.micro_batches == 4
    assert torch.equal(acc.counts, expert_counts(idx, E))
    f_full = expert_counts(idx, E).float() / idx.numel()
    want_last = E * (f_full * chunks[-1][0].mean(0)).sum()
    torch.testing.assert_close(losses[-1], want_last)
    # the first micro-batch only knows its own counts
    f_first = expert_counts(chunks[0][1], E).float() / chunks[0][1].numel()
    torch.testing.assert_close(losses[0], E * (f_first * chunks[0][0].mean(0)).sum())
    state = acc.state_dict()
    acc2 = LoadBalanceAccumulator(E)
    acc2.load_state_dict(state)
    assert torch.equal(acc2.counts, acc.counts) and acc2.micro_batches == 4
    acc.reset()
    assert int(acc.counts.sum()) == 0 and acc.micro_batches == 0


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: load_balancing_loss(torch.rand(4, 3), torch.tensor([0, 1, 2, 3]), 3), ValueError, r"\[0, 3\)"),
        (lambda: load_balancing_loss(torch.rand(4, 3), torch.tensor([0, 1, 2]), 3), ValueError, "shape"),
        (lambda: load_balancing_loss(torch.rand(4, 5), torch.tensor([0, 1, 2, 0]), 3), ValueError, r"\(T, 3\)"),
        (lambda: load_balancing_loss(torch.rand(4, 3), torch.rand(4), 3), TypeError, "integer"),
        (
            lambda: load_balancing_loss(torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), 2),
            ValueError,
            "NaN",
        ),
        (lambda: load_balancing_loss(torch.rand(2, 3), torch.tensor([0, 1]), 0), ValueError, "num_experts"),
        (
            lambda: load_balancing_loss(
                torch.rand(2, 3), torch.tensor([0, 1]), 3, accumulator=LoadBalanceAccumulator(4)
            ),
            ValueError,
            "accumulator",
        ),
    ],
)
def test_bad_input_raises_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
