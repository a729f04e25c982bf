r"""Drell–Yan: :math:`q\bar q \to \gamma^*/Z \to \mu^-\mu^+` with full γ*/Z interference.

Two s-channel diagrams (photon, Z), α(m_Z) scheme: :math:`e^2 = 4\pi\alpha(m_Z)`,
:math:`g_Z = e/(s_W c_W)`; Z propagator with a fixed width. θ: m_Z, Γ_Z, sin²θ_W.

|M|² is evaluated from the massless helicity amplitudes in closed form (Ellis–Stirling–Webber,
"QCD and collider physics", eq. (9.9)),

.. math:: \overline{|M|^2} = \frac{1}{3}\Big[(|A_{LL}|^2 + |A_{RR}|^2)\,u^2
    + (|A_{LR}|^2 + |A_{RL}|^2)\,t^2\Big],\qquad
    A_{ij} = \frac{e^2 Q_q Q_\ell}{\hat s} + \frac{g^q_i g^\ell_j}{\hat s - M_Z^2 + iM_Z\Gamma_Z},

with :math:`t = (p_q - p_{\mu^-})^2`, :math:`u = (p_q - p_{\mu^+})^2`: ≈ 40× cheaper than the
HELAS diagrams (:meth:`DrellYan.helas_matrix_element_squared`), which stay as the reference it
is tested against to 1e-12 (``tests/physics/test_amplitudes.py``). The MEM evaluates |M|² at
every sample, where the HELAS spinors and currents were half of a Drell–Yan sample's cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from unfoldmem.physics import helas as h
from unfoldmem.physics.couplings import EW_DEFAULTS, NC, charge, z_couplings
from unfoldmem.physics.process import (
    Parameter,
    Process,
    ShatMapping,
    register_process,
    two_body_final_state,
)

__all__ = ["DrellYan"]

_QUARKS = (1, 2, 3, 4, 5)


@register_process
class DrellYan(Process):
    r""":math:`q\bar q \to \gamma^*/Z \to \mu^-\mu^+`, q = d, u, s, c, b; final state (μ⁻, μ⁺).

    Arguments:
        alpha: the fixed electromagnetic coupling α(m_Z).
    """

    name = "drell_yan"
    final_state = (13, -13)
    parameters: ClassVar[dict[str, Parameter]] = {
        "m_z": Parameter(EW_DEFAULTS.m_z, "GeV", "Z boson mass"),
        "gamma_z": Parameter(EW_DEFAULTS.gamma_z, "GeV", "Z boson width"),
        "sin2w": Parameter(EW_DEFAULTS.sin2w, "1", "weak mixing angle sin²θ_W"),
    }
    dim = 2
    cut_keys = ("m_ll_min", "m_ll_max")

    def __init__(self, alpha: float = EW_DEFAULTS.alpha_mz) -> None:
        self.alpha = alpha
        self.channels = tuple(c for q in _QUARKS for c in ((q, -q), (-q, q)))

    def helas_matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """:meth:`matrix_element_squared` from the two HELAS diagrams (spinors, currents,
        vertices): the diagram-level reference of the closed form."""
        iq = 0 if channel[0] > 0 else 1
        q = abs(channel[0])
        pq, pqb = p_in[:, iq], p_in[:, 1 - iq]
        pl, pa = p_out[:, 0], p_out[:, 1]
        k = pq + pqb
        e = math.sqrt(4 * math.pi * self.alpha)
        gl_q, gr_q = z_couplings(q, self.alpha, theta["sin2w"])
        gl_l, gr_l = z_couplings(13, self.alpha, theta["sin2w"])
        eq, el = e * charge(q), e * charge(13)
        leptons = {hl: (h.spinor_ubar(pl, 0.0, hl), h.spinor_v(pa, 0.0, -hl)) for hl in (1, -1)}
        total = torch.zeros(p_in.shape[0], dtype=torch.float64)
        # massless fermions: only opposite-helicity q q̄ (and ℓ⁻ℓ⁺) pairs couple to vectors
        for hq in (1, -1):
            u, vb = h.spinor_u(pq, 0.0, hq), h.spinor_vbar(pqb, 0.0, -hq)
            v_gam = h.vector_offshell(vb, u, eq, eq, k, 0.0, 0.0)
            v_z = h.vector_offshell(vb, u, gl_q, gr_q, k, theta["m_z"], theta["gamma_z"])
            for hl in (1, -1):
                ub, v = leptons[hl]
                amp = h.ffv_amplitude(ub, v, v_gam, el, el) + h.ffv_amplitude(
                    ub, v, v_z, gl_l, gr_l
                )
                total = total + amp.real**2 + amp.imag**2
        return total / (4.0 * NC)

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|² averaged over 4 spins and 9 colours, (N,); p_in (N,2,4) ordered as ``channel``
        (closed form from the helicity amplitudes A_ij, see the module doc)."""
        iq = 0 if channel[0] > 0 else 1
        q = abs(channel[0])
        pq, pqb = p_in[:, iq], p_in[:, 1 - iq]
        pl, pa = p_out[:, 0], p_out[:, 1]
        shat = 2 * h.mdot(pq, pqb)
        t, u = -2 * h.mdot(pq, pl), -2 * h.mdot(pq, pa)  # massless: (p_q − p)² = −2 p_q·p
        gq = z_couplings(q, self.alpha, theta["sin2w"])
        gl = z_couplings(13, self.alpha, theta["sin2w"])
        qed = 4 * math.pi * self.alpha * charge(q) * charge(13) / shat
        mz, gz = theta["m_z"], theta["gamma_z"]
        re_d, im_d = shat - mz**2, mz * gz
        inv = 1.0 / (re_d**2 + im_d**2)
        # |A_ij|² = |qed + g_i g_j / D|², 1/D = (Re D − i Im D)/|D|²
        a2 = [[(qed + gq[i] * gl[j] * re_d * inv) ** 2 + (gq[i] * gl[j] * im_d * inv) ** 2
               for j in (0, 1)] for i in (0, 1)]
        # Σ_spins |M|² = 4 Σ_ij |A_ij|² (u² or t²); averaged over 4 spins, summed/averaged colour
        return ((a2[0][0] + a2[1][1]) * u**2 + (a2[0][1] + a2[1][0]) * t**2) / NC

    def matrix_elements_by_channel(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor]
    ) -> Tensor:
        """(N, n_channels): one evaluation per (up/down type, orientation), shared by the
        flavours of equal couplings."""
        done: dict[tuple[int, bool], Tensor] = {}
        cols = []
        for c in self.channels:
            key = (abs(c[0]) % 2, c[0] > 0)  # d, s, b and u, c have equal couplings
            if key not in done:
                done[key] = self.matrix_element_squared(p_in, p_out, theta, c)
            cols.append(done[key])
        return torch.stack(cols, -1)

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """μ⁻μ⁺ isotropic in the partonic rest frame; u (N, 2), shat (N,) GeV²."""
        return two_body_final_state(u, shat, 0.0, 0.0)

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """Breit–Wigner in m_ll² between ``m_ll_min`` (default 60) and ``m_ll_max`` (120) GeV."""
        cuts = dict(cuts or {})
        self.check_cuts(cuts)
        lo, hi = cuts.get("m_ll_min", 60.0), cuts.get("m_ll_max", 120.0)
        return ShatMapping(lo**2, hi**2, (theta["m_z"], theta["gamma_z"]))
