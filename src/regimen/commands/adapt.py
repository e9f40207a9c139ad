"""``regimen adapt``: test-time adaptation (SAR or Tent) of a trained image classifier on a corrupted test stream.

Example::

    regimen adapt --checkpoint runs/a/checkpoint.pt --method sar --corruption gaussian_noise --severity 3 \\
        --stream class_sorted --out runs/a/adapt-noise3

The checkpoint's recipe names the task and data: the command rebuilds the model from the checkpoint, loads the
run's test split (images in [0, 1]), corrupts it (seeded), orders it into a stream, and runs
:func:`regimen.batch.adapt` twice on the same stream: without adaptation (the source model, evaluation mode) and with
``--method``. The accuracy is online: each batch is predicted before the update it triggers (SAR, Tent). It writes
``adapt.json`` and ``adapt.md`` in ``--out`` and prints one line.

Corruptions (on [0, 1] pixels, before the run's normalisation), severities 1-5:

- ``gaussian_noise``: x + σ·N(0, 1), clipped; σ = 0.2, 0.4, 0.6, 0.8, 1.0
- ``gaussian_blur``: separable 9-tap Gaussian, reflect padding; σ = 1, 1.5, 2, 2.5, 3 pixels
- ``contrast``: m + c·(x − m), m the image's mean; c = 0.4, 0.25, 0.1, 0.05, 0.02
- ``none``: the clean test images

(severities 1-3 are those of ``reports/wave2/sar_corruption.py``). Streams: ``iid`` (shuffled, ``--batch-size``),
``class_sorted`` (sorted by label: online label shift, every batch one or two classes), ``batch1`` (shuffled, one
image per update). The default LR is the SAR reference's rule 1e-3 · batch / 64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from regimen.errors import ConfigurationError

__all__ = ["add_parser", "run"]

CORRUPTIONS = {"gaussian_noise": (0.2, 0.4, 0.6, 0.8, 1.0), "gaussian_blur": (1.0, 1.5, 2.0, 2.5, 3.0),
               "contrast": (0.4, 0.25, 0.1, 0.05, 0.02), "none": (0.0,) * 5}
STREAMS = ("iid", "class_sorted", "batch1")

EPILOG = """\
corruptions (severity 1-5, on [0, 1] pixels):
  gaussian_noise  sigma 0.2 / 0.4 / 0.6 / 0.8 / 1.0
  gaussian_blur   sigma 1 / 1.5 / 2 / 2.5 / 3 px (9 taps)
  contrast        factor 0.4 / 0.25 / 0.1 / 0.05 / 0.02
  none            clean images
streams: iid (shuffled), class_sorted (label shift), batch1 (one image per update).
The accuracy is online (each batch predicted before its update) and is reported
beside the source model's on the same stream. Library: regimen.batch.adapt."""


def add_parser(subparsers) -> str:  # noqa: ANN001 - argparse's private type
    parser = subparsers.add_parser(
        "adapt", help="test-time adaptation (SAR, Tent) of a checkpoint on a corrupted test stream",
        description="Adapt a trained image classifier's norm layers online on its corrupted test set (SAR or Tent) "
                    "and compare with the unadapted model on the same stream.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="regimen checkpoint (checkpoint.pt of a run)")
    parser.add_argument("--method", default="sar", choices=["sar", "tent"], help="adaptation method (default sar)")
    parser.add_argument("--corruption", default="gaussian_noise", choices=list(CORRUPTIONS),
                        help="corruption of the test images (default gaussian_noise)")
    parser.add_argument("--severity", type=int, default=3, help="1-5 (default 3)")
    parser.add_argument("--stream", default="iid", choices=list(STREAMS), help="stream order (default iid)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch of the iid/class_sorted streams (64)")
    parser.add_argument("--samples", type=int, default=None,
                        help="test images in the stream (default: all; batch1: 512)")
    parser.add_argument("--lr", type=float, default=None, help="SGD LR of the norm parameters (default 1e-3*batch/64)")
    parser.add_argument("--rho", type=float, default=0.05, help="SAR's SAM radius (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream order and the noise (default 0)")
    parser.add_argument("--out", required=True, help="output folder (adapt.json, adapt.md)")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to already hold adapt.json")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return "adapt"


def _corrupt(images, kind: str, severity: int, generator):  # noqa: ANN001, ANN202 - torch imported lazily
    import torch
    import torch.nn.functional as F

    level = CORRUPTIONS[kind][severity - 1]
    if kind == "none":
        return images
    if kind == "gaussian_noise":
        return (images + level * torch.randn(images.shape, generator=generator)).clamp(0, 1)
    if kind == "gaussian_blur":
        channels = images.shape[1]
        taps = torch.arange(9, dtype=torch.float32) - 4
        kernel = torch.exp(-taps ** 2 / (2 * level ** 2))
        kernel = (kernel / kernel.sum()).to(images.dtype)
        out = F.conv2d(F.pad(images, (4, 4, 0, 0), mode="reflect"), kernel.view(1, 1, 1, 9).repeat(channels, 1, 1, 1),
                       groups=channels)
        return F.conv2d(F.pad(out, (0, 0, 4, 4), mode="reflect"), kernel.view(1, 1, 9, 1).repeat(channels, 1, 1, 1),
                        groups=channels)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + level * (images - mean)).clamp(0, 1)


