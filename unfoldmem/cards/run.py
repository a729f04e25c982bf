r"""Run cards: a generation job tying a process card, a detector card and a selection together."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt

from unfoldmem.cards.base import CardFile, StrictModel

__all__ = ["SelectionConfig", "RunCard"]


class SelectionConfig(StrictModel):
    """Reco-level selection applied to set ``pass_reco`` (GeV for momenta)."""

    n_jets_min: NonNegativeInt = 0
    n_bjets_min: NonNegativeInt = 0
    n_leptons_min: NonNegativeInt = 0
    n_leptons_max: int | None = None
    lepton_pt_min: float = 0.0
    jet_pt_min: float = 0.0


class RunCard(StrictModel):
    """One simulation run: process (+θ overrides), detector and reco selection."""

    kind: Literal["run"] = "run"
    process: CardFile = Field(description="path to a process card, relative to this card")
    detector: CardFile = Field(description="path to a detector card, relative to this card")
    theta: dict[str, float] = Field(default_factory=dict, description="overrides of the process θ")
    n_events: PositiveInt = 10_000
    seed: NonNegativeInt = 1
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
