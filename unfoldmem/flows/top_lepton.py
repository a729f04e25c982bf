r"""Resonance coordinates whose leptonic top decay is described by the lepton's lab momentum.

In :class:`~unfoldmem.flows.parametrization.ResonanceEncoding` the charged lepton of
t → bW, W → ℓν is reached through two pairs of decay angles, so its lab momentum, which the
detector measures to ~1 %, is a thin curved surface in the flow's coordinates: small networks
leave its posterior nearly as wide as the prior (tt̄ closure, docs/unfolding.md).
:class:`TopLeptonEncoding` keeps every coordinate of the resonance encoding (the tops' momenta,
all masses, the other decays) and replaces the four decay angles of that top and its W by

* the lepton's lab :math:`(\log p_T, \eta, \operatorname{atanh}(\phi/\pi))`;
* the azimuth β of the b about the lepton's direction in the top rest frame, measured from the
  top's flight direction (:math:`\operatorname{atanh}(\beta/\pi)`).

Given the top (four-momentum p_t, mass m_t) and m_W, the lepton's energy in the top frame,
:math:`E^*_\ell = E_\ell\,(E_t - \vec p_t\cdot\hat n_\ell)/m_t`, fixes the angle between b and ℓ
there (massless b, ℓ, ν: :math:`E^*_b = (m_t^2 - m_W^2)/2m_t`), β fixes the rest and
ν = t − ℓ − b. The map is a bijection onto the physical region
:math:`m_W^2/2m_t < E^*_\ell < m_t/2`; a draw outside it (the lepton cannot come from that top)
decodes to NaN partons and :meth:`~unfoldmem.flows.cinn.CINN.sample_partons` draws again, so
the samples follow the flow's density restricted to the physical region (``redraws``). The flow
is trained on physical events only; its density over all of feature space stays normalised, so
restricted to the physical region it integrates to the acceptance (< 1): it is an unfolding
proposal, not a normalised MEM channel (:class:`~unfoldmem.mem.cinn_channel.CINNChannel`
refuses it).

Log-Jacobian of the two nodes (instead of the resonance encoding's :math:`|p^*| M` and decay
angle terms), from :math:`\prod d^3p/E` of ℓ, ν, b at fixed p_t:

.. math:: -\log\Big[E^*_\ell\, m_W^2\, m_t\, \frac{\pi^2(1-u_\phi^2)(1-u_\beta^2)}
    {\cosh^2\eta_\ell\,(E_t - \vec p_t\cdot\hat n_\ell)^2/m_t^2}\Big]

(checked against autograd in ``tests/flows/test_top_lepton.py``).

References:
    | Two invertible networks for the matrix element method (Heimel et al., 2023)
    | https://arxiv.org/abs/2210.00019
    | Invertible networks or partons to detector and back again (Bellagente et al., 2020)
    | https://arxiv.org/abs/2006.06685
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from unfoldmem.flows.lepton_anchored import _dir, _phi_col
from unfoldmem.flows.parametrization import ResonanceEncoding
from unfoldmem.physics import lorentz

__all__ = ["TopLeptonEncoding"]


def _frame_about(n: Tensor, zref: Tensor) -> tuple[Tensor, Tensor]:
    """(u1, u2) ⟂ n (..., 3): u1 along the part of ``zref`` orthogonal to n, u2 = n × u1."""
    u1 = zref - (zref * n).sum(-1, keepdim=True) * n
    u1 = u1 / torch.linalg.vector_norm(u1, dim=-1, keepdim=True)
    return u1, torch.linalg.cross(n, u1)


def _unit(p: Tensor) -> Tensor:
    return p[..., 1:] / torch.linalg.vector_norm(p[..., 1:], dim=-1, keepdim=True)


class TopLeptonEncoding(ResonanceEncoding):
    r"""Resonance coordinates with the leptonic top's decay in lab-lepton coordinates (module
    docstring).

    Arguments as :class:`~unfoldmem.flows.parametrization.ResonanceEncoding`, plus
        anchor: slots (lepton, neutrino, b) of a t → bW, W → ℓν chain
            (:func:`~unfoldmem.flows.lepton_anchored.leptonic_chain`), all three massless.

    Raw features: those of the resonance encoding of the tree, with the top node's two decay
    angle columns holding the lepton's η and atanh(φ/π) and the W node's its log p_T and
    atanh(β/π). Same number of features.
    """

    redraws: ClassVar[bool] = True

    def __init__(self, *args: Any, anchor: Sequence[int] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lep, nu, bq = (int(a) for a in anchor)
        self.anchor = (lep, nu, bq)
        jw = next((j for j, n in enumerate(self.nodes) if sorted(n) == sorted((lep, nu))), None)
        jt = None if jw is None else next(
            (j for j, n in enumerate(self.nodes) if sorted(n) == sorted((bq, -jw - 1))), None)
        if jw is None or jt is None:
            msg = f"top_lepton: slots {lep}, {nu}, {bq} are not a t → b(W → ℓν) chain of {self.tree}"
            raise ValueError(msg)
        heavy = [i for i in self.anchor if bool(self.free_mass[i]) or float(self.fixed_mass[i])]
        if heavy:
            msg = f"top_lepton: the chain's slots {heavy} must be massless (fixed mass 0)"
            raise ValueError(msg)
        self.w_node, self.top_node = jw, jt
        self._clamp = False  # set by inverse(clamp=True) for its one decoding

    def _decay_angles(self, j: int, mom: dict[int, Tensor], mass: dict[int, Tensor],
                      angles: list[Tensor], ladj: Tensor) -> Tensor:
        if j == self.w_node:  # filled at the top node, which needs the top
            angles += [mass[-j - 1], mass[-j - 1]]
            return ladj
        if j != self.top_node:
            return super()._decay_angles(j, mom, mass, angles, ladj)
        lep, _, bq = self.anchor
        pl, pb, t = mom[lep], mom[bq], mom[-j - 1]
        mt, mw = mass[-j - 1], mass[-self.w_node - 1]
        pt_l, eta = lorentz.pt(pl), lorentz.eta(pl)
        uphi, lphi = _phi_col(lorentz.phi(pl))
        dd = (t[..., 0] - (t[..., 1:] * _unit(pl)).sum(-1)) / mt
        ls = lorentz.boost_frame(pl, t, mt, to_rest=True)[..., 1:]
        bs = lorentz.boost_frame(pb, t, mt, to_rest=True)[..., 1:]
        u1, u2 = _frame_about(ls / torch.linalg.vector_norm(ls, dim=-1, keepdim=True), _unit(t))
        ubeta, lbeta = _phi_col(torch.atan2((bs * u2).sum(-1), (bs * u1).sum(-1)))
        angles[2 * self.w_node], angles[2 * self.w_node + 1] = pt_l.log(), ubeta
        angles += [eta, uphi]
        es = pl[..., 0] * dd
        return (ladj - es.log() - 2 * mw.log() - mt.log() + 2 * torch.cosh(eta).log()
                + 2 * dd.log() + lphi + lbeta)

    def inverse(self, x: Tensor, transverse: Tensor | None = None,
                clamp: bool = False) -> Tensor:
        """Decode features (..., D) -> partons (..., k, 4) float64 (pt, eta, phi, m); NaN
        chain partons outside the physical region.

        Arguments:
            transverse: as in :meth:`ResonanceEncoding.inverse`.
            clamp: instead of NaN, move such a draw onto the region's edge (the lepton's energy
                scaled so that its top-frame energy lies just inside, m_W capped below m_t):
                the last resort of :meth:`~unfoldmem.flows.cinn.CINN.sample_partons`.
        """
        self._clamp = clamp
        try:
            return super().inverse(x, transverse)
        finally:
            self._clamp = False

    def _decay_down(self, mom: dict[int, Tensor], mass: dict[int, Tensor], ang: Tensor,
                    order: list[tuple[int, int]]) -> None:
        cols = {j: t for t, j in order}
        for t, j in order:
            if j == self.w_node:
                continue
            if j == self.top_node:
                tw = cols[self.w_node]
                self._chain_down(mom, mass, ang[..., 2 * t : 2 * t + 2], ang[..., 2 * tw : 2 * tw + 2])
            else:
                super()._decay_down(mom, mass, ang, [(t, j)])

    def _chain_down(self, mom: dict[int, Tensor], mass: dict[int, Tensor], at: Tensor,
                    aw: Tensor) -> None:
        """Lab ℓ, ν, b (and the W) from the top and the chain's raw columns; NaN outside the
        physical region."""
        lep, nu, bq = self.anchor
        t, mt, mw = mom[-self.top_node - 1], mass[-self.top_node - 1], mass[-self.w_node - 1]
        eta = at[..., 0]
        n = _dir(eta, math.pi * torch.tanh(at[..., 1]))
        dd = (t[..., 0] - (t[..., 1:] * n).sum(-1)) / mt
        el = torch.exp(aw[..., 0]) * torch.cosh(eta)
        es = el * dd
        bad = (es <= mw * mw / (2 * mt)) | (es >= mt / 2) | ~(mw < mt)
        if self._clamp:
            mw = torch.where(bad, torch.minimum(mw, mt * (1 - 1e-6)), mw)
            edge = torch.minimum(torch.maximum(es, mw * mw / (2 * mt) * (1 + 1e-6)),
                                 mt / 2 * (1 - 1e-6))
            el, es = torch.where(bad, edge / dd, el), torch.where(bad, edge, es)
            bad = torch.zeros_like(bad)
        pl = torch.cat([el[..., None], el[..., None] * n], -1)
        ls = lorentz.boost_frame(pl, t, mt, to_rest=True)[..., 1:]
        ns = ls / torch.linalg.vector_norm(ls, dim=-1, keepdim=True)
        u1, u2 = _frame_about(ns, _unit(t))
        eb = (mt * mt - mw * mw) / (2 * mt)
        cos = (1 - (2 * mt * (es + eb) - mt * mt) / (2 * es * eb)).clamp(-1, 1)
        sin = torch.sqrt((1 - cos * cos).clamp_min(0.0))
        beta = math.pi * torch.tanh(aw[..., 1])
        d = eb[..., None] * (sin[..., None] * (torch.cos(beta)[..., None] * u1
                                               + torch.sin(beta)[..., None] * u2)
                             + cos[..., None] * ns)
        pb = lorentz.boost_frame(torch.cat([eb[..., None], d], -1), t, mt)
        nan = torch.full_like(pl, math.nan)
        mom[lep] = torch.where(bad[..., None], nan, pl)
        mom[bq] = torch.where(bad[..., None], nan, pb)
        mom[nu] = t - mom[lep] - mom[bq]
        mom[-self.w_node - 1] = mom[lep] + mom[nu]

    def to_dict(self) -> dict[str, Any]:
        """:meth:`ResonanceEncoding.to_dict` plus ``top_lepton``: the chain's slots."""
        return {**super().to_dict(), "top_lepton": list(self.anchor)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TopLeptonEncoding:
        """Rebuild an encoding from :meth:`to_dict` output."""
        return cls(d["tree"], d["free_mass"], d["fixed_mass"], d["fixed_pt"], d["relative_phi"],
                   d["mass_offset"], torch.tensor(d["mean"], dtype=torch.float64),
                   torch.tensor(d["std"], dtype=torch.float64), d.get("pt_sigma", 1.0),
                   bool(d.get("helicity", False)), anchor=d["top_lepton"])
