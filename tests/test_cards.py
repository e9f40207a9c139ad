"""Every method regimen registers (not the ones tests register) has a generated card in docs/methods, and no
card is stale or hand-edited."""

from __future__ import annotations

from pathlib import Path

from regimen.commands.cards import write_cards
from regimen.method import list_methods

ROOT = Path(__file__).resolve().parent.parent
CARDS = ROOT / "docs" / "methods"


def test_every_method_has_a_card():
    missing = [name for name, cls in list_methods().items()
               if cls.__module__.startswith("regimen.") and not (CARDS / f"{name}.md").exists()]
    assert not missing, f"no card for {missing}: run `regimen cards --out docs/methods`"


def test_cards_are_generated_not_edited():
    stale = write_cards(CARDS, ROOT / "reports" / "evidence", check=True)
    assert not stale, f"stale cards {stale}: run `regimen cards --out docs/methods` (cards are generated)"
