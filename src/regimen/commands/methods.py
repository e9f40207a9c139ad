"""``regimen methods [NAME]``: the methods recipes can use.

Without a name: one line per method (recipe name, its parameters with defaults, truncated to fit, and its summary).
With a name: the method's parameters (types and defaults, read from ``__init__`` as recipe validation reads them),
docstring, paper, the input/target kinds it serves, its order declarations and a ready-to-paste ``[[methods]]`` TOML
block (parameters whose default is None are commented out with their type).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import shutil
import sys
import textwrap
import typing
from typing import Any

from regimen.train.recipe import toml_value

__all__ = ["add_parser", "describe_method", "method_parameters", "run", "toml_block"]

#: Widest parameter hint in the list; longer hints end in ``...``.
_HINT_WIDTH = 40


def add_parser(subparsers) -> str:
    parser = subparsers.add_parser(
        "methods", help="list the methods recipes can use, or describe one",
        description="Without NAME: the registered methods, one line each (recipe name, parameters, summary). "
                    "With NAME: its parameters, docstring, paper and a [[methods]] TOML block to paste into a recipe.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help="describe this method")
    parser.add_argument("--task", help="only the methods that serve this task (`regimen info` lists the tasks)")
    return "methods"


# ------------------------------------------------------------------------------------------------ introspection
def method_parameters(cls) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each recipe parameter of a Method class (``Method.parameters``)."""
    return cls.parameters()


def type_name(annotation: Any) -> str:
    """``int``, ``float | None``, ``Literal['a', 'b']``, ``list[str] | None`` ..."""
    if annotation is Any:
        return "Any"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def toml_block(cls) -> str:
    """A ``[[methods]]`` block with every parameter at its default; a None default (or one TOML cannot write) is a
    commented-out line with the type, a required parameter an uncommented ``name = ...`` left for the user to fill."""
    lines = ["[[methods]]", f"name = {json.dumps(cls.name)}"]
    for name, annotation, default in method_parameters(cls):
        if default is inspect.Parameter.empty:
            lines.append(f"# {name} = ...  # required, {type_name(annotation)}")
            continue
        try:
            literal = None if default is None else toml_value(default)
        except TypeError:
            literal = None
        if literal is None:
            lines.append(f"# {name} = ...  # {type_name(annotation)}, default {default!r}")
        else:
            lines.append(f"{name} = {literal}")
    return "\n".join(lines)


def paper(cls) -> str:
    """The paper a method implements: the ``Paper:``/``Papers:`` paragraph of its module docstring; else a pointer
    to the class docstring (printed just above it), where the method's summary names its source."""
    module_doc = inspect.getdoc(sys.modules.get(cls.__module__)) or ""
    for paragraph in module_doc.split("\n\n"):
        stripped = paragraph.strip()
        if stripped.startswith(("Paper:", "Papers:")):
            return " ".join(stripped.split(":", 1)[1].split())
    return "see the description above" if _own_doc(cls) else "(not named)"


def _own_doc(cls) -> str:
    """The class's own docstring (``inspect.getdoc`` would fall back to ``Method``'s)."""
    return inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""


def _shown(default: Any) -> str:
    """A default as the user writes it in a recipe (TOML), or its repr when TOML has no form for it (None)."""
    try:
        return repr(default) if default is None else toml_value(default)
    except TypeError:
        return repr(default)


def _hint(cls, width: int = _HINT_WIDTH) -> str:
    """``num_ops=2, magnitude=9.0, ...``: as many parameters as fit in ``width`` characters."""
    items = []
    for name, _, default in method_parameters(cls):
        items.append(name if default is inspect.Parameter.empty else f"{name}={_shown(default)}")
    if not items:
        return "-"
    text = ""
    for index, item in enumerate(items):
        candidate = f"{text}, {item}" if text else item
        rest = ", ..." if index < len(items) - 1 else ""
        if len(candidate) + len(rest) > width:
            return f"{text}, ..." if text else item[: width - 3] + "..."
        text = candidate
    return text


# ------------------------------------------------------------------------------------------------ output
def describe_method(cls) -> str:
    """The text ``regimen methods NAME`` prints: header, docstring, paper, kinds, order, parameters, TOML block."""
    params = method_parameters(cls)
    width = max((len(name) for name, _, _ in params), default=0)
    order = [f"{label} {', '.join(getattr(cls, what))}" for what, label in
             (("after", "after"), ("before", "before"), ("conflicts", "conflicts with")) if getattr(cls, what)]
    reason = f" ({cls.constraint_reason})" if order and cls.constraint_reason else ""
    order_text = "order: " + ("; ".join(order) + reason if order else "any (no after/before/conflicts declarations)")
    lines = [f"{cls.name}  ({cls.__module__}.{cls.__qualname__})", "", _own_doc(cls) or "(no docstring)", "",
             *textwrap.wrap(f"paper: {paper(cls)}", 116, subsequent_indent="       "),
             f"inputs: {', '.join(cls.inputs) or 'any'}   targets: {', '.join(cls.targets) or 'any'}",
             *textwrap.wrap(order_text, 116, subsequent_indent="       "),
             "", "parameters:" if params else "parameters: none"]
    for name, annotation, default in params:
        shown = "required" if default is inspect.Parameter.empty else f"default {_shown(default)}"
        lines.append(f"  {name:<{width}}  {type_name(annotation)}, {shown}")
    lines += ["", "recipe block (paste into a recipe's TOML):", "", toml_block(cls)]
    return "\n".join(lines)


def _unknown(name: str, methods: dict) -> Exception:
    from regimen.errors import ConfigurationError

    close = difflib.get_close_matches(name, list(methods), n=3, cutoff=0.5)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    return ConfigurationError(f"unknown method {name!r}; {guess}`regimen methods` lists them all")


def _print_list(methods: dict) -> None:
    name_width = max((len(name) for name in methods), default=0)
    hints = {name: _hint(cls) for name, cls in methods.items()}
    hint_width = max((len(hint) for hint in hints.values()), default=0)
    columns = shutil.get_terminal_size((120, 24)).columns
    for name, cls in methods.items():
        line = f"{name:<{name_width}}  {hints[name]:<{hint_width}}  {cls.summary()}".rstrip()
        if sys.stdout.isatty() and len(line) > columns:  # a terminal: one line per method, summary cut to fit
            line = line[: columns - 3] + "..."
        print(line)


def run(args: argparse.Namespace) -> int:
    from regimen.method import list_methods

    methods = list_methods()
    if args.name is not None:
        if args.name not in methods:
            raise _unknown(args.name, methods)
        print(describe_method(methods[args.name]))
        return 0
    if args.task is not None:
        from regimen.tasks import get_task, incompatibility

        task = get_task(args.task)
        methods = {name: cls for name, cls in methods.items() if incompatibility(cls, task) is None}
        if not methods:
            print(f"regimen methods: no method serves task {args.task!r}", file=sys.stderr)
    _print_list(methods)
    return 0
