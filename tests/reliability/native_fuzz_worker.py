"""Fuzz the compiled augmentation kernel (src/regimen/augment/uint8_kernel.c) in a process of its own: a segfault
here kills this process, not the test suite (test_native_kernel_fuzz.py checks the exit code).

``python native_fuzz_worker.py CASES SEED`` prints one JSON line ``{"cases": n, "failures": [...]}``. Properties:

* raw kernel calls with random but size-consistent arrays (any op kind, any fixed-point map, including huge and
  negative ones, NaN/inf factors, random tables, degenerate images 1 x W, H x 1, empty batches): no crash, output of
  the input's shape; geometric ops only move pixels (every output value is an input value of that image/channel or
  the fill level);
* inconsistent arrays (a wrong shape, an op kind out of range, a non-CPU or wrong-dtype image): ``ValueError``;
* whole RandAugment op sequences (``apply_ops``): the compiled path equals the torch path bit for bit (uint8) or
  within 1e-5 (float32).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch


def main(cases: int, seed: int) -> None:
    from regimen.augment import OPS, AugmentParams, apply_ops, native

    torch.set_num_threads(1)
    if not native.available():
        print(json.dumps({"cases": 0, "failures": [], "skipped": native.build_error()}))
        return
    rng = np.random.default_rng(seed)
    failures: list[str] = []
    done = 0
    uint8_fn = native._state["function"]
    float_fn = native._state["float_function"]

    def note(text: str) -> None:
        if len(failures) < 20:
            failures.append(text)

    for case in range(cases):
        n = int(rng.integers(0, 4))
        c = int(rng.choice([1, 3]))
        h, w = int(rng.integers(1, 18)), int(rng.integers(1, 18))
        k = int(rng.integers(1, 4))
        mode = case % 4
        if mode in (0, 1):  # raw calls, uint8 (0) or float32 (1)
            top = 7 if mode == 0 else max(native.FLOAT_KINDS.values())
            kinds = rng.integers(0, top + 1, (n, k)).astype(np.int32)
            factors = rng.choice([0.0, 0.5, 1.0, 2.0, -3.0, 1e30, np.nan, np.inf, -np.inf, 4.0, 255.0],
                                 (n, k)).astype(np.float32)
            maps = rng.choice([0, 1, -1, 65536, -65536, 2**16 * 3, 2**31 - 1, -(2**31), 2**40, -(2**40), 2**62,
                               -(2**62), 12345, -999999], (n, k, 6)).astype(np.int64)
            if rng.random() < 0.5:  # plausible maps too: identity-ish with offsets
                maps[..., 1] = 65536
                maps[..., 2] = 0
                maps[..., 4] = 0
                maps[..., 5] = 65536
            if mode == 0:
                images = torch.from_numpy(rng.integers(0, 256, (n, c, h, w), dtype=np.uint8))
                tables = rng.integers(0, 256, (n, k, 256), dtype=np.uint8)
                fill = rng.integers(0, 256, (c,), dtype=np.uint8)
                out = native.run_kernel(uint8_fn, images, kinds, factors, tables, maps, fill)
            else:
                images = torch.from_numpy(rng.random((n, c, h, w), dtype=np.float32))
                fill = rng.random((c,), dtype=np.float32)
                out = native.run_float_kernel(float_fn, images, kinds, factors, maps, fill)
            if out.shape != images.shape or out.dtype != images.dtype:
                note(f"case {case}: output {tuple(out.shape)} {out.dtype} for input {tuple(images.shape)}")
            if mode == 0 and k == 1:
                for i in range(n):
                    if kinds[i, 0] == 7:  # geometric: only moves pixels
                        for ch in range(c):
                            allowed = set(images[i, ch].flatten().tolist()) | {int(fill[ch])}
                            if not set(out[i, ch].flatten().tolist()) <= allowed:
                                note(f"case {case}: a geometric map invented pixel values (map {maps[i, 0].tolist()})")
        elif mode == 2:  # inconsistent arrays must be refused before the C code sees them
            images = torch.zeros(max(n, 1), c, h, w, dtype=torch.uint8)
            m = images.shape[0]
            good = dict(kinds=np.zeros((m, k), np.int32), factors=np.zeros((m, k), np.float32),
                        tables=np.zeros((m, k, 256), np.uint8), maps=np.zeros((m, k, 6), np.int64),
                        fill=np.zeros(c, np.uint8))
            broken = str(rng.choice(["kinds", "factors", "tables", "maps", "fill", "kind_range", "dtype", "dims",
                                     "meta"]))
            args = dict(good)
            imgs = images
            if broken == "kind_range":
                args["kinds"] = np.full((m, k), 8, np.int32)
            elif broken == "dtype":
                imgs = images.float()
            elif broken == "dims":
                imgs = images[0]
            elif broken == "meta":
                imgs = images.to("meta")
            else:
                shape = list(np.shape(good[broken]))
                shape[-1] += 1
                args[broken] = np.zeros(shape, good[broken].dtype)
            try:
                native.run_kernel(uint8_fn, imgs, args["kinds"], args["factors"], args["tables"], args["maps"],
                                  args["fill"])
                note(f"case {case}: an inconsistent {broken} was accepted")
            except ValueError:
                pass
        else:  # whole op sequences: compiled == torch
            dtype = torch.uint8 if rng.random() < 0.5 else torch.float32
            raw = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
            images = torch.from_numpy(raw) if dtype == torch.uint8 else torch.from_numpy(raw).float() / 255
            ops = torch.from_numpy(rng.integers(0, len(OPS), (n, k)))
            values = torch.zeros(n, k, dtype=torch.float64)
            for i, name in enumerate(OPS):
                sel = ops == i
                count = int(sel.sum())
                if not count:
                    continue
                draw = {"Rotate": rng.uniform(-30, 30, count), "ShearX": rng.uniform(-0.3, 0.3, count),
                        "ShearY": rng.uniform(-0.3, 0.3, count), "TranslateX": rng.uniform(-w / 2, w / 2, count),
                        "TranslateY": rng.uniform(-h / 2, h / 2, count), "Posterize": rng.integers(1, 9, count),
                        "Solarize": rng.uniform(0, 256, count)}.get(name, rng.uniform(0.1, 1.9, count))
                values[sel] = torch.from_numpy(np.asarray(draw, dtype=np.float64))
            params = AugmentParams(ops, values)
            fill = int(rng.integers(0, 256)) if dtype == torch.uint8 else float(rng.random())
            compiled = apply_ops(images, params, fill=fill)
            with native.disabled():
                reference = apply_ops(images, params, fill=fill)
            same = (torch.equal(compiled, reference) if dtype == torch.uint8
                    else torch.allclose(compiled, reference, atol=1e-5))
            if not same:
                note(f"case {case}: compiled != torch for {dtype} {tuple(images.shape)} ops {ops.tolist()}")
        done += 1
    print(json.dumps({"cases": done, "failures": failures}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
