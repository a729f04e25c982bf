r"""Semileptonic :math:`t\bar t`: :math:`gg/q\bar q \to t\bar t \to b\,\ell^+\nu\;\bar b\,d\bar u`
(and the charge conjugate decay mode), exact LO helicity amplitudes with full spin correlations.

The production amplitudes of :mod:`.ttbar` are evaluated with off-shell top wavefunctions built
from the decay chains :math:`t \to b W^+,\ W^+ \to f\bar f'` (HELAS FVOXXX/FVIXXX), so all spin
correlations between production and decays are exact; tops and Ws have Breit–Wigner propagators
(fixed width). Only the doubly-resonant diagrams are kept (the decay-chain approximation of
MadGraph's ``t > b l+ vl``), with |m(bℓν) − m_t| < ``bw_cutoff``·Γ_t as in MadGraph.

Couplings: G_μ scheme for the W (:math:`g_W^2 = 4\sqrt2 G_F m_W^2`), |V_tb| = |V_ud| = 1,
m_b = 0, m_W and Γ_W fixed at :data:`unfoldmem.physics.couplings.EW_DEFAULTS`. θ: m_t, Γ_t (GeV);
with ``top_width="lo"`` Γ_t follows m_t through :func:`~unfoldmem.physics.couplings.top_width_lo`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
from torch import Tensor

from unfoldmem.physics import helas as h
from unfoldmem.physics.couplings import EW_DEFAULTS, NC, top_width_lo
from unfoldmem.physics.phase_space import breit_wigner_map, two_body_decay
from unfoldmem.physics.process import Parameter, Process, ShatMapping, register_process
from unfoldmem.physics.processes.ttbar import (
    TTBAR_CHANNELS,
    _gg_amplitudes_hel,
    _gluon_pols_from_u,
    _massless_u,
    _qq_me2_both,
    gg_colour_sum,
    gg_partial_amplitudes,
    qq_amplitude,
    strong_coupling,
)

__all__ = [
    "DEFAULT_GAMMA_T",
    "TTbarSemileptonic",
    "TTbarSemileptonicMinus",
    "top_decay_me2",
    "w_coupling",
]

_TWO_PI = 2.0 * math.pi
#: LO Γ_t at the default m_t = 172.5 GeV (G_μ scheme), GeV.
DEFAULT_GAMMA_T = float(top_width_lo(172.5))


def w_coupling(m_w: float = EW_DEFAULTS.m_w, g_fermi: float = EW_DEFAULTS.g_fermi) -> float:
    r"""W–fermion coupling :math:`g_W/\sqrt2` in the G_μ scheme, :math:`g_W^2 = 4\sqrt2 G_F m_W^2`."""
    return math.sqrt(2 * math.sqrt(2) * g_fermi) * m_w


def top_decay_me2(
    p_b: Tensor,
    p_lbar: Tensor,
    p_nu: Tensor,
    m_t: Tensor | float,
    m_w: float = EW_DEFAULTS.m_w,
    gamma_w: float = EW_DEFAULTS.gamma_w,
) -> Tensor:
    r""":math:`\overline{|M|^2}(t \to b\,\ell^+\nu)`, averaged over the top spin, with the same
    building blocks and couplings as the production chain; momenta (N, 4) GeV → (N,)."""
    gw = w_coupling(m_w)
    p_t = p_b + p_lbar + p_nu
    w_plus = h.vector_offshell(
        h.spinor_ubar(p_nu, 0.0, -1),
        h.spinor_v(p_lbar, 0.0, 1),
        gw,
        0.0,
        p_lbar + p_nu,
        m_w,
        gamma_w,
    )
    ub = h.spinor_ubar(p_b, 0.0, -1)
    total = torch.zeros(p_b.shape[0], dtype=torch.float64)
    for ht in (1, -1):
        a = h.ffv_amplitude(ub, h.spinor_u(p_t, m_t, ht), w_plus, gw, 0.0)
        total = total + a.real**2 + a.imag**2
    return total / 2.0


@register_process
class TTbarSemileptonic(Process):
    r""":math:`t \to b\,\mu^+\nu_\mu`, :math:`\bar t \to \bar b\, d\bar u`; final state
    (b, μ⁺, ν_μ, b̄, d, ū).

    Arguments:
        top_width: ``"fixed"`` (Γ_t is the parameter ``gamma_t``) or ``"lo"`` (Γ_t = LO Γ_t(m_t)).
        bw_cutoff: top virtuality window in units of Γ_t; ``None`` for the full kinematic range.
        gamma_w: W width in the decay propagators, GeV.
    """

    name = "ttbar_semileptonic"
    lepton_from_top = True
    parameters: ClassVar[dict[str, Parameter]] = {
        "m_t": Parameter(172.5, "GeV", "top quark mass"),
        "gamma_t": Parameter(DEFAULT_GAMMA_T, "GeV", "top quark width (ignored if top_width='lo')"),
    }
    dim = 14
    qcd = True
    chunk = 4096

    def __init__(
        self,
        top_width: str = "fixed",
        bw_cutoff: float | None = 15.0,
        gamma_w: float = EW_DEFAULTS.gamma_w,
    ) -> None:
        if top_width not in ("fixed", "lo"):
            msg = f"top_width must be 'fixed' or 'lo', got {top_width!r}"
            raise ValueError(msg)
        self.top_width, self.bw_cutoff = top_width, bw_cutoff
        self.channels = TTBAR_CHANNELS
        self.m_w, self.gamma_w = EW_DEFAULTS.m_w, gamma_w
        self.g_w = w_coupling(self.m_w)
        if self.lepton_from_top:
            self.final_state = (5, -13, 14, -5, 1, -2)
            self._wp, self._wm = (2, 1), (4, 5)  # (particle, antiparticle) indices of W± daughters
        else:
            self.final_state = (5, 2, -1, -5, 13, -14)
            self._wp, self._wm = (1, 2), (4, 5)

    def width(self, theta: Mapping[str, Tensor]) -> Tensor:
        """Γ_t used in the propagators, GeV."""
        return top_width_lo(theta["m_t"]) if self.top_width == "lo" else theta["gamma_t"]

    def top_wavefunctions(
        self, p_out: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        r"""Off-shell :math:`\bar u_t` (from t → b W⁺ → b f f̄') and :math:`v_{\bar t}`, each (N, 4)."""
        m_t, g_t, gw = theta["m_t"], self.width(theta), self.g_w
        fp, ap = p_out[:, self._wp[0]], p_out[:, self._wp[1]]
        fm, am = p_out[:, self._wm[0]], p_out[:, self._wm[1]]
        p_b, p_bb = p_out[:, 0], p_out[:, 3]
        # one stacked call for the six massless spinors: ū(p, −) = bar u(p, −), v(p, +) = −u(p, −)
        u = h.spinor_u(torch.stack([fp, fm, p_b, ap, am, p_bb]), 0.0, -1)
        ubar, v = h.bar(u[:3]), -u[3:]
        w_pm = h.vector_offshell(
            ubar[:2], v[:2], gw, 0.0, torch.stack([fp + ap, fm + am]), self.m_w, self.gamma_w
        )
        p_t, p_tb = p_b + fp + ap, p_bb + fm + am
        bar_t = h.fermion_out_offshell(ubar[2], w_pm[0], gw, 0.0, p_t, m_t, g_t)
        v_t = h.fermion_in_offshell(v[2], w_pm[1], gw, 0.0, -p_tb, m_t, g_t)
        return bar_t, v_t

    def gg_amplitudes(
        self,
        p_in: Tensor,
        p_out: Tensor,
        theta: Mapping[str, Tensor],
        e1: Tensor | None = None,
        e2: Tensor | None = None,
        tops: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Colour-ordered gg amplitudes (A₁, A₂), shape (2, 2, N) over gluon helicities (+, −),
        or for the given polarisations e1, e2 (..., N, 4) (gauge checks)."""
        k1, k2 = p_in[:, 0], p_in[:, 1]
        # reference vector = the other gluon: a covariant gauge choice, so the doubly-resonant
        # |M|² (not gauge invariant off the top mass shell) is still exactly Lorentz invariant
        if e1 is None:
            e1 = h.polarizations_ref(k1, k2)[:, None]
        if e2 is None:
            e2 = h.polarizations_ref(k2, k1)[None]
        bar_t, v_t = self.top_wavefunctions(p_out, theta) if tops is None else tops
        p_t = p_out[:, 0] + p_out[:, 1] + p_out[:, 2]
        return gg_partial_amplitudes(
            bar_t, v_t, p_t, k1, k2, e1, e2, strong_coupling(theta), theta["m_t"]
        )

    def _me2_fast(
        self,
        p_in: Tensor,
        p_out: Tensor,
        theta: Mapping[str, Tensor],
        gg: bool = True,
        qq: bool = True,
        qq_rows: slice = slice(None),
    ) -> tuple[Tensor | None, Tensor | None]:
        """gg |M|² (N,) and q q̄, q̄ q |M|² (2, N), sharing spinors and the top current; the
        gluon polarisations are :func:`~unfoldmem.physics.helas.polarizations_ref`."""
        k1, k2 = p_in[:, 0], p_in[:, 1]
        bar_t, v_t = self.top_wavefunctions(p_out, theta)
        gs = strong_coupling(theta)
        top_current = h.ffv_current(bar_t, v_t, gs, gs)
        u_in = _massless_u(torch.stack([k1, k2]))
        me_gg = me_qq = None
        if gg:
            eps = _gluon_pols_from_u(u_in[1])
            p_t = p_out[:, 0] + p_out[:, 1] + p_out[:, 2]
            a1, a2 = _gg_amplitudes_hel(
                bar_t, v_t, p_t, k1, k2, eps, gs, theta["m_t"], top_current
            )
            me_gg = NC * gg_colour_sum(a1, a2).sum((0, 1)) / 256.0
        if qq:
            me_qq = NC * 2.0 * _qq_me2_both(top_current, u_in, k1, k2, gs, qq_rows) / 36.0
        return me_gg, me_qq

    def _chunked(self, fn: Callable[..., Tensor], p_in: Tensor, p_out: Tensor,
                 theta: Mapping[str, Tensor]) -> Tensor:
        """``fn(p_in, p_out, theta)`` in chunks of :attr:`chunk` events (cache-sized: ~3×
        faster than one large batch on a CPU); per-event θ entries are split alongside."""
        if p_in.shape[0] <= self.chunk:
            return fn(p_in, p_out, theta)
        th = {k: v.split(self.chunk) if v.dim() else v for k, v in theta.items()}
        parts = []
        for i, (a, b) in enumerate(
            zip(p_in.split(self.chunk), p_out.split(self.chunk), strict=True)
        ):
            sub = {k: (v[i] if isinstance(v, tuple) else v) for k, v in th.items()}
            parts.append(fn(a, b, sub))
        return torch.cat(parts)

    def _me2_gg(
        self,
        p_in: Tensor,
        p_out: Tensor,
        theta: Mapping[str, Tensor],
        tops: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        if tops is None:
            return self._me2_fast(p_in, p_out, theta, qq=False)[0]
        a1, a2 = self.gg_amplitudes(p_in, p_out, theta, tops=tops)
        return NC * gg_colour_sum(a1, a2).sum((0, 1)) / 256.0

    def _me2_qq(
        self,
        p_q: Tensor,
        p_qb: Tensor,
        p_out: Tensor,
        theta: Mapping[str, Tensor],
        tops: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        bar_t, v_t = self.top_wavefunctions(p_out, theta) if tops is None else tops
        gs = strong_coupling(theta)
        total = torch.zeros(p_q.shape[0], dtype=torch.float64)
        for hq in (1, -1):
            a = qq_amplitude(bar_t, v_t, p_q, p_qb, hq, gs)
            total = total + a.real**2 + a.imag**2
        return NC * 2.0 * total / 36.0

    def matrix_element_squared(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor], channel: tuple[int, int]
    ) -> Tensor:
        """|M|² averaged over initial spins/colours; p_in (N,2,4), p_out (N,6,4) in
        ``final_state`` order."""
        if channel == (21, 21):
            return self._chunked(
                lambda a, b, t: self._me2_fast(a, b, t, qq=False)[0], p_in, p_out, theta
            )
        iq = 0 if channel[0] > 0 else 1
        return self._chunked(
            lambda a, b, t: self._me2_fast(a, b, t, gg=False, qq_rows=slice(iq, iq + 1))[1][0],
            p_in,
            p_out,
            theta,
        )

    def matrix_elements_by_channel(
        self, p_in: Tensor, p_out: Tensor, theta: Mapping[str, Tensor]
    ) -> Tensor:
        """(N, n_channels): gg once, q q̄ and q̄ q once each (flavour-blind), sharing the top
        wavefunctions, in chunks of :attr:`chunk` events (cache-sized: ~3× faster than one
        large batch on a CPU)."""

        def table(a: Tensor, b: Tensor, t: Mapping[str, Tensor]) -> Tensor:
            gg, qq = self._me2_fast(a, b, t)
            assert gg is not None and qq is not None
            cols = [gg if c == (21, 21) else qq[0 if c[0] > 0 else 1] for c in self.channels]
            return torch.stack(cols, -1)

        return self._chunked(table, p_in, p_out, theta)

    def _top_window(self, theta: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        m_t = theta["m_t"]
        if self.bw_cutoff is None:
            return torch.zeros_like(m_t), torch.full_like(m_t, math.inf)
        d = self.bw_cutoff * self.width(theta)
        return torch.clamp(m_t - d, min=0.0), m_t + d

    def phase_space(
        self, u: Tensor, shat: Tensor, theta: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        r"""u (N, 14), shat (N,) GeV² → p_out (N, 6, 4) in the partonic rest frame, weight (N,).

        Breit–Wigner top virtualities (u₀, u₁) within the window, tt̄ angles (u₂, u₃), and per
        top: W virtuality (BW), t → bW angles, W → f f̄' angles. Needs ŝ ≥ ``shat_mapping().s_min``.
        """
        m_t, g_t = theta["m_t"], self.width(theta)
        lo, hi = self._top_window(theta)
        rs = torch.sqrt(shat)
        z = torch.zeros_like(shat)
        s1, j1 = breit_wigner_map(u[:, 0], m_t, g_t, lo**2, torch.minimum(hi**2, (rs - lo) ** 2))
        m1 = torch.sqrt(s1)
        s2, j2 = breit_wigner_map(u[:, 1], m_t, g_t, lo**2, torch.minimum(hi**2, (rs - m1) ** 2))
        m2 = torch.sqrt(s2)
        p_t, p_tb, w = two_body_decay(torch.stack([rs, z, z, z], -1), m1, m2, u[:, 2:4])
        w = w * j1 * j2 / _TWO_PI**2
        out = []
        for top, s_top, uu in ((p_t, s1, u[:, 4:9]), (p_tb, s2, u[:, 9:14])):
            s_w, jw = breit_wigner_map(uu[:, 0], self.m_w, self.gamma_w, 0.0, s_top)
            p_w, p_b, w_a = two_body_decay(top, torch.sqrt(s_w), 0.0, uu[:, 1:3])
            f1, f2, w_b = two_body_decay(p_w, 0.0, 0.0, uu[:, 3:5])
            w = w * jw / _TWO_PI * w_a * w_b
            out += [p_b, f1, f2]
        # both W daughters are massless and isotropic, so any assignment to final_state works
        return torch.stack(out, 1), w

    def shat_mapping(
        self, theta: Mapping[str, Tensor], cuts: Mapping[str, float] | None = None
    ) -> ShatMapping:
        """ŝ from the lowest virtuality pair of the window up, mapped as dŝ/ŝ."""
        self.check_cuts(dict(cuts or {}))
        lo, _ = self._top_window(theta)
        return ShatMapping(torch.clamp(4 * lo**2, min=1.0))


@register_process
class TTbarSemileptonicMinus(TTbarSemileptonic):
    r"""Charge conjugate decay mode: :math:`t \to b\,u\bar d`, :math:`\bar t \to \bar b\,\mu^-\bar\nu_\mu`;
    final state (b, u, d̄, b̄, μ⁻, ν̄_μ)."""

    name = "ttbar_semileptonic_minus"
    lepton_from_top = False
