"""Hyperparameter schedules learned by a population: population based training of recipes on Ray Tune.

Ray is imported only when a population runs (the ``tune`` extra: ``pip install 'regimen[tune]'``).
"""

from regimen.tune.pbt import (
    Mutation,
    TuneResult,
    default_mutations,
    objective,
    parse_mutation,
    retarget_checkpoint,
    run_population,
)

__all__ = [
    "Mutation",
    "TuneResult",
    "default_mutations",
    "objective",
    "parse_mutation",
    "retarget_checkpoint",
    "run_population",
]
