r"""On-shell lab-frame coordinates of the partons: primaries in the lab, partners from a mass.

:class:`~unfoldmem.flows.parametrization.ResonanceEncoding` makes resonance masses coordinates
but derives every decay product through boosts, so a well-measured parton (the lepton) loses
its sharp acceptance edge. Here each two-body node :math:`j \to c\,k` of the tree has a
massless leaf child :math:`k` and the mass coordinate :math:`s_j = \log(m_j^2 - m_c^2)`.
*Bottom-up* (the "primary" :math:`c` is known from its own coordinates: the lepton of W → ℓν,
the W of t → Wb) :math:`k` is given by its lab direction :math:`\hat n_k` (η, φ; for a
neutrino the direction about :math:`\hat p_c`, better conditioned when nearly collinear) and

.. math:: |\vec k| = \frac{m_j^2 - m_c^2}{2\,(E_c - \vec p_c\cdot\hat n_k)} > 0
    \quad\text{for every } s_j \in \mathbb R,

a root leaf by its lab :math:`(\log p_T, \eta, \phi)`. The Jacobian is triangular
(:math:`\partial s_j/\partial p_{T,k} = 1/p_{T,k}` at fixed direction and primary):
:math:`\log|\det \partial x/\partial v| = -\sum_{\text{leaves}} \log p_T` plus the φ maps
(and :math:`2\log(\cosh\eta_\text{rel}/\cosh\eta)` per neutrino, since
:math:`d\Omega = \operatorname{sech}^2\eta\,d\eta\,d\phi` in either frame).

Events with :math:`\sum\vec p_T = 0` (LO :math:`2 \to n`) have two fewer degrees of freedom:
as in the resonance encoding :math:`\vec P_T \sim N(0, \sigma^2)` per component is not a flow
coordinate. The single root :math:`[A, B]` is split: :math:`A` (the half with the charged
lepton) is bottom-up, :math:`B` has :math:`\vec p_{T,B} = \vec P_T - \vec p_{T,A}`, rapidity
:math:`y_B` and :math:`s_B`, and decays *top-down* by rest-frame angles
:math:`(\cos\theta^*, \phi^*)` of :math:`k`; a root with a massless child (Z → ℓℓ) is
top-down from the root. Inserting :math:`\delta^4` and :math:`\delta(m^2)` per node,
:math:`\prod_B d^3p/(2E) = \tfrac12 d^2P_T\,dy_B \prod_j dm_j^2 \prod_j
\frac{|p^*_j|}{4 m_j} d\Omega^*_j`, with :math:`d^3p = p_T^2\cosh\eta\,dp_T\,d\eta\,d\phi`.
For tt̄ → (b ℓν)(b̄ qq̄′): ℓ keeps :math:`(\log p_T, \eta, \phi)`, ν and :math:`b_\ell` their
directions with :math:`m_W, m_t`; the hadronic top is :math:`(y, m_t, m_W)` and two decays.
Which parton takes which of these roles is planned from the decay tree in
:mod:`unfoldmem.flows.onshell_plan`.

References:
    | Two invertible networks for the matrix element method (Heimel et al., 2023)
    | https://arxiv.org/abs/2210.00019
    | MoMEMta, a modular toolkit for the matrix element method (Brochet et al., 2019), the
    | "blocks" that solve massless momenta from a direction and a mass
    | https://arxiv.org/abs/1805.08555

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> v = torch.zeros(64, 2, 4, dtype=torch.float64)
    >>> v[..., 0] = 20 + 30 * torch.rand(64, 2, generator=g, dtype=torch.float64)
    >>> v[..., 1:3] = torch.rand(64, 2, 2, generator=g, dtype=torch.float64)
    >>> enc = OnShellEncoding.fit(v, tree=[[0, 1]])  # lepton 0 in the lab, 1 from m and (η, φ)
    >>> enc.n_features, enc.fixed_pt
    (6, False)
    >>> torch.allclose(enc.inverse(enc(v)[0]), v, atol=1e-9)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from unfoldmem.flows.decay_tree import DecayTreeEncoding
from unfoldmem.flows.encoding import U_MAX, register_standardisation
from unfoldmem.flows.onshell_plan import plan_onshell, subtree_leaves, subtree_nodes
from unfoldmem.physics import lorentz

__all__ = ["OnShellEncoding"]



def _frame(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal frame (u1, u2, u3) with u3 along p's 3-momentum, u1 ∝ ẑ × u3; (..., 3) each."""
    u3 = p[..., 1:] / torch.linalg.vector_norm(p[..., 1:], dim=-1, keepdim=True)
    u1 = torch.stack([-u3[..., 1], u3[..., 0], torch.zeros_like(u3[..., 0])], -1)
    u1 = u1 / torch.linalg.vector_norm(u1, dim=-1, keepdim=True)
    return u1, torch.linalg.cross(u3, u1), u3


