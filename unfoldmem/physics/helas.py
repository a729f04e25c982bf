r"""HELAS-style helicity amplitudes in batched torch: spinors, polarisations, vertices, propagators.

Conventions (checked by ``tests/physics/test_amplitudes.py``):

* chiral (Weyl) representation, :math:`\psi = (\psi_L, \psi_R)`,
  :math:`\gamma^\mu = ((0, \sigma^\mu), (\bar\sigma^\mu, 0))`, :math:`P_L = \mathrm{diag}(1, 0)`;
  a Dirac spinor is a complex128 tensor (..., 4), a barred spinor is stored as the row
  :math:`\bar\psi = \psi^\dagger\gamma^0` (..., 4); a vector wavefunction is (..., 4) with upper index.
* Feynman rules of Peskin & Schroeder: vertex :math:`i\gamma^\mu(g_L P_L + g_R P_R)`, fermion
  propagator :math:`i(\slashed p + m)/(p^2 - m^2 + i m\Gamma)`, vector propagator
  :math:`-i(g^{\mu\nu} - k^\mu k^\nu/M^2)/(k^2 - M^2 + i M\Gamma)` (massless: :math:`-ig^{\mu\nu}/k^2`),
  triple-gluon vertex :math:`g f^{abc}[g^{\mu\nu}(k_1-k_2)^\rho + \text{cyclic}]`, all momenta in.
* Widths: fixed-width scheme, a Breit–Wigner :math:`p^2 - m^2 + i m \Gamma` in every propagator
  given a width (pass ``width=0`` for t-channel lines), real masses in the numerators.
* Helicity eigenstates: ``hel`` = ±1 is twice the helicity; massless fermions of the wrong
  chirality give exact zeros, so callers may skip them.

Everything broadcasts over leading dimensions (events, helicity combinations).

References:
    H. Murayama, I. Watanabe, K. Hagiwara, HELAS, KEK-91-11 (1992).
    M. E. Peskin, D. V. Schroeder, An Introduction to QFT (1995), appendix A.1 and eq. (16.10).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bar",
    "spinor_u",
    "spinor_v",
    "spinor_ubar",
    "spinor_vbar",
    "polarization",
    "polarizations_ref",
    "mdot",
    "ffv_current",
    "ffv_amplitude",
    "vector_offshell",
    "fermion_in_offshell",
    "fermion_out_offshell",
    "vvv_offshell",
    "vvv_amplitude",
    "breit_wigner_denominator",
]

_C = torch.complex128
_SQRT_HALF = math.sqrt(0.5)


def mdot(a: Tensor, b: Tensor) -> Tensor:
    """Minkowski product of (..., 4) real or complex vectors, no conjugation; -> (...)."""
    return (
        a[..., 0] * b[..., 0]
        - a[..., 1] * b[..., 1]
        - a[..., 2] * b[..., 2]
        - a[..., 3] * b[..., 3]
    )


def _chi(p: Tensor, hel: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two-component helicity eigenstate χ_hel(p̂) (σ·p̂ χ = hel χ); p at rest → along +z.

    Returned as real and imaginary parts (Re χ₁, Im χ₁, Re χ₂, Im χ₂): the spinors are then
    assembled with real arithmetic and one complex construction.
    """
    px, py, pz = p[..., 1], p[..., 2], p[..., 3]
    pt2 = px * px + py * py
    pa = torch.sqrt(pt2 + pz * pz)
    rest = pa == 0
    # |p| + p_z without cancellation when p points backwards.
    s = torch.where(pz >= 0, pa + pz, pt2 / torch.where(pa - pz > 0, pa - pz, 1.0))
    s = torch.where(rest, 2.0, s)  # at rest: p̂ = +z, |p| + p_z = 2|p|
    pa = torch.where(rest, 1.0, pa)
    back = s <= 0
    norm = torch.rsqrt(2 * pa * torch.where(back, 1.0, s))
    zero = torch.zeros_like(s)
    if hel > 0:
        return (torch.where(back, 0.0, s * norm), zero,
                torch.where(back, 1.0, px * norm), torch.where(back, 0.0, py * norm))
    return (torch.where(back, -1.0, -px * norm), torch.where(back, 0.0, py * norm),
            torch.where(back, 0.0, s * norm), zero)


