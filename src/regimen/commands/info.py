"""``regimen info``: what this installation runs on: versions, threads, data, the compiled augmentation kernel, the
shipped recipes, and the tasks a recipe can name.

For bug reports and for checking a set-up: a missing Fashion-MNIST means recipes with ``data.name = "auto"`` train on
scikit-learn's digits; a missing kernel means the uint8 RandAugment path runs in torch, 3-8x slower.
"""

from __future__ import annotations

import os
import platform

__all__ = ["add_parser", "describe", "run", "tasks"]


def add_parser(subparsers) -> str:
    subparsers.add_parser("info", help="versions, threads, data, kernel and recipes of this installation; the tasks",
                          description="What this installation runs on (versions, threads, data, the compiled "
                                      "augmentation kernel, the shipped recipes) and the tasks a recipe can name.")
    return "info"


def describe() -> dict[str, str]:
    """The installation's facts as ``name -> value`` (strings)."""
    import torch

    import regimen
    from regimen import recipes
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
        "recipes": f"{len(recipes.list_recipes())} shipped in {recipes.folder()} (`regimen recipes` lists them)",
    }


def tasks() -> dict[str, str]:
    """``task name -> one line``: its summary and what it takes and predicts (``image -> labels``)."""
    from regimen.tasks import list_tasks

    return {name: f"{task.summary()} ({task.input_kind} -> {task.target_kind})" for name, task in list_tasks().items()}


def run(args) -> int:
    for name, value in describe().items():
        print(f"{name + ':':27s} {value}")
    found = tasks()
    print("\ntasks (recipe key `task`; `regimen methods --task NAME` lists the methods that serve one):")
    width = max((len(name) for name in found), default=0)
    for name, line in found.items():
        print(f"  {name:<{width}}  {line}")
    return 0
