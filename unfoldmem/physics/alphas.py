r"""Running strong coupling αs(Q): Pythia 8's ``AlphaStrong`` formulas from αs(m_Z), or an
LHAPDF ``AlphaS_Type: ipol`` table interpolated as LHAPDF does (used by :mod:`unfoldmem.physics.pdf`).

References:
    PDG, "Quantum Chromodynamics" review (two/three-loop running);
    A. Buckley et al., arXiv:1412.7420 (LHAPDF6 ``AlphaS_Ipol``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from unfoldmem.physics.lhagrid import hermite

__all__ = ["AlphaS"]

# ---------------------------------------------------------------- αs


def _b_coeffs(nf: int) -> tuple[float, float, float]:
    """(33 - 2nf, 2β1/β0², β2β0/(8β1²)) of the PDG two/three-loop αs expansion."""
    beta0 = 11.0 - 2.0 * nf / 3.0
    beta1 = 51.0 - 19.0 * nf / 3.0
    beta2 = 2857.0 - 5033.0 * nf / 9.0 + 325.0 * nf * nf / 27.0
    return 3.0 * beta0, 2.0 * beta1 / beta0**2, beta2 * beta0 / (8.0 * beta1**2)


def _alphas_lambda(scale2: float | Tensor, lam2: float, nf: int, order: int) -> float | Tensor:
    b0, b1, b2 = _b_coeffs(nf)
    lib = torch if isinstance(scale2, Tensor) else math
    lg = lib.log(scale2 / lam2)
    corr = 1.0
    if order >= 2:
        llg = lib.log(lg)
        corr = 1.0 - b1 * llg / lg
        if order >= 3:
            corr = corr + (b1 / lg) ** 2 * ((llg - 0.5) ** 2 + b2 - 1.25)
    return 12.0 * math.pi / (b0 * lg) * corr


@dataclass(frozen=True)
class AlphaS:
    r"""Running :math:`\alpha_s(Q)` as Pythia 8's ``AlphaStrong`` (used for hard processes).

    Order 0: fixed; 1: one loop, :math:`\alpha_s = 12\pi / ((33-2n_f)\ln(Q^2/\Lambda^2_{n_f}))`;
    2 and 3: the PDG expansion in :math:`1/\ln(Q^2/\Lambda^2)` to second / third order. Λ is
    fixed by αs(m_Z) in 5 flavours and matched for continuity at the c, b, t thresholds (ten
    fixed-point iterations, as Pythia). Below :math:`1.07\Lambda_3` (order 1) or
    :math:`1.33\Lambda_3` (higher) αs is frozen. LO PDF sets go with ``order=1``, which is
    Pythia's default ``SigmaProcess:alphaSorder``.

    References:
        PDG Review "Quantum chromodynamics", eq. (9.5); T. Sjöstrand et al., Pythia 8
        ``StandardModel.cc`` (defaults m_c = 1.5, m_b = 4.8, m_t = 171, m_Z = 91.188 GeV).
    """

    alpha_s_mz: float = 0.118
    order: int = 1
    nf_max: int = 6
    thresholds: tuple[float, float, float] = (1.5, 4.8, 171.0)
    mz: float = 91.188
    ipol: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    _lambda2: tuple[float, float, float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.order not in (0, 1, 2, 3):
            msg = f"alpha_s order must be 0, 1, 2 or 3 (Pythia's alphaSorder), got {self.order}"
            raise ValueError(msg)
        object.__setattr__(self, "_lambda2", self._solve_lambdas())

    def _match(self, target: float, scale: float, nf: int, lam0: float) -> float:
        """Λ_nf such that αs(scale) in nf flavours equals target (fixed-point iteration)."""
        b0 = _b_coeffs(nf)[0]
        lam = lam0
        for _ in range(10):
            lam_tmp = _alphas_lambda(scale**2, lam * lam, nf, self.order)
            corr = lam_tmp * (b0 * math.log(scale**2 / lam**2)) / (12.0 * math.pi)
            lam = scale * math.exp(-6.0 * math.pi / (b0 * target / corr))
        return lam

    def _solve_lambdas(self) -> tuple[float, float, float, float]:
        if self.order == 0:
            return (0.0, 0.0, 0.0, 0.0)
        mc, mb, mt = self.thresholds
        lam5 = self.mz * math.exp(-6.0 * math.pi / (23.0 * self.alpha_s_mz))
        if self.order == 1:
            lam6 = lam5 * (lam5 / mt) ** (2.0 / 21.0)
            lam4 = lam5 * (mb / lam5) ** (2.0 / 25.0)
            lam3 = lam4 * (mc / lam4) ** (2.0 / 27.0)
        else:
            lam5 = self._match(self.alpha_s_mz, self.mz, 5, lam5)
            lam4 = self._match(_alphas_lambda(mb * mb, lam5**2, 5, self.order), mb, 4, lam5)
            lam3 = self._match(_alphas_lambda(mc * mc, lam4**2, 4, self.order), mc, 3, lam4)
            lam6 = self._match(_alphas_lambda(mt * mt, lam5**2, 5, self.order), mt, 6, lam5)
        return (lam3**2, lam4**2, lam5**2, lam6**2)

    @property
    def lambdas(self) -> tuple[float, float, float, float]:
        """(Λ3, Λ4, Λ5, Λ6) in GeV."""
        return tuple(math.sqrt(v) for v in self._lambda2)  # type: ignore[return-value]

    def __call__(self, q: Tensor) -> Tensor:
        """αs at scale ``q`` (GeV), any shape, float64."""
        q = torch.as_tensor(q, dtype=torch.float64)
        if self.ipol is not None:
            return _alphas_ipol(q * q, *self.ipol)
        if self.order == 0:
            return torch.full_like(q, self.alpha_s_mz)
        mc, mb, mt = self.thresholds
        l3, l4, l5, l6 = self._lambda2
        margin = 1.07 if self.order == 1 else 1.33
        q2 = torch.clamp(q * q, min=margin**2 * l3)
        out = _alphas_lambda(q2, l3, 3, self.order)
        out = torch.where(q2 > mc * mc, _alphas_lambda(q2, l4, 4, self.order), out)
        out = torch.where(q2 > mb * mb, _alphas_lambda(q2, l5, 5, self.order), out)
        if self.nf_max >= 6:
            out = torch.where(q2 > mt * mt, _alphas_lambda(q2, l6, 6, self.order), out)
        return out



def _alphas_ipol(q2: Tensor, q2s: tuple[float, ...], vals: tuple[float, ...]) -> Tensor:
    """LHAPDF ``AlphaS_Ipol``: Hermite cubic in ln Q² per threshold-separated subgrid; a power
    law below the first knot, frozen above the last."""
    kq = torch.tensor(q2s, dtype=torch.float64)
    ka = torch.tensor(vals, dtype=torch.float64)
    out = torch.empty_like(q2)
    # Subgrids are separated by repeated knots (flavour thresholds).
    starts = [0] + [i for i in range(1, len(q2s)) if q2s[i] == q2s[i - 1]]
    ends = [*starts[1:], len(q2s)]
    nxt = next(i for i in range(1, len(q2s)) if q2s[i] != q2s[0])
    grad = math.log(vals[nxt] / vals[0]) / math.log(q2s[nxt] / q2s[0])
    out = ka[0] * (q2 / kq[0]) ** grad
    out = torch.where(q2 > kq[-1], ka[-1], out)
    for a, b in zip(starts, ends, strict=True):
        lq, al = torch.log(kq[a:b]), ka[a:b]
        sel = (q2 >= kq[a]) & (q2 <= kq[b - 1]) if b == len(q2s) else (q2 >= kq[a]) & (q2 < kq[b])
        if b - a < 2 or not bool(sel.any()):
            continue
        slope = (al[1:] - al[:-1]) / (lq[1:] - lq[:-1])
        d = torch.empty_like(al)
        d[0], d[-1] = slope[0], slope[-1]
        if b - a > 2:
            d[1:-1] = 0.5 * (slope[1:] + slope[:-1])
        lg = torch.log(q2[sel])
        i = (torch.searchsorted(lq, lg, right=True) - 1).clamp(0, b - a - 2)
        dl = lq[i + 1] - lq[i]
        val = hermite((lg - lq[i]) / dl, al[i], d[i] * dl, al[i + 1], d[i + 1] * dl)
        out = out.masked_scatter(sel, val)
    return out

