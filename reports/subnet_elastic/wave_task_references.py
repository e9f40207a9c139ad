"""Parameter-free references on the wave_surrogate task's test split (the shipped recipe's data): persistence
``u_{k+1} = u_k`` and linear extrapolation ``u_{k+1} = 2 u_k − u_{k−1}``, scored by the task's own ``evaluate``.

    OMP_NUM_THREADS=1 PYTHONPATH=src python reports/subnet_elastic/wave_task_references.py
"""

from __future__ import annotations

import json

import torch

from regimen.recipes import find_recipe
from regimen.tasks import WaveSurrogateTask
from regimen.train.recipe import load_recipe


class Persistence(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1:]


class LinearExtrapolation(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x[:, -1:] - x[:, -2:-1]


def main() -> None:
    torch.set_num_threads(1)
    recipe = load_recipe(find_recipe("wave/baseline"))
    task = WaveSurrogateTask(recipe)
    data = task.load_data()
    for name, model in (("persistence", Persistence()), ("linear_extrapolation", LinearExtrapolation())):
        metrics = task.evaluate(model, data.test, lambda x: x, batch_size=256)
        print(json.dumps({"reference": name, **{k: round(v, 4) for k, v in metrics.items()}}))


if __name__ == "__main__":
    main()