def _relative(p: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
    r"""Direction n (..., 3) as (η, φ) about p's axis: :math:`\tanh\eta = \hat n\cdot\hat p`."""
    u1, u2, u3 = _frame(p)
    c = (n * u3).sum(-1).clamp(-U_MAX, U_MAX)
    return torch.atanh(c), torch.atan2((n * u2).sum(-1), (n * u1).sum(-1))


def _from_relative(p: Tensor, n_rel: Tensor) -> Tensor:
    """Inverse of :func:`_relative`: components of n_rel (..., 3) in p's frame → lab (..., 3)."""
    u1, u2, u3 = _frame(p)
    return n_rel[..., :1] * u1 + n_rel[..., 1:2] * u2 + n_rel[..., 2:] * u3


def _dir(eta: Tensor, phi: Tensor) -> Tensor:
    """Unit 3-vector (..., 3) of the direction (η, φ)."""
    one = torch.ones_like(eta)
    p = lorentz.from_ptetaphim(torch.stack([one, eta, phi, 0 * one], -1))
    return p[..., 1:] / p[..., :1]


class OnShellEncoding(DecayTreeEncoding):
    r"""Bijection partons (pt, eta, phi, m) ↔ standardised on-shell lab-frame coordinates.

    Arguments:
        tree: the roots (nested lists of slot indices); every node needs a massless leaf child.
        free_mass, fixed_mass: (k,) as in :class:`~unfoldmem.flows.encoding.ObjectEncoding`.
        fixed_pt: the partons sum to :math:`\vec p_T = 0` (single root; see module docstring).
        mass_offset: :math:`m_0` in :math:`\log(m + m_0)` of free-mass partons, GeV.
        mean, std: standardisation statistics of the raw features.
        pt_sigma: width of the :math:`\vec P_T` Gaussian per component, GeV.
        invisible: slots whose bottom-up direction is taken about the primary's axis.

    Raw features, in order: per step (root leaf :math:`\log p_T, \eta, \operatorname{atanh}
    (\phi/\pi)`; bottom-up direction :math:`\eta, \operatorname{atanh}(\phi/\pi)` in the lab
    or about the primary; top-down anchor :math:`y`; top-down decay
    :math:`\operatorname{atanh}\cos\theta^*, \operatorname{atanh}(\phi^*/\pi)`), then
    :math:`s_j` per node with a mass coordinate (post-order), then :math:`\log(m + m_0)` per
    free-mass parton.
    """

    def __init__(
        self,
        tree: Sequence[Any],
        free_mass: Sequence[bool] | Tensor,
        fixed_mass: Sequence[float] | Tensor | None = None,
        fixed_pt: bool = False,
        mass_offset: float = 1.0,
        mean: Tensor | None = None,
        std: Tensor | None = None,
        pt_sigma: float = 1.0,
        invisible: Sequence[int] = (),
    ) -> None:
        super().__init__()
        free, fixed = self._set_tree(tree, free_mass, fixed_mass)
        k = free.shape[0]
        if fixed_pt and (len(self.roots) != 1 or self.roots[0] >= 0):
            msg = "fixed_pt needs a decay tree with a single root node"
            raise ValueError(msg)
        self.fixed_pt, self.mass_offset, self.pt_sigma = bool(fixed_pt), float(mass_offset), \
            float(pt_sigma)
        massless = [not bool(free[i]) and float(fixed[i]) == 0.0 for i in range(k)]
        self.invisible = sorted(int(i) for i in invisible)
        plan = plan_onshell(self.nodes, self.roots, massless, self.invisible, self.fixed_pt)
        self.steps = plan.steps
        self.other = plan.other  # node -> child c of s_j = log(m_j² − m_c²)
        self.massed = plan.massed  # nodes whose s_j is a coordinate, post-order
        self.top_down_codes = plan.top_down_codes
        n_step = sum({"leaf": 3, "bu": 2, "rel": 2, "td": 2, "anchor": 1}[s[0]] for s in self.steps)
        register_standardisation(self, n_step + len(self.massed) + len(self.free_index), mean,
                                 std)

    @classmethod
    def fit(
        cls,
        objects: Tensor,
        weight: Tensor | None = None,
        tree: Sequence[Any] | None = None,
        mass_offset: float = 1.0,
        mass_tolerance: float = 1e-3,
        pt_tolerance: float = 1e-9,
        pt_sigma: float = 1.0,
        invisible: Sequence[int] = (),
    ) -> OnShellEncoding:
        r"""Build the encoding from training partons (n, k, 4) (pt GeV, eta, phi, m GeV).

        Arguments as :meth:`~unfoldmem.flows.parametrization.ResonanceEncoding.fit`: a parton
        with mass spread below ``mass_tolerance`` has a fixed mass; if
        :math:`|\sum\vec p_T|/\sum p_T < ` ``pt_tolerance`` in every event the roots are joined
        (first two, repeatedly) and :math:`\vec P_T` is Gaussian. ``invisible``: slots
        (neutrinos, :func:`~unfoldmem.flows.decay_tree.invisible_slots`) whose bottom-up direction is taken about the
        primary's axis instead of the beam's.
        """
        objects = objects.double()
        tree, free, fixed, fixed_pt = cls.fit_layout(objects, weight, tree, mass_tolerance,
                                                     pt_tolerance)
        enc = cls(tree, free, fixed, fixed_pt, mass_offset, pt_sigma=pt_sigma,
                  invisible=invisible)
        enc._fit_standardisation(objects, weight)
        return enc

    def _raw(self, v: Tensor) -> tuple[Tensor, Tensor]:
        v = v.to(self.mean.device, torch.float64)
        m_leaf = torch.where(self.free_mass, v[..., 3], self.fixed_mass)
        p_leaf = lorentz.from_ptetaphim(torch.stack([*v[..., :3].unbind(-1), m_leaf], -1))
        pt, eta, phi = v[..., 0], v[..., 1], v[..., 2]
        mom = {i: p_leaf[..., i, :] for i in range(self.n_objects)}
        for j, (a, b) in enumerate(self.nodes):
            mom[-j - 1] = mom[a] + mom[b]
        cols: list[Tensor] = []
        ladj = torch.zeros_like(pt[..., 0])

        def angle(i: int) -> Tensor:
            u = (phi[..., i] / math.pi).clamp(-U_MAX, U_MAX)
            cols.extend([eta[..., i], torch.atanh(u)])
            return -math.log(math.pi) - torch.log1p(-u * u)

        in_b: list[int] = []
        for step in self.steps:
            if step[0] == "leaf":
                i = step[1]
                cols.append(pt[..., i].log())
                ladj = ladj - pt[..., i].log() + angle(i)
            elif step[0] == "bu":
                ladj = ladj - pt[..., step[2]].log() + angle(step[2])
            elif step[0] == "rel":
                kk = step[2]
                eta_r, phi_r = _relative(mom[step[3]], p_leaf[..., kk, 1:] / p_leaf[..., kk, :1])
                u = (phi_r / math.pi).clamp(-U_MAX, U_MAX)
                cols.extend([eta_r, torch.atanh(u)])
                # d³k = |k|³ sech²η_rel ds dη_rel dφ_rel; d³k = p_T² cosh η dp_T dη dφ
                ladj = (ladj - pt[..., kk].log() - 2 * torch.cosh(eta[..., kk]).log()
                        + 2 * torch.cosh(eta_r).log() - math.log(math.pi) - torch.log1p(-u * u))
            elif step[0] == "td":
                j, kk = step[1], step[2]
                q, mq = mom[-j - 1], lorentz.mass(mom[-j - 1])
                d = lorentz.boost_frame(p_leaf[..., kk, :], q, mq, to_rest=True)[..., 1:]
                cos = (d[..., 2] / torch.linalg.vector_norm(d, dim=-1)).clamp(-U_MAX, U_MAX)
                u = (torch.atan2(d[..., 1], d[..., 0]) / math.pi).clamp(-U_MAX, U_MAX)
                cols.extend([torch.atanh(cos), torch.atanh(u)])
                # |p*|/(4 m_Q) dΩ* (rest frame of Q by a pure boost), p* = (m_Q² − m_c²)/(2 m_Q)
                ps = (mq * mq - lorentz.mass2(mom[step[3]])) / (2 * mq)
                ladj = (ladj - ps.log() + torch.log(4 * mq) - torch.log1p(-cos * cos)
                        - math.log(math.pi) - torch.log1p(-u * u))
            else:
                b, a = step[1], step[2]
                pb = mom[b]
                cols.append(lorentz.rapidity(pb))
                ptot = pb if a == -1 else pb + mom[a]
                s2 = self.pt_sigma**2
                # d³B/(2E_B) = ½ d²P_T dy, and the P_T Gaussian's log-density
                ladj = (ladj + math.log(2.0) - (ptot[..., 1] ** 2 + ptot[..., 2] ** 2) / (2 * s2)
                        - math.log(2 * math.pi * s2))
                in_b = subtree_leaves(self.nodes, b)
        for i in in_b:
            # Π d³p/(2E) → Π dp_T dη dφ: factor 2E/(p_T² cosh η) per leaf of the top-down half
            ladj = (ladj - torch.log(2 * p_leaf[..., i, 0]) + 2 * pt[..., i].log()
                    + torch.cosh(eta[..., i]).log())
        for j in self.massed:
            kk = self.nodes[j][0] if self.nodes[j][1] == self.other[j] else self.nodes[j][1]
            c = mom[self.other[j]]
            n = p_leaf[..., kk, 1:] / p_leaf[..., kk, :1]
            # m_j² − m_c² = 2 c·k for massless k, exact and positive
            s = torch.log(2 * p_leaf[..., kk, 0] * (c[..., 0] - (c[..., 1:] * n).sum(-1)))
            cols.append(s)
            if j in subtree_nodes(self.nodes, self.top_down_codes):
                ladj = ladj - s  # dm_j² = e^{s_j} ds_j in the top-down measure
        mf = m_leaf[..., self.free_index] + self.mass_offset
        raw = torch.cat([torch.stack(cols, -1), mf.log()], -1)
        return raw, ladj - mf.log().sum(-1)

    def inverse(self, x: Tensor, transverse: Tensor | None = None) -> Tensor:
        """Decode features (..., D) -> partons (..., k, 4) float64 (pt, eta, phi, m).

        Arguments:
            transverse: (..., 2) :math:`(P_x, P_y)` GeV of a ``fixed_pt`` encoding; None: drawn
                from N(0, pt_sigma²) with torch's global generator.
        """
        raw, transverse = self._raw_and_transverse(x, transverse)
        n_step = raw.shape[-1] - len(self.massed) - len(self.free_index)
        es = torch.exp(raw[..., n_step : n_step + len(self.massed)])
        m_leaf = self.fixed_mass.expand((*raw.shape[:-1], self.n_objects)).clone()
        m_leaf[..., self.free_index] = (torch.exp(raw[..., n_step + len(self.massed) :])
                                        - self.mass_offset)
        m2: dict[int, Tensor] = {i: m_leaf[..., i] ** 2 for i in range(self.n_objects)}
        e_s = {j: es[..., t] for t, j in enumerate(self.massed)}
        for j in range(len(self.nodes)):  # post-order: a child's mass before its parent's
            if j in e_s:
                m2[-j - 1] = e_s[j] + m2[self.other[j]]
        mom: dict[int, Tensor] = {}
        at = 0
        for step in self.steps:
            if step[0] == "leaf":
                i = step[1]
                pt, eta = torch.exp(raw[..., at]), raw[..., at + 1]
                phi = math.pi * torch.tanh(raw[..., at + 2])
                at += 3
                ey = torch.exp(eta)
                pz = 0.5 * pt * (ey - 1 / ey)
                mom[i] = torch.stack([torch.sqrt(pz * pz + pt * pt + m2[i]), pt * torch.cos(phi),
                                      pt * torch.sin(phi), pz], -1)
            elif step[0] in ("bu", "rel"):
                j, kk, cc = step[1], step[2], step[3]
                n = _dir(raw[..., at], math.pi * torch.tanh(raw[..., at + 1]))
                if step[0] == "rel":
                    n = _from_relative(mom[cc], n)
                at += 2
                size = e_s[j] / (2 * (mom[cc][..., 0] - (mom[cc][..., 1:] * n).sum(-1)))
                mom[kk] = torch.cat([size[..., None], size[..., None] * n], -1)
                mom[-j - 1] = mom[cc] + mom[kk]
            elif step[0] == "td":
                j, kk, cc = step[1], step[2], step[3]
                cos, phs = torch.tanh(raw[..., at]), math.pi * torch.tanh(raw[..., at + 1])
                at += 2
                sin = torch.sqrt((1 - cos * cos).clamp_min(0.0))
                mq = torch.sqrt(m2[-j - 1])
                ps = e_s[j] / (2 * mq)
                d = torch.stack([sin * torch.cos(phs), sin * torch.sin(phs), cos], -1) * ps[..., None]
                qk = torch.cat([ps[..., None], d], -1)
                qc = torch.cat([torch.sqrt(ps * ps + m2[cc])[..., None], -d], -1)
                mom[kk] = lorentz.boost_frame(qk, mom[-j - 1], mq)
                mom[cc] = lorentz.boost_frame(qc, mom[-j - 1], mq)
            else:
                b, a = step[1], step[2]
                assert transverse is not None
                pxy = transverse.to(raw)
                if a != -1:
                    pxy = pxy - mom[a][..., 1:3]
                y, px, py = raw[..., at], pxy[..., 0], pxy[..., 1]
                at += 1
                mt, ey = torch.sqrt(px * px + py * py + m2[b]), torch.exp(y)
                mom[b] = torch.stack([0.5 * mt * (ey + 1 / ey), px, py, 0.5 * mt * (ey - 1 / ey)],
                                     -1)
        return self._objects(mom, m_leaf)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description (tree, layout, statistics); inverse of :meth:`from_dict`."""
        return {**self._dict_common("onshell"), "invisible": self.invisible}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnShellEncoding:
        """Rebuild an encoding from :meth:`to_dict` output."""
        return cls(d["tree"], d["free_mass"], d["fixed_mass"], d["fixed_pt"], d["mass_offset"],
                   torch.tensor(d["mean"], dtype=torch.float64),
                   torch.tensor(d["std"], dtype=torch.float64), d.get("pt_sigma", 1.0),
                   d.get("invisible", ()))
