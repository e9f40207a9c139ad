"""muP coordinate check on the GPT: the size of every block's output and of the logits after a few Adam steps, at
several widths, in the standard parametrisation (SP) and under muP. muP is right when the sizes stay flat across
widths; in SP the logits' size grows with width (the "blow-up" the paper's coordinate check shows).

    python benchmarks/lm_mup.py --widths 64,128,256,512 --steps 3 --lr 1e-2
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from regimen.batch import apply_mup
from regimen.data.text import TokenWindows, encode_block, load_corpus
from regimen.data.tokenizers import ByteTokenizer
from regimen.models import GPT


def coordinates(width: int, mup: bool, base: int, steps: int, lr: float, x, y) -> list[float]:
    torch.manual_seed(0)
    model = GPT(vocab_size=256, block_size=x.shape[1], dim=width, depth=2, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if mup:
        apply_mup(model, base, optimizer=optimizer)
    for _ in range(steps):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sizes, h = [], x
    with torch.no_grad():
        for stage in model.stages[:-1]:
            h = stage(h)
            sizes.append(h.abs().mean().item())
        sizes.append(model.stages[-1](h).abs().mean().item())
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128,256,512")
    parser.add_argument("--base", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("auto")
    tokens, _ = encode_block(corpus.documents[:2000], ByteTokenizer())
    data = TokenWindows(tokens, 64, 256)
    x, y = data.gather(torch.arange(16))
    widths = [int(w) for w in args.widths.split(",")]
    print(f"{corpus.name}, 16 x 64 bytes, GPT depth 2, {args.steps} AdamW steps at lr {args.lr}, base width "
          f"{args.base}; load average {os.getloadavg()[0]:.1f}\n")
    print("mean |coordinate| after training: embedding, block 1, block 2, logits\n")
    print("| parametrisation | width | embedding | block 1 | block 2 | logits |")
    print("|---|---|---|---|---|---|")
    for mup in (False, True):
        for width in widths:
            sizes = coordinates(width, mup, args.base, args.steps, args.lr, x, y)
            print(f"| {'muP' if mup else 'SP'} | {width} | " + " | ".join(f"{s:.3f}" for s in sizes) + " |")


if __name__ == "__main__":
    main()
