"""The ``regimen`` command: ``train``, ``bench``, ``report`` and the subcommands in ``regimen.commands``
(``methods``, ``recipes``, ``info``, ``prune``, ``tune``, ``adapt`` ...). Thin: parses arguments, calls library code,
turns user errors into one-line messages and a non-zero exit code.

User errors are regimen's own error types (``regimen.errors.RegimenError`` and its subclasses), pydantic's
``ValidationError`` and file errors about paths the user named. Anything else is a bug: a two-line message with the
exception type and where it was raised (``REGIMEN_DEBUG=1`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import sys
import traceback
from pathlib import Path

__all__ = ["build_parser", "main"]

#: Subcommand modules (``add_parser(subparsers)`` + ``run(args) -> int``). A missing module is an error, not a
#: silently absent command; optional extras (Ray for ``tune``) are checked inside the command's ``run``.
COMMAND_MODULES = ("regimen.commands.methods", "regimen.commands.recipes", "regimen.commands.info",
                   "regimen.commands.prune", "regimen.commands.tune", "regimen.commands.study",
                   "regimen.commands.cards", "regimen.commands.generate", "regimen.commands.sweep",
                   "regimen.commands.adapt")

#: File errors that are user errors when they concern a path the user named (``--out``, ``--recipe``, a folder ...).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)

_EPILOG = """\
recipes:  --recipe takes a shipped recipe's name (default, augment/cutmix, ...:
          `regimen recipes` lists them) or a TOML file.
errors:   exit status 1 and a one-line message; an internal error (a bug) says
          so, and REGIMEN_DEBUG=1 shows its traceback. Bad usage exits 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """regimen's own errors (RecipeError, DataError, CheckpointError, ConfigurationError ... all derive from
    RegimenError) and pydantic's validation errors."""
    from pydantic import ValidationError

    from regimen.errors import RegimenError

    return (RegimenError, ValidationError)


def _named_paths(args: argparse.Namespace) -> list[Path]:
    """Every string the user passed (option values, and the values of ``--set key=value``) read as a path."""
    texts: list[str] = []
    for key, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for text in values:
            if not isinstance(text, str) or key == "command":
                continue
            texts.append(text)
            if key == "overrides" and "=" in text:
                texts.append(text.split("=", 1)[1].strip().strip("\"'"))
    return [Path(os.path.abspath(text)) for text in texts if text]


def _about_named_path(error: OSError, args: argparse.Namespace) -> bool:
    """Whether a file error concerns a path the user named, a file inside it or a folder above it (``--out a/b``
    fails at ``a``). regimen's own deliberate file errors carry a message but no ``filename``: those count too."""
    filenames = [name for name in (error.filename, error.filename2) if name is not None]
    if not filenames:
        return True
    for filename in filenames:
        path = Path(os.path.abspath(os.fsdecode(filename)))
        for named in _named_paths(args):
            if path == named or named in path.parents or path in named.parents:
                return True
    return False


def is_user_error(error: BaseException, args: argparse.Namespace) -> bool:
    """True for errors caused by the input (reported in one line); False for bugs."""
    if isinstance(error, _user_errors()):
        return True
    return isinstance(error, _PATH_ERRORS) and _about_named_path(error, args)


