r"""Breit–Wigner laws in a virtuality s and the massless pair invariant of the resonance blocks.

The building blocks of the maps in :mod:`unfoldmem.mem.resonances` and
:mod:`unfoldmem.mem.leptonic_blocks`: sampling s from a Breit–Wigner truncated to (lo, hi) by its
inverse CDF, its exact log density, and :math:`g_{ij}` with :math:`m_{ij}^2 = 2p_{T,i}p_{T,j}
g_{ij}` for massless partons.

References:
    | F. Maltoni, T. Stelzer, "MadEvent", JHEP 02 (2003) 027 (Breit–Wigner phase-space maps)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["W_WINDOW", "bw_log_density", "bw_sample", "pair_g"]

W_WINDOW = 40.0  # W virtualities sampled within m_W ± 40 Γ_W (the rest: defensive channel)


def _theta_bounds(m: float, g: float, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    mg = m * g
    return torch.atan((lo - m * m) / mg), torch.atan((hi - m * m) / mg)


def bw_sample(v: Tensor, m: float, g: float, lo: Tensor, hi: Tensor) -> Tensor:
    """s ∈ (lo, hi) GeV² from uniforms v by the inverse CDF of the Breit–Wigner in s."""
    t0, t1 = _theta_bounds(m, g, lo, hi)
    return m * m + m * g * torch.tan(t0 + v * (t1 - t0))


def bw_log_density(s: Tensor, m: float, g: float, lo: Tensor, hi: Tensor) -> Tensor:
    """log of the Breit–Wigner density in s truncated to (lo, hi); −inf outside."""
    t0, t1 = _theta_bounds(m, g, lo, hi)
    mg = m * g
    lp = math.log(mg) - torch.log((s - m * m) ** 2 + mg * mg) - torch.log(t1 - t0)
    return torch.where((s > lo) & (s < hi) & (t1 > t0), lp, -math.inf)


def pair_g(eta_i: Tensor, phi_i: Tensor, eta_j: Tensor, phi_j: Tensor) -> Tensor:
    r""":math:`\cosh(\eta_i-\eta_j) - \cos(\phi_i-\phi_j)`: m² = 2 p_{T,i} p_{T,j} g (massless)."""
    return torch.cosh(eta_i - eta_j) - torch.cos(phi_i - phi_j)

