"""``regimen recipes``: the recipes that ship with regimen, one line each (name and description), grouped by family.

Every name works as ``regimen train --recipe NAME`` and ``regimen bench --recipes NAME ...``, with or without a
checkout. ``--show NAME`` prints a recipe's TOML, a starting point for your own:
``regimen recipes --show default > mine.toml``.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> str:
    parser = subparsers.add_parser(
        "recipes", help="list the shipped recipes (their names work with --recipe)",
        description="List the recipes that ship with regimen, one line each (name, description), grouped by family. "
                    "Each name works as `regimen train --recipe NAME`.",
    )
    parser.add_argument("family", nargs="?", help="only this family (augment, batch, dropout, ...)")
    parser.add_argument("--show", metavar="NAME", help="print this recipe's TOML instead of the list")
    return "recipes"


def _print_toml(name: str) -> int:
    from regimen.recipes import find_recipe

    print(find_recipe(name).read_text(encoding="utf-8"), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    from regimen.errors import ConfigurationError
    from regimen.recipes import family, list_recipes

    if args.show is not None:
        return _print_toml(args.show)
    recipes = list_recipes()
    families = list(dict.fromkeys(family(name) for name, _ in recipes))
    if args.family is not None:
        if args.family not in families:
            known = ", ".join(f for f in families if f)
            raise ConfigurationError(f"no recipe family {args.family!r}; families: {known}")
        recipes = [(name, text) for name, text in recipes if family(name) == args.family]
    width = max((len(name) for name, _ in recipes), default=0)
    previous = None
    for name, description in recipes:
        if previous is not None and family(name) != previous:
            print()  # a blank line between families
        previous = family(name)
        print(f"{name:<{width}}  {description}".rstrip())
    return 0
