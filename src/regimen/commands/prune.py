"""``regimen prune``: structurally prune a trained checkpoint, print the report, save the smaller model.

Example: ``regimen prune --checkpoint runs/a/checkpoint.pt --ratio 0.5 --round-to 8 --out runs/a/pruned.pt``. The
output is a ``regimen-pruned-v1`` file (``regimen.subnet.load_pruned(path)`` rebuilds the smaller model,
``weights_only`` safe). ``--ratio`` counts channels: 0.5 removes about 75 % of the parameters of a conv between two
pruned layers. Fine-tune the pruned model afterwards (see the epilog of ``regimen prune --help``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from regimen.errors import ConfigurationError

__all__ = ["add_parser", "run"]

EPILOG = """\
--ratio counts channels, not parameters: a layer whose input and output channels
are both pruned keeps (1 - ratio)^2 of its weights (0.5 -> about 25 % left).

Pruning costs accuracy: fine-tune the pruned model at ~1/10 of the learning rate:
    model = regimen.subnet.load_pruned("pruned.pt")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for x, y in loader: optimizer.zero_grad(); F.cross_entropy(model(x), y).backward(); optimizer.step()
"""


def add_parser(subparsers) -> str:  # noqa: ANN001 - argparse's private type
    parser = subparsers.add_parser(
        "prune", help="structurally prune a checkpoint (physical channel removal)",
        description="Remove a fraction of channels (and attention heads) from a trained checkpoint's model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="regimen checkpoint (checkpoint.pt of a run)")
    parser.add_argument("--ratio", type=float, default=0.5,
                        help="fraction of channels to remove, in [0, 1); parameters shrink faster: 0.5 removes "
                             "about 75%% of the weights of a conv whose inputs and outputs are both pruned")
    parser.add_argument("--out", required=True, help="where to write the pruned model")
    parser.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale"],
                        help="channel importance (taylor needs gradients: use the library)")
    parser.add_argument("--scope", default="global", choices=["global", "uniform"])
    parser.add_argument("--round-to", type=int, default=None,
                        help="keep multiples of this many channels; 8 (or 16) gives widths GPUs run at full speed")
    parser.add_argument("--ignore", nargs="*", default=[], help="module names to leave unpruned")
    return "prune"


def run(args: argparse.Namespace) -> int:
    import torch

    from regimen.models import build_model
    from regimen.subnet import prune, restore_pruned, save_pruned
    from regimen.train.checkpoint import load_checkpoint

    state = load_checkpoint(args.checkpoint)
    spec = state.get("model_spec") or {}
    if "name" not in spec or "input_shape" not in spec:
        raise ConfigurationError(f"{args.checkpoint} has no model_spec (name, input_shape): cannot rebuild the model")
    input_shape = tuple(int(v) for v in spec["input_shape"])
    model = build_model(spec["name"], input_shape, int(spec.get("num_classes", 10)), **spec.get("options", {}))
    restore_pruned(model, state["model"])  # plain load, or re-shaped when the run already pruned (HESSO)
    model.eval()
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    report = prune(model, example, ratio=args.ratio, importance=args.importance, scope=args.scope,
                   round_to=args.round_to, ignore=args.ignore)
    print(report)
    save_pruned(model, Path(args.out),  # a reference model: its constructor config is saved, loads without model=
                extra={"model_spec": spec, "source": str(args.checkpoint), "ratio": args.ratio,
                       "params_before": report.params_before, "params_after": report.params_after,
                       "macs_before": report.macs_before, "macs_after": report.macs_after})
    print(f"saved pruned model to {args.out}")
    return 0
