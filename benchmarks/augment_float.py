"""Throughput of regimen's float32 RandAugment / TrivialAugment against Kornia's, in the same run.

Run: ``.venv/bin/python benchmarks/augment_float.py [--repeats 21] [--threads 1] [--per-op] [--op-repeats 9]``

What is compared (all float32 in [0, 1], random content, CPU, ``torch.set_num_threads(--threads)``):

* **Pipelines**, each call including its own parameter sampling (a fresh generator per call for ours):
  ``regimen.augment.RandAugment(num_ops=2, magnitude=9)`` vs ``kornia.augmentation.auto.RandAugment(n=2, m=9)`` and
  ``regimen.augment.TrivialAugment()`` vs ``kornia.augmentation.auto.TrivialAugment()``, as each library ships them.
  They are not the same computation op for op: ours draws ops and magnitudes per image (Kornia draws the ops once per
  call for the whole batch, magnitudes per image), ours has Pillow's op set with NEAREST geometry (Kornia adds
  Invert and SolarizeAdd, uses bilinear geometry and HSV saturation for Color). Because Kornia's cost depends on
  which ops a call drew, its median and mean over many calls are both printed. Kornia rejects 1-channel input, so
  a 1-channel batch is given to Kornia as a 3-channel replica; the ``256x3x28x28`` row is the like-for-like size.
  "ours torch path" is the same call without the compiled kernel (``native.disabled()``, what
  ``REGIMEN_NATIVE=0`` or a machine without a C compiler runs).
* **Per op** (``--per-op``): every image draws the op with its own parameter (RandAugment magnitude 9 of 30, random
  sign), ours (``apply_ops``) vs the Kornia module that Kornia's RandAugment runs for that op (``p=1``,
  ``same_on_batch=False``, parameters at the same magnitude; geometric ops with ``resample="nearest"`` like ours).

Timing: contenders run in interleaved rounds (each timed call right after an untimed call of the same contender), so
drift on the shared machine hits all alike; medians over rounds; the load average is printed before and after.
Read the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from regimen.augment import OPS, AugmentParams, RandAugment, TrivialAugment, apply_ops, native


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _torch_path(fn):
    def run():
        with native.disabled():
            fn()

    return run


def pipelines(shape: tuple[int, int, int, int], repeats: int) -> None:
    from kornia.augmentation.auto import RandAugment as KorniaRandAugment
    from kornia.augmentation.auto import TrivialAugment as KorniaTrivialAugment

    n, c, h, w = shape
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    kx = x if c == 3 else x.expand(n, 3, h, w).contiguous()
    x8 = (x * 255).round().to(torch.uint8)
    seeds = iter(range(10**9))
    for label, ours, kornia in (("RandAugment", RandAugment(num_ops=2, magnitude=9), KorniaRandAugment(n=2, m=9)),
                                ("TrivialAugment", TrivialAugment(), KorniaTrivialAugment())):
        def run_ours(aug=ours, images=x):
            aug(images, generator=torch.Generator().manual_seed(next(seeds)))

        fns = {"ours": run_ours, "ours_torch_path": _torch_path(run_ours), "kornia": lambda k=kornia: k(kx),
               "ours_uint8": lambda aug=ours: run_ours(aug, x8)}
        t = _interleaved(fns, repeats)
        med = {name: statistics.median(v) * 1e3 for name, v in t.items()}
        mean = {name: statistics.fmean(v) * 1e3 for name, v in t.items()}
        print(f"| {'x'.join(map(str, shape))} | {label} | {med['ours']:.2f} | {med['ours_torch_path']:.2f} "
              f"| {med['kornia']:.2f} (mean {mean['kornia']:.2f}) | **{med['kornia'] / med['ours']:.1f}** "
              f"| {mean['kornia'] / mean['ours']:.1f} | {med['kornia'] / med['ours_torch_path']:.2f} "
              f"| {med['ours_uint8']:.2f} |", flush=True)


def _kornia_modules(magnitude: float = 9 / 30) -> dict:
    """The module Kornia's RandAugment runs for each of our ops, at the same relative magnitude."""
    import kornia.augmentation as K

    m = magnitude
    return {
        "AutoContrast": K.RandomAutoContrast(p=1.0),
        "Equalize": K.RandomEqualize(p=1.0),
        "Rotate": K.RandomRotation(30 * m, resample="nearest", p=1.0),
        "Solarize": K.RandomSolarize(thresholds=(0.5 - m / 2, 0.5 - m / 2 + 1e-6), additions=0.0, p=1.0),
        "Color": K.RandomSaturation((1 - 0.9 * m, 1 + 0.9 * m)),
        "Posterize": K.RandomPosterize(bits=(6.0, 7.0), p=1.0),
        "Contrast": K.RandomContrast((1 - 0.9 * m, 1 + 0.9 * m)),
        "Brightness": K.RandomBrightness((1 - 0.9 * m, 1 + 0.9 * m)),
        "Sharpness": K.RandomSharpness((1 - 0.9 * m, 1 + 0.9 * m), p=1.0),
        "ShearX": K.RandomShear((-16.7 * m, 16.7 * m, 0.0, 0.0), resample="nearest", p=1.0),
        "ShearY": K.RandomShear((0.0, 0.0, -16.7 * m, 16.7 * m), resample="nearest", p=1.0),
        "TranslateX": K.RandomTranslate((-0.45 * m, 0.45 * m), (0.0, 0.0), resample="nearest", p=1.0),
        "TranslateY": K.RandomTranslate((0.0, 0.0), (-0.45 * m, 0.45 * m), resample="nearest", p=1.0),
    }


