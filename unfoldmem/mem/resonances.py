r"""MoMEMta-style resonance blocks of the detector channel: exact maps from Breit–Wigner masses.

With narrow resolutions the posterior of the parton momenta is a thin shell: angles sit within
the resolution of the reco objects, but the W and top propagators (Γ_W = 2.1 GeV, Γ_t = 1.4 GeV)
fix parton energies far more tightly than the 10 % jet energy resolution does, and the
neutrino's p_z is set by the leptonic W mass. These blocks replace those variables by the
propagator virtualities, sampled from their Breit–Wigner laws, with the exact Jacobian:

* :class:`HadronicChain` (a, b[, c]), e.g. t̄ → b̄ W⁻(→ d ū): with the angles and p_T,a given,
  :math:`s_1 = 2p_{T,a}p_{T,b}g_{ab} \sim BW(m_W)` gives :math:`p_{T,b}`, and
  :math:`s_2 = s_1 + 2p_{T,c}(p_{T,a}g_{ac} + p_{T,b}g_{bc}) \sim BW(m_t)` gives
  :math:`p_{T,c}`, with :math:`g_{ij} = \cosh\Delta\eta_{ij} - \cos\Delta\phi_{ij}` (the
  massless invariant mass, used as the proposal's variable whatever the partons' masses);
  :math:`q(p_{T,b}) = BW(s_1)\,s_1/p_{T,b}`, :math:`q(p_{T,c}) = BW(s_2)(s_2-s_1)/p_{T,c}`.
* :class:`NeutrinoBlock` (ℓ, ν): ν's p_T is the transverse balance of the other partons, and
  its η follows a mixture: the W mass (ℓν) and, with a leptonic top, the top mass (bℓν) from
  Breit–Wigner laws truncated to their reachable ranges, either branch; edge Gaussians where a
  mass is stationary in η; a fraction ε from a broad Gaussian, so the density stays positive.
* :class:`LeptonicTop` (b): log p_T of the b from a Cauchy around the root of the top mass.

The leptonic blocks live in :mod:`unfoldmem.mem.leptonic_blocks`, the Breit–Wigner laws in
:mod:`unfoldmem.mem.breit_wigner`. Blocks are found from the process's final state
(:func:`find_blocks`); Drell–Yan has none.

References:
    | S. Brochet et al., "MoMEMta, a modular toolkit for the Matrix Element Method at the LHC",
    | Eur. Phys. J. C 79 (2019) 126, https://arxiv.org/abs/1805.08555 (blocks B, D)
    | F. Maltoni, T. Stelzer, "MadEvent", JHEP 02 (2003) 027 (Breit–Wigner phase-space maps)
"""


from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.breit_wigner import W_WINDOW, bw_log_density, bw_sample, pair_g
from unfoldmem.mem.leptonic_blocks import P_PLUS_FLOOR, LeptonicTop, NeutrinoBlock
from unfoldmem.physics.couplings import EW_DEFAULTS

__all__ = ["P_PLUS_FLOOR", "HadronicChain", "LeptonicTop", "NeutrinoBlock", "bw_log_density",
           "bw_sample", "find_blocks", "pair_g"]


