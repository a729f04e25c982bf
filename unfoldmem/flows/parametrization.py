r"""Resonance coordinates of the partons: masses of intermediate resonances and decay angles.

A cINN that learns every parton's :math:`(p_T, \eta, \phi)` has to build a narrow resonance mass
(:math:`m_{\ell\ell}`, :math:`m_W`, :math:`m_t`) out of several learned coordinates, and its
posterior of that mass comes out far wider than the truth. :class:`ResonanceEncoding` instead
describes the partons by a *decay tree* of two-body splittings (Bellagente et al., 2020; Heimel
et al., 2023): every root (a resonance or a parton that is not a decay product) by
:math:`(p_T, y, \phi)`, every node by its mass :math:`M` and by the direction
:math:`(\cos\theta^*, \phi^*)` of its first daughter in its rest frame (reached from the lab by
a pure boost, lab axes kept), plus the masses of free-mass partons. It is a bijection with the
exact log-Jacobian from the two-body factorisation of phase space,

.. math::
    \prod_i \frac{d^3p_i}{E_i} = \prod_{\text{nodes}} |p^*|\, dM\, d\Omega^*
    \prod_{\text{roots}} p_T\, dp_T\, dy\, d\phi \prod_{\text{free } m_i} dm_i ,
    \qquad \frac{d^3p}{E} = \frac{p_T^2\cosh\eta}{E}\, dp_T\, d\eta\, d\phi ,

so a flow density in these coordinates is an exact, normalised density in the physical
variables :math:`(p_T, \eta, \phi[, m])` of the partons, as for
:class:`~unfoldmem.flows.encoding.ObjectEncoding`.

Events with :math:`\sum \vec p_T = 0` exactly (leading order :math:`2 \to n`) fill only a
sub-manifold, on which a flow over all coordinates cannot be trained. Then all roots are joined
into one whose transverse momentum :math:`\vec P_T` is not a flow coordinate but follows a fixed
isotropic Gaussian of width ``pt_sigma`` (the encoding's log-Jacobian includes its log-density,
and :meth:`ResonanceEncoding.inverse` draws it), so that the density stays exact and normalised
in all the physical variables, as the MEM's importance sampling needs; its recoil kernel
(:mod:`unfoldmem.mem.integrand`) has the same form.

References:
    | Invertible networks or partons to detector and back again (Bellagente et al., 2020)
    | https://arxiv.org/abs/2006.06685
    | Two invertible networks for the matrix element method (Heimel et al., 2023)
    | https://arxiv.org/abs/2210.00019

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> pt = 20 + 30 * torch.rand(64, generator=g, dtype=torch.float64)
    >>> eta = torch.randn(64, 2, generator=g, dtype=torch.float64)
    >>> phi = torch.rand(64, generator=g, dtype=torch.float64) * 6 - 3
    >>> v = torch.zeros(64, 2, 4, dtype=torch.float64)
    >>> v[..., 0], v[..., 1] = pt[:, None], eta
    >>> v[:, 0, 2], v[:, 1, 2] = phi, phi - math.pi * torch.sign(phi)
    >>> enc = ResonanceEncoding.fit(v, tree=[[0, 1]])
    >>> enc.tree, enc.fixed_pt, enc.n_features  # a back-to-back pair: y, m, cos θ*, φ*
    ([[0, 1]], True, 4)
    >>> torch.allclose(enc.inverse(enc(v)[0], transverse=torch.zeros(64, 2)), v, atol=1e-9)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import torch
from torch import Tensor, nn

from unfoldmem.flows.decay_tree import (
    DecayTreeEncoding,
    decay_tree,
    infer_tree,
    narrow_tree,
)
from unfoldmem.flows.encoding import (
    U_MAX,
    ObjectEncoding,
    register_standardisation,
)
from unfoldmem.flows.onshell import OnShellEncoding
from unfoldmem.physics import lorentz

__all__ = [
    "ResonanceEncoding",
    "decay_tree",
    "infer_tree",
    "narrow_tree",
    "parton_encoding_from_dict",
]



def _pstar(m: Tensor, ma: Tensor, mb: Tensor) -> Tensor:
    """Daughter momentum in the rest frame of a mass-m parent, (...) GeV (0 below threshold)."""
    lam = (m * m - (ma + mb) ** 2) * (m * m - (ma - mb) ** 2)
    return torch.sqrt(lam.clamp_min(0.0)) / (2 * m)


class ResonanceEncoding(DecayTreeEncoding):
    r"""Bijection partons (pt, eta, phi, m) ↔ standardised resonance coordinates.

    Arguments:
        tree: the roots (:func:`decay_tree`), nested lists of slot indices.
        free_mass, fixed_mass: (k,) as in :class:`~unfoldmem.flows.encoding.ObjectEncoding`.
        fixed_pt: the roots sum to :math:`\vec p_T = 0` (then exactly one root is allowed):
            the root's :math:`\vec P_T` is not a feature but ~ N(0, pt_sigma²) per component.
        relative_phi: φ of roots 1.. relative to root 0.
        mass_offset: :math:`m_0` in :math:`\log(m + m_0)` of free-mass partons, GeV.
        mean, std: standardisation statistics of the raw features.
        helicity: the decay angles of a node that is not a root are measured about its lab
            flight direction z' (x' in the plane of z' and the beam, y' = beam × z'), not about
            the lab axes. A rotation: same Jacobian, but the lab energy of a daughter is then
            linear in its cos θ* alone, E = γ(E* + β p* cos θ*), so a well-measured decay
            product pins one coordinate instead of a curve in (cos θ*, φ*) that moves with the
            parent's direction. (Roots keep the lab axes: the pair of a Σp_T = 0 event flies
            along the beam.)

    Raw features: per root :math:`\log p_T, y, \operatorname{atanh}(\phi/\pi)` (only y for a
    fixed-pt root); per node :math:`\log M`; per free-mass parton :math:`\log(m + m_0)`; per
    node :math:`\operatorname{atanh}\cos\theta^*, \operatorname{atanh}(\phi^*/\pi)`.
    """

    def __init__(
        self,
        tree: Sequence[Any],
        free_mass: Sequence[bool] | Tensor,
        fixed_mass: Sequence[float] | Tensor | None = None,
        fixed_pt: bool = False,
        relative_phi: bool = True,
        mass_offset: float = 1.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        pt_sigma: float = 1.0,
        helicity: bool = False,
    ) -> None:
        super().__init__()
        free, _ = self._set_tree(tree, free_mass, fixed_mass)
        if fixed_pt and len(self.roots) != 1:
            msg = "fixed_pt needs a decay tree with a single root"
            raise ValueError(msg)
        self.fixed_pt, self.relative_phi = bool(fixed_pt), bool(relative_phi)
        self.mass_offset, self.pt_sigma = float(mass_offset), float(pt_sigma)
        self.helicity = bool(helicity)
        self.hel_node = [helicity and -j - 1 not in self.roots for j in range(len(self.nodes))]
        d = (len(self.roots) * (1 if fixed_pt else 3) + 3 * len(self.nodes) + int(free.sum()))
        register_standardisation(self, d, mean, std)

    @classmethod
    def fit(
        cls,
        objects: Tensor,
        weight: Tensor | None = None,
        tree: Sequence[Any] | None = None,
        relative_phi: bool = True,
        mass_offset: float = 1.0,
        mass_tolerance: float = 1e-3,
        pt_tolerance: float = 1e-9,
        pt_sigma: float = 1.0,
        helicity: bool = False,
        **extra: Any,
    ) -> Self:
        """Build the encoding from training partons (n, k, 4) (pt GeV, eta, phi, m GeV).

        Arguments:
            weight: (n,) event weights.
            tree: roots (:func:`decay_tree`); None: :func:`infer_tree` from the kinematics.
            mass_tolerance: a parton whose mass spread is below this (GeV) has a fixed mass.
            pt_tolerance: if :math:`|\\sum\\vec p_T| / \\sum p_T` stays below this in every
                event, the roots are joined into one whose :math:`\vec P_T` is Gaussian.
            pt_sigma: width of that Gaussian per component, GeV (1 GeV: the smallest recoil
                kernel of the MEM, see :meth:`unfoldmem.mem.likelihood.MEMLikelihood.kernel_sigma`).
            helicity: decay angles of non-root nodes about the parent's lab flight direction
                (see the class docstring).
            extra: further arguments of a subclass's constructor (the ``anchor`` of the
                leptonic-chain encodings).
        """
        objects = objects.double()
        tree, free, fixed, fixed_pt = cls.fit_layout(objects, weight, tree, mass_tolerance,
                                                     pt_tolerance)
        enc = cls(tree, free, fixed, fixed_pt, relative_phi, mass_offset, pt_sigma=pt_sigma,
                  helicity=helicity, **extra)
        enc._fit_standardisation(objects, weight)
        return enc

    @staticmethod
    def _helicity_axes(big: Tensor) -> Tensor:
        """(..., 3, 3) rows x', y', z': z' the lab flight direction of ``big`` (..., 4),
        y' = z_beam × z' normalised, x' = y' × z'."""
        z = big[..., 1:] / torch.linalg.vector_norm(big[..., 1:], dim=-1, keepdim=True)
        pt = torch.sqrt(z[..., 0] ** 2 + z[..., 1] ** 2)
        cy, sy = z[..., 0] / pt, z[..., 1] / pt  # y' = (-sin φ, cos φ, 0)
        # x' = y' × z' written out (no linalg.cross: the decoder is exported to ONNX)
        x = torch.stack([cy * z[..., 2], sy * z[..., 2], -pt], -1)
        return torch.stack([x, torch.stack([-sy, cy, torch.zeros_like(cy)], -1), z], -2)

    def _masses(self, v: Tensor) -> Tensor:
        return torch.where(self.free_mass, v[..., 3], self.fixed_mass)

    def _raw(self, v: Tensor) -> tuple[Tensor, Tensor]:
        v = v.to(self.mean.device, torch.float64)
        m_leaf = self._masses(v)
        p_leaf = lorentz.from_ptetaphim(torch.stack([*v[..., :3].unbind(-1), m_leaf], -1))
        pt, eta = v[..., 0], v[..., 1]
        energy = p_leaf[..., 0]
        # log|d(coordinates)/dv|: leaves d³p/E, minus |p*| per node and pt per free root
        ladj = (2 * pt.log() + torch.cosh(eta).log() - energy.log()).sum(-1)
        mom = {i: p_leaf[..., i, :] for i in range(self.n_objects)}
        mass = {i: m_leaf[..., i] for i in range(self.n_objects)}
        log_m, angles = [], []
        for j, (a, b) in enumerate(self.nodes):
            big = mom[a] + mom[b]
            mj = torch.sqrt(lorentz.mass2(big).clamp_min(1e-300))
            mom[-j - 1], mass[-j - 1] = big, mj
            log_m.append(mj.log())
            ladj = self._decay_angles(j, mom, mass, angles, ladj)
        roots = []
        phi0 = None
        for r in self.roots:
            pr = mom[r]
            roots.append(lorentz.rapidity(pr))
            if self.fixed_pt:
                # log|d(Px,Py)/d(pt,phi)| = log pt cancels the pt of d³P/E; plus the Gaussian
                s2 = self.pt_sigma**2
                ladj = (ladj - (pr[..., 1] ** 2 + pr[..., 2] ** 2) / (2 * s2)
                        - math.log(2 * math.pi * s2))
                continue
            ptr, phir = lorentz.pt(pr), lorentz.phi(pr)
            if self.relative_phi and phi0 is not None:
                phir = lorentz.delta_phi(phir, phi0)
            phi0 = phir if phi0 is None else phi0
            u = (phir / math.pi).clamp(-U_MAX, U_MAX)
            roots += [ptr.log(), torch.atanh(u)]
            ladj = ladj - 2 * ptr.log() - math.log(math.pi) - torch.log1p(-u * u)
        mf = m_leaf[..., self.free_mass] + self.mass_offset
        cols = [*roots, *log_m]
        raw = torch.cat([torch.stack(cols, -1) if cols else mf[..., :0], mf.log(),
                         torch.stack(angles, -1) if angles else mf[..., :0]], -1)
        return raw, ladj - mf.log().sum(-1)

    def inverse(self, x: Tensor, transverse: Tensor | None = None) -> Tensor:
        """Decode features (..., D) -> partons (..., k, 4) float64 (pt, eta, phi, m).

        Arguments:
            transverse: (..., 2) :math:`(P_x, P_y)` GeV of the root of a ``fixed_pt`` encoding;
                None: drawn from N(0, pt_sigma²) with torch's global generator.
        """
        raw, transverse = self._raw_and_transverse(x, transverse)
        nr, nn_, nf = len(self.roots), len(self.nodes), len(self.free_index)
        per = 1 if self.fixed_pt else 3
        root_raw = raw[..., : per * nr]
        mnode = torch.exp(raw[..., per * nr : per * nr + nn_])
        at = per * nr + nn_
        m_leaf = self.fixed_mass.expand((*raw.shape[:-1], self.n_objects)).clone()
        m_leaf[..., self.free_index] = torch.exp(raw[..., at : at + nf]) - self.mass_offset
        ang = raw[..., at + nf :]
        mass = {i: m_leaf[..., i] for i in range(self.n_objects)}
        mass.update({-j - 1: mnode[..., j] for j in range(nn_)})
        mom: dict[int, Tensor] = {}
        phi0 = None
        for i, r in enumerate(self.roots):
            y = root_raw[..., per * i]
            if self.fixed_pt:
                assert transverse is not None
                px, py = transverse.to(raw)[..., 0], transverse.to(raw)[..., 1]
            else:
                ptr = torch.exp(root_raw[..., per * i + 1])
                phir = math.pi * torch.tanh(root_raw[..., per * i + 2])
                if self.relative_phi and phi0 is not None:
                    phir = lorentz.delta_phi(phir + phi0, torch.zeros_like(phir))
                phi0 = phir if phi0 is None else phi0
                px, py = ptr * torch.cos(phir), ptr * torch.sin(phir)
            mt = torch.sqrt(px * px + py * py + mass[r] ** 2)
            # cosh/sinh through exp: onnxruntime has no float64 Cosh/Sinh kernels (export)
            ey = torch.exp(y)
            mom[r] = torch.stack([0.5 * mt * (ey + 1 / ey), px, py, 0.5 * mt * (ey - 1 / ey)], -1)
        self._decay_down(mom, mass, ang, [(j, j) for j in reversed(range(nn_))])
        return self._objects(mom, m_leaf)

    def _decay_angles(self, j: int, mom: dict[int, Tensor], mass: dict[int, Tensor],
                      angles: list[Tensor], ladj: Tensor) -> Tensor:
        """Append node ``j``'s decay-angle features (atanh cos θ*, atanh(φ*/π)) to ``angles``
        and return ``ladj`` with their log-Jacobian (and the node's −log |p*| − log M) added;
        ``mom``/``mass`` hold the node's own momentum and mass at key −j − 1."""
        a, b = self.nodes[j]
        big, mj = mom[-j - 1], mass[-j - 1]
        q = lorentz.boost_frame(mom[a], big, mj, to_rest=True)[..., 1:]
        if self.hel_node[j]:  # a rotation: dΩ* unchanged
            q = (self._helicity_axes(big) @ q[..., None])[..., 0]
        cos = (q[..., 2] / torch.linalg.vector_norm(q, dim=-1)).clamp(-U_MAX, U_MAX)
        u = (torch.atan2(q[..., 1], q[..., 0]) / math.pi).clamp(-U_MAX, U_MAX)
        angles += [torch.atanh(cos), torch.atanh(u)]
        return (ladj - _pstar(mj, mass[a], mass[b]).log() - mj.log()
                - torch.log1p(-cos * cos) - math.log(math.pi) - torch.log1p(-u * u))

    def _decay_down(self, mom: dict[int, Tensor], mass: dict[int, Tensor], ang: Tensor,
                    order: list[tuple[int, int]]) -> None:
        """Fill ``mom`` with the daughters of node ``j`` from its momentum and mass and its decay
        angles ``ang[..., 2t : 2t + 2]`` (atanh cos θ, atanh(φ/π)), for each ``(t, j)`` of
        ``order`` (parents before their daughter nodes)."""
        for t, j in order:
            a, b = self.nodes[j]
            big, mj = mom[-j - 1], mass[-j - 1]
            ps = _pstar(mj, mass[a], mass[b])
            cos, phs = torch.tanh(ang[..., 2 * t]), math.pi * torch.tanh(ang[..., 2 * t + 1])
            sin = torch.sqrt((1 - cos * cos).clamp_min(0.0))
            d = torch.stack([sin * torch.cos(phs), sin * torch.sin(phs), cos], -1) * ps[..., None]
            if self.hel_node[j]:
                d = (self._helicity_axes(big).transpose(-1, -2) @ d[..., None])[..., 0]
            qa = torch.cat([torch.sqrt(ps * ps + mass[a] ** 2)[..., None], d], -1)
            qb = torch.cat([torch.sqrt(ps * ps + mass[b] ** 2)[..., None], -d], -1)
            mom[a], mom[b] = lorentz.boost_frame(qa, big, mj), lorentz.boost_frame(qb, big, mj)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description (tree, layout, statistics); inverse of :meth:`from_dict`."""
        out = {**self._dict_common("resonances"), "relative_phi": self.relative_phi}
        if self.helicity:  # absent: lab axes (every model saved before the option)
            out["helicity"] = True
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResonanceEncoding:
        """Rebuild an encoding from :meth:`to_dict` output."""
        return cls(d["tree"], d["free_mass"], d["fixed_mass"], d["fixed_pt"], d["relative_phi"],
                   d["mass_offset"], torch.tensor(d["mean"], dtype=torch.float64),
                   torch.tensor(d["std"], dtype=torch.float64), d.get("pt_sigma", 1.0),
                   bool(d.get("helicity", False)))


def parton_encoding_from_dict(d: dict[str, Any]) -> nn.Module:
    """The parton encoding a ``to_dict`` describes (no ``parametrization`` key: objects).

    Returns an :class:`~unfoldmem.flows.encoding.ObjectEncoding`, a :class:`ResonanceEncoding`
    (a :class:`~unfoldmem.flows.lepton_anchored.LeptonAnchoredEncoding` with the key
    ``lepton_anchored``, a :class:`~unfoldmem.flows.top_lepton.TopLeptonEncoding` with
    ``top_lepton``) or an :class:`~unfoldmem.flows.onshell.OnShellEncoding`.
    """
    kind = d.get("parametrization", "objects")
    if kind == "resonances" and "top_lepton" in d:
        # imported here: top_lepton builds on this module
        from unfoldmem.flows.top_lepton import TopLeptonEncoding

        return TopLeptonEncoding.from_dict(d)
    if kind == "resonances" and "lepton_anchored" in d:
        # imported here: lepton_anchored builds on this module
        from unfoldmem.flows.lepton_anchored import LeptonAnchoredEncoding

        return LeptonAnchoredEncoding.from_dict(d)
    if kind == "resonances":
        return ResonanceEncoding.from_dict(d)
    if kind == "onshell":
        return OnShellEncoding.from_dict(d)
    return ObjectEncoding.from_dict(d)
