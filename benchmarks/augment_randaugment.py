"""Throughput of regimen's per-sample batched RandAugment vs a per-image Pillow loop and Kornia's RandAugment.

Run: ``.venv/bin/python benchmarks/augment_randaugment.py [--repeats 7] [--threads 1] [--per-op]``

Setup (printed): RandAugment(num_ops=2, magnitude=9, 31 bins), nearest interpolation, on uint8 batches
``256x1x28x28`` and ``64x3x224x224`` (random content). Every image draws its own ops in our call; the Pillow loop
replays exactly those ops image by image with ``ImageOps``/``ImageEnhance``/``Image.transform`` (timed on ready PIL
images, and again including the tensor<->PIL conversion a tensor pipeline needs). Kornia's
``kornia.augmentation.auto.RandAugment(n=2, m=9)`` runs on the same batch as float32 in [0, 1] (it does not take
uint8) and shares its ops across the batch. The "copy floor" is ``2 x num_ops`` plain ``clone()``s of the uint8 batch
(one read + one write per op): our time is reported as a multiple of it. "ours uint8" is the path users get: the
compiled kernel (``regimen.augment.native``) when it could be built; the torch implementation of the same ops
(``native.disabled()``) is timed beside it. All timings are medians of ``--repeats``
rounds, in one process, with ``torch.set_num_threads(--threads)``; every round times each contender once (right
after an untimed warm call of the same contender), back to back, so drift on the shared machine hits all alike.
Read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from regimen.augment import RandAugment, native
from regimen.augment.pillow_reference import from_pil, pillow_op, to_pil

STAT = statistics.median  # --stat min switches to the minimum (filters preemption on a shared machine)


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Time every function once per round, round after round (so drift on a shared machine hits all alike); each
    timed call directly follows an untimed call of the same function, so every contender is measured warm (caches,
    branch predictors and allocator in its own steady state rather than in the state the previous contender left).
    Returns the statistic over rounds of each function's wall time."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: STAT(values) for name, values in times.items()}


def run(shape: tuple[int, int, int, int], repeats: int, kornia_ok: bool) -> dict[str, float]:
    n, c, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
    xf = x.float() / 255
    aug = RandAugment(num_ops=2, magnitude=9)
    params = aug.sample(n, h, w, torch.Generator().manual_seed(1))
    chains = params.as_lists()
    pil_images = [to_pil(image) for image in x]

    def ours():
        aug.apply(x, params)

    def ours_torch_path():
        with native.disabled():
            aug.apply(x, params)

    def ours_with_sampling():
        aug(x, generator=torch.Generator().manual_seed(1))

    def ours_float():
        aug.apply(xf, params)

    def pillow_ops_only():
        for image, chain in zip(pil_images, chains, strict=True):
            for op, value in chain:
                image = pillow_op(image, op, value)

    def pillow_with_conversion():
        out = []
        for image, chain in zip(x, chains, strict=True):
            pil = to_pil(image)
            for op, value in chain:
                pil = pillow_op(pil, op, value)
            out.append(from_pil(pil))
        torch.stack(out)

    def copies():
        for _ in range(2 * aug.num_ops):
            x.clone()

    fns = {
        "ours_uint8": ours,
        "ours_uint8_torch_path": ours_torch_path,
        "ours_uint8_incl_sampling": ours_with_sampling,
        "ours_float32": ours_float,
        "pillow_ops_only": pillow_ops_only,
        "pillow_incl_conversion": pillow_with_conversion,
        "copy_floor": copies,
    }
    if kornia_ok:
        from kornia.augmentation.auto import RandAugment as KorniaRandAugment

        kaug = KorniaRandAugment(n=2, m=9)
        # Kornia's RandAugment rejects 1-channel input (its Color op needs RGB): time it on a 3-channel replica.
        kx = xf if c == 3 else xf.expand(n, 3, h, w).contiguous()
        fns["kornia_float32"] = lambda: kaug(kx)
    results = _interleaved(fns, repeats)
    return results


#: One mid-range parameter per op (RandAugment magnitude 9 of 31, positive sign) for the per-op table.
_PER_OP_VALUES = {"Rotate": 8.7, "Solarize": 255 * (1 - 9 / 30), "Color": 1.27, "Posterize": 7.0, "Contrast": 1.27,
                  "Brightness": 1.27, "Sharpness": 1.27, "ShearX": 0.09, "ShearY": 0.09, "TranslateX": 4.0,
                  "TranslateY": 4.0}


def per_op(shape: tuple[int, int, int, int], repeats: int) -> None:
    """Every image of the batch draws the same op: ours vs the Pillow loop, op by op (where the time goes)."""
    from regimen.augment import OPS, AugmentParams, apply_ops

    n, c, h, w = shape
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pil_images = [to_pil(image) for image in x]
    print(f"\nper op, {'x'.join(map(str, shape))} (all images draw the op):\n")
    print("| op | ours (ms) | Pillow ops-only (ms) | x Pillow | torch path (ms) | x Pillow |")
    print("|---" * 6 + "|")
    for index, name in enumerate(OPS):
        if name == "Identity" or (c == 1 and name == "Color"):
            continue
        value = _PER_OP_VALUES.get(name, 0.0)
        params = AugmentParams(torch.full((n, 1), index), torch.full((n, 1), value, dtype=torch.float64))
        r = _interleaved({"ours": lambda p=params: apply_ops(x, p),
                          "torch": lambda p=params: _torch_path(apply_ops, x, p),
                          "pillow": lambda op=name, v=value: [pillow_op(im, op, v) for im in pil_images]}, repeats)
        print(f"| {name} | {r['ours'] * 1e3:.2f} | {r['pillow'] * 1e3:.2f} | {r['pillow'] / r['ours']:.1f} "
              f"| {r['torch'] * 1e3:.2f} | {r['pillow'] / r['torch']:.1f} |")


def _torch_path(fn, *args):
    with native.disabled():
        return fn(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stat", choices=("median", "min"), default="median")
    parser.add_argument("--per-op", action="store_true", help="also time every op alone against Pillow")
    args = parser.parse_args()
    global STAT
    STAT = statistics.median if args.stat == "median" else min
    torch.set_num_threads(args.threads)
    try:
        import kornia  # noqa: F401

        kornia_ok = True
    except ImportError:
        kornia_ok = False
    import PIL

    if not native.available():
        print(f"WARNING: compiled kernel unavailable ({native.build_error()}): 'ours' is the torch path")
    print(f"torch {torch.__version__}, Pillow {PIL.__version__}, threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; RandAugment(num_ops=2, magnitude=9), {args.stat} of {args.repeats} "
          "rounds, contenders interleaved, each timed warm")
    header = (
        "| batch | ours uint8 (ms) | images/s | Pillow ops-only (ms) | x Pillow | Pillow+conv (ms) | x Pillow+conv "
        "| Kornia f32 (ms) | x Kornia | ours f32 (ms) | copy floor (ms) | ours / floor |"
    )
    print(header)
    print("|---" * 12 + "|")
    for shape in ((256, 1, 28, 28), (64, 3, 224, 224)):
        r = run(shape, args.repeats, kornia_ok)
        kornia = r.get("kornia_float32", float("nan"))
        print(
            f"| {'x'.join(map(str, shape))} | {r['ours_uint8'] * 1e3:.1f} | {shape[0] / r['ours_uint8']:.0f} "
            f"| {r['pillow_ops_only'] * 1e3:.1f} | {r['pillow_ops_only'] / r['ours_uint8']:.1f} "
            f"| {r['pillow_incl_conversion'] * 1e3:.1f} | {r['pillow_incl_conversion'] / r['ours_uint8']:.1f} "
            f"| {kornia * 1e3:.1f} | {kornia / r['ours_uint8']:.1f} | {r['ours_float32'] * 1e3:.1f} "
            f"| {r['copy_floor'] * 1e3:.2f} | {r['ours_uint8'] / r['copy_floor']:.1f} |"
        )
        note = "" if shape[1] == 3 else "; Kornia timed on a 3-channel replica (it rejects C=1)"
        print(f"  (incl. parameter sampling: {r['ours_uint8_incl_sampling'] * 1e3:.1f} ms; torch path without the "
              f"compiled kernel: {r['ours_uint8_torch_path'] * 1e3:.1f} ms = "
              f"{r['pillow_ops_only'] / r['ours_uint8_torch_path']:.1f}x Pillow; "
              f"Kornia vs ours float32: {kornia / r['ours_float32']:.1f}x{note})")
    if args.per_op:
        for shape in ((256, 1, 28, 28), (64, 3, 224, 224)):
            per_op(shape, args.repeats)


if __name__ == "__main__":
    main()
