r"""Neutrino-ellipse coordinates: a leptonic t → b W, W → ℓν chain with one free neutrino angle.

For a fixed charged lepton ℓ, b quark (massless) and masses :math:`m_W`, :math:`m_t`, the
massless neutrinos with :math:`(\ell+\nu)^2 = m_W^2` and :math:`(\ell+\nu+b)^2 = m_t^2` form an
ellipse (Betchart, Demina, Harel). :class:`NeutrinoEllipseEncoding` gives the chain the 9
coordinates

* the lepton's and the b quark's lab :math:`(\log p_T, \eta, \operatorname{atanh}(\phi/\pi))`
  (both measured directly);
* :math:`s_W = \log M`, :math:`M = m_W^2 - m_\ell^2 = 2\,\ell\cdot\nu`;
* :math:`y_t = m_t^2 - K + K' + \sigma^2 \log(1 - e^{-K'/\sigma^2})` (GeV²,
  :math:`\sigma^2 = 100` GeV²), :math:`K = 2\,b\cdot\nu = m_t^2 - m_W^2 - m_{b\ell}^2 + m_\ell^2`,
  :math:`K' = K / (1 - K/K_\text{max})`, :math:`K_\text{max} = 2\,b\cdot\ell\,M/m_\ell^2`
  (:math:`K' = K` for a massless lepton; :math:`K' - K < 1` GeV² for a muon): equal to
  :math:`m_t^2` up to
  :math:`O(e^{-K/\sigma^2})`, so the narrow top peak is one coordinate (with
  :math:`\log K`, its other natural choice, :math:`m_t` is a function of the lepton, the b and
  that coordinate, and the flow smears it: measured χ²/ndf 236 for :math:`m_{t,\text{lep}}`), and
  still onto: :math:`K' = \sigma^2 \operatorname{softplus}((y_t - m_t^2 + K)/\sigma^2)` with
  :math:`m_t^2 - K` fixed by ℓ, b and M;
* :math:`\operatorname{atanh}(t/\pi)`, t the angle of ν on its ellipse.

Every real value is reached: with :math:`\nu = \lambda\,(1, \hat n)` the two constraints fix
:math:`\lambda = M / (2\,\ell\cdot\hat n)` and :math:`r = b\cdot\hat n / \ell\cdot\hat n = K/M`,
i.e. :math:`\hat n\cdot\vec a = c` with :math:`\vec a = \vec p_b - r\,\vec p_\ell`,
:math:`c = E_b - r E_\ell`: a circle of directions about :math:`\hat a` of polar angle
:math:`\cos\theta = c/|\vec a|`, which exists iff :math:`|\vec a|^2 - c^2 = r\,(2\,b\cdot\ell
- r\,m_\ell^2) > 0`, i.e. :math:`K < K_\text{max}`. t is the azimuth of :math:`\hat n` about
:math:`\hat a`, from the side opposite the lepton (so it is intrinsic to the ℓ–b pair, as the
ellipse's own parameter of Betchart et al., and ν(t) spans the same ellipse).

Jacobian (closed form): :math:`d^3p_\nu = \lambda^2 d\lambda\,d\Omega`, :math:`dM = 2\,\ell\cdot
\hat n\,d\lambda` at fixed :math:`\hat n`, :math:`dK = M\,dr` at fixed M, and on the sphere
:math:`d\Omega = dr\,dt\,\sin\theta/|\nabla_\Omega r|` with :math:`\nabla r = -\vec a/(\ell\cdot
\hat n)`, :math:`|\nabla_\Omega r| = |\vec a|\sin\theta/(\ell\cdot\hat n)`; so
:math:`|\partial(M, K, t)/\partial\vec p_\nu| = 2 M |\vec a| / E_\nu^2`; then
:math:`\partial y_t/\partial K = (1 - e^{-K'/\sigma^2})^{-1} (1 - K/K_\text{max})^{-2}`.

References:
    | Analytic solutions for neutrino momenta in decay of top quarks (Betchart, Demina, Harel,
    | NIM A 736 (2014) 169)
    | https://arxiv.org/abs/1305.1878
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unfoldmem.flows.lepton_anchored import LeptonAnchoredEncoding, _lab, _phi_col
from unfoldmem.physics import lorentz

__all__ = ["SIGMA2", "NeutrinoEllipseEncoding", "ellipse_coordinates", "ellipse_neutrino"]


def _axes(pl: Tensor, pb: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(â, e1, e2, |a|, c): the circle's axis, the frame about it (e1 away from the lepton)."""
    a = pb[..., 1:] - r[..., None] * pl[..., 1:]
    na = torch.linalg.vector_norm(a, dim=-1)
    e3 = a / na[..., None]
    # t = 0 is the ellipse's point farthest from the lepton (smallest E_ν); the far tip, where
    # E_ν = M / (2 ℓ·n̂) grows without bound as n̂ nears the lepton, is at t = ±π, in the tails
    # of atanh(t/π) (with t = 0 there, the flow's central mass drew ν p_T up to TeV)
    e1 = (pl[..., 1:] * e3).sum(-1, keepdim=True) * e3 - pl[..., 1:]
    e1 = e1 / torch.linalg.vector_norm(e1, dim=-1, keepdim=True)
    return e3, e1, torch.linalg.cross(e3, e1), na, pb[..., 0] - r * pl[..., 0]


SIGMA2 = 100.0
"""σ² (GeV²) of the top-mass coordinate y_t: where K = 2b·ν ≫ σ², y_t = m_t²."""


