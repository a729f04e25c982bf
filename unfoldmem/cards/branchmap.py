r"""Branch-map cards: how another file layout maps onto unfoldmem's NanoAOD-style records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unfoldmem.cards.base import StrictModel

__all__ = ["CollectionMap", "BranchMapCard", "KINEMATIC_SETS"]

KINEMATIC_SETS = ({"pt", "eta", "phi", "mass"}, {"px", "py", "pz", "E"})
"""A collection is given either in (pt, eta, phi, mass) or in (px, py, pz, E)."""


class CollectionMap(StrictModel):
    """Branches of one object collection: jagged branches, or flat numbered objects.

    ``fields`` maps our field names (pt, eta, phi, mass | px, py, pz, E; btag, charge) to
    jagged branch names; ``numbered`` lists one such mapping per object for flat ntuples
    (``E1, px1, ...``, ``E2, px2, ...``). Cartesian components are converted on reading.
    """

    fields: dict[str, str] | None = Field(None, description="our field → jagged branch name")
    numbered: list[dict[str, str]] | None = Field(
        None, description="one {our field: flat branch} mapping per object"
    )
    constant: dict[str, float] = Field(
        default_factory=dict, description="fields missing from the file, filled with a constant"
    )

    @model_validator(mode="after")
    def _one_layout(self) -> CollectionMap:
        if (self.fields is None) == (self.numbered is None):
            msg = "give exactly one of 'fields' (jagged branches) or 'numbered' (flat branches)"
            raise ValueError(msg)
        for mapping in [self.fields] if self.fields is not None else (self.numbered or []):
            keys = set(mapping) | set(self.constant)
            if not any(s <= keys for s in KINEMATIC_SETS):
                msg = f"fields {sorted(keys)} need pt, eta, phi, mass or px, py, pz, E"
                raise ValueError(msg)
        return self


class BranchMapCard(StrictModel):
    """Maps a foreign layout onto the records ``jets``, ``muons``, ``electrons``, ``met``."""

    kind: Literal["branchmap"] = "branchmap"
    tree: str = Field("Events", description="detector-level tree name")
    jets: CollectionMap | None = None
    muons: CollectionMap | None = None
    electrons: CollectionMap | None = None
    met: dict[str, str] | None = Field(
        None, description="{pt, phi} or {px, py} → branch names (px, py converted)"
    )
    event_id: str | None = Field(None, description="branch holding an event number")
    weight: str | None = Field(None, description="branch holding the event weight")
    selection: str | None = Field(
        None, description="a boolean branch; only events where it is true are read"
    )
