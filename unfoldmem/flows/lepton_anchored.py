r"""Lepton-anchored resonance coordinates: a leptonic t → b W, W → ℓν chain built from the lepton.

In :class:`~unfoldmem.flows.parametrization.ResonanceEncoding` the charged lepton's lab
momentum is a function of about eight flow coordinates (the tt̄ system, the top and W decay
angles and masses), so its posterior, which the detector pins to ~1 %, is a thin curved
manifold in flow space. :class:`LeptonAnchoredEncoding` keeps that encoding for every other part
of the tree but gives the leptonic chain *bottom-up* coordinates:

* the lepton's lab :math:`(\log p_T, \eta, \operatorname{atanh}(\phi/\pi))`;
* :math:`s_W = \log(m_W^2 - m_\ell^2)` and the neutrino's direction about the lepton's axis
  (:math:`\eta_\text{rel} = \operatorname{atanh}\cos\theta_{\ell\nu}`, azimuth about the lepton),
  with :math:`E_\nu = (m_W^2 - m_\ell^2) / (2 (E_\ell - |\vec p_\ell| \cos\theta_{\ell\nu}))`;
* :math:`s_t = \log(m_t^2 - m_W^2)` and the b quark's lab :math:`(\eta, \phi)`, with
  :math:`|\vec p_b| = (m_t^2 - m_W^2) / (2 (E_W - \vec p_W\cdot\hat n_b))` (massless b).

Both sizes are positive for every real :math:`s`, so the map is onto. The chain's Jacobian is
triangular (lepton, then ν given ℓ, then b given W): :math:`-\log p_T` per chain parton, the φ
maps, and :math:`2\log(\cosh\eta_\text{rel}/\cosh\eta_\nu)` for the neutrino
(:math:`d^3k = |k|^3\, ds\, d\Omega`, :math:`d\Omega = \operatorname{sech}^2\eta\,d\eta\,d\phi`
in either frame), as in :mod:`unfoldmem.flows.onshell`.

Where the chain's top :math:`C` is a root (free :math:`\vec p_T`), these coordinates replace the
root's. With :math:`\sum\vec p_T = 0` the single root :math:`[C, X]` keeps its rapidity
:math:`Y` as coordinate and loses its mass and decay angles: :math:`X` (the hadronic top) gets
:math:`\vec p_{T,X} = \vec P_T - \vec p_{T,C}` (:math:`\vec P_T` the fixed Gaussian of the
resonance encoding), its mass from its own node and its rapidity :math:`y_X` from :math:`Y`
(strictly increasing in :math:`y_X` at fixed :math:`C`); :math:`d^3P_X/E_X = d^2P_T\,dy_X` adds
:math:`\log\partial Y/\partial y_X`. Everything below :math:`X` is the resonance encoding's.

References:
    | Two invertible networks for the matrix element method (Heimel et al., 2023)
    | https://arxiv.org/abs/2210.00019
    | MoMEMta, a modular toolkit for the matrix element method (Brochet et al., 2019): massless
    | momenta solved from a direction and a mass
    | https://arxiv.org/abs/1805.08555
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unfoldmem.flows.decay_tree import flatten_tree
from unfoldmem.flows.encoding import U_MAX
from unfoldmem.flows.parametrization import ResonanceEncoding
from unfoldmem.physics import lorentz

__all__ = ["LeptonAnchoredEncoding", "leptonic_chain"]

_CHARGED = {11, 13, 15}
_NEUTRINOS = {12, 14, 16}


def leptonic_chain(tree: Sequence[Any], pdg: Sequence[int], free_mass: Sequence[bool] | Tensor,
                   fixed_mass: Sequence[float] | Tensor, fixed_pt: bool
                   ) -> tuple[int, int, int] | None:
    r"""The slots (lepton, neutrino, b) of the first chain that can be lepton-anchored, or None.

    A node W of a charged lepton (fixed mass) and a massless neutrino qualifies; its parent
    joins the chain when its other child is a massless parton (b of t → bW; b = −1 otherwise).
    The chain's top must be a root (free :math:`\vec p_T`) or, with ``fixed_pt``, a child of
    the single root.

    Arguments:
        tree: decay tree (:func:`~unfoldmem.flows.decay_tree.decay_tree`).
        pdg: (k,) PDG id per slot.
        free_mass, fixed_mass: (k,) as in the encodings.
        fixed_pt: the partons sum to :math:`\vec p_T = 0` (single root).
    """
    nodes, roots = flatten_tree(tree)
    ids = [abs(int(p)) for p in pdg]
    free = [bool(f) for f in torch.as_tensor(free_mass).tolist()]
    massless = [not free[i] and float(m) == 0.0
                for i, m in enumerate(torch.as_tensor(fixed_mass).tolist())]

    def parent(code: int) -> int | None:
        return next((j for j, n in enumerate(nodes) if code in n), None)

    for j, (a, b) in enumerate(nodes):
        if a < 0 or b < 0:
            continue
        lep, nu = (a, b) if ids[a] in _CHARGED else (b, a)
        if ids[lep] not in _CHARGED or ids[nu] not in _NEUTRINOS or free[lep] or not massless[nu]:
            continue
        top, bq = -j - 1, -1
        p = parent(top)
        if p is not None and not (fixed_pt and -p - 1 == roots[0]):
            sib = nodes[p][0] if nodes[p][1] == top else nodes[p][1]
            if sib >= 0 and massless[sib]:
                top, bq = -p - 1, sib
        ok = top in roots and not fixed_pt
        if fixed_pt and roots[0] < 0 and top != roots[0]:
            ok = top in nodes[-roots[0] - 1]
        if ok:
            return lep, nu, bq
    return None


def _frame(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal frame (u1, u2, u3) with u3 along p's 3-momentum, u1 ∝ ẑ × u3; (..., 3) each."""
    u3 = p[..., 1:] / torch.linalg.vector_norm(p[..., 1:], dim=-1, keepdim=True)
    u1 = torch.stack([-u3[..., 1], u3[..., 0], torch.zeros_like(u3[..., 0])], -1)
    u1 = u1 / torch.linalg.vector_norm(u1, dim=-1, keepdim=True)
    return u1, torch.linalg.cross(u3, u1), u3


