r"""Charged-current Drell–Yan: :math:`u_i\bar d_j \to W^+ \to \mu^+\nu_\mu` (u, c × d̄, s̄, b̄).

One s-channel diagram, α(m_Z) scheme :math:`g_W^2 = 4\pi\alpha/s_W^2` (as Pythia's
``WeakSingleBoson:ffbar2W``), CKM matrix :data:`~unfoldmem.physics.couplings.CKM_PDG` (Pythia's
defaults) or the unit matrix, fixed-width W propagator. θ: m_W, Γ_W.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor

from unfoldmem.physics import helas as h
from unfoldmem.physics.couplings import EW_DEFAULTS, NC, ckm
from unfoldmem.physics.process import (
    Parameter,
    Process,
    ShatMapping,
    register_process,
    two_body_final_state,
)

__all__ = ["WLepNu"]

_PAIRS = tuple((u, -d) for u in (2, 4) for d in (1, 3, 5))


@register_process
class WLepNu(Process):
    r""":math:`q\bar q' \to W^+ \to \mu^+\nu_\mu`; final state (μ⁺, ν_μ).

    Arguments:
        alpha: α(m_Z). sin2w: sin²θ_W (fixed here; the W couplings are g/√2 with g = e/s_W).
        ckm_matrix: ``"pdg"`` (Pythia 8's default |V_ij|) or ``"diagonal"``.
    """

    name = "w_lnu"
    final_state = (-13, 14)
    parameters: ClassVar[dict[str, Parameter]] = {
        "m_w": Parameter(EW_DEFAULTS.m_w, "GeV", "W boson mass"),
        "gamma_w": Parameter(EW_DEFAULTS.gamma_w, "GeV", "W boson width"),
    }
    dim = 2
    cut_keys = ("m_lnu_min", "m_lnu_max")

    def __init__(
        self,
        alpha: float = EW_DEFAULTS.alpha_mz,
        sin2w: float = EW_DEFAULTS.sin2w,
        ckm_matrix: str = "pdg",
    ) -> None:
        if ckm_matrix not in ("pdg", "diagonal"):
            msg = f"ckm_matrix must be 'pdg' or 'diagonal', got {ckm_matrix!r}"
            raise ValueError(msg)
        self.alpha, self.sin2w, self.ckm_matrix = alpha, sin2w, ckm_matrix
        pairs = [p for p in _PAIRS if ckm(*p, matrix=ckm_matrix) > 0]
        self.channels = tuple(c for a, b in pairs for c in ((a, b), (b, a)))

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|² averaged over 4 spins and 9 colours; p_in (N,2,4) ordered as ``channel``."""
        iq = 0 if channel[0] > 0 else 1
        up, down = (channel[0], channel[1]) if iq == 0 else (channel[1], channel[0])
        gw = math.sqrt(4 * math.pi * self.alpha / self.sin2w / 2)
        gq = gw * ckm(up, down, self.ckm_matrix)
        pq, pqb = p_in[:, iq], p_in[:, 1 - iq]
        pmu, pnu = p_out[:, 0], p_out[:, 1]
        # V−A: only left-handed quark / neutrino and right-handed antiparticles contribute
        w = h.vector_offshell(
            h.spinor_vbar(pqb, 0.0, 1),
            h.spinor_u(pq, 0.0, -1),
            gq,
            0.0,
            pq + pqb,
            theta["m_w"],
            theta["gamma_w"],
        )
        amp = h.ffv_amplitude(h.spinor_ubar(pnu, 0.0, -1), h.spinor_v(pmu, 0.0, 1), w, gw, 0.0)
        return (amp.real**2 + amp.imag**2) / (4.0 * NC)

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """μ⁺ν isotropic in the partonic rest frame; u (N, 2), shat (N,) GeV²."""
        return two_body_final_state(u, shat, 0.0, 0.0)

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """Breit–Wigner in m_ℓν² between ``m_lnu_min`` (default 50) and ``m_lnu_max`` (110) GeV."""
        cuts = dict(cuts or {})
        self.check_cuts(cuts)
        lo, hi = cuts.get("m_lnu_min", 50.0), cuts.get("m_lnu_max", 110.0)
        return ShatMapping(lo**2, hi**2, (theta["m_w"], theta["gamma_w"]))
