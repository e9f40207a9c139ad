"""``regimen info``: what this installation runs on: versions, threads, data, and the compiled augmentation kernel.

For bug reports and for checking a set-up: a missing Fashion-MNIST means recipes with ``data.name = "auto"`` train on
scikit-learn's digits; a missing kernel means the uint8 RandAugment path runs in torch, 3-8x slower.
"""

from __future__ import annotations

import os
import platform

__all__ = ["add_parser", "run", "describe"]


def add_parser(subparsers) -> str:
    subparsers.add_parser("info", help="versions, threads, data and the compiled kernel of this installation",
                          description=__doc__.splitlines()[0])
    return "info"


def describe() -> dict[str, str]:
    """The installation's facts as ``name -> value`` (strings)."""
    import torch

    import regimen
    from regimen.augment import native
    from regimen.data.idx import find_fashion_mnist

    folder = find_fashion_mnist()
    has_data = any(folder.glob("train-images-idx3-ubyte*")) if folder.is_dir() else False
    kernel = "built" if native.available() else f"unavailable ({native.build_error()}); torch path in use"
    if native.available():
        kernel += ", AVX-512 routes " + ("on" if native.set_simd(True) else "off (CPU lacks them)")
    return {
        "regimen": regimen.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "torch threads": str(torch.get_num_threads()),
        "fashion-mnist": f"{folder} ({'found' if has_data else 'missing: recipes fall back to scikit-learn digits'})",
        "uint8 augmentation kernel": kernel,
    }


def run(args) -> int:
    for name, value in describe().items():
        print(f"{name + ':':27s} {value}")
    return 0