def _assemble(lo: Tensor, hi: Tensor, chi: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
    """(lo χ, hi χ) as a complex128 (..., 4) spinor from real lo, hi and the parts of χ."""
    r1, i1, r2, i2 = chi
    re = torch.stack([lo * r1, lo * r2, hi * r1, hi * r2], -1)
    im = torch.stack([lo * i1, lo * i2, hi * i1, hi * i2], -1)
    return torch.complex(re, im)


def _omegas(p: Tensor, mass: float | Tensor) -> tuple[Tensor, Tensor]:
    """(√(E+|p|), √(E−|p|)), the second as m/√(E+|p|) to stay exact for massless fermions."""
    pa = torch.sqrt(p[..., 1] ** 2 + p[..., 2] ** 2 + p[..., 3] ** 2)
    wp = torch.sqrt(p[..., 0] + pa)
    return wp, torch.as_tensor(mass, dtype=p.dtype) / wp


def spinor_u(p: Tensor, mass: float | Tensor, hel: int) -> Tensor:
    r"""Incoming-fermion spinor :math:`u(p, \lambda)`.

    Arguments:
        p: (..., 4) on-shell momentum, GeV.
        mass: fermion mass, GeV.
        hel: +1 or -1 (twice the helicity).

    Returns:
        (..., 4) complex128 :math:`(\sqrt{E-\lambda|p|}\chi_\lambda, \sqrt{E+\lambda|p|}\chi_\lambda)`.
    """
    wp, wm = _omegas(p, mass)
    lo, hi = (wm, wp) if hel > 0 else (wp, wm)
    return _assemble(lo, hi, _chi(p, hel))


def spinor_v(p: Tensor, mass: float | Tensor, hel: int) -> Tensor:
    r"""Incoming-antifermion spinor :math:`v(p,\lambda) = (-\lambda\sqrt{E+\lambda|p|}\chi_{-\lambda},
    \lambda\sqrt{E-\lambda|p|}\chi_{-\lambda})`; arguments as :func:`spinor_u`."""
    wp, wm = _omegas(p, mass)
    lo, hi = (-wp, wm) if hel > 0 else (wm, -wp)
    return _assemble(lo, hi, _chi(p, -hel))


def bar(psi: Tensor) -> Tensor:
    r"""Dirac adjoint :math:`\bar\psi = \psi^\dagger\gamma^0` of (..., 4) spinors, as a row (..., 4)."""
    # slices + a lazy conjugate: advanced indexing is several times slower here
    return torch.cat([psi[..., 2:], psi[..., :2]], -1).conj()


def spinor_ubar(p: Tensor, mass: float | Tensor, hel: int) -> Tensor:
    r"""Outgoing-fermion row spinor :math:`\bar u(p,\lambda)`; arguments as :func:`spinor_u`."""
    return bar(spinor_u(p, mass, hel))


def spinor_vbar(p: Tensor, mass: float | Tensor, hel: int) -> Tensor:
    r"""Outgoing-antifermion row spinor :math:`\bar v(p,\lambda)`; arguments as :func:`spinor_u`."""
    return bar(spinor_v(p, mass, hel))


def polarization(k: Tensor, mass: float, hel: int, outgoing: bool = False) -> Tensor:
    r"""Polarisation vector :math:`\epsilon^\mu(k,\lambda)` (upper index) of a vector boson.

    :math:`\epsilon(\pm) = (\mp\epsilon_1 - i\epsilon_2)/\sqrt2` with
    :math:`\epsilon_1 = (0, \cos\theta\cos\phi, \cos\theta\sin\phi, -\sin\theta)`,
    :math:`\epsilon_2 = (0, -\sin\phi, \cos\phi, 0)` (HELAS VXXXXX); ``hel = 0`` (massive only)
    is :math:`(|k|, E\hat k)/m`. Outgoing bosons get the complex conjugate.

    Arguments:
        k: (..., 4) momentum, GeV.
        mass: boson mass (0 for gluons and photons).
        hel: -1, 0 or +1.
        outgoing: conjugate for a final-state boson.
    """
    kx, ky, kz = k[..., 1], k[..., 2], k[..., 3]
    kt = torch.sqrt(kx * kx + ky * ky)
    ka = torch.sqrt(kt * kt + kz * kz)
    one, zero = torch.ones_like(kt), torch.zeros_like(kt)
    has_t = kt > 0
    cphi = torch.where(has_t, kx / torch.where(has_t, kt, one), one)
    sphi = torch.where(has_t, ky / torch.where(has_t, kt, one), zero)
    has_a = ka > 0
    cth = torch.where(has_a, kz / torch.where(has_a, ka, one), one)
    sth = torch.where(has_a, kt / torch.where(has_a, ka, one), zero)
    if hel == 0:
        if mass == 0:
            msg = "a massless vector boson has no longitudinal polarisation (hel=0)"
            raise ValueError(msg)
        e = torch.stack([ka, k[..., 0] * sth * cphi, k[..., 0] * sth * sphi, k[..., 0] * cth], -1)
        return (e / mass).to(_C)
    re = torch.stack([zero, cth * cphi, cth * sphi, -sth], -1) * (-hel * _SQRT_HALF)
    im = torch.stack([zero, -sphi, cphi, zero], -1) * (-_SQRT_HALF)
    eps = torch.complex(re, im)
    return torch.conj(eps) if outgoing else eps


def polarizations_ref(k: Tensor, q: Tensor) -> Tensor:
    r"""Both circular polarisations of a massless vector k with reference momentum q (massless),
    :math:`\epsilon \propto \bar u_-(q)\gamma^\mu u_-(k)` and its complex conjugate.

    Lorentz covariant: :math:`\epsilon\cdot k = \epsilon\cdot q = 0`, :math:`\epsilon\cdot\epsilon^*
    = -1`, :math:`\sum \epsilon^\mu\epsilon^{*\nu} = -g^{\mu\nu} + (k^\mu q^\nu + q^\mu k^\nu)/k\cdot q`
    (axial gauge with vector q). For collinear beams and q the other beam this is the gauge of
    :func:`polarization` in any frame with the beams along z.

    Arguments:
        k, q: (..., 4) massless momenta, GeV.

    Returns:
        (2, ..., 4) complex128.
    """
    j = ffv_current(spinor_ubar(q, 0.0, -1), spinor_u(k, 0.0, -1), 1.0, 0.0)
    j = j * torch.rsqrt(-mdot(j, j.conj()).real).unsqueeze(-1)
    return torch.stack([j, j.conj()])


def _sig(a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Entries (11, 12, 21, 22) of :math:`a\cdot\sigma = a^0 - \vec a\cdot\vec\sigma`."""
    a0, a1, a2, a3 = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    return a0 - a3, -a1 + 1j * a2, -a1 - 1j * a2, a0 + a3


def _sigbar(a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Entries (11, 12, 21, 22) of :math:`a\cdot\bar\sigma = a^0 + \vec a\cdot\vec\sigma`."""
    a0, a1, a2, a3 = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    return a0 + a3, a1 - 1j * a2, a1 + 1j * a2, a0 - a3


def breit_wigner_denominator(p2: Tensor, mass: Tensor | float, width: Tensor | float) -> Tensor:
    r"""Propagator denominator :math:`p^2 - m^2 + i m\Gamma` (complex128), fixed-width scheme."""
    m = torch.as_tensor(mass, dtype=torch.float64)
    w = torch.as_tensor(width, dtype=torch.float64)
    return (p2 - m * m) + 1j * (m * w)


def _is_zero(g: Tensor | float) -> bool:
    """A coupling known to vanish (a Python 0): lets chiral currents skip half the work."""
    return isinstance(g, float | int) and g == 0


def ffv_current(bar_out: Tensor, psi_in: Tensor, gl: Tensor | float, gr: Tensor | float) -> Tensor:
    r"""Fermion current :math:`J^\mu = \bar\psi_{out}\gamma^\mu(g_L P_L + g_R P_R)\psi_{in}`, (..., 4)."""
    a1, a2, a3, a4 = bar_out[..., 0], bar_out[..., 1], bar_out[..., 2], bar_out[..., 3]
    c1, c2, c3, c4 = psi_in[..., 0], psi_in[..., 1], psi_in[..., 2], psi_in[..., 3]
    if gl is gr and not _is_zero(gl):
        # vector coupling (QCD): add the chiral halves first, multiply by the coupling once
        x, y, z, w = a1 * c3, a2 * c4, a1 * c4, a2 * c3
        xl, yl, zl, wl = a3 * c1, a4 * c2, a3 * c2, a4 * c1
        j = torch.stack([x + y + (xl + yl), (z + w) - (zl + wl),
                         1j * ((w - z) + (zl - wl)), (x - y) + (yl - xl)], -1)
        return j * (gl.unsqueeze(-1) if isinstance(gl, Tensor) and gl.dim() else gl)
    parts = []
    if not _is_zero(gr):
        # right-handed: (a1,a2) σ^μ (c3,c4)
        x, y, z, w = a1 * c3, a2 * c4, a1 * c4, a2 * c3
        parts.append(
            torch.stack([x + y, z + w, 1j * (w - z), x - y], -1)
            * (gr.unsqueeze(-1) if isinstance(gr, Tensor) and gr.dim() else gr)
        )
    if not _is_zero(gl):
        # left-handed: (a3,a4) σbar^μ (c1,c2)
        x, y, z, w = a3 * c1, a4 * c2, a3 * c2, a4 * c1
        parts.append(
            torch.stack([x + y, -(z + w), 1j * (z - w), y - x], -1)
            * (gl.unsqueeze(-1) if isinstance(gl, Tensor) and gl.dim() else gl)
        )
    if not parts:
        return torch.zeros_like(bar_out)
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def ffv_amplitude(
    bar_out: Tensor, psi_in: Tensor, vec: Tensor, gl: Tensor | float, gr: Tensor | float
) -> Tensor:
    r"""Amplitude :math:`\bar\psi\, i\slashed V (g_L P_L + g_R P_R)\psi`; -> (...) complex128."""
    return 1j * mdot(ffv_current(bar_out, psi_in, gl, gr), vec)


def vector_offshell(
    bar_out: Tensor,
    psi_in: Tensor,
    gl: Tensor | float,
    gr: Tensor | float,
    k: Tensor,
    mass: Tensor | float,
    width: Tensor | float,
) -> Tensor:
    r"""Off-shell vector boson from a fermion pair (HELAS JIOXXX), vertex times propagator:
    :math:`(J^\mu - k^\mu k\cdot J/M^2)/(k^2 - M^2 + iM\Gamma)`; massless: :math:`J^\mu/k^2`.

    Arguments:
        k: (..., 4) boson momentum, GeV. mass, width: GeV (mass 0 for γ, g).
    """
    j = ffv_current(bar_out, psi_in, gl, gr)
    k2 = mdot(k, k)
    if isinstance(mass, float | int) and mass == 0:
        return j / k2.unsqueeze(-1)
    m2 = torch.as_tensor(mass, dtype=torch.float64) ** 2
    j = j - k * (mdot(k, j) / m2).unsqueeze(-1)
    return j / breit_wigner_denominator(k2, mass, width).unsqueeze(-1)


def _slash_chiral(psi: Tensor, vec: Tensor, gl: Tensor | float, gr: Tensor | float) -> Tensor:
    r""":math:`\slashed V(g_L P_L + g_R P_R)\psi` as a column (..., 4)."""
    s11, s12, s21, s22 = _sig(vec)
    b11, b12, b21, b22 = _sigbar(vec)
    c1, c2, c3, c4 = gl * psi[..., 0], gl * psi[..., 1], gr * psi[..., 2], gr * psi[..., 3]
    return torch.stack(
        [s11 * c3 + s12 * c4, s21 * c3 + s22 * c4, b11 * c1 + b12 * c2, b21 * c1 + b22 * c2], -1
    )


def _pslash_plus_m(psi: Tensor, p: Tensor, mass: Tensor | float) -> Tensor:
    r""":math:`(\slashed p + m)\psi` as a column (..., 4)."""
    s11, s12, s21, s22 = _sig(p)
    b11, b12, b21, b22 = _sigbar(p)
    c1, c2, c3, c4 = psi[..., 0], psi[..., 1], psi[..., 2], psi[..., 3]
    return torch.stack(
        [
            s11 * c3 + s12 * c4 + mass * c1,
            s21 * c3 + s22 * c4 + mass * c2,
            b11 * c1 + b12 * c2 + mass * c3,
            b21 * c1 + b22 * c2 + mass * c4,
        ],
        -1,
    )


def fermion_in_offshell(
    psi: Tensor,
    vec: Tensor,
    gl: Tensor | float,
    gr: Tensor | float,
    p: Tensor,
    mass: Tensor | float,
    width: Tensor | float,
) -> Tensor:
    r"""Off-shell incoming fermion (HELAS FVIXXX):
    :math:`i(\slashed p + m)/(p^2-m^2+im\Gamma)\; i\slashed V(g_LP_L+g_RP_R)\psi`.

    Arguments:
        p: (..., 4) momentum along the fermion arrow through the propagator, GeV.
    """
    if _is_zero(gr):
        # purely left-handed vertex (W): V̸ gL PL ψ = (0, 0, gL σ̄·V ψ_L), then (p̸ + m) on it
        b11, b12, b21, b22 = _sigbar(vec)
        c1, c2 = gl * psi[..., 0], gl * psi[..., 1]
        c3, c4 = b11 * c1 + b12 * c2, b21 * c1 + b22 * c2
        s11, s12, s21, s22 = _sig(p)
        num = torch.stack(
            [s11 * c3 + s12 * c4, s21 * c3 + s22 * c4, mass * c3, mass * c4], -1
        )
        return -num / breit_wigner_denominator(mdot(p, p), mass, width).unsqueeze(-1)
    num = _pslash_plus_m(_slash_chiral(psi, vec, gl, gr), p, mass)
    return -num / breit_wigner_denominator(mdot(p, p), mass, width).unsqueeze(-1)


def fermion_out_offshell(
    bar_out: Tensor,
    vec: Tensor,
    gl: Tensor | float,
    gr: Tensor | float,
    p: Tensor,
    mass: Tensor | float,
    width: Tensor | float,
) -> Tensor:
    r"""Off-shell outgoing fermion (HELAS FVOXXX), a row:
    :math:`\bar\psi\, i\slashed V(g_LP_L+g_RP_R)\; i(\slashed p + m)/(p^2-m^2+im\Gamma)`.

    Arguments:
        p: (..., 4) momentum along the fermion arrow through the propagator, GeV.
    """
    # bar M = (M^T bar^T)^T; with rows the chiral blocks swap roles.
    a1, a2, a3, a4 = bar_out[..., 0], bar_out[..., 1], bar_out[..., 2], bar_out[..., 3]
    if _is_zero(gr):
        # purely left-handed vertex (W): the d half vanishes, skip its arithmetic
        b11, b12, b21, b22 = _sigbar(vec)
        u1 = gl * (a3 * b11 + a4 * b21)
        u2 = gl * (a3 * b12 + a4 * b22)
        p11, p12, p21, p22 = _sig(p)
        out = torch.stack(
            [mass * u1, mass * u2, u1 * p11 + u2 * p21, u1 * p12 + u2 * p22], -1
        )
        return -out / breit_wigner_denominator(mdot(p, p), mass, width).unsqueeze(-1)
    s11, s12, s21, s22 = _sig(vec)
    b11, b12, b21, b22 = _sigbar(vec)
    # row (a_up, a_lo) · V̸(gL PL + gR PR) = (gL a_lo σ̄·V, gR a_up σ·V)
    u1 = gl * (a3 * b11 + a4 * b21)
    u2 = gl * (a3 * b12 + a4 * b22)
    d1 = gr * (a1 * s11 + a2 * s21)
    d2 = gr * (a1 * s12 + a2 * s22)
    p11, p12, p21, p22 = _sig(p)
    q11, q12, q21, q22 = _sigbar(p)
    # row (u, d) · (p̸ + m) = (m u + d σ̄·p, u σ·p + m d)
    out = torch.stack(
        [
            mass * u1 + d1 * q11 + d2 * q21,
            mass * u2 + d1 * q12 + d2 * q22,
            u1 * p11 + u2 * p21 + mass * d1,
            u1 * p12 + u2 * p22 + mass * d2,
        ],
        -1,
    )
    return -out / breit_wigner_denominator(mdot(p, p), mass, width).unsqueeze(-1)


def _vvv_vertex(e1: Tensor, k1: Tensor, e2: Tensor, k2: Tensor, k3: Tensor) -> Tensor:
    r""":math:`\Gamma^{\mu\nu\rho}\epsilon_{1\mu}\epsilon_{2\nu}` (free index ρ up), momenta in."""
    return (
        mdot(e1, e2).unsqueeze(-1) * (k1 - k2)
        + e2 * mdot(k2 - k3, e1).unsqueeze(-1)
        + e1 * mdot(k3 - k1, e2).unsqueeze(-1)
    )


def vvv_offshell(e1: Tensor, k1: Tensor, e2: Tensor, k2: Tensor, g: Tensor | float) -> Tensor:
    r"""Off-shell gluon (colour stripped of :math:`f^{abc}`) from two gluons with incoming
    momenta k1, k2: :math:`-i/k_3^2 \cdot g\,\Gamma^{\mu\nu\rho}\epsilon_{1\mu}\epsilon_{2\nu}`,
    :math:`k_3 = -(k_1+k_2)` (HELAS JVVXXX, Feynman gauge)."""
    k3 = -(k1 + k2)
    return (-1j * g) * _vvv_vertex(e1, k1, e2, k2, k3) / mdot(k3, k3).unsqueeze(-1)


def vvv_amplitude(
    e1: Tensor, k1: Tensor, e2: Tensor, k2: Tensor, e3: Tensor, k3: Tensor, g: Tensor | float
) -> Tensor:
    r"""Three-gluon amplitude :math:`g\,\Gamma^{\mu\nu\rho}\epsilon_{1\mu}\epsilon_{2\nu}\epsilon_{3\rho}`
    (colour :math:`f^{abc}` stripped), all momenta incoming (HELAS VVVXXX)."""
    return g * mdot(_vvv_vertex(e1, k1, e2, k2, k3), e3)
