r"""Deterministic quadrature of the Drell–Yan MEM integral with the exact detector density: the
independent reference of the importance-sampling and VEGAS tests."""

from __future__ import annotations

import math

import numpy as np
import torch

from tests._support.mem_events import dy_setup
from unfoldmem.mem.integrand import RecoEvents

__all__ = ["quadrature_log_integral"]

_GL = {n: tuple(torch.from_numpy(v) for v in np.polynomial.legendre.leggauss(n)) for n in (12, 48, 96)}
_GH = tuple(torch.from_numpy(v) for v in np.polynomial.hermite_e.hermegauss(5))


def _eta_nodes(eta_r: float, s: float, edges: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes/weights for ∫ dη g(η) N(η_r; η, s) h(η): Gauss–Hermite around η_r (g smooth on the
    1e-3 scale), or piecewise Gauss–Legendre split at a resolution-region edge inside ±8s."""
    cut = [e for e in edges if abs(abs(eta_r) - e) < 8 * s]
    if not cut:
        x, w = _GH
        return eta_r + s * x, w * s  # weights of ∫ dη e^{-(η-η_r)²/2s²} f(η), f excludes N
    edge = math.copysign(cut[0], eta_r)
    pts, wts = [], []
    for lo, hi in ((eta_r - 8 * s, edge), (edge, eta_r + 8 * s)):
        x, w = _GL[12]
        pts.append(0.5 * (hi - lo) * x + 0.5 * (hi + lo))
        wts.append(0.5 * (hi - lo) * w * torch.exp(-0.5 * ((pts[-1] - eta_r) / s) ** 2))
    return torch.cat(pts), torch.cat(wts)


def quadrature_log_integral(ev: RecoEvents, n_pt: int = 48) -> float:
    r"""Deterministic reference for one DY event (μ⁻ = parton 0, μ⁺ = recoil).

    Variables (p_T, η⁻, η⁺) with φ done analytically: the transverse balance puts μ⁺ at
    φ⁻ + π with the same p_T, and only the detector depends on φ, so
    ∫dφ WN(φ_a − φ) WN(φ_b − φ − π) = WN(φ_a − φ_b + π; √(s_a² + s_b²)). Measure
    dx1dx2dΦ₂ = p_T/(8π²s) dp_T dη⁻ dφ dη⁺. p_T: Gauss–Legendre on ±10σ around the two-muon
    average; η: Gauss–Hermite (or piecewise Legendre at a region edge). Each muon's density is
    eff · N(p_T'; p_T, σ(p_T)) · N(η'; η, s_η), written here from the detector card, not via
    ParametricDetector.log_density; the MET and ISR factors come from the detector's methods.
    The generator's m_ll window cuts each p_T integral at the window edges (a step: Gauss–
    Legendre would converge slowly across it, which biased events with reco m_ll near 120 GeV).
    """
    had, det, integ = dy_setup()
    card = det.card.muons
    obj = ev.objects[0]
    neg = 1 if obj[1, 5] < 0 else 2
    pos = 3 - neg
    a, b = obj[neg], obj[pos]

    def region(eta: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(eta.abs(), torch.tensor(card.eta_edges[1:-1], dtype=torch.float64))

    def res(pt: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        ca = torch.tensor(card.resolution.a, dtype=torch.float64)[r]
        cb = torch.tensor(card.resolution.b, dtype=torch.float64)[r]
        return pt * torch.sqrt(ca**2 + (cb * pt) ** 2)

    s_eta = card.sigma_eta[0]
    assert len(set(card.sigma_eta)) == 1 and len(set(card.sigma_phi)) == 1
    ea, wa = _eta_nodes(float(a[1]), s_eta, card.eta_edges[1:-1])
    eb, wb = _eta_nodes(float(b[1]), s_eta, card.eta_edges[1:-1])
    sig0 = float(res(a[0], region(a[1:2]))[0])
    centre = 0.5 * float(a[0] + b[0])
    x, w = _GL[n_pt]
    e1, e2 = torch.meshgrid(ea, eb, indexing="ij")
    # The generator's m_ll window is a step in p_T at m_ll = p_T √(2(cosh Δη + 1)) (massless,
    # back to back): Gauss–Legendre on each (η⁻, η⁺) pair's p_T range inside the window.
    mp = had.process.shat_mapping(had.full_theta(), had.cuts)
    c = torch.sqrt(2 * (torch.cosh(e1 - e2) + 1))
    s_max = had.sqrt_s**2 if mp.s_max is None else float(mp.s_max)
    lo = torch.clamp(math.sqrt(float(mp.s_min)) / c, min=centre - 10 * sig0)
    hi = torch.clamp(math.sqrt(s_max) / c, max=centre + 10 * sig0)
    span = (hi - lo).clamp(min=0.0)
    pt_g = 0.5 * span[None] * x[:, None, None] + (lo + 0.5 * span)[None]
    w_g = 0.5 * span[None] * w[:, None, None] * (wa[:, None] * wb[None, :])[None]
    e1, e2 = e1.expand_as(pt_g), e2.expand_as(pt_g)
    phi1 = float(a[2])
    z = torch.stack([torch.stack([pt_g, e1, torch.full_like(pt_g, phi1)], -1),
                     torch.stack([pt_g, e2, torch.full_like(pt_g, phi1 - math.pi)], -1)], -2)
    z = z.reshape(1, -1, 2, 3)
    p, x1, x2, _ = integ.momenta(z, torch.ones(z.shape[1], dtype=torch.float64))
    t = integ.log_theta(p, x1, x2)[0]
    pt_f, e1_f, e2_f = pt_g.reshape(-1), e1.reshape(-1), e2.reshape(-1)
    ra, rb = region(e1_f), region(e2_f)
    eff = torch.tensor(card.efficiency, dtype=torch.float64)
    s_phi = card.sigma_phi[0]

    def lnorm(xx: torch.Tensor, mu: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((xx - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)

    lw = (torch.log(eff[ra]) + torch.log(eff[rb]) + lnorm(a[0], pt_f, res(pt_f, ra))
          + lnorm(b[0], pt_f, res(pt_f, rb)) - 2 * math.log(s_eta * math.sqrt(2 * math.pi)))
    s2 = math.sqrt(2) * s_phi
    d = (float(a[2]) - float(b[2]) + math.pi + math.pi) % (2 * math.pi) - math.pi
    lphi = math.log(sum(math.exp(-0.5 * ((d + 2 * math.pi * k) / s2) ** 2) for k in (-2, -1, 0, 1, 2))
                    / (s2 * math.sqrt(2 * math.pi)))
    reco_sum = a[0] * torch.stack([torch.cos(a[2]), torch.sin(a[2])]) + b[0] * torch.stack(
        [torch.cos(b[2]), torch.sin(b[2])])
    sig_met = torch.sqrt(det.card.met.noise**2 + det.card.met.noise_sumet**2 * 2 * pt_f)
    lmet = det.log_density_met(obj[0, 0], obj[0, 2], -reco_sum.expand(len(pt_f), 2), sig_met)
    jets = ev.mask[0] & (obj[:, 6] == 3)
    n_isr = int(jets.sum())
    lisr = float(det.log_prob_n_isr(torch.tensor(n_isr))) + math.lgamma(n_isr + 1)
    for j in jets.nonzero()[:, 0].tolist():
        mis = det.card.btag.mistag_light[0]
        lisr += float(det.log_density_isr(obj[j, :3])) + math.log(mis if obj[j, 4] > 0.5 else 1 - mis)
    log_jac = torch.log(pt_f / (8 * math.pi**2 * had.sqrt_s**2))
    log_f = t + lw + lmet + log_jac
    return float(torch.logsumexp(log_f + torch.log(w_g.reshape(-1)), 0)) + lphi + lisr