def ellipse_coordinates(pl: Tensor, pb: Tensor, pn: Tensor, m2l: Tensor | float = 0.0
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""(s_W, y_t, t) of a massless neutrino and log|det ∂(s_W, y_t, t)/∂p⃗_ν|.

    Arguments:
        pl, pb, pn: (..., 4) lepton, massless b and massless neutrino (E, px, py, pz) GeV.
        m2l: the lepton's squared mass, GeV².

    Returns:
        s_W, y_t (GeV²), t (rad, in (−π, π]) and the log-Jacobian, each (...,).
    """
    m = 2 * lorentz.dot(pl, pn)
    k = 2 * lorentz.dot(pb, pn)
    q = k * m2l / (2 * lorentz.dot(pb, pl) * m)  # K / K_max
    kp = k / (1 - q)
    _, e1, e2, na, _ = _axes(pl, pb, k / m)
    n = pn[..., 1:] / pn[..., :1]
    t = torch.atan2((n * e2).sum(-1), (n * e1).sum(-1))
    soft = torch.log(-torch.expm1(-kp / SIGMA2))
    y_t = lorentz.mass2(pl + pb) + m + kp + SIGMA2 * soft  # m_t² − K + K' + σ² log(1 − e^{−K'/σ²})
    ladj = math.log(2.0) + na.log() - 2 * pn[..., 0].log() - soft - 2 * torch.log1p(-q)
    return m.log(), y_t, t, ladj


def ellipse_neutrino(pl: Tensor, pb: Tensor, s_w: Tensor, y_t: Tensor, t: Tensor,
                     m2l: Tensor | float = 0.0) -> Tensor:
    r"""The massless neutrino (..., 4) of coordinates (s_W, y_t, t): inverse of
    :func:`ellipse_coordinates` for every real s_W, y_t and t."""
    m = torch.exp(s_w)
    bl = lorentz.dot(pb, pl)
    kp = SIGMA2 * torch.nn.functional.softplus((y_t - lorentz.mass2(pl + pb) - m) / SIGMA2)
    k = 1 / (1 / kp + m2l / (2 * bl * m))
    r = k / m
    e3, e1, e2, na, c = _axes(pl, pb, r)
    # sin θ from |a|² − c² = r (2 b·ℓ − r m_ℓ²): no cancellation near the circle's poles
    sin = torch.sqrt((r * (2 * bl - r * m2l)).clamp_min(0.0)) / na
    cos = c / na
    n = (cos[..., None] * e3 + sin[..., None] * (torch.cos(t)[..., None] * e1
                                                  + torch.sin(t)[..., None] * e2))
    # ℓ·n̂ = b·n̂ / r where n̂ is near the lepton (r > 1): no cancellation, never zero
    ln = torch.where(r > 1, (pb[..., 0] - (pb[..., 1:] * n).sum(-1)) / r,
                     pl[..., 0] - (pl[..., 1:] * n).sum(-1))
    lam = m / (2 * ln)
    return torch.cat([lam[..., None], lam[..., None] * n], -1)


class NeutrinoEllipseEncoding(LeptonAnchoredEncoding):
    r"""Lepton-anchored resonance coordinates with the neutrino on its ellipse (module docstring).

    As :class:`~unfoldmem.flows.lepton_anchored.LeptonAnchoredEncoding` (the roots, the
    hadronic side and the Σp_T = 0 handling with the chain's top C = ℓ + ν + b are the same),
    but the chain's 9 raw features are the lepton's and the b's lab
    :math:`(\log p_T, \eta, \operatorname{atanh}(\phi/\pi))`, then
    :math:`s_W, y_t, \operatorname{atanh}(t/\pi)`. Needs the b (``anchor[2] >= 0``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.anchor[2] < 0:
            msg = f"neutrino ellipse: the W → ℓν chain of {self.tree} has no t → bW parent"
            raise ValueError(msg)

    def _chain_raw(self, mom: dict[int, Tensor], v: Tensor) -> tuple[list[Tensor], Tensor]:
        """Chain coordinates and their log-Jacobian from lab momenta; v (..., k, 4) pt, η, φ."""
        lep, nu, bq = self.anchor
        cols: list[Tensor] = []
        lj = torch.zeros_like(v[..., 0, 0])
        for i in (lep, bq):
            u, lphi = _phi_col(v[..., i, 2])
            cols += [v[..., i, 0].log(), v[..., i, 1], u]
            lj = lj + lphi - v[..., i, 0].log()
        s_w, y_t, t, lnu = ellipse_coordinates(mom[lep], mom[bq], mom[nu],
                                               self.fixed_mass[lep] ** 2)
        u, lphi = _phi_col(t)
        cols += [s_w, y_t, u]
        # d³p = p_T² cosh η dp_T dη dφ
        lj = lj + lnu + lphi + 2 * v[..., nu, 0].log() + torch.cosh(v[..., nu, 1]).log()
        return cols, lj

    def _chain_decode(self, c: Tensor, mass: dict[int, Tensor], mom: dict[int, Tensor]) -> None:
        """Lab momenta of the chain from its raw coordinates c (..., 9), into ``mom``."""
        lep, nu, bq = self.anchor
        pl, pb = _lab(c[..., 0:3], mass[lep]), _lab(c[..., 3:6], mass[bq])
        pn = ellipse_neutrino(pl, pb, c[..., 6], c[..., 7], math.pi * torch.tanh(c[..., 8]),
                              mass[lep] ** 2)
        mom[lep], mom[nu], mom[bq] = pl, pn, pb
        mom[-self.w_node - 1] = pl + pn
        mom[self.chain_top] = pl + pn + pb

    def to_dict(self) -> dict[str, Any]:
        """:meth:`LeptonAnchoredEncoding.to_dict` plus ``"leptonic_chain": "ellipse"``."""
        return {**super().to_dict(), "leptonic_chain": "ellipse"}