def _dir(eta: Tensor, phi: Tensor) -> Tensor:
    """Unit 3-vector (..., 3) of the direction (η, φ)."""
    c = 1 / torch.cosh(eta)
    return torch.stack([c * torch.cos(phi), c * torch.sin(phi), torch.tanh(eta)], -1)


def _lab(c: Tensor, m: Tensor) -> Tensor:
    """Four-momentum (..., 4) from (log p_T, η, atanh(φ/π)) (..., 3) and mass (...,)."""
    pt, eta, phi = torch.exp(c[..., 0]), c[..., 1], math.pi * torch.tanh(c[..., 2])
    pz = pt * torch.sinh(eta)
    return torch.stack([torch.sqrt(pz * pz + pt * pt + m * m), pt * torch.cos(phi),
                        pt * torch.sin(phi), pz], -1)


def _phi_col(phi: Tensor) -> tuple[Tensor, Tensor]:
    """atanh(φ/π) and its log|d/dφ|."""
    u = (phi / math.pi).clamp(-U_MAX, U_MAX)
    return torch.atanh(u), -math.log(math.pi) - torch.log1p(-u * u)


class LeptonAnchoredEncoding(ResonanceEncoding):
    r"""Resonance coordinates with a bottom-up leptonic chain (see the module docstring).

    Arguments as :class:`~unfoldmem.flows.parametrization.ResonanceEncoding`, plus
        anchor: slots (lepton, neutrino, b) of the chain (:func:`leptonic_chain`); b = −1 for a
            W → ℓν chain without a top.

    Raw features: the roots' as in the resonance encoding (the chain's own root, if any,
    omitted); :math:`\log p_T, \eta, \operatorname{atanh}(\phi/\pi)` of the lepton,
    :math:`s_W, \eta_\text{rel}, \operatorname{atanh}(\phi_\text{rel}/\pi)` of the neutrino,
    :math:`s_t, \eta, \operatorname{atanh}(\phi/\pi)` of the b; then the other nodes'
    :math:`\log M`, the free masses and the other nodes' decay angles. Same number of features
    as the resonance encoding of the same tree.
    """

    def __init__(self, *args: Any, anchor: Sequence[int] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        lep, nu, bq = (int(a) for a in anchor)
        self.anchor = (lep, nu, bq)
        jw = next((j for j, n in enumerate(self.nodes) if sorted(n) == sorted((lep, nu))), None)
        if jw is None:
            msg = f"lepton_anchored: slots {lep}, {nu} are not one node of {self.tree}"
            raise ValueError(msg)
        self.w_node = jw
        chain, top = [jw], -jw - 1
        if bq >= 0:
            jt = next((j for j, n in enumerate(self.nodes) if sorted(n) == sorted((bq, top))),
                      None)
            if jt is None:
                msg = f"lepton_anchored: slot {bq} and the W are not one node of {self.tree}"
                raise ValueError(msg)
            chain, top = [jw, jt], -jt - 1
        self.chain_top, self.split = top, None
        dropped = set(chain)
        if self.fixed_pt:
            jr = -self.roots[0] - 1
            if self.roots[0] >= 0 or top not in self.nodes[jr] or top == self.roots[0]:
                msg = f"lepton_anchored: the chain is not a child of the root of {self.tree}"
                raise ValueError(msg)
            dropped.add(jr)
            a, b = self.nodes[jr]
            self.split = b if a == top else a  # X: p_T from the balance, y from the root's
        elif top not in self.roots:
            msg = f"lepton_anchored: the chain's top is not a root of {self.tree}"
            raise ValueError(msg)
        self.res_nodes = [j for j in range(len(self.nodes)) if j not in dropped]
        self.chain_leaves = [i for i in self.anchor if i >= 0]

    def _chain_raw(self, mom: dict[int, Tensor], v: Tensor) -> tuple[list[Tensor], Tensor]:
        """Chain coordinates and their log-Jacobian from lab momenta; v (..., k, 4) pt, η, φ."""
        lep, nu, bq = self.anchor
        pl, pn = mom[lep], mom[nu]
        uphi, lj = _phi_col(v[..., lep, 2])
        cols = [v[..., lep, 0].log(), v[..., lep, 1], uphi]
        lj = lj - v[..., lep, 0].log()
        u1, u2, u3 = _frame(pl)
        n = pn[..., 1:] / pn[..., :1]
        c = (n * u3).sum(-1).clamp(-U_MAX, U_MAX)
        eta_r = torch.atanh(c)
        u, lphi = _phi_col(torch.atan2((n * u2).sum(-1), (n * u1).sum(-1)))
        # m_W² − m_ℓ² = 2 E_ν (E_ℓ − p⃗_ℓ·n̂): exact and positive
        cols += [torch.log(2 * pn[..., 0] * (pl[..., 0] - (pl[..., 1:] * n).sum(-1))), eta_r, u]
        lj = (lj + lphi - v[..., nu, 0].log() - 2 * torch.cosh(v[..., nu, 1]).log()
              + 2 * torch.cosh(eta_r).log())
        if bq >= 0:
            w, pb = pl + pn, mom[bq]
            nb = pb[..., 1:] / pb[..., :1]
            ub, lphi = _phi_col(v[..., bq, 2])
            cols += [torch.log(2 * pb[..., 0] * (w[..., 0] - (w[..., 1:] * nb).sum(-1))),
                     v[..., bq, 1], ub]
            lj = lj + lphi - v[..., bq, 0].log()
        return cols, lj

    def _raw(self, v: Tensor) -> tuple[Tensor, Tensor]:
        v = v.to(self.mean.device, torch.float64)
        m_leaf = self._masses(v)
        p_leaf = lorentz.from_ptetaphim(torch.stack([*v[..., :3].unbind(-1), m_leaf], -1))
        other = [i for i in range(self.n_objects) if i not in self.chain_leaves]
        pt, eta = v[..., other, 0], v[..., other, 1]
        ladj = (2 * pt.log() + torch.cosh(eta).log() - p_leaf[..., other, 0].log()).sum(-1)
        mom = {i: p_leaf[..., i, :] for i in range(self.n_objects)}
        mass = {i: m_leaf[..., i] for i in range(self.n_objects)}
        for j, (a, b) in enumerate(self.nodes):
            mom[-j - 1] = mom[a] + mom[b]
            mass[-j - 1] = torch.sqrt(lorentz.mass2(mom[-j - 1]).clamp_min(1e-300))
        log_m, angles = [], []
        for j in self.res_nodes:
            log_m.append(mass[-j - 1].log())
            ladj = self._decay_angles(j, mom, mass, angles, ladj)
        chain, lc = self._chain_raw(mom, v)
        ladj = ladj + lc
        roots: list[Tensor] = []
        phi0 = None
        for r in self.roots:
            pr = mom[r]
            if self.fixed_pt:
                roots.append(lorentz.rapidity(pr))
                s2 = self.pt_sigma**2
                px = mom[self.split]
                # d³P_X/E_X = d²P_T dy_X = d²P_T dY / (∂Y/∂y_X)
                dy = 0.5 * ((px[..., 0] + px[..., 3]) / (pr[..., 0] + pr[..., 3])
                            + (px[..., 0] - px[..., 3]) / (pr[..., 0] - pr[..., 3]))
                ladj = (ladj + dy.log() - (pr[..., 1] ** 2 + pr[..., 2] ** 2) / (2 * s2)
                        - math.log(2 * math.pi * s2))
                continue
            if r == self.chain_top:
                continue
            ptr, phir = lorentz.pt(pr), lorentz.phi(pr)
            if self.relative_phi and phi0 is not None:
                phir = lorentz.delta_phi(phir, phi0)
            phi0 = phir if phi0 is None else phi0
            u, lphi = _phi_col(phir)
            roots += [lorentz.rapidity(pr), ptr.log(), u]
            ladj = ladj - 2 * ptr.log() + lphi
        mf = m_leaf[..., self.free_mass] + self.mass_offset
        empty = mf[..., :0]
        raw = torch.cat([torch.stack(roots + chain, -1), torch.stack(log_m, -1) if log_m else empty,
                         mf.log(), torch.stack(angles, -1) if angles else empty], -1)
        return raw, ladj - mf.log().sum(-1)

    def _chain_decode(self, c: Tensor, mass: dict[int, Tensor], mom: dict[int, Tensor]) -> None:
        """Lab momenta of the chain from its raw coordinates c (..., 6 or 9), into ``mom``."""
        lep, nu, bq = self.anchor
        pl = _lab(c[..., 0:3], mass[lep])
        u1, u2, u3 = _frame(pl)
        nr = _dir(c[..., 4], math.pi * torch.tanh(c[..., 5]))
        n = nr[..., :1] * u1 + nr[..., 1:2] * u2 + nr[..., 2:] * u3
        e = torch.exp(c[..., 3]) / (2 * (pl[..., 0] - (pl[..., 1:] * n).sum(-1)))
        mom[lep], mom[nu] = pl, torch.cat([e[..., None], e[..., None] * n], -1)
        mom[-self.w_node - 1] = pl + mom[nu]
        if bq >= 0:
            w = mom[-self.w_node - 1]
            nb = _dir(c[..., 7], math.pi * torch.tanh(c[..., 8]))
            e = torch.exp(c[..., 6]) / (2 * (w[..., 0] - (w[..., 1:] * nb).sum(-1)))
            mom[bq] = torch.cat([e[..., None], e[..., None] * nb], -1)
            mom[self.chain_top] = w + mom[bq]

    def inverse(self, x: Tensor, transverse: Tensor | None = None) -> Tensor:
        """Decode features (..., D) -> partons (..., k, 4) float64 (pt, eta, phi, m).

        Arguments:
            transverse: (..., 2) :math:`(P_x, P_y)` GeV of a ``fixed_pt`` encoding; None: drawn
                from N(0, pt_sigma²) with torch's global generator.
        """
        raw, transverse = self._raw_and_transverse(x, transverse)
        per = 1 if self.fixed_pt else 3
        nr = len(self.roots) - (0 if self.fixed_pt else 1)
        nc = 3 * len(self.chain_leaves)
        nn_, nf = len(self.res_nodes), len(self.free_index)
        at = per * nr
        chain = raw[..., at : at + nc]
        at += nc
        m_leaf = self.fixed_mass.expand((*raw.shape[:-1], self.n_objects)).clone()
        m_leaf[..., self.free_index] = (torch.exp(raw[..., at + nn_ : at + nn_ + nf])
                                        - self.mass_offset)
        mass = {i: m_leaf[..., i] for i in range(self.n_objects)}
        mass.update({-j - 1: torch.exp(raw[..., at + t]) for t, j in enumerate(self.res_nodes)})
        ang = raw[..., at + nn_ + nf :]
        mom: dict[int, Tensor] = {}
        self._chain_decode(chain, mass, mom)
        phi0, i = None, 0
        for r in self.roots:
            if self.fixed_pt:
                assert transverse is not None and self.split is not None
                pc, xs = mom[self.chain_top], self.split
                pxy = transverse.to(raw) - pc[..., 1:3]
                mt = torch.sqrt((pxy * pxy).sum(-1) + mass[xs] ** 2)
                # rapidity y_X with rapidity(C + X) = Y: the positive root of
                # mt x² + (a − q b) x − q mt = 0, x = e^{y_X}, q = e^{2Y}, a, b = E_C ± p_z,C
                q = torch.exp(2 * raw[..., 0])
                bb = pc[..., 0] + pc[..., 3] - q * (pc[..., 0] - pc[..., 3])
                d = torch.sqrt(bb * bb + 4 * mt * mt * q)
                ex = torch.where(bb > 0, 2 * mt * q / (bb + d), (d - bb) / (2 * mt))
                mom[xs] = torch.stack([0.5 * mt * (ex + 1 / ex), pxy[..., 0], pxy[..., 1],
                                       0.5 * mt * (ex - 1 / ex)], -1)
                mom[r] = pc + mom[xs]
                continue
            if r == self.chain_top:
                continue
            y, ptr = raw[..., 3 * i], torch.exp(raw[..., 3 * i + 1])
            phir = math.pi * torch.tanh(raw[..., 3 * i + 2])
            i += 1
            if self.relative_phi and phi0 is not None:
                phir = lorentz.delta_phi(phir + phi0, torch.zeros_like(phir))
            phi0 = phir if phi0 is None else phi0
            px, py = ptr * torch.cos(phir), ptr * torch.sin(phir)
            mt = torch.sqrt(px * px + py * py + mass[r] ** 2)
            mom[r] = torch.stack([mt * torch.cosh(y), px, py, mt * torch.sinh(y)], -1)
        self._decay_down(mom, mass, ang, [(t, self.res_nodes[t]) for t in reversed(range(nn_))])
        return self._objects(mom, m_leaf)

    def to_dict(self) -> dict[str, Any]:
        """:meth:`ResonanceEncoding.to_dict` plus ``lepton_anchored``: the chain's slots."""
        return {**super().to_dict(), "lepton_anchored": list(self.anchor)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeptonAnchoredEncoding:
        """Rebuild an encoding from :meth:`to_dict` output (``"leptonic_chain": "ellipse"``:
        a :class:`~unfoldmem.flows.neutrino_ellipse.NeutrinoEllipseEncoding`)."""
        if d.get("leptonic_chain") == "ellipse":
            # imported here: neutrino_ellipse builds on this module
            from unfoldmem.flows.neutrino_ellipse import NeutrinoEllipseEncoding

            cls = NeutrinoEllipseEncoding
        return cls(d["tree"], d["free_mass"], d["fixed_mass"], d["fixed_pt"], d["relative_phi"],
                   d["mass_offset"], torch.tensor(d["mean"], dtype=torch.float64),
                   torch.tensor(d["std"], dtype=torch.float64), d.get("pt_sigma", 1.0),
                   bool(d.get("helicity", False)), anchor=d["lepton_anchored"])
