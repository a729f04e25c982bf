r"""Parton-relative ("residual") coordinates of reco objects for transfer functions.

For fixed partons, a reco object paired with parton :math:`p` is mapped to the pseudo-object

.. math:: (p_T, \eta, \phi, m) \mapsto (p_T / p_{T,p},\ \eta - \eta_p,\
    \operatorname{wrap}(\phi - \phi_p),\ m),

a bijection of the object space onto itself whose log-Jacobian is :math:`-\log p_{T,p}` per
paired object (the η and φ parts are shifts; the wrap is a shift on the circle). An
:class:`~unfoldmem.flows.encoding.ObjectEncoding` (``relative_phi=False``) then takes the
pseudo-objects to standardised features, so the flow sees :math:`\log(p_T/p_{T,p})`,
:math:`\eta-\eta_p` and :math:`\operatorname{atanh}(\Delta\phi/\pi)`: residuals whose location no
longer depends on the partons. The total Jacobian of a paired object's :math:`p_T` is
:math:`1/p_T` (reco), as for the absolute encoding, so the density stays exact. Unpaired objects
(ISR jets, MET) are left as they are.

Which parton an object is paired with depends on the partons only (never on the reco event), so
the map is a bijection whatever the pairing: a pairing that follows the true matching just makes
the residuals simple. :func:`paired_partons` pairs the j-th object of a group with the j-th
candidate parton, either in parton order (``by_pt=False``: reco objects ordered by the truth
match) or ordered by parton pT (``by_pt=True``: pT-ordered reco objects, as from
:func:`~unfoldmem.flows.encoding.pad_reco`).

References:
    | The Matrix Element Method with two invertible networks (Heimel et al., 2023),
    | transfer functions on :math:`p_T` ratios and angular differences,
    | https://arxiv.org/abs/2310.07752
    | S. Brochet et al., MoMEMta, Eur. Phys. J. C 79 (2019) 126, https://arxiv.org/abs/1805.08555

Example:
    >>> partons = torch.tensor([[[50.0, 0.3, 3.1, 0.0], [30.0, -1.0, -2.0, 4.7]]])
    >>> reco = torch.tensor([[[52.0, 0.31, -3.1, 0.0], [27.0, -1.02, -2.03, 4.3]]])
    >>> pseudo, ladj = to_residual(reco, partons, [0, 1])
    >>> torch.allclose(from_residual(pseudo, partons, [0, 1]), reco.double())
    True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from unfoldmem.physics import lorentz

__all__ = [
    "paired_partons",
    "to_residual",
    "from_residual",
    "velocity_mass",
    "match_fraction",
    "truth_match",
    "slot_order",
    "to_acceptance",
    "from_acceptance",
]


def paired_partons(
    partons: Tensor, candidates: Sequence[int], count: int, by_pt: bool
) -> Tensor:
    """The partons paired with the first objects of a group.

    Arguments:
        partons: (..., n_partons, 4) (pt GeV, eta, phi, m GeV).
        candidates: indices of the partons objects of this group may be paired with.
        count: number of objects in the group; the first min(count, len(candidates)) are paired.
        by_pt: order the candidates by descending pT per event (else in the given order).

    Returns:
        (..., min(count, len(candidates)), 4): the paired parton of each paired object.
    """
    cand = partons[..., list(candidates), :]
    if by_pt and cand.shape[-2] > 1:
        order = torch.argsort(cand[..., 0], dim=-1, descending=True, stable=True)
        cand = torch.gather(cand, -2, order[..., None].expand(cand.shape))
    return cand[..., : min(count, cand.shape[-2]), :]


def to_residual(objects: Tensor, partons: Tensor, index: Sequence[int]) -> tuple[Tensor, Tensor]:
    r"""Objects -> pseudo-objects relative to their paired partons, and the log-Jacobian.

    Arguments:
        objects: (..., n, 4) (pt GeV, eta, phi, m GeV).
        partons: (..., k, 4) the partons paired with ``objects[..., index, :]`` (same layout).
        index: k object positions that are paired (the others pass unchanged).

    Returns:
        pseudo: (..., n, 4) float64 with (pt/pt_p, eta - eta_p, wrap(phi - phi_p), m) at the
        paired positions; ladj: (...) :math:`\log|\det\partial\,\text{pseudo}/\partial\,
        \text{objects}| = -\sum \log p_{T,p}`.
    """
    objects = objects.to(torch.float64)
    if not index:
        return objects.clone(), objects.new_zeros(objects.shape[:-2])
    partons = partons.to(torch.float64)
    idx = list(index)
    sel = objects[..., idx, :]
    pt, eta, phi, m = sel.unbind(-1)
    res = torch.stack([pt / partons[..., 0], eta - partons[..., 1],
                       lorentz.delta_phi(phi, partons[..., 2]), m], -1)
    out = objects.clone()
    out[..., idx, :] = res
    return out, -torch.log(partons[..., 0]).sum(-1)


def from_residual(pseudo: Tensor, partons: Tensor, index: Sequence[int]) -> Tensor:
    """Inverse of :func:`to_residual`: pseudo-objects (..., n, 4) -> objects (..., n, 4) float64."""
    pseudo = pseudo.to(torch.float64)
    if not index:
        return pseudo
    partons = partons.to(torch.float64)
    idx = list(index)
    r = pseudo[..., idx, :]
    obj = torch.stack([r[..., 0] * partons[..., 0], r[..., 1] + partons[..., 1],
                       lorentz.delta_phi(r[..., 2] + partons[..., 2], 0.0), r[..., 3]], -1)
    out = pseudo.clone()
    out[..., idx, :] = obj
    return out


def to_acceptance(
    objects: Tensor, index: Sequence[int], pt_min: float, eta_max: float | None
) -> tuple[Tensor, Tensor]:
    r"""Map pT-ordered objects known to lie in :math:`p_T > p_{T,\min}`,
    :math:`|\eta| < \eta_{\max}` onto the whole space.

    With ``pt_min`` > 0 the pT of the objects at ``index`` (in descending pT order) become the
    gaps :math:`p_{T,j} - p_{T,j+1}` and, for the last one, :math:`p_{T} - p_{T,\min}`: a
    triangular map with unit diagonal (log-Jacobian 0), after which the encoding's :math:`\log`
    sees neither the acceptance edge nor the ordering :math:`p_{T,j} > p_{T,j+1}` as a sharp
    edge. With ``eta_max``, :math:`\eta \mapsto \eta_{\max}\operatorname{atanh}(\eta/\eta_{\max})`.
    A density with sharp edges (ISR or unmatched jets: a spectrum starting at the cut, uniform
    in η, ordered in pT) becomes a smooth one on the real line, which a spline flow can fit.

    Arguments:
        objects: (..., n, 4) (pt GeV, eta, phi, m); index: the positions mapped, in pT order.
        pt_min: GeV (0: no pT map). eta_max: None for no η map.

    Returns:
        pseudo-objects (..., n, 4) float64 and :math:`\log|\det|` (...), −inf where an
        object is outside the acceptance or out of pT order (its pseudo-values are then
        finite placeholders).
    """
    objects = objects.to(torch.float64).clone()
    ladj = objects.new_zeros(objects.shape[:-2])
    if not index:
        return objects, ladj
    idx = list(index)
    pt, eta = objects[..., idx, 0], objects[..., idx, 1]
    inside = torch.ones_like(pt, dtype=torch.bool)
    new_pt = pt
    if pt_min > 0:
        below = torch.cat([pt[..., 1:], torch.full_like(pt[..., :1], pt_min)], -1)
        inside = pt > below
        new_pt = torch.where(inside, pt - below, 1.0)
    if eta_max is not None:
        u = eta / eta_max
        inside = inside & (u.abs() < 1)
        u = torch.where(u.abs() < 1, u, 0.0)
        objects[..., idx, 1] = eta_max * torch.atanh(u)
        ladj = ladj - torch.log1p(-u * u).sum(-1)
    objects[..., idx, 0] = new_pt
    return objects, torch.where(inside.all(-1), ladj, -math.inf)


def from_acceptance(
    pseudo: Tensor, index: Sequence[int], pt_min: float, eta_max: float | None
) -> Tensor:
    """Inverse of :func:`to_acceptance`: pseudo-objects (..., n, 4) -> objects, float64."""
    out = pseudo.to(torch.float64).clone()
    if not index:
        return out
    idx = list(index)
    if pt_min > 0:
        gaps = out[..., idx, 0]
        out[..., idx, 0] = pt_min + gaps.flip(-1).cumsum(-1).flip(-1)
    if eta_max is not None:
        out[..., idx, 1] = eta_max * torch.tanh(out[..., idx, 1] / eta_max)
    return out


def velocity_mass(objects: Tensor, partons: Tensor) -> Tensor:
    r"""Mass of reco objects that keep their parton's velocity: :math:`m_p |\vec p\,'|/|\vec p_p|`.

    The parametric detector's jet mass rule (:math:`m' = m E'/E` with β fixed), used for the
    masses of sampled objects when the mass is not modelled.

    Arguments:
        objects, partons: (..., 4) (pt GeV, eta, phi, m GeV), paired elementwise.

    Returns:
        (...) GeV, float64.
    """
    objects, partons = objects.to(torch.float64), partons.to(torch.float64)
    p_obj = objects[..., 0] * torch.cosh(objects[..., 1])
    p_par = partons[..., 0] * torch.cosh(partons[..., 1])
    return partons[..., 3] * p_obj / p_par


def match_fraction(partons: Tensor, objects: Tensor, valid: Tensor, dr_max: float) -> Tensor:
    r"""Per parton, the fraction of events with a valid object within :math:`\Delta R` < dr_max.

    Arguments:
        partons: (n, n_partons, 4) (pt, eta, phi, m); objects (n, slots, ≥3) (pt, eta, phi, ...);
        valid: (n, slots) bool, the objects to look at (e.g. jets).

    Returns:
        (n_partons,) float64 in [0, 1] (0 for an empty sample).
    """
    n = partons.shape[0]
    hits = partons.new_zeros(partons.shape[1], dtype=torch.float64)
    for lo in range(0, n, 1 << 16):  # blocks: the (n, partons, slots) ΔR table stays small
        p, o, v = partons[lo : lo + (1 << 16)], objects[lo : lo + (1 << 16)], valid[lo : lo + (1 << 16)]
        deta = p[:, :, None, 1] - o[:, None, :, 1]
        dphi = lorentz.delta_phi(p[:, :, None, 2], o[:, None, :, 2])
        dr2 = deta * deta + dphi * dphi
        hits += ((dr2 < dr_max * dr_max) & v[:, None, :]).any(-1).double().sum(0)
    return hits / max(n, 1)


def truth_match(partons: Tensor, objects: Tensor, valid: Tensor) -> Tensor:
    r"""Per event, the injective parton → object map of least :math:`\sum \Delta R^2`.

    Used to put training jets into slot order (``pairing: slot``): the object matched to the
    i-th parton comes i-th. An event with fewer valid objects than partons maps only its first
    partons (the ones :func:`paired_partons` pairs, in parton order).

    Arguments:
        partons: (n, k, ≥3) (pt, eta, phi, ...) of the partons to match, in slot order.
        objects: (n, slots, ≥3) (pt, eta, phi, ...); valid: (n, slots) bool, the candidates.

    Returns:
        (n, k) long: the object slot of each parton, −1 where the parton is not mapped.
    """
    n, k = partons.shape[0], partons.shape[1]
    cols = valid.any(0).nonzero()[:, 0].tolist()
    out = torch.full((n, k), -1, dtype=torch.long)
    if k == 0 or n == 0 or not cols:
        return out
    o, v = objects[:, cols], valid[:, cols]
    deta = partons[:, :, None, 1] - o[:, None, :, 1]
    dphi = lorentz.delta_phi(partons[:, :, None, 2].double(), o[:, None, :, 2].double())
    dr2 = (deta * deta + dphi * dphi).double()
    n_obj = v.sum(-1)
    first = torch.arange(k)[None, :, None] < n_obj[:, None, None]  # (n, k, 1) parton is mapped
    big = 1e12  # forbidden pairs: a mapped parton on a dummy column or an unmapped one on an object
    cost = torch.where(v[:, None, :], torch.where(first, dr2, big), torch.where(first, big, 0.0))
    if len(cols) < k:  # dummy columns for the unmapped partons
        cost = torch.cat([cost, torch.where(first, big, 0.0).expand(n, k, k - len(cols))], -1)
    perms = torch.tensor(list(itertools.permutations(range(cost.shape[-1]), k)), dtype=torch.long)
    block = max(1, (1 << 22) // (perms.shape[0] * k))
    rows = torch.arange(k)
    best = torch.empty(n, dtype=torch.long)
    for lo in range(0, n, block):
        c = cost[lo : lo + block][:, rows, perms].sum(-1)  # (b, n_perms)
        best[lo : lo + block] = c.argmin(-1)  # first minimum: ties keep the given order
    pick = perms[best]  # (n, k) columns
    col = torch.tensor(cols + [-1] * max(0, k - len(cols)), dtype=torch.long)[pick]
    mapped = torch.arange(k)[None] < n_obj[:, None]
    return torch.where(mapped & (col >= 0), col, -1)


def slot_order(reco: Tensor, is_jet: Tensor, matched: Tensor) -> Tensor:
    """Reco events with their jets in slot order: the jet matched to each parton, in parton
    order, then the unmatched jets in descending pt order; other slots unchanged.

    Arguments:
        reco: (..., slots, C) padded objects; is_jet: (..., slots) bool, the valid jets.
        matched: (..., k) long: jet slot of each jet parton (as :func:`truth_match`), −1 none.

    Returns:
        (..., slots, C): ``reco`` with the valid jets permuted among the valid-jet slots.
    """
    slots, k = reco.shape[-2], matched.shape[-1]
    pos = torch.arange(slots).expand(is_jet.shape)
    # Unmatched jets by descending pt, not by position: an input already in slot order (a
    # toy's partons' jets first, ISR after) whose ΔR match differs would otherwise leave them
    # out of pt order. For pt-ordered input this is the given order.
    by_pt = torch.argsort(torch.where(is_jet, -reco[..., 0].double(), math.inf), dim=-1,
                          stable=True)
    pt_rank = torch.empty_like(by_pt).scatter_(-1, by_pt, pos.clone())
    key = torch.where(is_jet, (k + pt_rank).double(), math.inf)
    ext = torch.cat([key, key.new_full((*key.shape[:-1], 1), math.inf)], -1)
    ok = matched >= 0
    rank = torch.arange(k, dtype=torch.float64).expand(matched.shape)
    ext = ext.scatter(-1, torch.where(ok, matched, slots), torch.where(ok, rank, math.inf))
    # Non-jet slots sort last in both orders, in position order: the scatter keeps them in place.
    order = torch.argsort(ext[..., :slots], dim=-1, stable=True)
    at = torch.argsort(torch.where(is_jet, pos.double(), math.inf), dim=-1, stable=True)
    src = torch.empty_like(order).scatter_(-1, at, order)
    return torch.gather(reco, -2, src[..., None].expand(reco.shape))
