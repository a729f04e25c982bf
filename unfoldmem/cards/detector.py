r"""Detector cards: resolutions, acceptances and efficiencies of the parametric detector."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from unfoldmem.cards.base import StrictModel

__all__ = ["DetectorCard"]


class DetectorCard(StrictModel):
    """A parametric (Delphes-like) detector; the simulation issue fills in the physics keys."""

    kind: Literal["detector"] = "detector"
    name: str = Field("default", description="a label for plots and file metadata")
