"""WTA-CRS memory: bytes saved for backward by a byte-level GPT step, exact Linear layers vs WTA-CRS layers.

Setup: regimen's GPT (dim 128, depth 4, 4 heads, RoPE, tied embeddings: the default language-model recipe's model) on
a batch of 32 x 128 random byte tokens; every Linear of the blocks becomes a :class:`regimen.batch.WTACRSLinear`
(the head stays exact). For each configuration, in this process (one thread):

* **saved for backward**: the bytes of the distinct tensor storages autograd keeps for the backward pass of one
  forward (``torch.autograd.graph.saved_tensors_hooks``; a storage saved by several ops counts once; parameters are
  excluded, they exist anyway). The Linear-input share is what WTA-CRS cuts; attention, norms and the embedding
  keep theirs.
* **weight-gradient error**: ‖∇W_est − ∇W‖ / ‖∇W‖ over all approximated layers, against the exact gradient of the
  same weights on the same batch (second step, so the stale ‖g‖ of the reference's sampling is in use);
* **step time**: median of 5 forward+backward passes (the machine is shared: ratios within this run only).

Run: ``PYTHONPATH=src python benchmarks/batch_wta_crs.py [--batch 32] [--seq 128]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from regimen.batch import apply_wta_crs
from regimen.models import GPT


def saved_bytes(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[int, torch.Tensor]:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    return sum(storages.values()), loss


def gradients(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    _, loss = saved_bytes(model, tokens)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokens = torch.randint(0, 256, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    reference = GPT(dim=128, depth=4, heads=4)
    exact_grads = gradients(reference, tokens)
    rows = []
    for ratio in (None, 0.3, 0.1):
        model = GPT(dim=128, depth=4, heads=4)
        model.load_state_dict(reference.state_dict())
        replaced = []
        if ratio is not None:
            replaced = apply_wta_crs(model, ratio, generator=torch.Generator().manual_seed(1))
        gradients(model, tokens)  # first step: the stale gradient norms exist afterwards
        grads = gradients(model, tokens)
        names = [f"{name}.weight" for name in replaced]
        error = (torch.sqrt(sum(((grads[n] - exact_grads[n]) ** 2).sum() for n in names))
                 / torch.sqrt(sum((exact_grads[n] ** 2).sum() for n in names))).item() if names else 0.0
        times = []
        for _ in range(5):
            start = time.perf_counter()
            gradients(model, tokens)
            times.append(time.perf_counter() - start)
        saved, _ = saved_bytes(model, tokens)
        rows.append((ratio, len(replaced), saved, error, statistics.median(times)))
    base_saved, base_time = rows[0][2], rows[0][4]
    print(f"GPT dim 128 depth 4, batch {args.batch} x {args.seq} tokens, 1 thread")
    print("| layers | ratio | saved for backward (MiB) | vs exact | weight-grad rel. error | step time (s) "
          "| vs exact |")
    print("|---|---|---|---|---|---|---|")
    for ratio, layers, saved, error, step in rows:
        label = "exact" if ratio is None else f"{ratio:g}"
        print(f"| {layers or 'nn.Linear'} | {label} | {saved / 2**20:.1f} | {saved / base_saved:.2f} | {error:.3f} | "
              f"{step:.3f} | {step / base_time:.2f} |")


if __name__ == "__main__":
    main()