def _where(error: BaseException) -> str:
    """``regimen/<module>.py:<line>`` of the innermost regimen frame that the error passed through."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if "/regimen/" in frame.filename.replace(os.sep, "/")]
    if not frames:
        return ""
    frame = frames[-1]
    return f" (at regimen/{frame.filename.replace(os.sep, '/').rsplit('/regimen/', 1)[1]}:{frame.lineno})"


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone away (the write end of such a pipe polls as POLLERR);
    where poll is unavailable, assume so."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def _debug() -> bool:
    return os.environ.get("REGIMEN_DEBUG", "") not in ("", "0")


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a recipe", description="Train the model a recipe describes.")
    parser.add_argument("--recipe", help="a shipped recipe's name (default, augment/cutmix: `regimen recipes` lists "
                                         "them) or a TOML file; with --resume, default: the checkpoint's recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--out", help="output folder (default: runs/<recipe name>; with --resume: the checkpoint's)")
    parser.add_argument("--resume", help="continue from this checkpoint.pt")
    parser.add_argument("--overwrite", action="store_true", help="allow --out to already hold a run")
    parser.add_argument("--devices", type=int, help="number of processes/devices (DDP); same as train.devices")
    parser.add_argument("--num-nodes", type=int, help="number of machines (multi-node DDP, launched on each by "
                                                      "torchrun or SLURM: docs/multinode.md); same as train.num_nodes")
    parser.add_argument("--accelerator", help="cpu, cuda, mps or auto; same as train.accelerator")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _run_train(args) -> int:
    from regimen.errors import ConfigurationError
    from regimen.recipes import find_recipe
    from regimen.train import apply_overrides, fit, load_checkpoint, parse_recipe
    from regimen.train.recipe import read_recipe_file

    overrides = list(args.overrides)
    if args.devices is not None:
        overrides.append(f"train.devices={args.devices}")
    if args.num_nodes is not None:
        overrides.append(f"train.num_nodes={args.num_nodes}")
    if args.accelerator is not None:
        overrides.append(f'train.accelerator="{args.accelerator}"')
    if args.recipe:
        raw = read_recipe_file(find_recipe(args.recipe))
    elif args.resume:
        raw = load_checkpoint(args.resume)["recipe"]
    else:
        raise ConfigurationError("train needs --recipe NAME_OR_FILE (or --resume CHECKPOINT)")
    recipe = parse_recipe(apply_overrides(raw, overrides))
    out = Path(args.out) if args.out else Path("runs") / recipe.name
    if args.resume and not args.out:
        out = Path(args.resume).parent
    try:
        result = fit(recipe, out_dir=out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet,
                     progress=not args.quiet and sys.stderr.isatty())
        if not args.quiet and result.rank == 0:
            print(f"metrics, summary and checkpoint in {out}", file=sys.stderr)
    finally:
        _end_process_group()
    return 0


def _end_process_group() -> None:
    """Tear down the DDP process group before the process exits: left to interpreter shutdown, gloo's threads are
    sometimes destroyed while joinable and the process aborts ("terminate called without an active exception")."""
    import torch.distributed as dist

    global _ENDED_PROCESS_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _ENDED_PROCESS_GROUP = True


_ENDED_PROCESS_GROUP = False


def run() -> None:
    """The ``regimen`` command as a process (``python -m regimen``, the console script): ``main()``, then exit.

    After a multi-process run the process leaves with ``os._exit`` once its output is flushed: the run's files are
    written and closed, and interpreter shutdown would destroy gloo's still-joinable threads, which aborts the
    process ("terminate called without an active exception", exit code -6) now and then."""
    code = main()
    if _ENDED_PROCESS_GROUP:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _add_bench(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="run recipes and compare them",
                                   description="Run each recipe (fresh process, fixed seeds) and write results.json, "
                                               "results.md and accuracy_vs_time.png.")
    parser.add_argument("--recipes", nargs="+", required=True,
                        help="shipped recipe names or TOML files; the first is the baseline")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--repeats", type=int, default=1, help="seeds per recipe (seed, seed+1, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every recipe")
    parser.add_argument("--target", type=float, help="test accuracy whose time-to-reach is reported")
    parser.add_argument("--title", help="title of the report")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")


def _run_bench(args) -> int:
    from regimen.bench import run_bench
    from regimen.errors import ConfigurationError

    if args.repeats < 1:
        raise ConfigurationError(f"--repeats must be >= 1, got {args.repeats}")
    run_bench(args.recipes, args.out, repeats=args.repeats, overrides=args.overrides, target=args.target,
              title=args.title, quiet=args.quiet)
    return 0


def _add_report(subparsers) -> None:
    parser = subparsers.add_parser("report", help="rebuild the table and plot of a bench or study folder",
                                   description="Rewrite results.md and accuracy_vs_time.png from a bench folder's "
                                               "results.json.")
    parser.add_argument("folder", help="a folder written by regimen bench or regimen study")


def _run_report(args) -> int:
    from regimen.bench import write_report
    from regimen.bench.study import STUDY_FILE, write_study_report

    if (Path(args.folder) / STUDY_FILE).exists():  # a folder written by regimen study
        write_study_report(args.folder)
    else:
        write_report(args.folder)
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The argument parser and ``command name -> run(args)``."""
    parser = argparse.ArgumentParser(prog="regimen", description="Composable, verified training methods for PyTorch.",
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners = {"train": _run_train, "bench": _run_bench, "report": _run_report}
    for add in (_add_train, _add_bench, _add_report):
        add(subparsers)
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
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
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # the reader went away (`regimen methods | head`): no message, exit 1 (as Python's docs advise); stdout
        # points at devnull so the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        hint = "; resume with --resume <out>/checkpoint.pt" if args.command == "train" else ""
        print(f"regimen {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as error:
        if _debug():
            raise
        # str(KeyError) quotes its message; a user error derived from KeyError prints it plain
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if is_user_error(error, args):
            print(f"regimen {args.command}: error: {message}", file=sys.stderr)
        else:
            what = f"{type(error).__name__}: {message}" if str(message) else type(error).__name__
            print(f"regimen {args.command}: internal error: {what}{_where(error)}\n"
                  "this is a bug in regimen; run with REGIMEN_DEBUG=1 for the traceback", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
