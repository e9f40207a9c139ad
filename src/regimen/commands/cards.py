"""``regimen cards``: one markdown card per registered method (``docs/methods/<name>.md``), generated from the
method's docstring, its paper and claim, its parameters, the shipped recipes that use it, what it composes with and
what it refuses, and its row in the committed evidence study (``reports/evidence/*/results.json``).

Cards are generated, never hand-edited: ``tests/test_cards.py`` regenerates them and fails when one differs or is
missing. After changing a method or rerunning the study: ``regimen cards --out docs/methods``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import posixpath
from pathlib import Path
from typing import Any

from regimen.commands.methods import _own_doc, _shown, paper, toml_block, type_name

__all__ = ["add_parser", "load_evidence", "render_card", "run", "write_cards"]

def add_parser(subparsers) -> str:
    parser = subparsers.add_parser(
        "cards", help="write one markdown card per method (docs/methods)",
        description="Write docs/methods/<name>.md for every registered method, with its measured effect from the "
                    "evidence studies, and an index README.md.")
    parser.add_argument("--out", default="docs/methods", help="folder of the cards (default docs/methods)")
    parser.add_argument("--evidence", default="reports/evidence",
                        help="folder whose subfolders hold study results.json files (default reports/evidence)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a card is missing or stale")
    return "cards"


def run(args) -> int:
    import sys

    stale = write_cards(args.out, args.evidence, check=args.check)
    if args.check and stale:
        print(f"regimen cards: stale or missing: {', '.join(stale)} (run `regimen cards --out {args.out}`)",
              file=sys.stderr)
        return 1
    if not args.check:
        print(f"cards written to {args.out} ({len(stale)} changed)")
    return 0


def load_evidence(folder: str | Path) -> list[dict[str, Any]]:
    """Every study row under ``folder`` (``*/results.json``) and of every study its evidence index
    (``folder/index.toml``: the studies of every task, wherever they live under reports/) names, each with its
    study's name (its path relative to ``folder``), metric and base."""
    folder = Path(folder)
    paths = sorted(folder.glob("*/results.json"))
    if (folder / "index.toml").is_file():
        from regimen.bench.studies import load_index

        paths += [study / "results.json" for task in load_index(folder / "index.toml") for study in task.studies]
    rows, seen = [], set()
    for path in paths:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        results = json.loads(path.read_text())
        study = Path(os.path.relpath(path.parent, folder)).as_posix()
        for row in results.get("rows", []):
            if not row.get("pairs"):  # an arm whose runs have not finished measures nothing yet
                continue
            rows.append({**row, "study": study, "metric": results["primary_metric"],
                         "seeds": results["spec"]["seeds"], "base_recipe": results["spec"]["base"],
                         "epochs": results["base"].get("epochs"), "percent": str(results["primary_metric"]).endswith(
                             "acc"), "higher_is_better": results.get("higher_is_better", True)})
    return rows