def per_op(shape: tuple[int, int, int, int], repeats: int) -> None:
    n, c, h, w = shape
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    aug = RandAugment(num_ops=1, magnitude=9)
    g = torch.Generator().manual_seed(1)
    r = torch.full((n, 1), 9 / 30, dtype=torch.float64)
    signs = torch.where(torch.rand((n, 1), generator=g) < 0.5, -1.0, 1.0).double()
    modules = _kornia_modules()
    print(f"\nper op, {'x'.join(map(str, shape))} (every image draws the op, its own parameter):\n")
    print("| op | ours float32 (ms) | ours torch path (ms) | Kornia module (ms) | Kornia / ours |")
    print("|---" * 5 + "|")
    for name, module in modules.items():
        if c == 1 and name == "Color":
            continue
        ops = torch.full((n, 1), OPS.index(name))
        params = AugmentParams(ops, aug._values(ops, r, signs, h, w))
        t = _interleaved({"ours": lambda p=params: apply_ops(x, p),
                          "torch": _torch_path(lambda p=params: apply_ops(x, p)),
                          "kornia": lambda k=module: k(x)}, repeats)
        med = {key: statistics.median(v) * 1e3 for key, v in t.items()}
        print(f"| {name} | {med['ours']:.2f} | {med['torch']:.2f} | {med['kornia']:.2f} "
              f"| {med['kornia'] / med['ours']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--op-repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-op", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import kornia

    if not native.available():
        print(f"WARNING: compiled kernel unavailable ({native.build_error()}): 'ours' is the torch path")
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average (1/5/15 min) "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at start; medians of {args.repeats} interleaved rounds")
    print("\n| batch | pipeline | ours f32 (ms) | ours torch path (ms) | Kornia f32 (ms) | x Kornia (medians) "
          "| x Kornia (means) | torch path x Kornia | ours uint8 (ms) |")
    print("|---" * 9 + "|")
    for shape in ((256, 1, 28, 28), (256, 3, 28, 28), (32, 3, 224, 224)):
        pipelines(shape, args.repeats)
    if args.per_op:
        for shape in ((256, 1, 28, 28), (32, 3, 224, 224)):
            per_op(shape, args.op_repeats)
    print(f"\nload average (1/5/15 min) at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
