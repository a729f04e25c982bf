r"""Phase-space generators and mappings from the unit hypercube, with weights, batched in torch.

Convention: every weight is the Jacobian of the Lorentz-invariant phase-space measure with
(2π) factors included,

.. math:: d\Phi_n(P; p_1..p_n) = (2\pi)^4\delta^4(P - \textstyle\sum p_i)
    \prod_i \frac{d^3p_i}{(2\pi)^3\, 2E_i},

so that :math:`\sigma = \frac{1}{2\hat s}\int |M|^2 d\Phi_n` and
:math:`\Gamma = \frac{1}{2M}\int |M|^2 d\Phi_n`. Sums over unit-hypercube points ``u`` give
:math:`\int d\Phi \approx \langle w \rangle`. Masses may be tensors requiring grad.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unfoldmem.physics.lorentz import beta3, boost, boost_to_rest, mass

__all__ = [
    "massless_volume",
    "kallen",
    "rambo",
    "two_body_decay",
    "two_body_decay_inverse",
    "three_body_decay",
    "sequential_phase_space",
    "breit_wigner_map",
    "breit_wigner_inverse",
    "tau_y_map",
    "tau_y_inverse",
    "x1x2_from_tau",
]

TWO_PI = 2.0 * math.pi
_EPS = torch.finfo(torch.float64).eps


def _t(x: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def massless_volume(n: int, sqrt_s: Tensor | float) -> Tensor:
    r"""Volume of n-body massless phase space,

    .. math:: \Phi_n = (2\pi)^{4-3n}\,\Big(\frac{\pi}{2}\Big)^{n-1}
        \frac{s^{n-2}}{(n-1)!\,(n-2)!}.

    References:
        R. Kleiss, W. J. Stirling, S. D. Ellis, Comput. Phys. Commun. 40 (1986) 359, eq. (2.4).

    Arguments:
        n: number of particles, n ≥ 2. sqrt_s: total invariant mass, GeV.
    """
    s = torch.as_tensor(sqrt_s, dtype=torch.float64) ** 2
    norm = (TWO_PI) ** (4 - 3 * n) * (math.pi / 2) ** (n - 1)
    return norm * s ** (n - 2) / (math.factorial(n - 1) * math.factorial(n - 2))


def kallen(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    r"""Källén function :math:`\lambda(a,b,c) = a^2+b^2+c^2-2ab-2ac-2bc`, broadcastable."""
    return a * a + b * b + c * c - 2 * (a * b + a * c + b * c)


def _two_body_pstar(m_parent: Tensor, m1: Tensor, m2: Tensor) -> Tensor:
    # Factorised form of λ(M², m1², m2²) loses no precision near threshold.
    lam = (m_parent**2 - (m1 + m2) ** 2) * (m_parent**2 - (m1 - m2) ** 2)
    return torch.sqrt(lam.clamp_min(0.0)) / (2.0 * m_parent)


def rambo(u: Tensor, sqrt_s: Tensor | float, masses: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""RAMBO: n momenta with total :math:`(\sqrt s, \vec 0)`, flat in massless phase space.

    The massless weight is the constant :func:`massless_volume`. For massive particles the
    massless momenta are rescaled, :math:`\vec k_i = \xi \vec p_i`, with ξ solved by Newton's
    method from :math:`\sum_i \sqrt{m_i^2 + \xi^2 E_i^2} = \sqrt s`, and the weight gets

    .. math:: w_m = w_0\, \xi^{2n-3} \prod_i \frac{|\vec k_i|}{E_i}
        \frac{\sqrt s}{\sum_i |\vec k_i|^2/E_i}.

    ξ is converged without grad, then one Newton step is taken with grad, which gives the exact
    first derivative with respect to the masses (implicit-function theorem).

    References:
        R. Kleiss, W. J. Stirling, S. D. Ellis, "A new Monte Carlo treatment of multiparticle
        phase space at high energies", Comput. Phys. Commun. 40 (1986) 359.

    Arguments:
        u: (B, 4n) uniform numbers in (0, 1).
        sqrt_s: total energy in the centre-of-mass frame, GeV, float or (B,).
        masses: (n,) or (B, n) masses in GeV, or None for massless.

    Returns:
        momenta (B, n, 4) in the centre-of-mass frame, weight (B,).
    """
    bsz, n = u.shape[0], u.shape[-1] // 4
    if n < 2 or u.shape[-1] != 4 * n:
        msg = f"rambo needs u of shape (B, 4n) with n >= 2, got {tuple(u.shape)}"
        raise ValueError(msg)
    u = u.reshape(bsz, n, 4).clamp(_EPS, 1.0)
    rs = _t(sqrt_s, u).expand(bsz) if _t(sqrt_s, u).dim() == 0 else _t(sqrt_s, u)
    c = 2.0 * u[..., 0] - 1.0
    sn = torch.sqrt((1.0 - c * c).clamp_min(0.0))
    ph = TWO_PI * u[..., 1]
    q0 = -torch.log(u[..., 2] * u[..., 3])
    q = torch.stack([q0, q0 * sn * torch.cos(ph), q0 * sn * torch.sin(ph), q0 * c], dim=-1)
    qsum = q.sum(1)
    big_m = mass(qsum)
    b = -qsum[:, 1:] / big_m[:, None]
    x = rs / big_m
    gamma = qsum[:, 0] / big_m
    a = 1.0 / (1.0 + gamma)
    bq = (b[:, None, :] * q[..., 1:]).sum(-1)
    p3 = x[:, None, None] * (
        q[..., 1:] + b[:, None, :] * (q[..., :1] + a[:, None, None] * bq[..., None])
    )
    # A near-lightlike sum of the q's means a large boost that costs ~eps*gamma^2 in precision:
    # put the momenta back on the massless shell and remove the residual total momentum with a
    # second, tiny boost and rescaling (it moves points by O(eps*gamma^2) and keeps the weight).
    e = torch.linalg.vector_norm(p3, dim=-1)
    p = torch.cat([e[..., None], p3], dim=-1)
    tot = p.sum(1)
    p = boost_to_rest(p, tot[:, None, :]) * (rs / mass(tot))[:, None, None]
    p = torch.cat([torch.linalg.vector_norm(p[..., 1:], dim=-1, keepdim=True), p[..., 1:]], -1)
    e = p[..., 0]
    w0 = massless_volume(n, rs).to(u)
    if masses is None:
        return p, w0
    m = _t(masses, u).expand(bsz, n)
    if bool((m.sum(-1) >= rs).any()):
        msg = "rambo: sum of masses must be below sqrt_s"
        raise ValueError(msg)

    def f_and_df(xi: Tensor, mm: Tensor) -> tuple[Tensor, Tensor]:
        ei = torch.sqrt(mm * mm + (xi[:, None] * e) ** 2)
        return ei.sum(-1) - rs, (xi[:, None] * e * e / ei).sum(-1)

    with torch.no_grad():
        xi = torch.sqrt((1.0 - (m.sum(-1) / rs) ** 2).clamp_min(0.0))
        md, ed = m.detach(), e.detach()
        for _ in range(100):
            ei = torch.sqrt(md * md + (xi[:, None] * ed) ** 2)
            fv, dfv = ei.sum(-1) - rs.detach(), (xi[:, None] * ed * ed / ei).sum(-1)
            step = fv / dfv
            xi = xi - step
            if bool((step.abs() <= 4 * _EPS * xi).all()):
                break
    fv, dfv = f_and_df(xi, m)
    xi = xi - fv / dfv
    k3 = xi[:, None, None] * p[..., 1:]
    kabs = xi[:, None] * e
    ek = torch.sqrt(m * m + kabs * kabs)
    wfac = xi ** (2 * n - 3) * torch.prod(kabs / ek, dim=-1) * rs / (kabs * kabs / ek).sum(-1)
    return torch.cat([ek[..., None], k3], dim=-1), w0 * wfac