def _number(value: Any, template: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else template.format(value)


def _study_name(study: str) -> str:
    """A study's path relative to the evidence folder, without the ``../`` of studies that live elsewhere."""
    while study.startswith("../"):
        study = study[3:]
    return study


def _measured(rows: list[dict[str, Any]], evidence_link: str) -> list[str]:
    if not rows:
        return ["Not yet in an evidence study: its effect at this library's budgets is unmeasured."]
    lines = ["| study | arm | Δ (95 % CI) | verdict | time × | memory × |", "|---|---|---|---|---|---|"]
    for row in rows:
        scale, unit = (100.0, " pp") if row["percent"] else (1.0, "")
        arrow = "" if row.get("higher_is_better", True) else " (lower is better)"
        delta = (f"{_number(row['mean_difference'] and scale * row['mean_difference'], '{:+.2f}')}{unit} "
                 f"[{_number(row['ci_low'] and scale * row['ci_low'], '{:+.2f}')}, "
                 f"{_number(row['ci_high'] and scale * row['ci_high'], '{:+.2f}')}]")
        link = posixpath.normpath(f"{evidence_link}/{row['study']}/results.md")
        lines.append(f"| [{_study_name(row['study'])}]({link}) | `{row['label']}` | "
                     f"{row['metric']}{arrow} {delta} | {row['verdict']} | {_number(row['time_ratio'], '{:.2f}')} | "
                     f"{_number(row['memory_ratio'], '{:.2f}')} |")
    studies = list(dict.fromkeys(row["study"] for row in rows))
    if len(studies) == 1:
        first = rows[0]
        lines += ["", f"Paired seeds: {first['seeds']}; base recipe `{first['base_recipe']}` ({first['epochs']} "
                      "epochs). Δ is (base + method) − base at the same seed; ratios are method / base."]
    else:
        lines += ["", "Δ is (base + method) − base at the same seed; ratios are method / base. Per study:", ""]
        for study in studies:
            first = next(row for row in rows if row["study"] == study)
            lines.append(f"- {_study_name(study)}: {first['seeds']} paired seeds; base recipe "
                         f"`{first['base_recipe']}` ({first['epochs']} epochs).")
    return lines


def _recipes_using(name: str) -> list[str]:
    from regimen.recipes import _shipped
    from regimen.train.recipe import read_recipe_file

    found = []
    for recipe_name, path in _shipped().items():
        raw = read_recipe_file(path)
        if any(entry.get("name") == name for entry in raw.get("methods", [])):
            found.append(recipe_name)
    return found


def _refusals(name: str, names: list[str]) -> list[str]:
    """The methods that cannot share a recipe with ``name`` in either order (declared conflicts, orders and
    exclusive hooks, checked as a recipe checks them), with the reason."""
    from regimen.errors import ConfigurationError
    from regimen.method import check_exclusive_hooks, check_method_order

    refused = []
    for other in names:
        if other == name:
            continue
        errors = []
        for pair in ((name, other), (other, name)):
            try:
                methods = [_instance(n) for n in pair]
                check_exclusive_hooks(methods)
                check_method_order(methods)
            except ConfigurationError as error:
                errors.append(str(error))
        if len(errors) == 2:
            refused.append(f"`{other}`: {errors[0]}")
        elif errors:  # an order that works is a composition, not a refusal
            refused.append(f"`{other}` in one order only: {errors[0]}")
    return refused


_INSTANCES: dict[str, Any] = {}


def _instance(name: str):
    """A method at its default parameters (cached: instances are only inspected)."""
    from regimen.method import get_method

    if name not in _INSTANCES:
        _INSTANCES[name] = get_method(name)()
    return _INSTANCES[name]


def render_card(cls, evidence: list[dict[str, Any]], all_names: list[str],
                evidence_link: str = "../../reports/evidence") -> str:
    """The card of one Method class."""
    from regimen.method import Method

    doc = _own_doc(cls) or "(no docstring)"
    summary, _, rest = doc.partition("\n\n")
    rows = [row for row in evidence if row["method"] == cls.name]
    params = cls.parameters()
    hooks = [hook for hook in ("setup", "on_epoch_start", "select_batches", "transform_batch", "before_forward",
                               "forward_loss", "criterion", "optimizer_step", "training_step", "after_backward",
                               "after_step", "on_epoch_end", "eval_model", "on_train_end")
             if getattr(cls, hook) is not getattr(Method, hook)]
    effect = {"better": "a better primary metric (higher accuracy, lower loss or distance) than the same recipe "
                        "without it",
              "no_worse": "the same primary metric (within a small margin) while buying memory, speed or size"
              }.get(cls.claimed_effect, "no stated effect on the primary metric")
    lines = [
        f"# `{cls.name}`", "", " ".join(summary.split()), "",
        f"**Paper:** {paper(cls)}  ", f"**Paper id:** {cls.paper_id or '–'}  ",
        f"**Claim:** {cls.claim or '–'}  ", f"**What the claim predicts here:** {effect}.", "",
        "## Measured", "", *_measured(rows, evidence_link), "",
        "## What it does", "", rest.strip() or " ".join(summary.split()), "",
        "## When to use it", "",
        f"- Inputs it serves: {', '.join(cls.inputs) or 'any'}; targets: {', '.join(cls.targets) or 'any'}.",
        f"- It acts through the hooks {', '.join(f'`{h}`' for h in hooks) or '(none)'}.",
    ]
    verdicts = sorted({row["verdict"] for row in rows})
    if verdicts:
        lines.append(f"- At the evidence budget the claim was: {', '.join(verdicts)} (see Measured).")
    lines += ["", "## Parameters", ""]
    if params:
        lines += ["| parameter | type | default |", "|---|---|---|"]
        for pname, annotation, default in params:
            shown = "required" if default is inspect.Parameter.empty else f"`{_shown(default)}`"
            lines.append(f"| `{pname}` | `{type_name(annotation)}` | {shown} |")
    else:
        lines.append("None.")
    recipes = _recipes_using(cls.name)
    lines += ["", "## Recipe", "", "```toml", toml_block(cls), "```", "",
              "Shipped recipes that use it: " + (", ".join(f"`{r}`" for r in recipes) or "none") + ".", "",
              "## Composes with, and refuses", ""]
    order = [f"must come after {', '.join(f'`{n}`' for n in cls.after)}" if cls.after else "",
             f"must come before {', '.join(f'`{n}`' for n in cls.before)}" if cls.before else ""]
    order = [o for o in order if o]
    if order:
        reason = f" ({cls.constraint_reason})" if cls.constraint_reason else ""
        lines.append(f"Order: it {' and '.join(order)}{reason}.")
        lines.append("")
    refused = _refusals(cls.name, all_names)
    lines.append("Refuses to share a recipe with, or needs an order beside: "
                 + ("none of the other registered methods." if not refused else ""))
    lines += [f"- {text}" for text in refused]
    lines += ["", "Every ordered pair of methods is trained in `tests/integration/test_method_pairs.py`.", ""]
    return "\n".join(lines)


def write_cards(out: str | Path, evidence_folder: str | Path, check: bool = False) -> list[str]:
    """Write (or, with ``check``, compare) every card and the index; return the names that changed."""
    from regimen.method import list_methods

    out = Path(out)
    methods = {name: cls for name, cls in list_methods().items() if cls.__module__.startswith("regimen.")}
    evidence = load_evidence(evidence_folder)
    names = sorted(methods)
    changed = []
    rendered = {f"{name}.md": render_card(methods[name], evidence, names) for name in names}
    index = ["# Method cards", "", "Generated by `regimen cards` from each method's docstring, recipe and evidence "
             "row; do not edit by hand.", "", "| method | paper | claim | measured |", "|---|---|---|---|"]
    for name in names:
        cls = methods[name]
        rows = [row for row in evidence if row["method"] == name]
        verdict = "; ".join(sorted({row["verdict"] for row in rows})) or "not yet studied"
        index.append(f"| [`{name}`]({name}.md) | {cls.paper_id} | {cls.claim} | {verdict} |")
    rendered["README.md"] = "\n".join(index) + "\n"
    existing = {p.name for p in out.glob("*.md")} if out.exists() else set()
    for filename, text in rendered.items():
        path = out / filename
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            changed.append(filename.removesuffix(".md"))
            if not check:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for filename in sorted(existing - set(rendered)):  # a card of a method that no longer exists
        changed.append(filename.removesuffix(".md"))
        if not check:
            (out / filename).unlink()
    return changed