def _check(args: argparse.Namespace) -> None:
    if not 1 <= args.severity <= 5:
        raise ConfigurationError(f"--severity must be 1-5, got {args.severity}")
    if args.batch_size < 1:
        raise ConfigurationError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.samples is not None and args.samples < 1:
        raise ConfigurationError(f"--samples must be >= 1, got {args.samples}")
    if args.lr is not None and not args.lr > 0:
        raise ConfigurationError(f"--lr must be > 0, got {args.lr}")
    if not args.rho > 0:
        raise ConfigurationError(f"--rho must be > 0, got {args.rho}")
    out = Path(args.out)
    if (out / "adapt.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out / 'adapt.json'} exists; pass --overwrite to replace it")


def _load(checkpoint: str):  # noqa: ANN202
    import torch

    from regimen.tasks import get_task
    from regimen.train import parse_recipe
    from regimen.train.checkpoint import load_checkpoint, load_model_state

    state = load_checkpoint(checkpoint)
    recipe = parse_recipe(state["recipe"])
    task = get_task(recipe.task)(recipe)
    if getattr(task, "input_kind", "") != "image" or not hasattr(task, "normalizer"):
        raise ConfigurationError(f"{checkpoint}: adapt needs an image classification run, this one is task "
                                 f"{recipe.task!r}")
    data = task.load_data()
    if data.test is None:
        raise ConfigurationError(f"{checkpoint}: the run's data ({recipe.data.name!r}) has no test split")
    torch.manual_seed(recipe.seed)
    model = task.build_model(data)
    load_model_state(model, state["model"], str(checkpoint))
    model.eval()
    return recipe, task, data, model


def run(args: argparse.Namespace) -> int:
    import torch

    from regimen.batch import adapt, norm_affine_parameters

    _check(args)
    recipe, task, data, model = _load(args.checkpoint)
    if not norm_affine_parameters(model):
        raise ConfigurationError(f"{args.checkpoint}: the model ({type(model).__name__}) has no BatchNorm/GroupNorm/"
                                 "LayerNorm layer; SAR and Tent adapt only those")
    batch = 1 if args.stream == "batch1" else args.batch_size
    count = len(data.test) if args.samples is None else args.samples
    if args.stream == "batch1" and args.samples is None:
        count = min(count, 512)
    count = min(count, len(data.test))
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(data.test), generator=generator)[:count]
    images, labels = data.test.gather(order, torch.device("cpu"))
    if args.stream == "class_sorted":
        by_class = torch.sort(labels, stable=True).indices
        images, labels = images[by_class], labels[by_class]
    normalize = task.normalizer(data, torch.device("cpu"))
    x = normalize(_corrupt(images, args.corruption, args.severity, generator))
    batches = [x[i:i + batch] for i in range(0, count, batch)]
    lr = args.lr if args.lr is not None else 1e-3 * batch / 64
    kwargs = {"lr": lr, "rho": args.rho} if args.method == "sar" else {"lr": lr}
    started = time.perf_counter()
    source_predictions, _ = adapt(model, batches, "none")
    predictions, adapter = adapt(model, batches, args.method, **kwargs)
    elapsed = time.perf_counter() - started
    source = float((source_predictions == labels).double().mean())
    adapted = float((predictions == labels).double().mean())
    result = {"checkpoint": str(args.checkpoint), "recipe": recipe.name, "method": args.method,
              "corruption": args.corruption, "severity": args.severity,
              "level": CORRUPTIONS[args.corruption][args.severity - 1], "stream": args.stream, "batch_size": batch,
              "samples": count, "lr": lr, "rho": args.rho if args.method == "sar" else None, "seed": args.seed,
              "source_accuracy": source, "adapted_accuracy": adapted, "gain": adapted - source,
              "updates": adapter.updates, "resets": getattr(adapter, "resets", 0), "time_s": elapsed}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapt.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# Test-time adaptation: {args.method} on {args.corruption} (severity {args.severity})", "",
             f"Checkpoint `{args.checkpoint}` (recipe {recipe.name}); stream {args.stream}, batch {batch}, {count} "
             f"test images, seed {args.seed}; LR {lr:g}. Online accuracy (each batch predicted before its update).",
             "", "| model | accuracy |", "|---|---|", f"| source (no adaptation) | {source:.4f} |",
             f"| {args.method} | {adapted:.4f} |", "",
             f"Gain {adapted - source:+.4f}; {adapter.updates} updates, {result['resets']} resets; {elapsed:.1f} s."]
    (out / "adapt.md").write_text("\n".join(lines) + "\n")
    if not args.quiet:
        print(f"{args.method} on {args.corruption}-{args.severity} ({args.stream}, {count} images): accuracy "
              f"{adapted:.4f} vs {source:.4f} without adaptation ({adapted - source:+.4f}); results in {out}")
    return 0
