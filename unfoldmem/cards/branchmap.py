r"""Branch-map cards: how another file layout maps onto unfoldmem's NanoAOD-style records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unfoldmem.cards.base import StrictModel

__all__ = ["CollectionMap", "BranchMapCard"]


class CollectionMap(StrictModel):
    """Branches of one object collection (jagged arrays), or of flat numbered objects.

    Either ``fields`` maps our field names (pt, eta, phi, mass, btag, charge) to jagged
    branch names, or ``px/py/pz/E``-style fields are given and converted on reading.
    """

    fields: dict[str, str] = Field(description="our field → branch name")
    constant: dict[str, float] = Field(
        default_factory=dict, description="fields missing from the file, filled with a constant"
    )


class BranchMapCard(StrictModel):
    """Maps a foreign layout onto the records ``jets``, ``muons``, ``electrons``, ``met``."""

    kind: Literal["branchmap"] = "branchmap"
    tree: str = Field("Events", description="detector-level tree name")
    jets: CollectionMap | None = None
    muons: CollectionMap | None = None
    electrons: CollectionMap | None = None
    met: dict[str, str] | None = Field(
        None, description="pt/phi → branch, or px/py → branch (converted)"
    )
    event_id: str | None = Field(None, description="branch holding an event number")
    weight: str | None = Field(None, description="branch holding the event weight")
