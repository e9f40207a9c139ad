"""``regimen sweep``: train one recipe at several learning rates; report the final loss per LR and the LR sensitivity.

Example: ``regimen sweep --recipe lm/default --lr 1e-3,3e-3,1e-2,3e-2,1e-1 --set train.epochs=2``.

LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities",
arXiv 2309.14322): ``E_η[min(ℓ(η), ℓ₀) − min_η ℓ(η)]`` over the swept LRs, where ``ℓ(η)`` is the final validation
loss at LR ``η`` and ``ℓ₀`` the validation loss of the model at initialisation; a run that diverges (a non-finite
loss) counts as ``ℓ₀``. Lower is better: 0 means every LR reached the best loss. For transformers the sweep also
reports the largest pre-softmax attention logit of the trained model on one validation batch (the attention-logit
growth the paper ties to instability).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from regimen.errors import ConfigurationError

__all__ = ["add_parser", "lr_sensitivity", "run", "sweep_lr"]


def add_parser(subparsers) -> str:  # noqa: ANN001 - argparse's private type
    parser = subparsers.add_parser(
        "sweep", help="train a recipe at several learning rates; final loss per LR and the LR sensitivity",
        description="Train one recipe at each learning rate of --lr and report the final validation loss per LR and "
                    "the LR sensitivity of Wortsman et al. 2023 (diverged runs count as the loss at init).")
    parser.add_argument("--recipe", required=True, help="a shipped recipe's name or a TOML file")
    parser.add_argument("--lr", required=True, help="comma-separated learning rates, e.g. 1e-3,3e-3,1e-2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key for every run (repeatable)")
    parser.add_argument("--out", help="write the results as JSON here (after every LR; a rerun with the same recipe "
                                      "and overrides skips the LRs it already holds)")
    return "sweep"


def lr_sensitivity(losses: dict[float, float], init_loss: float) -> float:
    """``mean_η min(ℓ(η), ℓ₀) − min_η min(ℓ(η), ℓ₀)``; a non-finite ``ℓ(η)`` (diverged) counts as ``ℓ₀``."""
    if not losses:
        raise ValueError("lr_sensitivity needs at least one learning rate")
    if not math.isfinite(init_loss):
        raise ValueError(f"init_loss must be finite, got {init_loss}")
    capped = [min(v, init_loss) if math.isfinite(v) else init_loss for v in losses.values()]
    return sum(capped) / len(capped) - min(capped)


def _max_attention_logit(model, dataset) -> float:
    import torch

    layers = [m for m in model.modules() if hasattr(m, "track_max_logit")]
    if not layers or dataset is None:
        return math.nan
    for layer in layers:
        layer.track_max_logit = True
    model.eval()
    with torch.no_grad():
        x, _ = dataset.gather(torch.arange(min(8, len(dataset))))
        model(x)
    value = max(float(layer.max_logit) for layer in layers)
    for layer in layers:
        layer.track_max_logit = False
    return value


def _finished_runs(out: Path | None, recipe_name: str, overrides: list[str]) -> dict[float, dict[str, Any]]:
    """The runs an earlier, interrupted sweep wrote to ``out`` (same recipe and overrides), by LR."""
    if out is not None and out.exists() and not out.is_file():
        raise ConfigurationError(f"--out: {out} is not a file; give a JSON file's path")
    if out is None or not out.is_file():
        return {}
    try:
        earlier = json.loads(out.read_text())
    except (OSError, ValueError):
        raise ConfigurationError(f"--out: {out} exists and is not a sweep's JSON; choose another file") from None
    if not isinstance(earlier, dict) or (earlier.get("recipe"), earlier.get("overrides")) != (recipe_name, overrides):
        raise ConfigurationError(f"--out: {out} holds another sweep (recipe {earlier.get('recipe')!r}, overrides "
                                 f"{earlier.get('overrides')}); choose another file")
    return {float(r["lr"]): r for r in earlier.get("runs", [])}


def sweep_lr(recipe_name: str, lrs: list[float], overrides: list[str] | None = None,
             out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``recipe_name`` at every LR of ``lrs``: ``{"init_loss", "runs": [{lr, loss, diverged,
    max_attention_logit}], "lr_sensitivity", "complete"}``.

    With ``out``, the report is rewritten after every LR, and LRs that ``out`` already holds from an interrupted
    sweep of the same recipe and overrides are not trained again."""
    import torch

    from regimen.train import fit
    from regimen.train.checkpoint import write_text_atomic
    from regimen.train.recipe import load_recipe, recipe_task

    if not lrs or any(not (lr > 0) for lr in lrs):
        raise ConfigurationError(f"--lr: expected positive learning rates, got {lrs}")
    overrides = list(overrides or [])
    out_path = Path(out) if out is not None else None
    done = _finished_runs(out_path, recipe_name, overrides)
    base = load_recipe(recipe_name, overrides)
    task = recipe_task(base)(base)
    data = task.load_data()
    torch.manual_seed(base.seed)  # the trainer's initial weights
    init_model = task.build_model(data)
    split = data.val if data.val is not None else data.test
    if split is None:
        raise ConfigurationError("sweep needs a validation or test split (data.val_fraction > 0)")
    init_loss = task.evaluate(init_model, split, task.normalizer(data, torch.device("cpu")),
                              base.train.eval_batch_size)["loss"]
    key = "val_loss" if data.val is not None else "test_loss"
    runs: list[dict[str, Any]] = []

    def report() -> dict[str, Any]:
        sensitivity = lr_sensitivity({r["lr"]: r["loss"] for r in runs}, init_loss) if runs else math.nan
        return {"recipe": recipe_name, "overrides": overrides, "init_loss": init_loss, "runs": runs,
                "lr_sensitivity": sensitivity, "complete": len(runs) == len(lrs)}

    for lr in lrs:
        if lr in done:
            runs.append(done[lr])
            continue
        recipe = load_recipe(recipe_name, [*overrides, f"optim.lr={lr!r}"])
        try:
            result = fit(recipe, data=data)
            loss, diverged = result.history[-1].get(key, math.nan), False
            logit = _max_attention_logit(result.model, split)
        except FloatingPointError:
            loss, diverged, logit = math.nan, True, math.nan
        diverged = diverged or not math.isfinite(loss)
        runs.append({"lr": lr, "loss": loss, "diverged": diverged, "max_attention_logit": logit})
        if out_path is not None:
            write_text_atomic(out_path, json.dumps(report(), indent=2))
    return report()


def run(args) -> int:  # noqa: ANN001
    try:
        lrs = [float(v) for v in args.lr.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(f"--lr: expected comma-separated numbers, got {args.lr!r}") from None
    report = sweep_lr(args.recipe, lrs, args.overrides, args.out)
    print(f"{report['recipe']}: validation loss at init {report['init_loss']:.4f}")
    print("| lr | final loss | max attention logit |")
    print("|---|---|---|")
    for r in report["runs"]:
        loss = "diverged" if r["diverged"] else f"{r['loss']:.4f}"
        print(f"| {r['lr']:g} | {loss} | {r['max_attention_logit']:.2f} |")
    print(f"LR sensitivity: {report['lr_sensitivity']:.4f}")
    if args.out:
        from regimen.train.checkpoint import write_text_atomic

        write_text_atomic(Path(args.out), json.dumps(report, indent=2))
    return 0
