"""AGVM at large batch, long enough that both heads learn (issue 16 follow-up to run_agvm.py, whose batch-2048 arms
had 18 steps and never left chance).

Two-head synthetic localisation: a Fashion-MNIST item pasted at a random place of a 40x40 canvas; backbone (3 convs,
BN) + 1x1 neck + class head (max-pool, linear) + box head (linear on the flattened map, L1). SGD momentum 0.9,
wd 1e-4. The paper's protocol (reference configs, Sense-X/AGVM faster_rcnn_res50_bs512.py): a 16x larger batch
(bs32 -> bs512) with a scaled LR, warm-up, AGVM started after warm-up, interval 5-10, momentum 0.97. Here:
  small  : batch 32,  LR 0.0125 (0.05 x 32/128), 1 warm-up epoch then cosine
  large  : batch 512, LR 0.2 (linear scaling), 2 warm-up epochs then cosine
  large + AGVM: as large, AGVM from the end of warm-up, every 5 steps, momentum 0.97, groups backbone (reference) /
  neck / cls_head / box_head.
  huge (+ AGVM): batch 2048 (64x), LR 0.8, 3 warm-up epochs, otherwise as large.
Same epochs (same samples seen) for all arms; paired seeds (same init, data, order).

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_agvm_long.py [--seeds 0 1 2]
       [--arms small large large_agvm] [--epochs 30] [--train 20000] > reports/wave2/agvm_long.json
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import AGVM
from regimen.data import load_data

CANVAS = 40
ARMS = {  # name: (batch, lr, warm-up epochs, agvm, optimizer)
    "small": (32, 0.0125, 1, False, "sgd"),
    "large": (512, 0.2, 2, False, "sgd"),
    "large_agvm": (512, 0.2, 2, True, "sgd"),
    "huge": (2048, 0.8, 3, False, "sgd"),
    "huge_agvm": (2048, 0.8, 3, True, "sgd"),
    # Adam arms (AGVM with the reference's g / sqrt(v) normalisation); LR sqrt-scaled from 1e-3 at 32
    "small_adam": (32, 1e-3, 1, False, "adam"),
    "large_adam": (512, 4e-3, 2, False, "adam"),
    "large_adam_agvm": (512, 4e-3, 2, True, "adam"),
}


def canvases(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    pos = torch.randint(0, CANVAS - 28 + 1, (n, 2), generator=g)
    out = torch.zeros(n, 1, CANVAS, CANVAS)
    for i in range(n):  # data building, once
        out[i, :, pos[i, 0]:pos[i, 0] + 28, pos[i, 1]:pos[i, 1] + 28] = images[i]
    boxes = torch.stack([pos[:, 1], pos[:, 0], pos[:, 1] + 28, pos[:, 0] + 28], dim=1).float() / CANVAS
    return out, boxes


class TwoHead(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.backbone = nn.Sequential(nn.Conv2d(1, w // 2, 3, 2, 1), nn.BatchNorm2d(w // 2), nn.ReLU(),
                                      nn.Conv2d(w // 2, w, 3, 2, 1), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.Conv2d(w, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(w, w, 1), nn.ReLU())
        self.cls_head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(w, 10))
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(w * 10 * 10, 4))

    def forward(self, x):
        h = self.neck(self.backbone(x))
        return self.cls_head(h), self.box_head(h)


def loss_of(model, x, y, b):
    logits, box = model(x)
    return F.cross_entropy(logits, y) + F.l1_loss(box, b)


def iou(a, b):
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda z: (z[:, 2:] - z[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def evaluate(model, xt, yt, bt):
    model.eval()
    with torch.no_grad():
        logits, box = model(xt)
    model.train()
    return float((logits.argmax(1) == yt).float().mean()), float(iou(box, bt).mean())


def run(seed, arm, data, epochs, interval):
    batch, lr, warm_epochs, use_agvm, kind = ARMS[arm]
    x, y, b, xt, yt, bt = data
    torch.manual_seed(seed)
    model = TwoHead()
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    agvm = AGVM(model, opt, ["backbone", "neck", "cls_head", "box_head"], momentum=0.97) if use_agvm else None
    base = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = len(x) // batch
    total, warm = epochs * steps_per_epoch, warm_epochs * steps_per_epoch
    g = torch.Generator().manual_seed(seed)
    step, started, trace = 0, time.process_time(), []
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            progress = (step - warm) / (total - warm)
            factor = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * progress))
            for group, lr0 in zip(opt.param_groups, base):
                group["lr"] = lr0 * factor
            xb, yb, bb = x[idx], y[idx], b[idx]
            opt.zero_grad()
            loss_of(model, xb, yb, bb).backward()
            if agvm is not None and step >= warm and (step - warm) % interval == 0:
                half = batch // 2
                parts = (slice(0, half), slice(half, batch))
                grads = agvm.half_gradients(
                    lambda h, xb=xb, yb=yb, bb=bb, parts=parts: loss_of(model, xb[parts[h]], yb[parts[h]],
                                                                        bb[parts[h]]), model)
                agvm.update(grads[0], grads[1])
            if agvm is not None:
                with agvm.scaled():
                    opt.step()
            else:
                opt.step()
            step += 1
        if (epoch + 1) % max(1, epochs // 4) == 0 or epoch + 1 == epochs:
            acc, box_iou = evaluate(model, xt, yt, bt)
            trace.append({"epoch": epoch + 1, "acc": acc, "iou": box_iou,
                          "scales": list(agvm.scales) if agvm else None,
                          "phis": list(agvm.last_phis) if agvm else None})
    acc, box_iou = evaluate(model, xt, yt, bt)
    return {"acc": acc, "iou": box_iou, "steps": step, "cpu_s": time.process_time() - started,
            "final_scales": list(agvm.scales) if agvm else None, "trace": trace}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["small", "large", "large_agvm", "huge", "huge_agvm"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--interval", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        splits = load_data("fashion_mnist", None, 0.0, args.train, seed, args.test, 0.2)
        tr_x, tr_y = splits.train.gather(torch.arange(len(splits.train)), torch.device("cpu"))
        te_x, te_y = splits.test.gather(torch.arange(len(splits.test)), torch.device("cpu"))
        x, b = canvases(tr_x.float().squeeze(1), seed)
        xt, bt = canvases(te_x.float().squeeze(1), 99)
        data = (x, tr_y, b, xt, te_y, bt)
        for arm in args.arms:
            row = {"seed": seed, "arm": arm, "epochs": args.epochs, "train": args.train,
                   **run(seed, arm, data, args.epochs, args.interval)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
