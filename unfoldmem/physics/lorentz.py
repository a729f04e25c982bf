r"""Four-vector algebra: invariants, boosts, (pt, eta, phi, m) conversions and decay angles."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ETA_MAX",
    "mass2",
    "mass",
    "pt",
    "p3_abs",
    "eta",
    "phi",
    "rapidity",
    "dot",
    "delta_phi",
    "delta_r",
    "to_ptetaphim",
    "from_ptetaphim",
    "boost",
    "boost_to_rest",
    "boost_frame",
    "beta3",
    "cos_theta_cs",
    "cos_theta_helicity",
]

#: |eta| and |y| are clamped to this value; sinh/cosh of it stays finite in float64.
ETA_MAX = 700.0

_TINY = torch.finfo(torch.float64).tiny


def _safe(x: Tensor) -> Tensor:
    """``x`` where positive, else the smallest normal float (keeps divisions and sqrt grads finite)."""
    return torch.where(x > 0, x, torch.full_like(x, _TINY))


def dot(a: Tensor, b: Tensor) -> Tensor:
    r"""Minkowski product :math:`a^0 b^0 - \vec a\cdot\vec b` (metric +,-,-,-).

    Arguments:
        a, b: (..., 4) four-vectors (E, px, py, pz), broadcastable.

    Returns:
        (...) GeV².
    """
    return a[..., 0] * b[..., 0] - (a[..., 1:] * b[..., 1:]).sum(-1)


def mass2(p: Tensor) -> Tensor:
    """Invariant mass squared :math:`E^2 - |p|^2`; (..., 4) -> (...) GeV² (negative if spacelike)."""
    return dot(p, p)


def mass(p: Tensor) -> Tensor:
    """Invariant mass, ROOT convention: :math:`-\\sqrt{-m^2}` when spacelike; (..., 4) -> (...) GeV.

    Finite gradient also at :math:`m = 0` (the derivative there is taken as 0).
    """
    m2 = mass2(p)
    root = torch.sqrt(_safe(m2.abs()))
    return torch.where(m2 == 0, torch.zeros_like(m2), torch.sign(m2) * root)


def pt(p: Tensor) -> Tensor:
    """Transverse momentum :math:`\\sqrt{p_x^2+p_y^2}`; (..., 4) -> (...) GeV."""
    r2 = p[..., 1] ** 2 + p[..., 2] ** 2
    return torch.sqrt(_safe(r2)) * (r2 > 0)


def p3_abs(p: Tensor) -> Tensor:
    """Magnitude of the three-momentum :math:`|\\vec p|`; (..., 4) -> (...) GeV."""
    r2 = (p[..., 1:] ** 2).sum(-1)
    return torch.sqrt(_safe(r2)) * (r2 > 0)


def _asinh(x: Tensor) -> Tensor:
    """asinh through log1p, exact to rounding: exported graphs need it (onnxruntime has no
    float64 Asinh kernel). Large arguments take asinh(a) = log(2a) to avoid overflowing a²."""
    a = x.abs()
    small = a.clamp(max=1e150)
    big = a.clamp(min=1e150)
    out = torch.where(a > 1e150, torch.log(2 * big),
                      torch.log1p(small + small * small / (1 + torch.sqrt(1 + small * small))))
    return torch.where(x < 0, -out, out)


def eta(p: Tensor) -> Tensor:
    r"""Pseudorapidity :math:`\operatorname{asinh}(p_z/p_T)`, clamped to ±:data:`ETA_MAX`.

    At :math:`p_T = 0` it is :math:`\pm` ETA_MAX (0 for the null vector), never NaN.
    (..., 4) -> (...).
    """
    out = _asinh(p[..., 3] / _safe(pt(p)))
    out = torch.where(p[..., 3] == 0, torch.zeros_like(out), out)
    return out.clamp(-ETA_MAX, ETA_MAX)


def phi(p: Tensor) -> Tensor:
    """Azimuth :math:`\\operatorname{atan2}(p_y, p_x)` in (-π, π]; 0 at :math:`p_T = 0`; (..., 4) -> (...)."""
    return torch.atan2(p[..., 2], p[..., 1])


def rapidity(p: Tensor) -> Tensor:
    r"""Rapidity :math:`\tfrac12\ln\frac{E+p_z}{E-p_z}`, clamped to ±:data:`ETA_MAX`.

    Computed as :math:`\operatorname{sign}(p_z)\ln\big((E+|p_z|)/m_T\big)` with
    :math:`m_T^2 = m^2 + p_T^2`, which avoids the cancellation in :math:`E-|p_z|` at large |y|.
    (..., 4) -> (...).
    """
    mt2 = mass2(p) + p[..., 1] ** 2 + p[..., 2] ** 2
    num = p[..., 0] + p[..., 3].abs()
    y = 0.5 * (torch.log(_safe(num * num)) - torch.log(_safe(mt2)))
    y = torch.where(p[..., 3] == 0, torch.zeros_like(y), torch.sign(p[..., 3]) * y)
    return y.clamp(-ETA_MAX, ETA_MAX)


def delta_phi(phi1: Tensor, phi2: Tensor) -> Tensor:
    """Azimuthal difference wrapped to [-π, π); broadcastable tensors -> same shape."""
    return torch.remainder(phi1 - phi2 + math.pi, 2 * math.pi) - math.pi


def delta_r(a: Tensor, b: Tensor) -> Tensor:
    r""":math:`\Delta R = \sqrt{\Delta\eta^2 + \Delta\phi^2}` between four-vectors; (..., 4) -> (...)."""
    return torch.hypot(eta(a) - eta(b), delta_phi(phi(a), phi(b)))


def to_ptetaphim(p: Tensor) -> Tensor:
    """(E, px, py, pz) -> (pt, eta, phi, m); (..., 4) -> (..., 4), GeV and radians."""
    return torch.stack([pt(p), eta(p), phi(p), mass(p)], dim=-1)


def from_ptetaphim(v: Tensor) -> Tensor:
    r"""(pt, eta, phi, m) -> (E, px, py, pz), with :math:`E = \sqrt{(p_T\cosh\eta)^2 + m^2}`.

    A negative m is read as spacelike (:math:`E^2 = |p|^2 - m^2`), the inverse of :func:`mass`.
    (..., 4) -> (..., 4) GeV.
    """
    pt_, eta_, phi_, m = v.unbind(-1)
    eta_ = eta_.clamp(-ETA_MAX, ETA_MAX)
    pabs = pt_ * torch.cosh(eta_)
    e2 = pabs * pabs + torch.sign(m) * m * m
    energy = torch.sqrt(_safe(e2)) * (e2 > 0)
    return torch.stack(
        [energy, pt_ * torch.cos(phi_), pt_ * torch.sin(phi_), pt_ * torch.sinh(eta_)], dim=-1
    )


def beta3(p: Tensor) -> Tensor:
    """Velocity :math:`\\vec\\beta = \\vec p / E` of a four-vector; (..., 4) -> (..., 3)."""
    return p[..., 1:] / p[..., :1]


def boost(p: Tensor, b: Tensor) -> Tensor:
    r"""Active Lorentz boost of ``p`` by velocity ``b`` (as ROOT's ``TLorentzVector::Boost``).

    A particle at rest ends up moving with velocity ``b``. Uses
    :math:`(\gamma-1)/\beta^2 = \gamma^2/(\gamma+1)`, finite at :math:`\beta = 0`.

    Arguments:
        p: (..., 4) four-vectors (E, px, py, pz), GeV.
        b: (..., 3) velocities, |b| < 1, broadcastable against ``p[..., 1:]``.

    Returns:
        (..., 4) boosted four-vectors.
    """
    b2 = (b * b).sum(-1, keepdim=True)
    gamma = 1.0 / torch.sqrt(1.0 - b2)
    bp = (b * p[..., 1:]).sum(-1, keepdim=True)
    e = p[..., :1]
    g2 = gamma * gamma / (gamma + 1.0)
    p3 = p[..., 1:] + (g2 * bp + gamma * e) * b
    return torch.cat([gamma * (e + bp), p3], dim=-1)


def boost_to_rest(p: Tensor, frame: Tensor) -> Tensor:
    """Boost ``p`` into the rest frame of the four-vector ``frame`` (a pure boost, lab axes kept).

    Arguments:
        p: (..., 4) four-vectors; frame: (..., 4) timelike four-vectors, broadcastable.

    Returns:
        (..., 4) ``p`` as seen in the rest frame of ``frame``.
    """
    return boost(p, -beta3(frame))


def boost_frame(q: Tensor, frame: Tensor, frame_mass: Tensor, to_rest: bool = False) -> Tensor:
    r"""Boost ``q`` between the lab and the rest frame of ``frame`` (a pure boost, lab axes kept).

    The same boost as :func:`boost` / :func:`boost_to_rest`, but written with
    :math:`\gamma = E/m` and :math:`\gamma\vec\beta = \vec p/m` of the frame and its mass given,
    so it stays exact at large boosts, where the velocity form loses precision in
    :math:`1 - \beta^2`; a decoder that builds the frame from its mass knows that mass exactly.

    Arguments:
        q: (..., 4) four-vectors (E, px, py, pz), GeV.
        frame: (..., 4) timelike four-vectors of the frame, GeV.
        frame_mass: (...) the frame's mass, GeV.
        to_rest: True: lab → rest frame of ``frame``; False: rest frame → lab.

    Returns:
        (..., 4) the boosted four-vectors.
    """
    sign = -1.0 if to_rest else 1.0
    e, v = frame[..., :1], frame[..., 1:] * sign
    mm = frame_mass[..., None]
    pq = (v * q[..., 1:]).sum(-1, keepdim=True)
    q0 = (e * q[..., :1] + pq) / mm
    q3 = q[..., 1:] + v * (q[..., :1] + pq / (e + mm)) / mm
    return torch.cat([q0, q3], -1)


def cos_theta_cs(lminus: Tensor, lplus: Tensor) -> Tensor:
    r"""Collins–Soper :math:`\cos\theta^*` of the negative lepton in a dilepton system.

    .. math:: \cos\theta^* = \operatorname{sign}(Q_z)\,
        \frac{2\,(P_1^+P_2^- - P_1^-P_2^+)}{Q\sqrt{Q^2 + Q_T^2}},\quad
        P^\pm = (E \pm p_z)/\sqrt2,

    with :math:`P_1` the negative and :math:`P_2` the positive lepton, :math:`Q = P_1 + P_2`.
    For :math:`Q_z = 0` the sign is taken as +1.

    References:
        J. C. Collins and D. E. Soper, Phys. Rev. D 16 (1977) 2219.

    Arguments:
        lminus, lplus: (..., 4) four-vectors of the negative / positive lepton, GeV.

    Returns:
        (...) cosine in [-1, 1].
    """
    q = lminus + lplus
    q2 = mass2(q)
    qt2 = q[..., 1] ** 2 + q[..., 2] ** 2
    p1p, p1m = lminus[..., 0] + lminus[..., 3], lminus[..., 0] - lminus[..., 3]
    p2p, p2m = lplus[..., 0] + lplus[..., 3], lplus[..., 0] - lplus[..., 3]
    # The 1/sqrt(2)^2 of P^± cancels the factor 2 in the numerator.
    num = p1p * p2m - p1m * p2p
    sign = torch.where(q[..., 3] < 0, -1.0, 1.0).to(num)
    return sign * num / torch.sqrt(_safe(q2) * _safe(q2 + qt2))


def cos_theta_helicity(daughter: Tensor, parent: Tensor, ref: Tensor | None = None) -> Tensor:
    r"""Helicity angle: angle of ``daughter`` in the ``parent`` rest frame w.r.t. the parent's
    flight direction in the rest frame of ``ref`` (the lab if ``ref`` is None).

    Computed from invariants, which equals boosting first into ``ref``'s rest frame and then
    into the parent's (the axis is minus the direction of ``ref`` seen from the parent):

    .. math:: \cos\theta = -\frac{(d\cdot P)(r\cdot P)/M^2 - d\cdot r}
        {\sqrt{(d\cdot P)^2/M^2 - d^2}\,\sqrt{(r\cdot P)^2/M^2 - r^2}}.

    Arguments:
        daughter, parent: (..., 4) four-vectors, GeV.
        ref: (..., 4) four-vector of the reference system (e.g. the t tbar system), or None.

    Returns:
        (...) cosine in [-1, 1].
    """
    if ref is None:
        ref = torch.zeros_like(parent)
        ref[..., 0] = 1.0
    m2 = mass2(parent)
    dp, rp = dot(daughter, parent), dot(ref, parent)
    num = dp * rp / m2 - dot(daughter, ref)
    dd = dp * dp / m2 - mass2(daughter)
    rr = rp * rp / m2 - mass2(ref)
    return (-num / torch.sqrt(_safe(dd) * _safe(rr))).clamp(-1.0, 1.0)
