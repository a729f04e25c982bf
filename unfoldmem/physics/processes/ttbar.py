r"""On-shell :math:`gg \to t\bar t` and :math:`q\bar q \to t\bar t` at LO, and the production
amplitudes shared with the decayed process (:mod:`.ttbar_semileptonic`).

Diagrams: gg → tt̄ through the t- and u-channel top exchange and the s-channel gluon (triple-gluon
vertex); q q̄ → tt̄ through the s-channel gluon. Colour: gg amplitudes are split as
:math:`M = (T^aT^b)_{ij} A_1 + (T^bT^a)_{ij} A_2` with colour matrix
:math:`\frac{16}{3}(|A_1|^2 + |A_2|^2) - \frac{4}{3}\mathrm{Re}\,A_1A_2^*`; q q̄ has colour
factor 2. θ: m_t (GeV); α_s is supplied by the hadronic integrand as ``theta["alpha_s"]``.

References:
    B. L. Combridge, Nucl. Phys. B151 (1979) 429 (the analytic |M|² used in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor

from unfoldmem.physics import helas as h
from unfoldmem.physics.process import (
    Parameter,
    Process,
    ShatMapping,
    register_process,
    two_body_final_state,
)

__all__ = ["TTbar", "gg_colour_sum", "gg_partial_amplitudes", "qq_amplitude", "TTBAR_CHANNELS"]

_QUARKS = (1, 2, 3, 4, 5)
TTBAR_CHANNELS = ((21, 21), *(c for q in _QUARKS for c in ((q, -q), (-q, q))))


def gg_partial_amplitudes(
    bar_t: Tensor,
    v_t: Tensor,
    p_t: Tensor,
    k1: Tensor,
    k2: Tensor,
    e1: Tensor,
    e2: Tensor,
    gs: Tensor,
    m_t: Tensor,
) -> tuple[Tensor, Tensor]:
    r"""Colour-ordered amplitudes (A₁, A₂) of :math:`g(k_1,\epsilon_1) g(k_2,\epsilon_2) \to t\bar t`.

    Arguments:
        bar_t: (..., 4) row spinor of the top (on-shell :math:`\bar u` or off-shell from a decay).
        v_t: (..., 4) spinor of the antitop. p_t: (..., 4) top momentum.
        k1, k2: incoming gluon momenta; e1, e2: their polarisations. gs: strong coupling.
        m_t: top mass in the t/u-channel propagators (no width: spacelike lines).
    """
    # t-channel: gluon 1 at the top end of the line, propagator momentum p_t - k1
    t_line = h.fermion_out_offshell(bar_t, e1, gs, gs, p_t - k1, m_t, 0.0)
    amp_t = h.ffv_amplitude(t_line, v_t, e2, gs, gs)
    u_line = h.fermion_out_offshell(bar_t, e2, gs, gs, p_t - k2, m_t, 0.0)
    amp_u = h.ffv_amplitude(u_line, v_t, e1, gs, gs)
    g3 = h.vvv_offshell(e1, k1, e2, k2, gs)
    amp_s = h.ffv_amplitude(bar_t, v_t, g3, gs, gs)
    # f^{abc} T^c = -i [T^a, T^b]
    return amp_t - 1j * amp_s, amp_u + 1j * amp_s


def _gg_amplitudes_hel(
    bar_t: Tensor, v_t: Tensor, p_t: Tensor, k1: Tensor, k2: Tensor, eps: Tensor, gs: Tensor,
    m_t: Tensor, top_current: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r""":func:`gg_partial_amplitudes` for all gluon helicities at once, (2, 2, N) each.

    ``eps`` (2 gluons, 2 helicities, N, 4); the t- and u-channel lines are one stacked
    FVOXXX call, and ``top_current`` (:math:`\bar u_t\gamma^\mu v_t g_s`, (N, 4)) may be
    shared with the q q̄ channels.
    """
    p_lines = torch.stack([p_t - k1, p_t - k2]).unsqueeze(1)
    lines = h.fermion_out_offshell(bar_t, eps, gs, gs, p_lines, m_t, 0.0)
    j = h.ffv_current(lines, v_t, gs, gs)
    e1, e2 = eps[0].unsqueeze(1), eps[1].unsqueeze(0)
    amp_t = 1j * h.mdot(j[0].unsqueeze(1), e2)
    amp_u = 1j * h.mdot(j[1].unsqueeze(0), e1)
    if top_current is None:
        top_current = h.ffv_current(bar_t, v_t, gs, gs)
    # s channel, i J·(JVVXXX): the triple-gluon vertex contracted with J term by term, so no
    # (2, 2, N, 4) off-shell gluon is built
    jt, k3 = top_current, -(k1 + k2)
    e1n, e2n = eps[0], eps[1]
    s_part = (
        h.mdot(e1, e2) * h.mdot(jt, k1 - k2)
        + h.mdot(jt, e2n).unsqueeze(0) * h.mdot(k2 - k3, e1n).unsqueeze(1)
        + h.mdot(jt, e1n).unsqueeze(1) * h.mdot(k3 - k1, e2n).unsqueeze(0)
    )
    amp_s = s_part * (gs / h.mdot(k3, k3))
    return amp_t - 1j * amp_s, amp_u + 1j * amp_s


def _massless_u(k: Tensor) -> Tensor:
    """u(k, ±) of massless momenta k (..., 4) -> (2 helicities (+, −), ..., 4)."""
    return torch.stack([h.spinor_u(k, 0.0, 1), h.spinor_u(k, 0.0, -1)])


def _gluon_pols_from_u(u_minus: Tensor) -> Tensor:
    r""":func:`~unfoldmem.physics.helas.polarizations_ref` of both gluons (k₁ with reference
    k₂ and vice versa) from u₋(k) (2 gluons, N, 4) -> (2 gluons, 2 helicities, N, 4)."""
    j = h.ffv_current(h.bar(u_minus.flip(0)), u_minus, 1.0, 0.0)
    j = j * torch.rsqrt(-h.mdot(j, j.conj()).real).unsqueeze(-1)
    return torch.stack([j, j.conj()], 1)


def _qq_me2_both(
    top_current: Tensor, u_in: Tensor, k1: Tensor, k2: Tensor, gs: Tensor, rows: slice = slice(None)
) -> Tensor:
    r"""Colour-stripped :math:`\sum_{h_q}|A|^2` of q q̄ → tt̄ for both orientations, (2, N):
    row 0 q(k₁) q̄(k₂), row 1 q̄(k₁) q(k₂). ``u_in`` = u(k, ±) (2 hel, 2 beams, N, 4); for
    massless spinors :math:`v(p, \mp) = -u(p, \pm)`; ``top_current`` is
    :math:`g_s\bar u_t\gamma^\mu v_t` (N, 4); ``rows`` selects orientations."""
    jq = h.ffv_current(-h.bar(u_in.flip(1)[:, rows]), u_in[:, rows], gs, gs)
    kk = k1 + k2
    a = h.mdot(top_current, jq) / h.mdot(kk, kk)
    return (a.real**2 + a.imag**2).sum(0)


def gg_colour_sum(a1: Tensor, a2: Tensor) -> Tensor:
    """Colour-summed |M|² from the colour-ordered amplitudes (no averaging), real (...)."""
    cross = (a1 * a2.conj()).real
    return 16.0 / 3.0 * (a1.real**2 + a1.imag**2 + a2.real**2 + a2.imag**2) - 4.0 / 3.0 * cross


def qq_amplitude(
    bar_t: Tensor, v_t: Tensor, p_q: Tensor, p_qb: Tensor, hq: int, gs: Tensor
) -> Tensor:
    r"""Colour-stripped :math:`q(p_q, h_q)\bar q(p_{\bar q}, -h_q) \to t\bar t` amplitude (colour factor 2)."""
    g = h.vector_offshell(
        h.spinor_vbar(p_qb, 0.0, -hq), h.spinor_u(p_q, 0.0, hq), gs, gs, p_q + p_qb, 0.0, 0.0
    )
    return h.ffv_amplitude(bar_t, v_t, g, gs, gs)


def strong_coupling(theta: Mapping[str, Tensor]) -> Tensor:
    """g_s = √(4π α_s) from ``theta["alpha_s"]``."""
    return torch.sqrt(4 * math.pi * theta["alpha_s"])


@register_process
class TTbar(Process):
    """On-shell :math:`gg, q\\bar q \\to t\\bar t` (no decays); final state (t, t̄)."""

    name = "ttbar"
    final_state = (6, -6)
    parameters: ClassVar[dict[str, Parameter]] = {
        "m_t": Parameter(172.5, "GeV", "top quark mass"),
    }
    dim = 2
    qcd = True

    def __init__(self) -> None:
        self.channels = TTBAR_CHANNELS

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|² averaged over initial spins and colours; p_in (N,2,4), p_out (N,2,4) = (t, t̄)."""
        m_t, gs = theta["m_t"], strong_coupling(theta)
        p_t, p_tb = p_out[:, 0], p_out[:, 1]
        total = torch.zeros(p_in.shape[0], dtype=torch.float64)
        for ht in (1, -1):
            bar_t = h.spinor_ubar(p_t, m_t, ht)
            for htb in (1, -1):
                v_t = h.spinor_v(p_tb, m_t, htb)
                if channel == (21, 21):
                    k1, k2 = p_in[:, 0], p_in[:, 1]
                    for h1 in (1, -1):
                        e1 = h.polarization(k1, 0.0, h1)
                        for h2 in (1, -1):
                            e2 = h.polarization(k2, 0.0, h2)
                            a1, a2 = gg_partial_amplitudes(bar_t, v_t, p_t, k1, k2, e1, e2, gs, m_t)
                            total = total + gg_colour_sum(a1, a2)
                else:
                    iq = 0 if channel[0] > 0 else 1
                    for hq in (1, -1):
                        a = qq_amplitude(bar_t, v_t, p_in[:, iq], p_in[:, 1 - iq], hq, gs)
                        total = total + 2.0 * (a.real**2 + a.imag**2)
        return total / (256.0 if channel == (21, 21) else 36.0)

    def matrix_elements_by_channel(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor]
    ) -> Tensor:
        """(N, n_channels): gg once, q q̄ and q̄ q once each (the gluon coupling is flavour-blind)."""
        gg = self.matrix_element_squared(p_in, p_out, theta, (21, 21))
        qqb = self.matrix_element_squared(p_in, p_out, theta, (1, -1))
        qbq = self.matrix_element_squared(p_in, p_out, theta, (-1, 1))
        cols = [gg if c == (21, 21) else (qqb if c[0] > 0 else qbq) for c in self.channels]
        return torch.stack(cols, -1)

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """t t̄ isotropic in the partonic rest frame; u (N, 2), shat (N,) GeV² (zero below 4m_t²)."""
        m_t = theta["m_t"]
        p_out, w = two_body_final_state(u, shat, m_t, m_t)
        return p_out, torch.where(shat > 4 * m_t**2, w, torch.zeros_like(w))

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """ŝ from threshold 4m_t² up, mapped as dŝ/ŝ."""
        self.check_cuts(dict(cuts or {}))
        return ShatMapping(4 * theta["m_t"] ** 2)
