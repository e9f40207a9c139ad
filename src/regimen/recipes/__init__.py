"""The recipes that ship with regimen, addressable by name.

The ``.toml`` files beside this module are package data: a wheel install has them too, so
``regimen train --recipe default`` or ``--recipe augment/cutmix`` works without a checkout. A recipe's name is its
path below this folder without ``.toml``; a family is its first folder (``augment``, ``batch``, ...).
"""

from __future__ import annotations

import difflib
import os
import sys
from importlib.resources import files
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["describe", "family", "find_recipe", "folder", "list_recipes"]

_SUFFIX = ".toml"
#: Checkout paths (``recipes/augment/cutmix.toml``) name shipped recipes too, so README commands work from a wheel.
_CHECKOUT_PREFIX = "recipes/"


def folder() -> Path:
    """The folder the shipped recipes are in (inside the installed package)."""
    root = files(__name__)
    if not isinstance(root, Path):  # pragma: no cover - setuptools installs packages as folders, never zipped
        raise RuntimeError(f"regimen.recipes is not a folder on disk ({root!r}); reinstall regimen from a wheel")
    return root


def _shipped() -> dict[str, Path]:
    """``name -> file`` of every shipped recipe, sorted by name."""
    root = folder()
    found = {path.relative_to(root).with_suffix("").as_posix(): path for path in root.rglob("*" + _SUFFIX)}
    return dict(sorted(found.items()))


def family(name: str) -> str:
    """The family of a recipe name: its first folder (``"augment"`` for ``augment/cutmix``), ``""`` at the top."""
    return name.rpartition("/")[0].partition("/")[0]


def _as_name(text: str) -> str:
    name = text.replace(os.sep, "/").removesuffix(_SUFFIX)
    return name.removeprefix(_CHECKOUT_PREFIX)


def _close_matches(name: str, names: list[str]) -> list[str]:
    """Shipped names like ``name``: same file name in another family first, then spelling neighbours."""
    leaf = name.rpartition("/")[2]
    same_leaf = [n for n in names if n.rpartition("/")[2] == leaf]
    spelled = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    leaves: dict[str, list[str]] = {}
    for n in sorted(names, key=lambda n: (n.count("/"), n)):  # top-level recipes first, then families A-Z
        leaves.setdefault(n.rpartition("/")[2], []).append(n)
    spelled += [n for m in difflib.get_close_matches(leaf, list(leaves), n=3, cutoff=0.75) for n in leaves[m]]
    return list(dict.fromkeys(same_leaf + spelled))[:8]


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """The recipe file that ``name_or_path`` names.

    An existing file wins (a user's own recipe, or a checkout path such as ``recipes/default.toml``). Otherwise it is
    the name of a shipped recipe: ``default``, ``augment/cutmix``, with or without ``.toml`` (a leading ``recipes/``
    is ignored, so checkout paths work from a wheel install too).

    Raises:
        RecipeError: neither a file nor a shipped recipe; the message lists close shipped names.
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.is_file():
        return path
    shipped = _shipped()
    name = _as_name(text)
    if name in shipped:
        return shipped[name]
    from regimen.train.recipe import RecipeError  # the trainer's error type; imported only on failure

    if path.is_dir():
        raise RecipeError(f"recipe {text!r} is a folder, not a TOML file")
    matches = _close_matches(name, list(shipped))
    hint = f"; did you mean {', '.join(matches)}?" if matches else ""
    raise RecipeError(f"recipe file not found: {text!r} is neither a file nor a shipped recipe{hint} "
                      "(`regimen recipes` lists the shipped ones)")


def describe(path: Path) -> str:
    """A recipe's ``description`` key, else its first comment line, else ``""``."""
    text = path.read_text(encoding="utf-8")
    try:
        description = tomllib.loads(text).get("description")
    except tomllib.TOMLDecodeError:
        description = None
    if isinstance(description, str) and description.strip():
        return description.strip()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            return line.lstrip().lstrip("#").strip()
    return ""


def list_recipes() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped recipe: the top-level ones first, then each family by name."""
    shipped = _shipped()
    names = sorted(shipped, key=lambda name: (family(name), name))
    return [(name, describe(shipped[name])) for name in names]
