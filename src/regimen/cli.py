"""The ``regimen`` command: ``train``, ``bench``, ``report``, ``methods`` and the subcommands in
``regimen.commands`` (``prune``, ``tune``, ``info``). Thin: parses arguments, calls library code, turns user errors into
one-line messages and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

__all__ = ["main"]

#: Subcommand modules (``add_parser(subparsers)`` + ``run(args) -> int``), loaded when present.
COMMAND_MODULES = ("regimen.commands.prune", "regimen.commands.tune", "regimen.commands.info")


def _user_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from regimen.data import DataError
    from regimen.train import CheckpointError, RecipeError

    return (RecipeError, DataError, CheckpointError, ValidationError, ValueError, KeyError, FileNotFoundError)


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a recipe", description="Train the model a recipe describes.")
    parser.add_argument("--recipe", help="TOML recipe (default with --resume: the checkpoint's recipe)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", help="continue from this checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to already hold a run")
    parser.add_argument("--devices", type=int, help="number of processes/devices (DDP); same as train.devices")
    parser.add_argument("--accelerator", help="cpu, cuda, mps or auto; same as train.accelerator")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _run_train(args) -> int:
    from regimen.train import apply_overrides, fit, load_checkpoint, parse_recipe
    from regimen.train.recipe import read_recipe_file

    overrides = list(args.overrides)
    if args.devices is not None:
        overrides.append(f"train.devices={args.devices}")
    if args.accelerator is not None:
        overrides.append(f'train.accelerator="{args.accelerator}"')
    if args.recipe:
        raw = read_recipe_file(args.recipe)
    elif args.resume:
        raw = load_checkpoint(args.resume)["recipe"]
    else:
        raise ValueError("train needs --recipe PATH (or --resume CHECKPOINT)")
    recipe = parse_recipe(apply_overrides(raw, overrides))
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    if args.resume and not args.out:
        out = Path(args.resume).parent
    result = fit(recipe, out_dir=out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                 progress=not args.quiet and sys.stderr.isatty())
    if not args.quiet and result.rank == 0:
        print(f"metrics, summary and checkpoint in {out}", file=sys.stderr)
    return 0


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run recipes and compare them",
                                   description="Run each recipe (fresh process, fixed seeds) and write results.json, "
                                               "results.md and accuracy_vs_time.png.")
    parser.add_argument("--recipes", nargs="+", required=True, help="TOML recipes; the first is the baseline")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--repeats", type=int, default=1, help="seeds per recipe (seed, seed+1, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every recipe")
    parser.add_argument("--target", type=float, help="test accuracy whose time-to-reach is reported")
    parser.add_argument("--title", help="title of the report")
    parser.add_argument("--quiet", action="store_true")


def _run_bench(args) -> int:
    from regimen.bench import run_bench

    run_bench(args.recipes, args.out, repeats=args.repeats, overrides=args.overrides, target=args.target,
              title=args.title, quiet=args.quiet)
    return 0


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser("report", help="rebuild the table and plot of a bench folder")
    parser.add_argument("folder", help="a folder written by regimen bench")


def _run_report(args) -> int:
    from regimen.bench import write_report

    write_report(args.folder)
    return 0


def _add_methods(subparsers) -> None:
    subparsers.add_parser("methods", help="list the methods recipes can use")


def _run_methods(args) -> int:
    from regimen.method import list_methods

    methods = list_methods()
    width = max((len(name) for name in methods), default=0)
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.summary()}")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="regimen", description="Composable, verified training methods for PyTorch.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command")
    runners = {"train": _run_train, "bench": _run_bench, "report": _run_report, "methods": _run_methods}
    for add in (_add_train, _add_bench, _add_report, _add_methods):
        add(subparsers)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        name = module.add_parser(subparsers)
        runners[name or module_name.rsplit(".", 1)[1]] = module.run
    return parser, runners


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="regimen: %(message)s")
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from regimen import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return runners[args.command](args) or 0
    except KeyboardInterrupt:
        print("regimen: interrupted; resume with --resume <out>/checkpoint.pt", file=sys.stderr)
        return 130
    except _user_errors() as error:
        if os.environ.get("REGIMEN_DEBUG"):
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"regimen {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
