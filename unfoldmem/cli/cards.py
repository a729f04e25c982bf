r"""`unfoldmem cards list|check`: find and validate YAML cards."""

from __future__ import annotations

from pathlib import Path

import typer

from unfoldmem.cards import CARD_KINDS, load_card, read_yaml
from unfoldmem.cards import card_kind as _card_kind
from unfoldmem.errors import CardError

__all__ = ["register"]

cards_app = typer.Typer(help="List and validate YAML cards.", no_args_is_help=True)


@cards_app.command("list")
def list_cards(
    root: Path = typer.Argument(Path("cards"), help="Folder holding processes/, detectors/, models/, runs/."),
) -> None:
    """List every card under ROOT with its kind.

    Example: ``unfoldmem cards list cards`` prints ``process  cards/processes/drell_yan.yaml``.
    """
    if not root.is_dir():
        raise CardError(str(root), "<folder>", "not a directory of cards")
    for path in sorted(root.rglob("*.yaml")):
        try:
            kind = _card_kind(path, read_yaml(path))
        except CardError:
            kind = "?"
        typer.echo(f"{kind:<10} {path}")


@cards_app.command("check")
def check_cards(
    paths: list[Path] = typer.Argument(..., help="Card files to validate."),
    kind: str = typer.Option(None, help=f"Expected kind: {', '.join(CARD_KINDS)}."),
) -> None:
    """Validate cards; the first invalid one is reported as `file: key 'a.b': problem`."""
    for path in paths:
        load_card(path, kind)
        typer.echo(f"ok  {path}")


def register(app: typer.Typer) -> None:
    """Add the ``cards`` command group to ``app``."""
    app.add_typer(cards_app, name="cards")
