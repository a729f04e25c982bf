r"""Detector cards: resolutions, acceptances and efficiencies of the parametric detector."""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, model_validator

from unfoldmem.cards.base import StrictModel

__all__ = [
    "BTagConfig",
    "DetectorCard",
    "ISRConfig",
    "JetConfig",
    "JetResolution",
    "LeptonConfig",
    "LeptonResolution",
    "METConfig",
]

def _check_regions(name: str, n: int, values: dict[str, list[float]], probs: set[str]) -> None:
    for key, vals in values.items():
        if len(vals) != n:
            msg = f"{name}.{key}: expected {n} value(s), one per |eta| region, found {len(vals)}"
            raise ValueError(msg)
        if any(v < 0 for v in vals):
            msg = f"{name}.{key}: values must be >= 0, found {vals}"
            raise ValueError(msg)
        if key in probs and any(v > 1 for v in vals):
            msg = f"{name}.{key}: probabilities must be in [0, 1], found {vals}"
            raise ValueError(msg)


def _check_edges(name: str, edges: list[float]) -> None:
    if len(edges) < 2 or edges[0] != 0.0 or any(b <= a for a, b in itertools.pairwise(edges)):
        msg = f"{name}.eta_edges: expected increasing |eta| edges starting at 0, found {edges}"
        raise ValueError(msg)


class JetResolution(StrictModel):
    """Jet energy resolution per |η| region: σ_E/E = a/√E ⊕ b/E ⊕ c (E in GeV)."""

    a: list[NonNegativeFloat] = Field(description="stochastic term per region, √GeV")
    b: list[NonNegativeFloat] = Field(description="noise term per region, GeV")
    c: list[NonNegativeFloat] = Field(description="constant term per region, dimensionless")


class LeptonResolution(StrictModel):
    """Lepton transverse-momentum resolution per |η| region: σ_pt/pt = a ⊕ b·pt (pt in GeV)."""

    a: list[NonNegativeFloat] = Field(description="constant term per region, dimensionless")
    b: list[NonNegativeFloat] = Field(description="curvature term per region, 1/GeV")


class JetConfig(StrictModel):
    """Jets from quarks and gluons (and τ, γ): energy smearing, angles, acceptance, efficiency."""

    pt_min: PositiveFloat = Field(25.0, description="reco-level acceptance pt > pt_min, GeV")
    eta_max: PositiveFloat = Field(2.5, description="reco-level acceptance |η| < eta_max")
    eta_edges: list[float] = Field(
        [0.0, 1.3, 2.5],
        description="|η| region edges (parton |η|); beyond the last edge the last region applies",
    )
    resolution: JetResolution = Field(
        default_factory=lambda: JetResolution(a=[0.8, 1.0], b=[2.0, 3.0], c=[0.05, 0.06])
    )
    sigma_eta: list[NonNegativeFloat] = Field([0.02, 0.03], description="η resolution per region")
    sigma_phi: list[NonNegativeFloat] = Field(
        [0.02, 0.03], description="φ resolution per region, rad"
    )
    efficiency: list[float] = Field([0.98, 0.95], description="reconstruction efficiency per region")

    @model_validator(mode="after")
    def _regions(self) -> JetConfig:
        _check_edges("jets", self.eta_edges)
        n = len(self.eta_edges) - 1
        r = self.resolution
        _check_regions(
            "jets",
            n,
            {"resolution.a": r.a, "resolution.b": r.b, "resolution.c": r.c,
             "sigma_eta": self.sigma_eta, "sigma_phi": self.sigma_phi,
             "efficiency": self.efficiency},
            {"efficiency"},
        )
        return self


class LeptonConfig(StrictModel):
    """Muons or electrons: pt smearing, angles, acceptance, identification efficiency."""

    mass: NonNegativeFloat = Field(description="reco mass assigned, GeV")
    pt_min: PositiveFloat = Field(10.0, description="reco-level acceptance pt > pt_min, GeV")
    eta_max: PositiveFloat = Field(2.5, description="reco-level acceptance |η| < eta_max")
    eta_edges: list[float] = Field([0.0, 1.5, 2.5], description="|η| region edges (parton |η|)")
    resolution: LeptonResolution = Field(
        default_factory=lambda: LeptonResolution(a=[0.01, 0.02], b=[1e-4, 2e-4])
    )
    sigma_eta: list[NonNegativeFloat] = Field([1e-3, 1e-3], description="η resolution per region")
    sigma_phi: list[NonNegativeFloat] = Field(
        [1e-3, 1e-3], description="φ resolution per region, rad"
    )
    efficiency: list[float] = Field([0.95, 0.90], description="id efficiency per region")

    @model_validator(mode="after")
    def _regions(self) -> LeptonConfig:
        _check_edges("lepton", self.eta_edges)
        r = self.resolution
        _check_regions(
            "lepton",
            len(self.eta_edges) - 1,
            {"resolution.a": r.a, "resolution.b": r.b, "sigma_eta": self.sigma_eta,
             "sigma_phi": self.sigma_phi, "efficiency": self.efficiency},
            {"efficiency"},
        )
        return self


