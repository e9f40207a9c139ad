"""The trainer: recipes, the loop on Lightning Fabric, checkpoints."""

from regimen.train.builtin import EMAMethod, ModelEMA, ema_update
from regimen.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from regimen.train.optim import SGDW
from regimen.train.recipe import Recipe, RecipeError, apply_overrides, load_recipe, parse_recipe
from regimen.train.trainer import FitResult, evaluate, fit

__all__ = [
    "CheckpointError",
    "EMAMethod",
    "ModelEMA",
    "FitResult",
    "Recipe",
    "RecipeError",
    "SGDW",
    "apply_overrides",
    "evaluate",
    "ema_update",
    "fit",
    "load_checkpoint",
    "load_recipe",
    "parse_recipe",
    "save_checkpoint",
]
