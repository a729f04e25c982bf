"""Tests of the leptonic-top root finder: the algebraic s_top and the numba loop."""

from __future__ import annotations

import math

import torch

from unfoldmem.mem.leptonic_blocks import LeptonicTop
from unfoldmem.physics import lorentz

torch.set_num_threads(1)

_TOP = LeptonicTop(b=0, lep=1, nu=2, m_w=80.4, g_w=2.1, m_t=172.5, g_t=1.4)


def _config(s: int, b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (S, B, 3, 3) partons (b, ℓ, ν) in (p_T, η, φ) and the others' p_T sum (S, B, 2)."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    z = torch.empty(s, b, 3, 3, dtype=f64)
    z[..., 0] = torch.exp(torch.randn(s, b, 3, generator=g, dtype=f64) * 0.7 + 3.8)
    z[..., 1] = torch.randn(s, b, 3, generator=g, dtype=f64) * 1.5
    z[..., 2] = (torch.rand(s, b, 3, generator=g, dtype=f64) - 0.5) * 2 * math.pi
    return z, torch.randn(s, b, 2, generator=g, dtype=f64) * 60


def test_algebraic_s_top_is_the_invariant_mass() -> None:
    """s_top(x) equals m²(b + ℓ + ν) of massless four-vectors (reference: lorentz.mass2 of the
    summed momenta) with p_T,b = eˣ, ν's p_T from the balance and η_ν = η_ℓ ± acosh c on the
    W mass shell (checked too: m²(ℓν) = m_W² where c > 1)."""
    z, v = _config(64, 3, seed=1)
    x = torch.randn(2, 64, 3, dtype=torch.float64) * 0.8 + 4.0
    s_top = _TOP._s_top_fn(z, v)(x)  # (2, S, B)
    pt_b = torch.exp(x)
    bx = -(v[..., 0] + pt_b * torch.cos(z[..., 0, 2]))
    by = -(v[..., 1] + pt_b * torch.sin(z[..., 0, 2]))
    pt_n, phi_n = torch.hypot(bx, by), torch.atan2(by, bx)
    pt_l, eta_l, phi_l = z[..., 1, :].unbind(-1)
    c = 80.4**2 / (2 * pt_l * pt_n) + torch.cos(phi_n - phi_l)
    eta_n = eta_l + torch.tensor([1.0, -1.0], dtype=torch.float64)[:, None, None] * torch.acosh(
        c.clamp(min=1.0))
    zero = torch.zeros_like(pt_b)

    def vec(pt: torch.Tensor, eta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        pt, eta, phi = torch.broadcast_tensors(pt, eta, phi)
        return lorentz.from_ptetaphim(torch.stack([pt, eta, phi, torch.zeros_like(pt)], -1))

    p_b = vec(pt_b, z[..., 0, 1] + zero, z[..., 0, 2] + zero)
    p_l = vec(pt_l + zero, eta_l + zero, phi_l + zero)
    p_n = vec(pt_n, eta_n, phi_n)
    ref = lorentz.mass2(p_b + p_l + p_n)
    torch.testing.assert_close(s_top, ref, rtol=1e-9, atol=1e-6)
    on_shell = c > 1
    torch.testing.assert_close(lorentz.mass2(p_l + p_n)[on_shell],
                               torch.full_like(ref, 80.4**2)[on_shell], rtol=1e-9, atol=1e-6)


def test_numba_roots_equal_the_torch_roots() -> None:
    """The numba loop gives the vectorised torch version's roots (reference: roots_torch, the
    same steps in torch): the same found mask, centres and widths equal to rounding."""
    z, v = _config(2048, 4, seed=2)
    xs, gs, ok = _TOP.roots(z, v)
    xt, gt, okt = _TOP.roots_torch(z, v)
    assert torch.equal(ok, okt)
    assert 0.3 < float(ok.double().mean()) < 1.0  # both found and missed roots are exercised
    torch.testing.assert_close(xs[ok], xt[ok], rtol=0, atol=1e-11)
    torch.testing.assert_close(gs[ok], gt[ok], rtol=1e-9, atol=0)
