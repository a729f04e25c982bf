r"""Adaptation of the MEM sampler's discrete draws: assignment, law, and (assignment, law) pairs.

Between rounds of :func:`~unfoldmem.mem.sampling.importance_sample` the probabilities of the
jet–parton assignments and of the detector channel's laws (resonance blocks on or off) move
towards their estimated shares of the integral, with a uniform floor (Kleiss–Pittau
multi-channel adaptation). Each round's probabilities are fixed before its draws, so every
round, and the pool of rounds, stays unbiased; the floor keeps every valid choice sampled, so a
region the first rounds missed can still be found. Two assignments that differ by swapping the
daughters of a hadronic W (:func:`swap_partners`) give every resonance the same mass, so the
same laws cover both and their shares differ only through the matrix element's spin
correlations and the resolutions: each keeps PARTNER_SHARE/2 of the pair's probability
(:func:`pooled_with_partners`), so one that the first rounds under-estimated is not starved.

References:
    | R. Kleiss, R. Pittau, Comput. Phys. Commun. 83 (1994) 141 (multi-channel adaptation).
    | T. Hesterberg, "Weighted average importance sampling and defensive mixture
    | distributions", Technometrics 37 (1995) 185
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["CELL_FLOOR", "LAW_FLOOR", "LAW_START", "PARTNER_SHARE", "PICK_FLOOR", "adapted_cells",
           "adapted_laws", "adapted_pick", "pooled_with_partners", "start_laws", "swap_partners"]

#: Share of the assignment draws spread uniformly over the valid assignments once the
#: probabilities adapt (the rest follows the estimated shares of the integral).
PICK_FLOOR = 0.05
#: First probabilities of a channel's laws (:meth:`RecoChannel.laws`: law 0 with every
#: resonance block on, the rest share LAW_START[1]) and the share kept uniform once they adapt.
LAW_START = (0.6, 0.4)
LAW_FLOOR = 0.1
#: With laws adapted per assignment: the share of the (assignment, law) draws spread uniformly
#: over the valid cells (the rest follows each cell's estimated share of the integral).
CELL_FLOOR = 0.1
#: Share of an adapted assignment probability pooled with its W-daughter-swap partner's: the
#: probability becomes (1 − PARTNER_SHARE/2) × its own + PARTNER_SHARE/2 × the partner's.
PARTNER_SHARE = 0.5


def swap_partners(index: Tensor, valid: Tensor, pairs: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Per pair of partons (a, b) (the two daughters of a hadronic W), the (B, P) index of the
    assignment equal to each assignment with a and b swapped (itself where there is none).

    Arguments:
        index: (B, P, n) reco object of each parton per assignment (``prep["index"]``).
        valid: (B, P) bool valid assignments. pairs: parton index pairs.
    """
    own = torch.arange(index.shape[1]).expand(index.shape[:2])
    out = []
    for a, b in pairs:
        swapped = index.clone()
        swapped[..., [a, b]] = index[..., [b, a]]
        same = (swapped[:, :, None] == index[:, None]).all(-1)
        same = same & valid[:, :, None] & valid[:, None, :]
        out.append(torch.where(same.any(-1), same.double().argmax(-1), own))
    return out


def pooled_with_partners(prob: Tensor, partners: Sequence[Tensor]) -> Tensor:
    """prob (B, P, ...) probabilities of assignments (and laws) with each one's share
    PARTNER_SHARE/2 moved to its partner (:func:`swap_partners`): sums are kept, since
    swapping is an involution."""
    for pt in partners:
        idx = pt.reshape(*pt.shape, *[1] * (prob.dim() - 2)).expand_as(prob)
        prob = (1 - PARTNER_SHARE / 2) * prob + PARTNER_SHARE / 2 * torch.gather(prob, 1, idx)
    return prob


def adapted_pick(perm: Tensor, valid: Tensor, partners: Sequence[Tensor] = ()) -> Tensor:
    """(B, P) log pick probabilities from per-assignment estimates perm (B, K, P), pooled
    with the ``partners`` (:func:`swap_partners`)."""
    est = perm.sum(1)
    share = est / est.sum(-1, keepdim=True).clamp(min=1e-300)
    n_valid = valid.sum(-1, keepdim=True).clamp(min=1).double()
    prob = torch.where(valid, (1 - PICK_FLOOR) * share + PICK_FLOOR / n_valid, 0.0)
    prob = torch.where(est.sum(-1, keepdim=True) > 0, prob, valid.double() / n_valid)
    return torch.log(pooled_with_partners(prob, partners))


def adapted_laws(law: Tensor, old: Tensor) -> Tensor:
    """(B, V) log law probabilities from the laws' estimated shares law (B, K, V): (1 −
    LAW_FLOOR) × share + LAW_FLOOR × uniform; events without an estimate keep ``old``."""
    est = law.sum(1)
    tot = est.sum(-1, keepdim=True)
    share = est / tot.clamp(min=1e-300)
    prob = (1 - LAW_FLOOR) * share + LAW_FLOOR / est.shape[-1]
    return torch.where(tot > 0, torch.log(prob), old)


def adapted_cells(cell: Tensor, valid: Tensor, old_pick: Tensor | None,
                  old_law: Tensor, partners: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
    """Log assignment probabilities (B, P) and log law probabilities given the assignment
    (B, P, V) from the cells' estimated shares cell (B, K, P, V): the joint probability of a
    cell is (1 − CELL_FLOOR) × its share + CELL_FLOOR × uniform over the valid cells, pooled
    per law with the ``partners`` (:func:`swap_partners`); events without an estimate keep the
    old ones (None: uniform assignments)."""
    est = cell.sum(1)
    tot = est.sum((1, 2))
    v = est.shape[-1]
    n_valid = valid.sum(-1).clamp(min=1).double()[:, None, None]
    prob = torch.where(valid[..., None], (1 - CELL_FLOOR) * est / tot.clamp(min=1e-300)[:, None, None]
                       + CELL_FLOOR / (n_valid * v), 0.0)
    prob = pooled_with_partners(prob, partners)
    pi = prob.sum(-1)
    seen = tot > 0
    if old_pick is None:
        old_pick = torch.log(valid.double() / n_valid[..., 0])
    pick = torch.where(seen[:, None], torch.log(pi), old_pick)
    law = torch.where(seen[:, None, None], torch.log(prob / pi.clamp(min=1e-300)[..., None]),
                      old_law)
    return pick, law


def start_laws(b: int, v: int) -> Tensor:
    """(B, V) log of the first law probabilities (LAW_START)."""
    prob = torch.full((b, v), LAW_START[1] / max(v - 1, 1), dtype=torch.float64)
    prob[:, 0] = LAW_START[0]
    return torch.log(prob)