def two_body_decay(
    parent: Tensor, m1: Tensor | float, m2: Tensor | float, u: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Two-body decay :math:`P \to p_1 p_2`, isotropic in the parent rest frame.

    Angles in the parent rest frame reached by a pure boost from the frame of ``parent`` (axes
    kept): :math:`\cos\theta = 2u_0 - 1`, :math:`\phi = 2\pi u_1`. Weight
    :math:`\int d\Phi_2 = |\vec p^*|/(4\pi M)` per unit of u, with
    :math:`|\vec p^*| = \lambda^{1/2}(M^2, m_1^2, m_2^2)/(2M)`. ``p2 = parent - p1`` so
    four-momentum is conserved to the last bit.

    Arguments:
        parent: (B, 4) four-momentum, GeV. m1, m2: float or (B,) masses, GeV.
        u: (B, 2) uniform numbers.

    Returns:
        p1 (B, 4), p2 (B, 4), weight (B,) (zero below threshold).
    """
    big_m = mass(parent)
    m1, m2 = _t(m1, parent), _t(m2, parent)
    pst = _two_body_pstar(big_m, m1, m2)
    c = 2.0 * u[..., 0] - 1.0
    sn = torch.sqrt((1.0 - c * c).clamp_min(0.0))
    ph = TWO_PI * u[..., 1]
    e1 = torch.sqrt(pst * pst + m1 * m1)
    p1 = torch.stack([e1, pst * sn * torch.cos(ph), pst * sn * torch.sin(ph), pst * c], dim=-1)
    p1 = boost(p1, beta3(parent))
    return p1, parent - p1, pst / (4.0 * math.pi * big_m)


def two_body_decay_inverse(parent: Tensor, p1: Tensor) -> Tensor:
    """Inverse of :func:`two_body_decay`: the (B, 2) unit numbers (cosθ, φ) that give ``p1``.

    Arguments:
        parent: (B, 4), p1: (B, 4) four-momenta, GeV.
    """
    r = boost_to_rest(p1, parent)
    rabs = torch.linalg.vector_norm(r[..., 1:], dim=-1)
    c = (r[..., 3] / rabs).clamp(-1.0, 1.0)
    ph = torch.remainder(torch.atan2(r[..., 2], r[..., 1]), TWO_PI)
    return torch.stack([(c + 1.0) / 2.0, ph / TWO_PI], dim=-1)


def breit_wigner_map(
    u: Tensor,
    mass: Tensor | float,
    width: Tensor | float,
    s_min: Tensor | float,
    s_max: Tensor | float,
) -> tuple[Tensor, Tensor]:
    r"""Map u ∈ [0, 1] to an invariant mass squared s distributed as a Breit–Wigner.

    .. math:: s = M^2 + M\Gamma\tan\rho,\quad \rho = \rho_{min} + u(\rho_{max}-\rho_{min}),\quad
        \rho = \arctan\frac{s - M^2}{M\Gamma},

    .. math:: \frac{ds}{du} = (\rho_{max} - \rho_{min})\,\frac{(s-M^2)^2 + M^2\Gamma^2}{M\Gamma}.

    So :math:`\int_{s_{min}}^{s_{max}} ds\,[(s-M^2)^2+M^2\Gamma^2]^{-1}
    = (\rho_{max}-\rho_{min})/(M\Gamma)` is integrated with zero variance.

    Arguments:
        u: (...) uniform numbers. mass, width: GeV. s_min, s_max: GeV², broadcastable.

    Returns:
        s (...) GeV², jacobian ds/du (...) GeV².
    """
    m, g = _t(mass, u), _t(width, u)
    mg, m2 = m * g, m * m
    rmin = torch.atan((_t(s_min, u) - m2) / mg)
    rmax = torch.atan((_t(s_max, u) - m2) / mg)
    rho = rmin + u * (rmax - rmin)
    t = torch.tan(rho)
    s = m2 + mg * t
    return s, (rmax - rmin) * mg * (1.0 + t * t)


def breit_wigner_inverse(
    s: Tensor,
    mass: Tensor | float,
    width: Tensor | float,
    s_min: Tensor | float,
    s_max: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`breit_wigner_map`: u (...) and the same jacobian ds/du (...) GeV²."""
    m, g = _t(mass, s), _t(width, s)
    mg, m2 = m * g, m * m
    rmin = torch.atan((_t(s_min, s) - m2) / mg)
    rmax = torch.atan((_t(s_max, s) - m2) / mg)
    t = (s - m2) / mg
    return (torch.atan(t) - rmin) / (rmax - rmin), (rmax - rmin) * mg * (1.0 + t * t)


def three_body_decay(
    parent: Tensor,
    m1: Tensor | float,
    m2: Tensor | float,
    m3: Tensor | float,
    u: Tensor,
    resonance12: tuple[Tensor | float, Tensor | float] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Three-body decay :math:`P \to p_1 p_2 p_3` as :math:`P \to (12)\,p_3,\ (12) \to p_1 p_2`.

    :math:`s_{12}` is flat in :math:`[(m_1+m_2)^2, (M-m_3)^2]` (``u[:, 0]``), or Breit–Wigner
    distributed if ``resonance12 = (mass, width)``; weight

    .. math:: w = \frac{ds_{12}}{du}\,\frac{1}{2\pi}\, w_2(P\to q_{12} p_3)\, w_2(q_{12}\to p_1 p_2).

    References:
        E. Byckling, K. Kajantie, "Particle Kinematics" (Wiley, 1973), ch. V (recursive
        phase space); PDG Review "Kinematics", eq. (49.21).

    Arguments:
        parent: (B, 4). m1, m2, m3: float or (B,) GeV. u: (B, 5) uniform numbers.
        resonance12: optional (mass, width) in GeV of a resonance in the (12) channel.

    Returns:
        p1, p2, p3 (B, 4) and weight (B,).
    """
    big_m = mass(parent)
    m1, m2, m3 = (_t(v, parent) for v in (m1, m2, m3))
    s_lo, s_hi = (m1 + m2) ** 2, (big_m - m3) ** 2
    if resonance12 is None:
        s12, jac = s_lo + u[:, 0] * (s_hi - s_lo), s_hi - s_lo
    else:
        s12, jac = breit_wigner_map(u[:, 0], *resonance12, s_lo, s_hi)
    q12, p3, w_a = two_body_decay(parent, torch.sqrt(s12), m3, u[:, 1:3])
    p1, p2, w_b = two_body_decay(q12, m1, m2, u[:, 3:5])
    return p1, p2, p3, jac / TWO_PI * w_a * w_b


def sequential_phase_space(u: Tensor, parent: Tensor, masses: Tensor) -> tuple[Tensor, Tensor]:
    r"""n-body phase space by a chain of two-body decays (Raubold–Lynch / GENBOD).

    .. math:: d\Phi_n(P) = d\Phi_2(P; Q_{n-1}, p_n)\,\frac{dM_{n-1}^2}{2\pi}\,
        d\Phi_{n-1}(Q_{n-1}; p_1..p_{n-1}),

    with :math:`M_k^2` flat in :math:`[(\sum_{i\le k} m_i)^2, (M_{k+1} - m_{k+1})^2]`. The weight
    varies from point to point: an estimator of the phase-space volume independent of RAMBO.

    References:
        F. James, CERN 68-15 (1968), "Monte Carlo phase space"; Byckling–Kajantie ch. V.

    Arguments:
        u: (B, 3n - 4) uniform numbers ((n-2) masses then 2(n-1) angles).
        parent: (B, 4) total four-momentum, GeV. masses: (n,) or (B, n), GeV.

    Returns:
        momenta (B, n, 4), weight (B,).
    """
    bsz = parent.shape[0]
    m = _t(masses, parent).expand(bsz, -1)
    n = m.shape[-1]
    if u.shape[-1] != 3 * n - 4:
        msg = f"sequential_phase_space needs u of shape (B, {3 * n - 4}), got {tuple(u.shape)}"
        raise ValueError(msg)
    cum = torch.cumsum(m, dim=-1)
    weight = torch.ones(bsz, dtype=parent.dtype, device=parent.device)
    out = [None] * n
    current, m_cur = parent, mass(parent)
    for k in range(n - 1, 0, -1):  # split current -> (first k) + particle k
        if k >= 2:
            lo, hi = cum[:, k - 1] ** 2, (m_cur - m[:, k]) ** 2
            s_k = lo + u[:, k - 2] * (hi - lo)
            m_k = torch.sqrt(s_k)
            weight = weight * (hi - lo) / TWO_PI
        else:
            m_k = m[:, 0]
        ang = u[:, n - 2 + 2 * (k - 1) : n + 2 * (k - 1)]
        q, pk, w2 = two_body_decay(current, m_k, m[:, k], ang)
        weight = weight * w2
        out[k] = pk
        current, m_cur = q, m_k
    out[0] = current
    return torch.stack(out, dim=1), weight


def tau_y_map(
    u: Tensor, tau_min: Tensor | float, tau_max: Tensor | float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Momentum fractions from (log τ, y): :math:`x_{1,2} = \sqrt\tau e^{\pm y}`.

    :math:`\ln\tau` flat in :math:`[\ln\tau_{min}, \ln\tau_{max}]`, y flat in
    :math:`[\tfrac12\ln\tau, -\tfrac12\ln\tau]` (both x ≤ 1); :math:`dx_1 dx_2 = d\tau\,dy`, so

    .. math:: \frac{dx_1 dx_2}{du_0 du_1} = \tau\ln\frac{\tau_{max}}{\tau_{min}}\,(-\ln\tau).

    Arguments:
        u: (..., 2) uniform numbers. tau_min, tau_max: :math:`\hat s/s` limits.

    Returns:
        x1 (...), x2 (...), jacobian (...).
    """
    lmin, lmax = torch.log(_t(tau_min, u)), torch.log(_t(tau_max, u))
    log_tau = lmin + u[..., 0] * (lmax - lmin)
    tau = torch.exp(log_tau)
    x1, x2, jac_y = x1x2_from_tau(tau, u[..., 1])
    return x1, x2, tau * (lmax - lmin) * jac_y


def x1x2_from_tau(tau: Tensor, u_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""x1, x2 from a given τ (e.g. a Breit–Wigner-mapped :math:`\hat s/s`) and u for y.

    Returns x1, x2 and :math:`dy/du = -\ln\tau` (so :math:`dx_1dx_2 = d\tau \cdot dy/du\,du`).
    """
    log_tau = torch.log(tau)
    y = (u_y - 0.5) * (-log_tau)
    rt = torch.exp(0.5 * log_tau)
    return rt * torch.exp(y), rt * torch.exp(-y), -log_tau


def tau_y_inverse(
    x1: Tensor, x2: Tensor, tau_min: Tensor | float, tau_max: Tensor | float = 1.0
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`tau_y_map`: u (..., 2) and the jacobian dx1 dx2 / du (...)."""
    lmin, lmax = torch.log(_t(tau_min, x1)), torch.log(_t(tau_max, x1))
    log_tau = torch.log(x1) + torch.log(x2)
    y = 0.5 * (torch.log(x1) - torch.log(x2))
    u0 = (log_tau - lmin) / (lmax - lmin)
    u1 = y / (-log_tau) + 0.5
    jac = torch.exp(log_tau) * (lmax - lmin) * (-log_tau)
    return torch.stack([u0, u1], dim=-1), jac
