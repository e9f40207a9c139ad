"""``regimen tune``: population based training of a recipe on Ray Tune (extra ``tune``).

Example::

    regimen tune --recipe recipes/tune/pbt_mlp.toml --population 4 --interval 1 \\
        --mutate optim.lr=loguniform:0.003:0.3 --mutate optim.weight_decay=loguniform:1e-5:1e-3 --out runs/tune
"""

from __future__ import annotations

import sys

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> str:
    parser = subparsers.add_parser(
        "tune", help="population based training of a recipe (Ray Tune)",
        description="Train a population of one recipe under Ray Tune's PopulationBasedTraining: every --interval "
                    "epochs the worst trials copy the best ones' checkpoints and perturb their hyperparameters.",
    )
    parser.add_argument("--recipe", required=True, help="TOML recipe")
    parser.add_argument("--population", type=int, default=4, help="number of trials (>= 2)")
    parser.add_argument("--mutate", action="append", default=[], metavar="KEY=KIND:LOW:HIGH",
                        help="a searched key: loguniform/uniform/randint:low:high or choice:a,b,c "
                             "(repeatable; default: optim.lr and optim.weight_decay within x[0.1, 10])")
    parser.add_argument("--interval", type=int, default=1, help="epochs between exploit/explore steps")
    parser.add_argument("--scheduler", choices=("pbt", "fifo"), default="pbt",
                        help="pbt, or fifo: the same initial trials without exploitation (baseline)")
    parser.add_argument("--quantile", type=float, default=0.25, help="fraction of the population copied / copying")
    parser.add_argument("--resample", type=float, default=0.25, help="probability of resampling instead of x0.8/1.2")
    parser.add_argument("--cpus", type=int, help="CPUs of the local Ray instance (default: min(population, cores))")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial samples and PBT's perturbations")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable)")
    parser.add_argument("--out", default="runs/tune", help="Ray storage folder")
    parser.add_argument("--name", help="experiment name (default: <recipe name>-<scheduler>)")
    parser.add_argument("--quiet", action="store_true", help="silence Ray's progress output")
    return "tune"


def run(args) -> int:
    from regimen.train import apply_overrides
    from regimen.train.recipe import read_recipe_file
    from regimen.tune import parse_mutation, run_population

    raw = apply_overrides(read_recipe_file(args.recipe), args.overrides)
    mutations = [parse_mutation(text) for text in args.mutate]
    try:  # every argument is validated before Ray is imported
        result = run_population(
            raw, population=args.population, mutations=mutations or None, out_dir=args.out, interval=args.interval,
            scheduler=args.scheduler, quantile_fraction=args.quantile, resample_probability=args.resample,
            cpus=args.cpus, threads_per_trial=args.threads, seed=args.seed, name=args.name, quiet=args.quiet,
        )
    except ImportError as error:
        print(f"regimen tune: error: {error}", file=sys.stderr)
        return 1
    metric = result.metric
    test_metric = "test_" + metric.removeprefix("val_")
    print(f"best trial: {metric} {result.best_val:.4f}, {test_metric} {result.best_test:.4f}, "
          f"config {result.best_config}")
    for trial in result.trials:  # best first
        print(f"  {metric} {_number(trial[metric])}  {test_metric} {_number(trial[test_metric])}  {trial['config']}")
    print(f"summary: {result.experiment_dir}/tune_summary.json; best checkpoint: {result.best_checkpoint}")
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