class BTagConfig(StrictModel):
    """b-tagging per jet |η| region (parton |η|): tag probability by the parton's flavour."""

    eta_edges: list[float] = Field([0.0, 2.5], description="|η| region edges")
    efficiency: list[float] = Field([0.70], description="P(tag | b quark) per region")
    mistag_c: list[float] = Field([0.15], description="P(tag | c quark) per region")
    mistag_light: list[float] = Field(
        [0.01], description="P(tag | u, d, s, g, and ISR jets) per region"
    )

    @model_validator(mode="after")
    def _regions(self) -> BTagConfig:
        _check_edges("btag", self.eta_edges)
        _check_regions(
            "btag",
            len(self.eta_edges) - 1,
            {"efficiency": self.efficiency, "mistag_c": self.mistag_c,
             "mistag_light": self.mistag_light},
            {"efficiency", "mistag_c", "mistag_light"},
        )
        return self


class METConfig(StrictModel):
    """Missing transverse momentum: mismeasurement of the objects plus unclustered noise."""

    noise: NonNegativeFloat = Field(
        10.0, description="Gaussian noise per component (x, y), constant part, GeV"
    )
    noise_sumet: NonNegativeFloat = Field(
        0.5, description="noise per component growing as noise_sumet·√(Σ parton pt), √GeV"
    )


class ISRConfig(StrictModel):
    """Extra jets from initial-state radiation, drawn at reco level, independent of the partons.

    Multiplicity P(k), k = 0..max_jets: a Poisson (mean ``mean``) or geometric
    (P(k) ∝ q^k with q = mean/(1+mean)) law truncated at ``max_jets`` and renormalised.
    Spectrum: Pareto p(pt) = (index-1)/pt_min (pt/pt_min)^-index for pt > pt_min;
    η uniform in [-eta_max, eta_max]; φ uniform.
    """

    distribution: Literal["poisson", "geometric", "none"] = Field(
        "poisson", description="law of the number of ISR jets"
    )
    mean: NonNegativeFloat = Field(0.6, description="mean of the untruncated law")
    max_jets: int = Field(4, ge=0, le=16, description="largest number of ISR jets")
    pt_min: PositiveFloat = Field(25.0, description="ISR jet spectrum starts here, GeV")
    index: float = Field(4.0, gt=1.0, description="power-law index of the pt spectrum")
    eta_max: PositiveFloat = Field(2.5, description="ISR jets uniform in |η| < eta_max")


class DetectorCard(StrictModel):
    """A parametric (Delphes-like) detector with an exactly known transfer density.

    Smearing and efficiencies depend on the parton's |η| region; acceptance cuts act on the
    reco-level values. See docs/simulation.md for the formulas and the exact density.
    """

    kind: Literal["detector"] = "detector"
    name: str = Field("default", description="a label for plots and file metadata")
    jets: JetConfig = Field(default_factory=JetConfig)
    btag: BTagConfig = Field(default_factory=BTagConfig)
    muons: LeptonConfig = Field(default_factory=lambda: LeptonConfig(mass=0.1056583755))
    electrons: LeptonConfig = Field(
        default_factory=lambda: LeptonConfig(
            mass=0.00051099895,
            resolution=LeptonResolution(a=[0.015, 0.025], b=[5e-5, 1e-4]),
            efficiency=[0.90, 0.85],
        )
    )
    met: METConfig = Field(default_factory=METConfig)
    isr: ISRConfig = Field(default_factory=ISRConfig)

    @model_validator(mode="after")
    def _isr_inside(self) -> DetectorCard:
        # ISR jets are drawn inside the jet acceptance so their multiplicity law is the card's.
        if self.isr.pt_min < self.jets.pt_min or self.isr.eta_max > self.jets.eta_max:
            msg = (
                f"isr: pt_min ({self.isr.pt_min}) must be >= jets.pt_min ({self.jets.pt_min}) "
                f"and eta_max ({self.isr.eta_max}) <= jets.eta_max ({self.jets.eta_max})"
            )
            raise ValueError(msg)
        return self

    def without_isr(self) -> DetectorCard:
        """This card with no ISR jets (``isr.distribution: none``), everything else the same."""
        return self.model_copy(update={"isr": self.isr.model_copy(update={"distribution": "none"})})
