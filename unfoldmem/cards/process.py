r"""Process cards: which hard process, at what collider energy, PDF, scales and theory point."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat

from unfoldmem.cards.base import StrictModel

__all__ = ["ScaleConfig", "ProcessCard"]


class ScaleConfig(StrictModel):
    """Factorisation and renormalisation scales in GeV (fixed scales: LO comparisons need them)."""

    mu_f: PositiveFloat = Field(91.1876, description="factorisation scale, GeV")
    mu_r: PositiveFloat = Field(91.1876, description="renormalisation scale, GeV")


class ProcessCard(StrictModel):
    """A hard process with its collider, PDF and parameters θ (units GeV)."""

    kind: Literal["process"] = "process"
    process: str = Field(description="registered process name, e.g. drell_yan, w_lnu, ttbar_semileptonic")
    sqrt_s: PositiveFloat = Field(13000.0, description="hadronic centre-of-mass energy, GeV")
    pdf: str = Field("NNPDF31_lo_as_0118", description="LHAPDF6 set name (member 0 is used)")
    alpha_s_mz: PositiveFloat = Field(0.118, description="αs(m_Z) used with the PDF set")
    alpha_s: PositiveFloat | None = Field(
        None, description="fixed αs in |M|², overriding the PDF set's αs(mu_r) (None: use the PDF's)"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="process options, e.g. top_width: lo, bw_cutoff: 15 (see docs/processes.md)",
    )
    scale: ScaleConfig = Field(default_factory=ScaleConfig)
    theta: dict[str, float] = Field(default_factory=dict, description="parameter values, GeV")
    cuts: dict[str, float] = Field(
        default_factory=dict, description="generator-level cuts, e.g. m_ll_min: 60 (GeV)"
    )
