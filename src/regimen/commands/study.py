"""``regimen study``: the base recipe and base + each method over paired seeds; differences with confidence
intervals, time and memory ratios, and a verdict on each method's claim (see ``regimen.bench.study``).

Examples::

    regimen study --base evidence/base --methods cutmix mixup:alpha=0.4 --seeds 5 --out runs/study
    regimen study reports/evidence/image.toml --out reports/evidence/image     # the TOML form
    regimen study --report reports/evidence/image                              # rewrite the table and plot only
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> str:
    parser = subparsers.add_parser(
        "study", help="measure what methods buy over paired seeds",
        description="Train the base recipe and base + each method over the same seeds (same initial weights, same "
                    "data order) and report per method the mean paired difference of the task's primary metric "
                    "with a 95 % confidence interval, wall-time, time-to-target and peak-memory ratios, and a "
                    "verdict on the paper's claim. Finished runs are kept: rerunning a killed study continues it.",
    )
    parser.add_argument("file", nargs="?", help="a study TOML file (base, seeds, overrides, [[methods]] ...)")
    parser.add_argument("--base", help="the base recipe (file or shipped name)")
    parser.add_argument("--methods", nargs="+", default=[], metavar="NAME[:param=value,...]",
                        help="methods to study, each added alone to the base recipe")
    parser.add_argument("--seeds", type=int, help="paired seeds (>= 2; default 5)")
    parser.add_argument("--first-seed", type=int, help="first seed (default: the base recipe's seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of every arm's recipe (repeatable)")
    parser.add_argument("--target", type=float, help="target of the primary metric for time-to-target")
    parser.add_argument("--margin", type=float, help="non-inferiority margin of no_worse claims (default 0.005)")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--out", help="study folder (runs, results.json, results.md, differences.png)")
    parser.add_argument("--workers", type=int, help="training processes at once (default: cores // 2)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores // workers)")
    parser.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="run on Ray: a cluster's address, or nothing for a local instance")
    parser.add_argument("--overwrite", action="store_true", help="discard the runs of another study in --out")
    parser.add_argument("--report", metavar="FOLDER", help="only rewrite the report of a study folder")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return "study"


def run(args: argparse.Namespace) -> int:
    from regimen.bench.study import StudySpec, load_study, parse_method_spec, run_study, write_study_report
    from regimen.errors import ConfigurationError

    if args.report:
        results = write_study_report(args.report)
        if not args.quiet:
            print(f"{args.report}/results.md rewritten ({len(results['rows'])} methods, {results['pending']} runs "
                  "pending)")
        return 0
    if args.file:
        spec = load_study(args.file)
        if args.base or args.methods:
            raise ConfigurationError("give either a study file or --base/--methods, not both")
    else:
        if not args.base or not args.methods:
            raise ConfigurationError("regimen study needs a study file, or --base RECIPE and --methods NAME ...")
        spec = StudySpec(base=args.base, arms=[parse_method_spec(text) for text in args.methods])
    for name in ("seeds", "first_seed", "target", "margin", "title"):
        value = getattr(args, name)
        if value is not None:
            setattr(spec, name, value)
    spec.overrides = spec.overrides + args.overrides
    if not args.out:
        raise ConfigurationError("--out: the study folder is required")
    results = run_study(spec, args.out, workers=args.workers, threads=args.threads,
                        executor="local" if args.ray is None else "ray", ray_address=args.ray or None,
                        overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        for row in results["rows"]:
            print(f"{row['label']}: {row['mean_difference']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] "
                  f"{row['verdict']}", file=sys.stdout)
        print(f"results in {args.out}/results.md")
    return 0
