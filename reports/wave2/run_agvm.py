"""AGVM on a two-head model at large batch: synthetic localisation (a Fashion-MNIST item pasted at a random place of a
40x40 canvas; a class head and a box head on a conv backbone + neck). SGD at batch 2048 with and without AGVM at equal
LR (linear scaling from batch 128), and batch 128 as the reference. Class accuracy and mean box IoU on held-out
canvases, paired seeds. A loop of its own (the tasks have no localisation task): it uses regimen.batch.AGVM.

Run: cd WORKTREE && OMP_NUM_THREADS=1 PYTHONPATH=src python reports/wave2/run_agvm.py > reports/wave2/agvm.json
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from regimen.batch import AGVM
from regimen.data import load_data

SEEDS = [0, 1, 2]
TRAIN, TEST, CANVAS, EPOCHS = 8000, 2000, 40, 6
BOX_WEIGHT = 1.0


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
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.neck = nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU())
        self.cls_head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        self.box_head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 10 * 10, 4))

    def forward(self, x):
        h = self.neck(self.backbone(x))
        return self.cls_head(h), self.box_head(h)


def loss_of(model, x, y, b):
    logits, box = model(x)
    return F.cross_entropy(logits, y) + BOX_WEIGHT * F.l1_loss(box, b)


def iou(a, b):
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda z: (z[:, 2:] - z[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def run(seed, batch, lr, use_agvm, data):
    x, y, b, xt, yt, bt = data
    torch.manual_seed(seed)
    model = TwoHead()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    agvm = AGVM(model, opt, ["backbone", "neck", "cls_head", "box_head"], momentum=0.9) if use_agvm else None
    base = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = len(x) // batch
    total, warm = EPOCHS * steps_per_epoch, steps_per_epoch
    g = torch.Generator().manual_seed(seed)
    step, started, scales = 0, time.perf_counter(), []
    for _ in range(EPOCHS):
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
            if agvm is not None and step >= warm and (step - warm) % 2 == 0:
                half = batch // 2
                parts = (slice(0, half), slice(half, batch))
                grads = agvm.half_gradients(
                    lambda h, xb=xb, yb=yb, bb=bb, parts=parts: loss_of(model, xb[parts[h]], yb[parts[h]],
                                                                        bb[parts[h]]), model)
                agvm.update(grads[0], grads[1])
                scales.append(list(agvm.scales))
            if agvm is not None:
                with agvm.scaled():
                    opt.step()
            else:
                opt.step()
            step += 1
    elapsed = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        logits, box = model(xt)
    return {"acc": float((logits.argmax(1) == yt).float().mean()), "iou": float(iou(box, bt).mean()),
            "train_time": elapsed, "final_scales": scales[-1] if scales else None}


def main():
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        splits = load_data("fashion_mnist", None, 0.0, TRAIN, seed, TEST, 0.2)
        tr_x, tr_y = splits.train.gather(torch.arange(len(splits.train)), torch.device("cpu"))
        te_x, te_y = splits.test.gather(torch.arange(len(splits.test)), torch.device("cpu"))
        x, b = canvases(tr_x.float().squeeze(1), seed)  # images in [0, 1]
        xt, bt = canvases(te_x.float().squeeze(1), 99)
        data = (x, tr_y, b, xt, te_y, bt)
        for arm, batch, lr, use in (("sgd_b128", 128, 0.05, False), ("sgd_b2048", 2048, 0.8, False),
                                    ("sgd_b2048_agvm", 2048, 0.8, True)):
            row = {"seed": seed, "arm": arm, **run(seed, batch, lr, use, data)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
