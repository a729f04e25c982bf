"""Documentation stays true: the generated references match the code.

The commands and Python blocks of README.md and docs/*.md are checked and run by
tests/test_docs_commands.py.
"""

from __future__ import annotations

import re

from docs.generate import cards_markdown, cli_markdown
from tests.conftest import REPO


def test_card_reference_is_current():
    assert (REPO / "docs/cards.md").read_text() == cards_markdown(), "run `python -m docs.generate`"


def test_cli_reference_is_current():
    assert (REPO / "docs/cli.md").read_text() == cli_markdown(), "run `python -m docs.generate`"


def test_index_links_every_page():
    """docs/index.md links every page of docs/, and every page it links exists."""
    index = (REPO / "docs/index.md").read_text()
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert pages <= linked, f"not linked from docs/index.md: {sorted(pages - linked)}"
    assert linked <= pages, f"linked but missing: {sorted(linked - pages)}"
