r"""Pythia 8 settings that reproduce our process cards' leading-order physics.

Same PDF grid (NNPDF31_lo_as_0118 from the pythia8mc wheel), α_s(m_Z) = 0.118 at one loop,
the same fixed scales and electroweak inputs, no shower or hadronisation: Pythia's hard process
is then an independent calculation of the same cross section and distributions.
"""

from __future__ import annotations

#: Pythia 8 settings per card; {pdf} is the path of NNPDF31_lo_as_0118_0000.dat.
COMMON = [
    "Beams:eCM = 13000.",
    "PDF:pSet = LHAGrid1:{pdf}",
    "PartonLevel:all = off",
    "HadronLevel:all = off",
    "SigmaProcess:alphaSvalue = 0.118",
    "SigmaProcess:alphaSorder = 1",
    "SigmaProcess:alphaEMorder = -1",
    "StandardModel:alphaEMmZ = 0.00781751",
    "StandardModel:sin2thetaW = 0.2312",
    "StandardModel:sin2thetaWbar = 0.2312",
    "SigmaProcess:factorScale1 = 2",
    "SigmaProcess:renormScale1 = 2",
    "SigmaProcess:factorScale2 = 5",
    "SigmaProcess:renormScale2 = 5",
    "Random:setSeed = on",
    "Next:numberCount = 0",
    "Print:quiet = on",
]
PROCESSES: dict[str, list[str]] = {
    "drell_yan": [
        "WeakSingleBoson:ffbar2gmZ = on", "WeakZ0:gmZmode = 0", "23:m0 = 91.1876",
        "23:mWidth = 2.4952", "23:onMode = off", "23:onIfAny = 13", "23:mMin = 60.",
        "23:mMax = 120.", "PhaseSpace:mHatMin = 60.", "PhaseSpace:mHatMax = 120.",
        "SigmaProcess:factorFixScale = {mu2}", "SigmaProcess:renormFixScale = {mu2}",
    ],
    "w_lnu": [
        "WeakSingleBoson:ffbar2W = on", "24:m0 = 80.385", "24:mWidth = 2.085",
        "24:onMode = off", "24:onPosIfAny = 13", "24:mMin = 50.", "24:mMax = 110.",
        "PhaseSpace:mHatMin = 50.", "PhaseSpace:mHatMax = 110.",
        "SigmaProcess:factorFixScale = {mu2}", "SigmaProcess:renormFixScale = {mu2}",
    ],
    "ttbar": [
        "Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "6:m0 = 172.5",
        "PhaseSpace:useBreitWigners = off",
        "SigmaProcess:factorFixScale = {mu2}", "SigmaProcess:renormFixScale = {mu2}",
    ],
}  # fmt: skip


def ttbar_semileptonic_settings(pdf: str, mu2: float, m_t: float, gamma_t: float,
                                bw_cutoff: float) -> list[str]:
    """Pythia 8 tt̄ → b μ⁺ν b̄ d ū at the hard-process level with our card's inputs: fixed
    μ_F² = μ_R² = ``mu2`` (GeV²), top mass, width and virtuality window |m − m_t| <
    ``bw_cutoff``·Γ_t, t → b W only (no |V_ts|, |V_td|), W⁺ → μ⁺ν, W⁻ → d ū."""
    return [s.format(pdf=pdf, mu2=f"{mu2:.6f}") for s in COMMON] + [
        "Top:gg2ttbar = on", "Top:qqbar2ttbar = on", f"6:m0 = {m_t}", f"6:mWidth = {gamma_t}",
        f"6:mMin = {m_t - bw_cutoff * gamma_t}", f"6:mMax = {m_t + bw_cutoff * gamma_t}",
        f"SigmaProcess:factorFixScale = {mu2:.6f}", f"SigmaProcess:renormFixScale = {mu2:.6f}",
        "6:onMode = off", "6:onIfMatch = 5 24",
        "24:onMode = off", "24:onPosIfMatch = 13 14", "24:onNegIfMatch = 1 2",
    ]  # fmt: skip