@dataclass
class HadronicChain:
    """Partons a (p_T from the TF), b (from the W mass), c (from the top mass, or None).

    ``w_free``: the top mass only — b keeps its TF p_T (the W may be far off shell) and c
    comes from the top mass given s_ab, where the top window lies above s_ab (elsewhere c
    keeps its TF p_T: :meth:`top_reachable`)."""

    a: int
    b: int
    c: int | None
    m_w: float
    g_w: float
    m_t: float = 0.0
    g_t: float = 0.0
    cut: float = 15.0
    w_free: bool = False

    def _ranges(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hi_w = (self.m_w + W_WINDOW * self.g_w) ** 2
        if self.c is None:
            return torch.zeros_like(like), torch.full_like(like, hi_w), like
        top_lo = max(self.m_t - self.cut * self.g_t, 0.0) ** 2
        top_hi = (self.m_t + self.cut * self.g_t) ** 2
        return torch.zeros_like(like), torch.full_like(like, min(hi_w, 0.999 * top_hi)), \
            torch.full_like(like, top_lo)

    def gs(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """g_ab, g_ac, g_bc (S, B) of the sampled angles (g_ac = g_bc = 0 without c)."""
        eta, phi = z[..., 1], z[..., 2]
        a, b, c = self.a, self.b, self.c
        g_ab = pair_g(eta[..., a], phi[..., a], eta[..., b], phi[..., b])
        if c is None:
            return g_ab, torch.zeros_like(g_ab), torch.zeros_like(g_ab)
        return (g_ab, pair_g(eta[..., a], phi[..., a], eta[..., c], phi[..., c]),
                pair_g(eta[..., b], phi[..., b], eta[..., c], phi[..., c]))

    def combine(self, g: tuple[Tensor, Tensor, Tensor], ca: Tensor, wa: Tensor, cb: Tensor,
                wb: Tensor, cc: Tensor, wc: Tensor) -> tuple[Tensor, Tensor]:
        r"""Gaussian law of :math:`x = \log p_{T,a}` combining all three jet measurements.

        On the resonance peaks :math:`\log p_{T,b} = A - x` with
        :math:`A = \log(m_W^2/2g_{ab})`, and :math:`\log p_{T,c}(x)` (linearised at the
        a–b combination), so the reco (log p_T) of a, b and c are three measurements of x:
        precision-weighted mean and width (broadcast shapes). A deterministic function of the
        angles and the assignment's reco values, so the density stays exact.
        """
        g_ab, g_ac, g_bc = g
        big_a = torch.log(self.m_w**2 / (2 * g_ab).clamp(min=1e-12))
        pa, pb = wa**-2, wb**-2
        x0 = (ca * pa + (big_a - cb) * pb) / (pa + pb)
        prec, num = pa + pb, ca * pa + (big_a - cb) * pb
        if self.c is not None:
            ea, eb = torch.exp(x0) * g_ac, torch.exp(big_a - x0) * g_bc
            den = (ea + eb).clamp(min=1e-12)
            l0 = math.log(max(self.m_t**2 - self.m_w**2, 1.0) / 2) - torch.log(den)
            d0 = (ea - eb) / den  # −d log p_T,c / dx
            pc = d0**2 * wc**-2
            prec = prec + pc
            num = num + x0 * pc + (l0 - cc) * d0 * wc**-2
        mean = num / prec
        return torch.where(torch.isfinite(mean), mean, ca), torch.where(
            torch.isfinite(prec), prec**-0.5, wa)

    def _s_ab(self, pt: Tensor, eta: Tensor, phi: Tensor) -> Tensor:
        """(S, B) s_ab = 2 p_T,a p_T,b g_ab of massless a and b."""
        a, b = self.a, self.b
        return 2 * pt[..., a] * pt[..., b] * pair_g(eta[..., a], phi[..., a], eta[..., b],
                                                   phi[..., b])

    def _reachable(self, s1: Tensor) -> Tensor:
        return s1 < 0.999 * (self.m_t + self.cut * self.g_t) ** 2

    def top_reachable(self, z: Tensor) -> Tensor:
        """(S, B) whether s_ab of z lies below the top window's upper end (``w_free``)."""
        return self._reachable(self._s_ab(*z.unbind(-1)))

    def _top_only(self, z: Tensor, u: Tensor) -> Tensor:
        """``w_free`` transform: p_T of c from the top mass given the TF p_T of a and b."""
        pt, eta, phi = z.unbind(-1)
        a, b, c = self.a, self.b, self.c
        assert c is not None
        _, _, top_lo = self._ranges(pt[..., a])
        s1 = self._s_ab(pt, eta, phi)
        ok = self._reachable(s1)
        den = 2 * (pt[..., a] * pair_g(eta[..., a], phi[..., a], eta[..., c], phi[..., c])
                   + pt[..., b] * pair_g(eta[..., b], phi[..., b], eta[..., c], phi[..., c]))
        lo2 = torch.where(ok, torch.maximum(s1, top_lo), top_lo)
        hi2 = torch.full_like(s1, (self.m_t + self.cut * self.g_t) ** 2)
        s2 = bw_sample(u[..., c, 0], self.m_t, self.g_t, lo2, hi2)
        z = z.clone()
        z[..., c, 0] = torch.where(ok, (s2 - s1) / den, pt[..., c])
        return z

    def transform(self, z: Tensor, u: Tensor) -> Tensor:
        """Overwrite p_T of b (and c) in z (S, B, n, 3) from u[..., b, 0] (and u[..., c, 0]);
        ``w_free``: of c only."""
        if self.w_free:
            return self._top_only(z, u)
        pt, eta, phi = z.unbind(-1)
        a, b = self.a, self.b
        lo1, hi1, top_lo = self._ranges(pt[..., a])
        g_ab = pair_g(eta[..., a], phi[..., a], eta[..., b], phi[..., b])
        s1 = bw_sample(u[..., b, 0], self.m_w, self.g_w, lo1, hi1)
        pt_b = s1 / (2 * pt[..., a] * g_ab)
        z = z.clone()
        z[..., b, 0] = pt_b
        if self.c is not None:
            c = self.c
            den = 2 * (pt[..., a] * pair_g(eta[..., a], phi[..., a], eta[..., c], phi[..., c])
                       + pt_b * pair_g(eta[..., b], phi[..., b], eta[..., c], phi[..., c]))
            lo2 = torch.maximum(s1, top_lo)
            hi2 = torch.full_like(s1, (self.m_t + self.cut * self.g_t) ** 2)
            s2 = bw_sample(u[..., c, 0], self.m_t, self.g_t, lo2, hi2)
            z[..., c, 0] = (s2 - s1) / den
        return z

    def log_prob(self, z: Tensor) -> Tensor:
        """(S, B) log density of the p_T of b (and c) given the rest of z, per unit p_T
        (``w_free``: of c where :meth:`top_reachable`, else 0: c's TF law is the caller's)."""
        pt, eta, phi = z.unbind(-1)
        a, b = self.a, self.b
        lo1, hi1, top_lo = self._ranges(pt[..., a])
        s1 = self._s_ab(pt, eta, phi)
        if self.w_free:
            ok = self._reachable(s1)
            top_lo = torch.where(ok, torch.maximum(s1, top_lo), top_lo)
            out = torch.zeros_like(s1)
        else:
            ok = None
            top_lo = torch.maximum(s1, top_lo)
            out = bw_log_density(s1, self.m_w, self.g_w, lo1, hi1) + torch.log(s1 / pt[..., b])
        if self.c is not None:
            c = self.c
            den = 2 * (pt[..., a] * pair_g(eta[..., a], phi[..., a], eta[..., c], phi[..., c])
                       + pt[..., b] * pair_g(eta[..., b], phi[..., b], eta[..., c], phi[..., c]))
            s2 = s1 + pt[..., c] * den
            hi2 = torch.full_like(s1, (self.m_t + self.cut * self.g_t) ** 2)
            top = bw_log_density(s2, self.m_t, self.g_t, top_lo, hi2) + torch.log(den)
            out = out + (top if ok is None else torch.where(ok, top, 0.0))
        return torch.where(torch.isnan(out), -math.inf, out)


def _up(a: int) -> bool:
    return abs(a) in (2, 4)


def find_blocks(integrand: Any) -> tuple[list[HadronicChain], NeutrinoBlock | None,
                                         LeptonicTop | None]:
    """Resonance blocks of a process from its final state (massless W and top decay products).

    Hadronic W: an up-type/down-type quark pair of opposite pdg signs (W charge = sign of the
    up-type id); with a parameter ``m_t``, the b of the W's charge sign completes a top.
    Leptonic W: the recoil neutrino with the charged lepton of its generation; with ``m_t``,
    the remaining b completes the leptonic top.
    """
    pdg = [int(x) for x in integrand.process.final_state]
    th = integrand.hadronic.full_theta()
    m_w = float(th.get("m_w", EW_DEFAULTS.m_w))
    g_w = float(th.get("gamma_w", getattr(integrand.process, "gamma_w", EW_DEFAULTS.gamma_w)))
    chains: list[HadronicChain] = []
    used: set[int] = set()
    for i, a in enumerate(pdg):
        for j, b in enumerate(pdg):
            if i >= j or i in used or j in used or not (1 <= abs(a) <= 4 and 1 <= abs(b) <= 4):
                continue
            if a * b >= 0 or _up(a) == _up(b):
                continue
            w_sign = 1 if (a if _up(a) else b) > 0 else -1
            # The down-type quark keeps its TF p_T; the up-type one comes from the W mass.
            lo_q, hi_q = (j, i) if _up(a) else (i, j)
            c = None
            if "m_t" in th:
                bs = [k for k, x in enumerate(pdg) if x == 5 * w_sign and k not in used]
                c = bs[0] if bs else None
            chain = HadronicChain(lo_q, hi_q, c, m_w, g_w)
            if c is not None:
                proc = integrand.process
                chain.m_t = float(th["m_t"])
                chain.g_t = float(proc.width(th)) if hasattr(proc, "width") else 1.4
                chain.cut = float(getattr(proc, "bw_cutoff", None) or 15.0)
                used.add(c)
            used.update((i, j))
            chains.append(chain)
    nu = None
    r = integrand.recoil
    if abs(pdg[r]) in (12, 14, 16):
        leps = [k for k, x in enumerate(pdg) if abs(x) == abs(pdg[r]) - 1 and x * pdg[r] < 0]
        if leps:
            nu = NeutrinoBlock(leps[0], r, m_w, g_w)
    masses = integrand.masses
    chains = [c for c in chains if all(float(masses[k]) == 0.0
                                       for k in (c.a, c.b, c.c) if k is not None)]
    ltop = None
    bs = [k for k, x in enumerate(pdg) if abs(x) == 5 and k not in used]
    if nu is not None and "m_t" in th and bs and float(masses[bs[0]]) == 0.0:
        proc = integrand.process
        g_t = float(proc.width(th)) if hasattr(proc, "width") else 1.4
        ltop = LeptonicTop(bs[0], nu.lep, nu.nu, m_w, g_w, float(th["m_t"]), g_t)
        nu.b, nu.m_t, nu.g_t = bs[0], float(th["m_t"]), g_t
    return chains, nu, ltop
