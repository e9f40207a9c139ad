"""Evaluate a checkpoint on the test split: plain and with flip TTA, for the live weights and (if the run had
``ema``) the EMA weights.

    PYTHONPATH=src python reports/speedrun/eval_checkpoint.py RUN/checkpoint.pt
"""

import sys

import torch

from regimen.augment import FlipTTA
from regimen.train import load_checkpoint, parse_recipe
from regimen.train.recipe import recipe_task

torch.set_num_threads(2)
state = load_checkpoint(sys.argv[1])
recipe = parse_recipe(state["recipe"])
task = recipe_task(recipe)(recipe)
data = task.load_data()
model = task.build_model(data)
model.load_state_dict(state["model"])
model.eval()
normalize = task.normalizer(data, torch.device("cpu"))


def accuracy(net: torch.nn.Module) -> float:
    return task.evaluate(net, data.test, normalize, 1000, torch.device("cpu"), 0, 1, lambda t, op="sum": t)["acc"]


print("live weights: plain", accuracy(model), "flip TTA", accuracy(FlipTTA(model)))
for method, method_state in zip(recipe.methods, state["methods"]):
    if method.name == "ema" and method_state:
        model.load_state_dict(method_state["module"])
        model.eval()
        print("EMA weights: plain", accuracy(model), "flip TTA", accuracy(FlipTTA(model)))
