r"""Run cards: a generation job tying a process card, a detector card and a selection together."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveInt

from unfoldmem.cards.base import CardFile, StrictModel

__all__ = ["GeneratorConfig", "SelectionConfig", "RunCard"]


class SelectionConfig(StrictModel):
    """Reco-level selection applied to set ``pass_reco`` (GeV for momenta)."""

    n_jets_min: NonNegativeInt = Field(0, description="at least this many jets (pt > jet_pt_min)")
    n_jets_max: NonNegativeInt | None = Field(None, description="at most this many jets")
    n_bjets_min: NonNegativeInt = Field(0, description="at least this many b-tagged jets")
    n_leptons_min: NonNegativeInt = Field(0, description="at least this many e + μ")
    n_leptons_max: int | None = Field(None, description="at most this many e + μ")
    lepton_pt_min: NonNegativeFloat = Field(0.0, description="leptons counted above this pt, GeV")
    jet_pt_min: NonNegativeFloat = Field(0.0, description="jets counted above this pt, GeV")
    met_min: NonNegativeFloat = Field(0.0, description="missing pt above this, GeV")


class GeneratorConfig(StrictModel):
    """Parton-level generator settings: VEGAS adaptation, unweighting, chunking."""

    neval: PositiveInt = Field(20_000, description="VEGAS points per adaptation iteration")
    nitn_adapt: PositiveInt = Field(8, description="VEGAS adaptation iterations")
    n_presample: PositiveInt = Field(
        200_000, description="points that fix σ estimate and the unweighting maximum"
    )
    max_overweight: NonNegativeFloat = Field(
        1e-3, description="fraction of σ allowed above w_max (carried by weights > 1)"
    )
    batch: PositiveInt = Field(50_000, description="integrand points per call (memory bound)")
    chunk_size: PositiveInt = Field(100_000, description="events per written chunk")
    weighted: bool = Field(False, description="keep weighted events instead of unweighting")


class RunCard(StrictModel):
    """One simulation run: process (+θ overrides), detector, reco selection and generator."""

    kind: Literal["run"] = "run"
    process: CardFile = Field(description="path to a process card, relative to this card")
    detector: CardFile = Field(description="path to a detector card, relative to this card")
    theta: dict[str, float] = Field(default_factory=dict, description="overrides of the process θ")
    n_events: PositiveInt = Field(10_000, description="parton-level events to generate")
    seed: NonNegativeInt = Field(1, description="seed of every random number of the run")
    chain: Literal["parametric", "pythia"] = Field(
        "parametric", description="parametric detector on partons, or Pythia 8 shower + jets first"
    )
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
