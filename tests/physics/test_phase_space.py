r"""Tests of unfoldmem.physics.phase_space against analytic phase-space volumes and integrals."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate

from unfoldmem.physics import lorentz as L
from unfoldmem.physics import phase_space as PS

F64 = torch.float64


def _rand(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _at_rest(n: int, m: float) -> torch.Tensor:
    return torch.tensor([m, 0.0, 0.0, 0.0], dtype=F64).expand(n, 4).clone()


def _assert_mc(values: torch.Tensor, expect: float, nsig: float = 4.0) -> None:
    err = values.std().item() / math.sqrt(values.numel())
    assert abs(values.mean().item() - expect) <= nsig * err + 1e-12 * abs(expect), (
        values.mean().item(),
        expect,
        err,
    )


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_massless_volume_sequential_mc(n: int) -> None:
    """MC volume of massless n-body phase space from chained two-body decays vs
    Φ_n = (2π)^(4-3n) (π/2)^(n-1) s^(n-2) / ((n-1)!(n-2)!) (Kleiss, Stirling, Ellis 1986, eq. 2.4)."""
    nev, rs = 20_000, 91.0
    _, w = PS.sequential_phase_space(_rand(nev, 3 * n - 4, n), _at_rest(nev, rs), torch.zeros(n))
    _assert_mc(w, PS.massless_volume(n, rs).item())


@pytest.mark.parametrize("n", [2, 3, 5])
def test_rambo_massless_constant_weight_and_kinematics(n: int) -> None:
    """RAMBO massless: weight is the constant analytic volume (KSE 1986), Σp = (√s, 0), p² = 0."""
    rs = 250.0
    p, w = PS.rambo(_rand(20_000, 4 * n, 10 + n), rs)
    vol = PS.massless_volume(n, rs)
    torch.testing.assert_close(w, vol.expand_as(w), rtol=1e-14, atol=0)
    total = torch.tensor([rs, 0.0, 0.0, 0.0], dtype=F64)
    torch.testing.assert_close(p.sum(1), total.expand(20_000, 4), rtol=0, atol=1e-12 * rs)
    assert (L.mass2(p).abs() <= 1e-12 * p[..., 0] ** 2 + 1e-300).all()


def test_rambo_massless_is_flat() -> None:
    """Flat 3-body massless phase space is uniform in the Dalitz triangle, so x = 2E/√s of one
    particle has density 2x on [0, 1] and mean 2/3 (Byckling & Kajantie, ch. V)."""
    p, _ = PS.rambo(_rand(40_000, 12, 3), 100.0)
    _assert_mc(2 * p[:, 0, 0] / 100.0, 2.0 / 3.0)


@pytest.mark.parametrize("n", [3, 4])
def test_rambo_massive_vs_sequential(n: int) -> None:
    """Massive RAMBO mean weight vs the independent sequential two-body generator (4σ combined)."""
    nev, rs = 20_000, 100.0
    m = torch.tensor([5.0, 20.0, 1.0, 30.0][:n], dtype=F64)
    p, w1 = PS.rambo(_rand(nev, 4 * n, 20 + n), rs, m)
    _, w2 = PS.sequential_phase_space(_rand(nev, 3 * n - 4, 30 + n), _at_rest(nev, rs), m)
    err = math.hypot(w1.std().item(), w2.std().item()) / math.sqrt(nev)
    assert abs(w1.mean().item() - w2.mean().item()) <= 4 * err
    torch.testing.assert_close(L.mass(p), m.expand(nev, n), rtol=1e-9, atol=0)


def test_rambo_two_body_massive_analytic() -> None:
    """Two-body phase space Φ₂ = λ^(1/2)(s, m1², m2²) / (8π s) (PDG Kinematics review)."""
    rs, m1, m2 = 500.0, 173.0, 80.4
    _, w = PS.rambo(_rand(1000, 8, 2), rs, torch.tensor([m1, m2], dtype=F64))
    lam = PS.kallen(torch.tensor(rs**2), torch.tensor(m1**2), torch.tensor(m2**2)).item()
    torch.testing.assert_close(w, torch.full_like(w, math.sqrt(lam) / (8 * math.pi * rs**2)))


def _dalitz_volume(big_m: float, m1: float, m2: float, m3: float) -> float:
    """Φ₃ = ∫ dm12² dm23² / (16 M² (2π)³) over the Dalitz region (PDG Kinematics, eq. 49.22)."""

    def width(s12: float) -> float:
        m12 = math.sqrt(s12)
        e2 = (s12 - m1**2 + m2**2) / (2 * m12)
        e3 = (big_m**2 - s12 - m3**2) / (2 * m12)
        return 4 * math.sqrt(max(e2**2 - m2**2, 0.0)) * math.sqrt(max(e3**2 - m3**2, 0.0))

    area, _ = integrate.quad(width, (m1 + m2) ** 2, (big_m - m3) ** 2, epsabs=0, epsrel=1e-11)
    return area / (16 * big_m**2 * (2 * math.pi) ** 3)


@pytest.mark.parametrize("resonance", [None, (80.4, 2.1)])
def test_three_body_volume_vs_dalitz(resonance: tuple[float, float] | None) -> None:
    """Three-body decay mean weight (flat or Breit–Wigner-mapped s12) vs the Dalitz-plot volume."""
    nev = 40_000
    big_m, m1, m2, m3 = 173.0, 0.0, 0.0, 4.7
    parent = L.boost(_at_rest(nev, big_m), torch.tensor([0.3, -0.2, 0.6], dtype=F64))
    p1, p2, p3, w = PS.three_body_decay(parent, m1, m2, m3, _rand(nev, 5, 7), resonance)
    _assert_mc(w, _dalitz_volume(big_m, m1, m2, m3))
    torch.testing.assert_close(p1 + p2 + p3, parent, rtol=0, atol=1e-12 * parent[0, 0].item())


def test_top_decay_chain_conservation_and_shell() -> None:
    """t -> b W(-> l ν) on RAMBO t tbar: Σp conserved to 1e-12·E, p² = m² to 1e-9·E², and the
    inverse maps (two-body angles, Breit–Wigner) give back the unit-hypercube numbers."""
    nev, mt, mw, gw, mb = 5000, 173.0, 80.4, 2.1, 4.7
    tops, _ = PS.rambo(_rand(nev, 8, 41), 800.0, torch.tensor([mt, mt], dtype=F64))
    top = tops[:, 0]
    u = _rand(nev, 5, 42)
    s_w, _ = PS.breit_wigner_map(u[:, 0], mw, gw, 1.0, (mt - mb) ** 2)
    w, b, _ = PS.two_body_decay(top, torch.sqrt(s_w), mb, u[:, 1:3])
    lep, nu, _ = PS.two_body_decay(w, 0.0, 0.0, u[:, 3:5])
    scale = top[:, :1]
    assert ((b + lep + nu - top).abs() <= 1e-12 * scale).all()
    for p, m2 in [(b, mb**2), (lep, 0.0), (nu, 0.0), (w, s_w)]:
        assert ((L.mass2(p) - m2).abs() <= 1e-9 * p[:, 0] ** 2).all()
    u_back = torch.cat(
        [
            PS.breit_wigner_inverse(L.mass2(w), mw, gw, 1.0, (mt - mb) ** 2)[0][:, None],
            PS.two_body_decay_inverse(top, w),
            PS.two_body_decay_inverse(w, lep),
        ],
        dim=-1,
    )
    torch.testing.assert_close(u_back, u, rtol=0, atol=1e-7)


def test_breit_wigner_integral_analytic() -> None:
    """∫ ds BW(s) is reproduced exactly per point and ∫ ds s·BW(s) within MC error, vs the
    antiderivatives atan(x)/(MΓ) and ½ln((s-M²)²+M²Γ²) + M/Γ·atan(x), x = (s-M²)/(MΓ)."""
    m, g, lo, hi = 91.1876, 2.4952, 60.0**2, 120.0**2
    s, jac = PS.breit_wigner_map(_rand(50_000, 1, 5)[:, 0], m, g, lo, hi)

    def bw(x: torch.Tensor | float) -> torch.Tensor | float:
        return 1.0 / ((x - m * m) ** 2 + (m * g) ** 2)

    def at(x: float) -> float:
        return math.atan((x - m * m) / (m * g))

    exact0 = (at(hi) - at(lo)) / (m * g)
    torch.testing.assert_close(bw(s) * jac, torch.full_like(s, exact0), rtol=1e-12, atol=0)
    quad0, _ = integrate.quad(bw, lo, hi, points=[m * m], epsrel=1e-12, limit=200)
    assert exact0 == pytest.approx(quad0, rel=1e-9)

    def prim1(x: float) -> float:
        return 0.5 * math.log((x - m * m) ** 2 + (m * g) ** 2) + m / g * at(x)

    _assert_mc(s * bw(s) * jac, prim1(hi) - prim1(lo))
    u_back, jac_back = PS.breit_wigner_inverse(s, m, g, lo, hi)
    torch.testing.assert_close(jac_back, jac, rtol=1e-10, atol=0)
    assert ((u_back >= 0) & (u_back <= 1)).all()


def test_tau_y_map_area_and_inverse() -> None:
    """∫ dx1 dx2 θ(x1 x2 > τ_min) = 1 - τ_min + τ_min ln τ_min (elementary), exact inverse."""
    tau_min = 1e-3
    u = _rand(40_000, 2, 9)
    x1, x2, jac = PS.tau_y_map(u, tau_min)
    assert ((x1 <= 1) & (x2 <= 1) & (x1 * x2 >= tau_min * (1 - 1e-12))).all()
    _assert_mc(jac, 1 - tau_min + tau_min * math.log(tau_min))
    u_back, jac_back = PS.tau_y_inverse(x1, x2, tau_min)
    torch.testing.assert_close(u_back, u, rtol=0, atol=1e-10)
    torch.testing.assert_close(jac_back, jac, rtol=1e-10, atol=0)


def test_gradcheck_weights_wrt_masses() -> None:
    """Autograd derivatives of phase-space weights w.r.t. masses/widths vs finite differences."""
    u8, u5 = _rand(4, 12, 50), _rand(4, 5, 51)
    parent = L.boost(_at_rest(4, 173.0), torch.tensor([0.1, 0.2, -0.4], dtype=F64))

    def rambo_w(masses: torch.Tensor) -> torch.Tensor:
        return PS.rambo(u8, 400.0, masses)[1]

    def decay_w(mw: torch.Tensor, gw: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        return PS.three_body_decay(parent, 0.0, 0.0, mb, u5, (mw, gw))[3]

    def two_w(m1: torch.Tensor) -> torch.Tensor:
        return PS.two_body_decay(parent, m1, 4.7, u5[:, :2])[2]

    def arg(x: float) -> torch.Tensor:
        return torch.tensor(x, dtype=F64, requires_grad=True)

    ms = torch.tensor([173.0, 4.7, 80.0], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(rambo_w, (ms,))
    assert torch.autograd.gradcheck(decay_w, (arg(80.4), arg(2.1), arg(4.7)))
    assert torch.autograd.gradcheck(two_w, (arg(80.4),))
