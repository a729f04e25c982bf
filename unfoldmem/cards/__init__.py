r"""YAML cards validated into typed configs: processes, detectors, models, runs, branch maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unfoldmem.cards.base import CardFile, StrictModel, read_yaml, validate_card
from unfoldmem.cards.branchmap import BranchMapCard
from unfoldmem.cards.detector import DetectorCard
from unfoldmem.cards.model import ModelCard
from unfoldmem.cards.process import ProcessCard
from unfoldmem.cards.run import RunCard
from unfoldmem.errors import CardError

__all__ = [
    "CARD_KINDS",
    "BranchMapCard",
    "CardFile",
    "DetectorCard",
    "ModelCard",
    "ProcessCard",
    "RunCard",
    "StrictModel",
    "card_kind",
    "load_card",
]

CARD_KINDS: dict[str, type[BaseModel]] = {
    "process": ProcessCard,
    "detector": DetectorCard,
    "model": ModelCard,
    "run": RunCard,
    "branchmap": BranchMapCard,
}

_DIR_KINDS = {
    "processes": "process",
    "detectors": "detector",
    "models": "model",
    "runs": "run",
    "branchmaps": "branchmap",
}


def card_kind(path: str | Path, data: dict[str, Any]) -> str:
    """The kind of a card: its ``kind:`` key, else the name of its folder (``cards/runs/`` → run)."""
    kind = data.get("kind")
    if kind is None:
        kind = _DIR_KINDS.get(Path(path).parent.name)
    if kind not in CARD_KINDS:
        expected = ", ".join(CARD_KINDS)
        raise CardError(str(path), "kind", f"expected one of: {expected} (got {kind!r})")
    return kind


def load_card(path: str | Path, kind: str | None = None) -> Any:
    """Load and validate a card.

    Arguments:
        path: the YAML file.
        kind: the kind expected (``process``, ``detector``, ...); ``None`` accepts any.

    Raises:
        CardError: naming the card, the key and what was expected.
    """
    data = read_yaml(path)
    found = card_kind(path, data)
    if kind is not None and found != kind:
        raise CardError(str(path), "kind", f"expected a {kind} card, found a {found} card")
    data.setdefault("kind", found)
    return validate_card(CARD_KINDS[found], data, path)
