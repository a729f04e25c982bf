r"""Transverse balance of the detector channel: the recoil's p_T and two-body measurements.

The recoil parton (the neutrino, or one lepton of a two-body final state) takes the negative
transverse sum of the other partons (:func:`balance`), smeared by the recoil kernel of
:mod:`unfoldmem.mem.integrand`; in a two-body final state the recoil's reco (p_T, φ + π) is then
a second measurement of its partner's, combined by precision weighting
(:func:`combine_two_body`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from unfoldmem.physics import lorentz

__all__ = ["balance", "combine_two_body", "others_sum"]


def combine_two_body(centre: Tensor, width: Tensor, inv: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Balance makes a visible recoil's (p_T, φ+π) a second measurement of its partner's.

    centre, width: (..., 2, 3) Gaussians in (log p_T, η, φ); inv: (..., 2) broad (no reco
    object); r: the recoil. Returns the partner's combined centre and width (the rest as given).
    """
    o = 1 - r
    both = ~inv[..., o] & ~inv[..., r]
    c, w = centre.clone(), width.clone()
    for j in (0, 2):
        cr = centre[..., r, j]
        if j == 2:
            cr = centre[..., o, 2] + lorentz.delta_phi(cr + math.pi, centre[..., o, 2])
        wo, wr = width[..., o, j], width[..., r, j]
        prec = wo ** -2 + wr ** -2
        mean = (centre[..., o, j] * wo ** -2 + cr * wr ** -2) / prec
        c[..., o, j] = torch.where(both, mean, centre[..., o, j])
        w[..., o, j] = torch.where(both, prec ** -0.5, wo)
    return c, w


def others_sum(z: Tensor, integ: Any, skip: int) -> Tensor:
    """(S, B, 2) Σ p_T of the partons other than the recoil and ``skip``."""
    keep = torch.ones(integ.n, dtype=torch.bool)
    keep[[integ.recoil, skip]] = False
    pt, phi = z[..., keep, 0], z[..., keep, 2]
    return torch.stack([(pt * torch.cos(phi)).sum(-1), (pt * torch.sin(phi)).sum(-1)], -1)


def balance(z: Tensor, integ: Any) -> Tensor:
    """(S, B, 2) −Σ p_T of the non-recoil partons."""
    others = torch.ones(integ.n, dtype=torch.bool)
    others[integ.recoil] = False
    pt, phi = z[..., others, 0], z[..., others, 2]
    return -torch.stack([(pt * torch.cos(phi)).sum(-1), (pt * torch.sin(phi)).sum(-1)], -1)
