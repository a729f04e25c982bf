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

Blocks are found from the process's final state (:func:`find_blocks`); Drell–Yan has none.

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

from unfoldmem.physics.couplings import EW_DEFAULTS

__all__ = ["HadronicChain", "LeptonicTop", "NeutrinoBlock", "bw_log_density", "bw_sample", "find_blocks",
           "pair_g"]

#: Least probability of either ν branch in the leptonic-top block (the wrong branch leaves the
#: top off shell, so a low floor saves samples; > 0 keeps both branches' densities exact).
P_PLUS_FLOOR = 0.02
_W_WINDOW = 40.0  # W virtualities sampled within m_W ± 40 Γ_W (the rest: defensive channel)


def _theta_bounds(m: float, g: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    mg = m * g
    return torch.atan((lo - m * m) / mg), torch.atan((hi - m * m) / mg)


def bw_sample(v: Tensor, m: float, g: float, lo: Tensor, hi: Tensor) -> Tensor:
    """s ∈ (lo, hi) GeV² from uniforms v by the inverse CDF of the Breit–Wigner in s."""
    t0, t1 = _theta_bounds(m, g, lo, hi)
    return m * m + m * g * torch.tan(t0 + v * (t1 - t0))


def bw_log_density(s: Tensor, m: float, g: float, lo: Tensor, hi: Tensor) -> Tensor:
    """log of the Breit–Wigner density in s truncated to (lo, hi); −inf outside."""
    t0, t1 = _theta_bounds(m, g, lo, hi)
    mg = m * g
    lp = math.log(mg) - torch.log((s - m * m) ** 2 + mg * mg) - torch.log(t1 - t0)
    return torch.where((s > lo) & (s < hi) & (t1 > t0), lp, -math.inf)


def pair_g(eta_i: Tensor, phi_i: Tensor, eta_j: Tensor, phi_j: Tensor) -> Tensor:
    r""":math:`\cosh(\eta_i-\eta_j) - \cos(\phi_i-\phi_j)`: m² = 2 p_{T,i} p_{T,j} g (massless)."""
    return torch.cosh(eta_i - eta_j) - torch.cos(phi_i - phi_j)


@dataclass
class HadronicChain:
    """Partons a (p_T from the TF), b (from the W mass), c (from the top mass, or None)."""

    a: int
    b: int
    c: int | None
    m_w: float
    g_w: float
    m_t: float = 0.0
    g_t: float = 0.0
    cut: float = 15.0

    def _ranges(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hi_w = (self.m_w + _W_WINDOW * self.g_w) ** 2
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

    def transform(self, z: Tensor, u: Tensor) -> Tensor:
        """Overwrite p_T of b (and c) in z (S, B, n, 3) from u[..., b, 0] (and u[..., c, 0])."""
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
        """(S, B) log density of the p_T of b (and c) given the rest of z, per unit p_T."""
        pt, eta, phi = z.unbind(-1)
        a, b = self.a, self.b
        lo1, hi1, top_lo = self._ranges(pt[..., a])
        s1 = 2 * pt[..., a] * pt[..., b] * pair_g(eta[..., a], phi[..., a], eta[..., b], phi[..., b])
        out = bw_log_density(s1, self.m_w, self.g_w, lo1, hi1) + torch.log(s1 / pt[..., b])
        if self.c is not None:
            c = self.c
            den = 2 * (pt[..., a] * pair_g(eta[..., a], phi[..., a], eta[..., c], phi[..., c])
                       + pt[..., b] * pair_g(eta[..., b], phi[..., b], eta[..., c], phi[..., c]))
            s2 = s1 + pt[..., c] * den
            hi2 = torch.full_like(s1, (self.m_t + self.cut * self.g_t) ** 2)
            out = out + bw_log_density(s2, self.m_t, self.g_t, torch.maximum(s1, top_lo), hi2) \
                + torch.log(den)
        return torch.where(torch.isnan(out), -math.inf, out)


@dataclass
class NeutrinoBlock:
    r"""η of the recoil neutrino ν (its p_T is the balance) from the W and top masses.

    For fixed other partons both masses are :math:`s(\eta) = c + k\cosh(\eta - y)`: the W's
    (ℓν) with :math:`k = 2p_{T,\ell}p_{T,\nu}`, :math:`y = \eta_\ell`, and, with a leptonic
    top (``b`` set), the top's (bℓν) with :math:`k = 2p_{T,\nu}\sqrt{E_P^2 - p_{z,P}^2}`,
    :math:`y` = the rapidity of P = p_b + p_ℓ. The law of η is a mixture of

    * a Breit–Wigner in each mass truncated to its reachable range, either branch
      :math:`\eta = y \pm \operatorname{acosh}((s - c)/k)` (W branch probability ``p_plus``,
      top branch by the W's Breit–Wigner at the two top solutions): sampling only the W
      mass left the top off shell whenever :math:`\partial s_t/\partial s_W` is large;
    * an edge Gaussian at each y: there s is stationary, so a Breit–Wigner law in s has a
      density in η that vanishes (Jacobian :math:`k\sinh|\eta - y|`) while the integrand
      does not where the resonance is barely reachable (:math:`A = s_{\min} - m^2 \gtrsim
      -m\Gamma`): the weights F/q ∝ 1/|η − y| had an infinite variance. Width
      :math:`\delta = \sqrt{2(|A| + m\Gamma)/k}`, weight ``edge_min`` + ``edge_max`` ×
      sigmoid((A + 3mΓ)/mΓ);
    * ε from N(η_ℓ, width), so the density is positive everywhere.

    All weights and centres are functions of the other partons, so the density is exact.
    """

    lep: int
    nu: int
    m_w: float
    g_w: float
    eps: float = 0.02
    width: float = 2.0
    edge_min: float = 0.03
    edge_max: float = 0.3
    b: int | None = None
    m_t: float = 0.0
    g_t: float = 0.0
    top_share: float = 0.5

    def _kin(self, z: Tensor, bal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                     Tensor]:
        """W: y = η_ℓ, k, c = −k cos Δφ, reachable (lo, hi), valid (S, B)."""
        pt_l, eta_l, phi_l = z[..., self.lep, :].unbind(-1)
        pt_n = torch.linalg.vector_norm(bal, dim=-1)
        cphi = torch.cos(torch.atan2(bal[..., 1], bal[..., 0]) - phi_l)
        k = 2 * pt_l * pt_n
        lo = (k * (1 - cphi)).clamp(min=1e-9)
        hi = torch.full_like(lo, (self.m_w + _W_WINDOW * self.g_w) ** 2)
        valid = (lo < hi * (1 - 1e-9)) & (k > 0)
        return eta_l, k, -k * cphi, torch.where(valid, lo, 0.5 * hi), hi, valid

    def _top_kin(self, z: Tensor, bal: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                         Tensor]:
        """Leptonic top (massless b, ℓ): y, k, c, reachable (lo, hi), valid (S, B)."""
        def four(i: int) -> tuple[Tensor, ...]:
            pt, eta, phi = z[..., i, :].unbind(-1)
            return pt * torch.cosh(eta), pt * torch.cos(phi), pt * torch.sin(phi), \
                pt * torch.sinh(eta)

        e1, x1, y1, z1 = four(self.lep)
        e2, x2, y2, z2 = four(self.b)  # type: ignore[arg-type]
        e, px, py, pz = e1 + e2, x1 + x2, y1 + y2, z1 + z2
        mt2 = (e * e - pz * pz).clamp(min=1e-12)
        y = 0.5 * torch.log((e + pz).clamp(min=1e-300) / (e - pz).clamp(min=1e-300))
        k = 2 * torch.linalg.vector_norm(bal, dim=-1) * torch.sqrt(mt2)
        c = (mt2 - px * px - py * py) - 2 * (px * bal[..., 0] + py * bal[..., 1])
        lo = c + k
        hi = torch.full_like(lo, (self.m_t + _W_WINDOW * self.g_t) ** 2)
        valid = (lo < hi * (1 - 1e-9)) & (k > 0) & torch.isfinite(y)
        return torch.where(valid, y, 0.0), k, c, torch.where(valid, lo, 0.5 * hi), hi, valid

    def _edge(self, k: Tensor, lo: Tensor, valid: Tensor, m: float,
              g: float) -> tuple[Tensor, Tensor]:
        """Weight (S, B) and width (S, B) of an edge Gaussian (weight 0 where invalid)."""
        mg = m * g
        a = lo - m * m
        f = self.edge_min + self.edge_max * torch.sigmoid((a + 3 * mg) / mg)
        delta = torch.sqrt(2 * (a.abs() + mg) / k.clamp(min=1e-300)).clamp(1e-4, self.width)
        return torch.where(valid, f, 0.0), delta

    def _mixture(self, z: Tensor, bal: Tensor, p_plus: Tensor | float) -> dict[str, Any]:
        """Everything the law needs that does not depend on η_ν."""
        w = self._kin(z, bal)
        f_ew, d_w = self._edge(w[1], w[3], w[5], self.m_w, self.g_w)
        pp = torch.as_tensor(p_plus, dtype=z.dtype).expand_as(w[1])
        out: dict[str, Any] = {"w": w, "f_ew": f_ew, "d_w": d_w, "pp_w": pp, "eta_l": w[0]}
        if self.b is not None:
            t = self._top_kin(z, bal)
            f_et, d_t = self._edge(t[1], t[3], t[5], self.m_t, self.g_t)
            # Top branch: the W's Breit–Wigner at the two top solutions on the peak.
            d0 = torch.acosh(((self.m_t**2 - t[2]) / t[1].clamp(min=1e-300)).clamp(min=1.0))
            mg = self.m_w * self.g_w
            lw = [-torch.log((w[2] + w[1] * torch.cosh(t[0] + sg * d0 - w[0]) - self.m_w**2) ** 2
                             + mg * mg) for sg in (1.0, -1.0)]
            pt = torch.sigmoid(lw[0] - lw[1]).nan_to_num(0.5).clamp(0.02, 0.98)
            out.update(t=t, f_et=f_et, d_t=d_t, pp_t=pt)
            share_t = torch.where(w[5], self.top_share, 1.0) * t[5].double()
        else:
            f_et = torch.zeros_like(f_ew)
            share_t = torch.zeros_like(f_ew)
            out["f_et"] = f_et
        rest = 1 - self.eps - f_ew - f_et
        n_bw = torch.where(w[5] | (share_t > 0), 1.0, 0.0)
        out["f_tbw"] = rest * share_t * n_bw
        out["f_wbw"] = torch.where(w[5], rest - out["f_tbw"], 0.0)
        out["f_b"] = 1 - out["f_wbw"] - out["f_tbw"] - f_ew - f_et
        return out

    @staticmethod
    def _bw_eta(v: Tensor, pp: Tensor, kin: tuple[Tensor, ...], m: float, g: float) -> Tensor:
        y, k, c, lo, hi, _ = kin
        sign = torch.where(v < pp, 1.0, -1.0)
        vs = torch.where(v < pp, v / pp, (v - pp) / (1 - pp)).clamp(1e-15, 1 - 1e-15)
        s = bw_sample(vs, m, g, lo, hi)
        return y + sign * torch.acosh(((s - c) / k.clamp(min=1e-300)).clamp(min=1.0))

    @staticmethod
    def _bw_log(eta: Tensor, pp: Tensor, kin: tuple[Tensor, ...], m: float,
                g: float) -> Tensor:
        y, k, c, lo, hi, _ = kin
        de = eta - y
        s = c + k * torch.cosh(de)
        lbr = torch.log(torch.where(de > 0, pp, 1 - pp))
        out = lbr + bw_log_density(s, m, g, lo, hi) + torch.log(k * torch.sinh(de).abs())
        return torch.where(torch.isnan(out), -math.inf, out)

    def eta(self, z: Tensor, bal: Tensor, v: Tensor, p_plus: Tensor | float = 0.5) -> Tensor:
        """ν's η (S, B) from uniforms v (S, B), given the balance p_T (S, B, 2) and z; the W
        branch Δη > 0 has probability ``p_plus`` (a function of earlier variables)."""
        mx = self._mixture(z, bal, p_plus)
        v = v.clamp(1e-15, 1 - 1e-15)
        edges = [mx["f_wbw"], mx["f_tbw"], mx["f_ew"], mx["f_et"], mx["f_b"]]
        cum = torch.cumsum(torch.stack(edges), 0)
        comp = (v[None] >= cum[:-1]).sum(0)
        lo_c = torch.cat([torch.zeros_like(v)[None], cum[:-1]])
        width = torch.stack(edges).clamp(min=1e-300)
        vv = ((v - torch.gather(lo_c, 0, comp[None])[0])
              / torch.gather(width, 0, comp[None])[0]).clamp(1e-15, 1 - 1e-15)
        g = torch.special.ndtri(vv)
        eta_l = mx["eta_l"]
        out = torch.where(comp == 0, self._bw_eta(vv, mx["pp_w"], mx["w"], self.m_w, self.g_w),
                          eta_l + self.width * g)
        out = torch.where(comp == 2, eta_l + mx["d_w"] * g, out)
        if self.b is not None:
            out = torch.where(comp == 1, self._bw_eta(vv, mx["pp_t"], mx["t"], self.m_t,
                                                      self.g_t), out)
            out = torch.where(comp == 3, mx["t"][0] + mx["d_t"] * g, out)
        return out

    def log_prob(self, z: Tensor, bal: Tensor, p_plus: Tensor | float = 0.5) -> Tensor:
        """(S, B) log density of ν's η = z[..., ν, 1] given the rest (``p_plus``: see eta)."""
        mx = self._mixture(z, bal, p_plus)
        eta = z[..., self.nu, 1]

        def lgauss(c: Tensor, s: Tensor | float) -> Tensor:
            s = torch.as_tensor(s, dtype=eta.dtype)
            return -0.5 * ((eta - c) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)

        parts = [torch.log(mx["f_wbw"]) + self._bw_log(eta, mx["pp_w"], mx["w"], self.m_w,
                                                        self.g_w),
                 torch.log(mx["f_ew"]) + lgauss(mx["eta_l"], mx["d_w"]),
                 torch.log(mx["f_b"]) + lgauss(mx["eta_l"], self.width)]
        if self.b is not None:
            parts += [torch.log(mx["f_tbw"]) + self._bw_log(eta, mx["pp_t"], mx["t"], self.m_t,
                                                             self.g_t),
                      torch.log(mx["f_et"]) + lgauss(mx["t"][0], mx["d_t"])]
        parts = [torch.where(torch.isnan(p), -math.inf, p) for p in parts]
        return torch.logsumexp(torch.stack(parts), 0)


@dataclass
class LeptonicTop:
    r"""p_T of the leptonic-top b from the top mass: Cauchy in log p_T around the root(s).

    For fixed other partons, :math:`x = \log p_{T,b}` moves the neutrino (balance) and, with
    η_ν from :math:`s_{\ell\nu} = m_W^2` (branch ±), the mass :math:`s_{b\ell\nu}(x)`. The
    first root :math:`x^*_\pm` of :math:`s_{b\ell\nu} = m_t^2` on a grid + bisection, a
    deterministic function of the other partons, centres a Cauchy of width
    :math:`(m_t\Gamma_t + m_W\Gamma_W)/|s'(x^*)|` (the Breit–Wigner shape, linearised). A
    fraction ε (all, without a root) keeps the detector Gaussian, so the law stays positive.
    """

    b: int
    lep: int
    nu: int
    m_w: float
    g_w: float
    m_t: float
    g_t: float
    eps: float = 0.05

    def _s_top_fn(self, z: Tensor, v: Tensor, w2: float | None = None) -> Any:
        """x = log p_T,b ↦ s_top = m²(b ℓ ν) for both Δη branches of ν; x broadcasts as
        (..., 2, S, B) against the branch signs (+, −) and z (S, B, n, 3), v (S, B, 2)."""
        eta_b, phi_b = z[..., self.b, 1], z[..., self.b, 2]
        pt_l, eta_l, phi_l = z[..., self.lep, :].unbind(-1)
        sign = torch.tensor([1.0, -1.0], dtype=z.dtype).view(2, *([1] * (z.dim() - 2)))
        g_bl = pt_l * pair_g(eta_b, phi_b, eta_l, phi_l)
        cb, sb = torch.cos(phi_b), torch.sin(phi_b)
        w2 = self.m_w**2 if w2 is None else w2

        def s_top(x: Tensor) -> Tensor:
            pt_b = torch.exp(x)
            bx, by = -(v[..., 0] + pt_b * cb), -(v[..., 1] + pt_b * sb)
            pt_n = torch.sqrt(bx * bx + by * by)
            phi_n = torch.atan2(by, bx)
            c = w2 / (2 * pt_l * pt_n).clamp(min=1e-12) + torch.cos(phi_n - phi_l)
            eta_n = eta_l + sign * torch.acosh(c.clamp(min=1.0))
            return 2 * (pt_b * g_bl + pt_b * pt_n * pair_g(eta_b, phi_b, eta_n, phi_n)
                        + pt_l * pt_n * pair_g(eta_l, phi_l, eta_n, phi_n))

        return s_top

    def roots(self, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centres (2, S, B), widths (2, S, B), found (2, S, B); v: Σ p_T of the others but b.

        The first upward crossing of m_t² on a 16-point log p_T grid, 6 bisections, then the
        secant through the bracket (the bracket's slope gives the width). Any deterministic
        function of (z, v) keeps the channel exact; precision only sets its efficiency."""
        grid = torch.linspace(math.log(5.0), math.log(3000.0), 16, dtype=z.dtype)
        t2 = self.m_t**2
        s_top = self._s_top_fn(z, v)
        shape = (2, *z.shape[:-2])
        f = s_top(grid.view(-1, *([1] * len(shape)))) - t2  # (16, 2, S, B)
        ch = (f[:-1] < 0) & (f[1:] >= 0)
        found = ch.any(0)
        first = torch.where(found, ch.double().argmax(0), 0)
        lo, hi = grid[first], grid[first + 1]
        f_lo = torch.gather(f, 0, first[None])[0]
        f_hi = torch.gather(f, 0, first[None] + 1)[0]
        for _ in range(6):
            mid = 0.5 * (lo + hi)
            f_mid = s_top(mid) - t2
            neg = f_mid < 0
            lo, hi = torch.where(neg, mid, lo), torch.where(neg, hi, mid)
            f_lo, f_hi = torch.where(neg, f_mid, f_lo), torch.where(neg, f_hi, f_mid)
        d = (f_hi - f_lo) / (hi - lo)
        x = lo - f_lo / torch.where(d > 0, d, 1.0)
        x = torch.where((d > 0) & (x >= lo) & (x <= hi), x, 0.5 * (lo + hi))
        # The W virtuality moves the root: s_top at the root shifts by ∂s_top/∂s_W · m_WΓ_W
        # per W width (large where the neutrino sits near its η edge).
        mg = self.m_w * self.g_w
        dw = 0.5 * (self._s_top_fn(z, v, self.m_w**2 + mg)(x)
                    - self._s_top_fn(z, v, max(self.m_w**2 - mg, 1.0))(x))
        dw = torch.where(torch.isfinite(dw), dw.abs(), mg)
        gam = (self.m_t * self.g_t + dw) / d.abs().clamp(min=1e-6)
        gs = torch.where(torch.isfinite(gam), gam, 1.0).clamp(1e-3, 1.0)
        return x, gs, found & torch.isfinite(x)

    def log_cauchy_part(self, x: Tensor, xs: Tensor, gs: Tensor, ok: Tensor) -> tuple[Tensor, Tensor]:
        """log of the root part of the density of x (S, B) and log of the Gaussian's weight."""
        n_ok = ok.sum(0)
        lc = torch.log(gs / math.pi) - torch.log((x - xs) ** 2 + gs**2)
        lc = torch.where(ok, lc, -math.inf)
        part = torch.logsumexp(lc, 0) - torch.log(n_ok.clamp(min=1).double()) + math.log(1 - self.eps)
        part = torch.where(n_ok > 0, part, -math.inf)
        lw_gauss = torch.where(n_ok > 0, math.log(self.eps), 0.0)
        return part, lw_gauss

    @staticmethod
    def p_plus(x: Tensor, xs: Tensor, gs: Tensor, ok: Tensor) -> Tensor:
        """(S, B) probability of the ν branch Δη > 0: that branch's root's Cauchy share at x,
        kept within (P_PLUS_FLOOR, 1 − P_PLUS_FLOOR)."""
        lc = torch.log(gs) - torch.log((x - xs) ** 2 + gs**2)
        lc = torch.where(ok, lc, -math.inf)
        tot = torch.logsumexp(lc, 0)
        share = torch.where(torch.isfinite(tot), torch.exp(lc[0] - tot), 0.5)
        return torch.where(torch.isnan(share), 0.5, share).clamp(P_PLUS_FLOOR, 1 - P_PLUS_FLOOR)

    def sample_x(self, u: Tensor, c_tf: Tensor, w_tf: Tensor, xs: Tensor, gs: Tensor,
                 ok: Tensor) -> Tensor:
        """x (S, B) from uniforms u (S, B); c_tf, w_tf: the detector Gaussian in log p_T."""
        n_ok = ok.sum(0)
        use = (n_ok > 0) & (u < 1 - self.eps)
        v = (u / (1 - self.eps)).clamp(max=1 - 1e-12)
        k = (v * n_ok.clamp(min=1)).floor()
        vv = (v * n_ok.clamp(min=1) - k).clamp(1e-12, 1 - 1e-12)
        idx = torch.where(ok[0] & ok[1], k.long().clamp(max=1), torch.where(ok[0], 0, 1))
        xc = torch.gather(xs, 0, idx[None])[0]
        gc = torch.gather(gs, 0, idx[None])[0]
        ug = torch.where(n_ok > 0, (u - (1 - self.eps)) / self.eps, u).clamp(1e-15, 1 - 1e-15)
        x_tf = c_tf + w_tf * torch.special.ndtri(ug)
        return torch.where(use, xc + gc * torch.tan(math.pi * (vv - 0.5)), x_tf)

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
