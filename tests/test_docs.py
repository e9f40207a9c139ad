"""Every ```python block of every docs/*.md page runs as written, so the documented examples stay true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, source) of each ```python block of a Markdown text."""
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in FENCE.finditer(text)]


def _cases() -> list:
    cases = []
    for page in sorted(DOCS.glob("*.md")):
        for line, source in python_blocks(page.read_text(encoding="utf-8")):
            cases.append(pytest.param(page, line, source, id=f"{page.name}:{line}"))
    return cases


def test_the_pages_have_examples():
    pages = {case.values[0].name for case in _cases()}
    assert {"own-loop.md", "data.md"} <= pages


def test_block_extraction():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = 2\nc = 3\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (9, "b = 2\nc = 3\n")]


@pytest.mark.parametrize(("page", "line", "source"), _cases())
def test_example_runs(page: Path, line: int, source: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    torch.manual_seed(0)
    code = compile("\n" * (line - 1) + source, str(page), "exec")  # tracebacks give the page's own line numbers
    exec(code, {"__name__": f"docs_example_{page.stem}_{line}"})
