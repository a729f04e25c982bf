r"""The leptonic resonance blocks of the detector channel: the neutrino's η and the b's p_T.

* :class:`NeutrinoBlock` (ℓ, ν): ν's p_T is the transverse balance of the other partons, and
  its η follows a mixture: the W mass (ℓν) and, with a leptonic top, the top mass (bℓν) from
  Breit–Wigner laws truncated to their reachable ranges, either branch; edge Gaussians where a
  mass is stationary in η; a fraction ε from a broad Gaussian, so the density stays positive.
* :class:`LeptonicTop` (b): log p_T of the b from a Cauchy around the root of the top mass.

Both are found with the hadronic chains by :func:`unfoldmem.mem.resonances.find_blocks`.

References:
    | S. Brochet et al., "MoMEMta, a modular toolkit for the Matrix Element Method at the LHC",
    | Eur. Phys. J. C 79 (2019) 126, https://arxiv.org/abs/1805.08555 (block D)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.breit_wigner import W_WINDOW, bw_log_density, bw_sample, pair_g
from unfoldmem.mem.top_roots import roots_numba

__all__ = ["P_PLUS_FLOOR", "LeptonicTop", "NeutrinoBlock"]

#: Least probability of either ν branch in the leptonic-top block (the wrong branch leaves the
#: top off shell, so a low floor saves samples; > 0 keeps both branches' densities exact).
P_PLUS_FLOOR = 0.02


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
        hi = torch.full_like(lo, (self.m_w + W_WINDOW * self.g_w) ** 2)
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
        hi = torch.full_like(lo, (self.m_t + W_WINDOW * self.g_t) ** 2)
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
        r"""x = log p_T,b ↦ s_top = m²(b ℓ ν) for both Δη branches of ν; x broadcasts as
        (..., 2, S, B) against the branch signs (+, −) and z (S, B, n, 3), v (S, B, 2).

        Algebraic in x: with :math:`\eta_\nu = \eta_\ell \pm a`, :math:`\cosh a = c`,
        :math:`\cosh(\eta_b-\eta_\nu) = c\cosh d \mp \sqrt{c^2-1}\sinh d`
        (:math:`d = \eta_b-\eta_\ell`) and the φ cosines are dot products with the
        neutrino's p_T, so the 24 evaluations per sample of :meth:`roots_torch` need no
        transcendental function but exp (equal to the direct formula to rounding)."""
        eta_b, phi_b = z[..., self.b, 1], z[..., self.b, 2]
        pt_l, eta_l, phi_l = z[..., self.lep, :].unbind(-1)
        sign = torch.tensor([1.0, -1.0], dtype=z.dtype).view(2, *([1] * (z.dim() - 2)))
        g_bl = pt_l * pair_g(eta_b, phi_b, eta_l, phi_l)
        cb, sb = torch.cos(phi_b), torch.sin(phi_b)
        cl, sl = torch.cos(phi_l), torch.sin(phi_l)
        ch, sh = torch.cosh(eta_b - eta_l), sign * torch.sinh(eta_b - eta_l)
        w2 = self.m_w**2 if w2 is None else w2

        def s_top(x: Tensor) -> Tensor:
            pt_b = torch.exp(x)
            bx, by = -(v[..., 0] + pt_b * cb), -(v[..., 1] + pt_b * sb)
            pt_n = torch.sqrt(bx * bx + by * by)
            ln, bn = bx * cl + by * sl, bx * cb + by * sb  # p_T,ν cos(φ_ν − φ_ℓ), (… − φ_b)
            c = (w2 / (2 * pt_l * pt_n).clamp(min=1e-12)
                 + ln / pt_n.clamp(min=1e-12)).clamp(min=1.0)
            r = torch.sqrt((c - 1) * (c + 1))
            return 2 * (pt_b * g_bl + pt_b * (pt_n * (ch * c - sh * r) - bn)
                        + pt_l * (pt_n * c - ln))

        return s_top

    def roots(self, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centres (2, S, B), widths (2, S, B), found (2, S, B); v: Σ p_T of the others but b.

        :meth:`roots_torch` as one numba loop (:func:`~unfoldmem.mem.top_roots.roots_numba`,
        equal to rounding, ~10× faster) for CPU float64 inputs; else :meth:`roots_torch`."""
        if z.device.type == "cpu" and z.dtype == torch.float64 and v.dtype == torch.float64:
            return roots_numba(z, v, self.b, self.lep, self.m_w, self.g_w, self.m_t, self.g_t)
        return self.roots_torch(z, v)

    def roots_torch(self, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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
