r"""Parton densities from LHAPDF6 ``lhagrid1`` files, interpolated log-bicubically in torch.

Interpolation follows LHAPDF 6's default ``logcubic`` interpolator (Buckley et al.,
arXiv:1412.7420): cubic Hermite splines in :math:`\ln x` then :math:`\ln Q^2` on the subgrid that
holds Q², with knot derivatives from finite differences (central inside, one-sided at the edges)
and a bilinear fall-back for subgrids with fewer than four Q knots. Outside the grid the values
are frozen at the nearest grid point (LHAPDF's ``nearest`` extrapolator, also Pythia 8's
``LHAGrid1`` default); flavours not in the set give 0.

αs(Q): an ``AlphaS_Type: ipol`` table in the set's ``.info`` is interpolated as LHAPDF does;
otherwise αs runs from αs(m_Z) with Pythia 8's ``AlphaStrong`` formulas (see :class:`AlphaS`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.errors import InputFileError

__all__ = [
    "PIDS",
    "AlphaS",
    "GridPDF",
    "pdf_search_paths",
    "find_pdf",
    "load_pdf",
]

#: Flavour order of :meth:`GridPDF.xfx_all`: -5..-1, gluon (21), 1..5.
PIDS = (-5, -4, -3, -2, -1, 21, 1, 2, 3, 4, 5)


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


def _hermite(t: Tensor, vl: Tensor, dl: Tensor, vh: Tensor, dh: Tensor) -> Tensor:
    """Cubic Hermite interpolation on [0, 1] with end values and (scaled) end derivatives."""
    t2 = t * t
    t3 = t2 * t
    return (
        (2 * t3 - 3 * t2 + 1) * vl
        + (t3 - 2 * t2 + t) * dl
        + (-2 * t3 + 3 * t2) * vh
        + (t3 - t2) * dh
    )


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
        val = _hermite((lg - lq[i]) / dl, al[i], d[i] * dl, al[i + 1], d[i + 1] * dl)
        out = out.masked_scatter(sel, val)
    return out


# ---------------------------------------------------------------- grids


@dataclass
class _Subgrid:
    logx: Tensor  # (nx,)
    logq2: Tensor  # (nq,)
    xf: Tensor  # (nflav, nx * nq), row-major in (x, Q)
    dxf: Tensor  # (nflav, nx * nq): d(xf)/d ln x at the knots

    def to(self, device: torch.device) -> _Subgrid:
        return _Subgrid(*(t.to(device) for t in (self.logx, self.logq2, self.xf, self.dxf)))


def _ddlogx(logx: Tensor, xf: Tensor) -> Tensor:
    """LHAPDF's knot derivative in ln x: mean of the left and right slopes, one-sided at edges."""
    slope = (xf[:, 1:] - xf[:, :-1]) / (logx[1:] - logx[:-1])[None, :, None]
    d = torch.empty_like(xf)
    d[:, 0], d[:, -1] = slope[:, 0], slope[:, -1]
    d[:, 1:-1] = 0.5 * (slope[:, 1:] + slope[:, :-1])
    return d


def _parse_value(text: str) -> object:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        return [_parse_value(v) for v in text[1:-1].split(",") if v.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip("\"'")


def _read_info(path: Path | None) -> dict[str, object]:
    """Flat ``key: value`` lines of an LHAPDF ``.info`` file (YAML subset LHAPDF writes)."""
    if path is None or not path.is_file():
        return {}
    info: dict[str, object] = {}
    for line in path.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            info[key.strip()] = _parse_value(value)
    return info


def _read_grid(path: Path) -> tuple[list[int], list[_Subgrid]]:
    blocks = path.read_text().split("\n---")
    flav_ref: list[int] | None = None
    subgrids: list[_Subgrid] = []
    for k, block in enumerate(blocks[1:]):
        lines = block.strip("\n").split("\n")
        if len(lines) < 4 or not lines[0].strip():
            continue
        try:
            xs = np.array(lines[0].split(), dtype=np.float64)
            qs = np.array(lines[1].split(), dtype=np.float64)
            flav = [int(v) for v in lines[2].split()]
            vals = np.array(" ".join(lines[3:]).split(), dtype=np.float64)
            vals = vals.reshape(len(xs), len(qs), len(flav))
        except ValueError as exc:
            msg = f"subgrid {k}: malformed lhagrid1 block (x, Q, flavour lines then values): {exc}"
            raise InputFileError(str(path), msg) from exc
        if flav_ref is None:
            flav_ref = flav
        elif flav != flav_ref:
            msg = f"subgrid {k}: flavours {flav} differ from the first subgrid's {flav_ref}"
            raise InputFileError(str(path), msg)
        if len(xs) < 4 or len(qs) < 2:
            msg = f"subgrid {k}: needs >= 4 x knots and >= 2 Q knots, has {len(xs)}, {len(qs)}"
            raise InputFileError(str(path), msg)
        logx = torch.from_numpy(np.log(xs))
        xf = torch.from_numpy(np.ascontiguousarray(vals.transpose(2, 0, 1)))  # (nflav, nx, nq)
        dxf = _ddlogx(logx, xf)
        subgrids.append(
            _Subgrid(logx, torch.from_numpy(np.log(qs * qs)), xf.flatten(1), dxf.flatten(1))
        )
    if flav_ref is None:
        raise InputFileError(str(path), "no lhagrid1 subgrid found (blocks separated by '---')")
    return flav_ref, subgrids


def _eval_subgrid(g: _Subgrid, fidx: Tensor, logx: Tensor, logq2: Tensor) -> Tensor:
    """LHAPDF LogBicubicInterpolator::_interpolateXQ2 for points inside one subgrid."""
    nx, nq = g.logx.numel(), g.logq2.numel()
    ix = (torch.searchsorted(g.logx, logx.contiguous(), right=True) - 1).clamp(0, nx - 2)
    iq = (torch.searchsorted(g.logq2, logq2.contiguous(), right=True) - 1).clamp(0, nq - 2)
    dlx = g.logx[ix + 1] - g.logx[ix]
    tx = (logx - g.logx[ix]) / dlx

    def at_q(j: Tensor) -> Tensor:
        j = j.clamp(0, nq - 1)
        lo, hi = ix * nq + j, (ix + 1) * nq + j
        v0, v1 = g.xf[fidx, lo], g.xf[fidx, hi]
        return _hermite(tx, v0, g.dxf[fidx, lo] * dlx, v1, g.dxf[fidx, hi] * dlx)

    lq0, lq1 = g.logq2[iq], g.logq2[iq + 1]
    dq1 = lq1 - lq0
    if nq < 4:
        lo, hi = ix * nq + iq, (ix + 1) * nq + iq
        f_ql = g.xf[fidx, lo] + tx * (g.xf[fidx, hi] - g.xf[fidx, lo])
        f_qh = g.xf[fidx, lo + 1] + tx * (g.xf[fidx, hi + 1] - g.xf[fidx, lo + 1])
        return f_ql + (logq2 - lq0) / dq1 * (f_qh - f_ql)
    vl, vh = at_q(iq), at_q(iq + 1)
    vll, vhh = at_q(iq - 1), at_q(iq + 2)
    dq0 = lq0 - g.logq2[(iq - 1).clamp(min=0)]
    dq2 = g.logq2[(iq + 2).clamp(max=nq - 1)] - lq1
    mid = (vh - vl) / dq1
    # One-sided differences at the subgrid's Q edges, central ones inside (as LHAPDF).
    first, last = iq == 0, iq == nq - 2
    left = torch.where(first, mid, 0.5 * (mid + (vl - vll) / torch.where(first, 1.0, dq0)))
    right = torch.where(last, mid, 0.5 * (mid + (vhh - vh) / torch.where(last, 1.0, dq2)))
    return _hermite((logq2 - lq0) / dq1, vl, left * dq1, vh, right * dq1)


_PLAN_CACHE_MAX_POINTS = 1 << 20


def _hermite_basis(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four coefficients of :func:`_hermite` at t (same operations, so bit-identical)."""
    t2 = t * t
    t3 = t2 * t
    return 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2


def _plan_subgrid(g: _Subgrid, logx: Tensor, logq2: Tensor) -> tuple[Any, ...]:
    """Everything of :func:`_eval_subgrid` that does not depend on the flavour (knot indices,
    Hermite coefficients, Q spacings), so a plan serves all flavours at the same (x, Q)."""
    nx, nq = g.logx.numel(), g.logq2.numel()
    ix = (torch.searchsorted(g.logx, logx.contiguous(), right=True) - 1).clamp(0, nx - 2)
    iq = (torch.searchsorted(g.logq2, logq2.contiguous(), right=True) - 1).clamp(0, nq - 2)
    dlx = g.logx[ix + 1] - g.logx[ix]
    tx = (logx - g.logx[ix]) / dlx
    cx = _hermite_basis(tx)
    lq0, lq1 = g.logq2[iq], g.logq2[iq + 1]
    dq1 = lq1 - lq0
    knots = []
    for j in (iq - 1, iq, iq + 1, iq + 2):
        j = j.clamp(0, nq - 1)
        knots.append((ix * nq + j, (ix + 1) * nq + j))
    dq0 = lq0 - g.logq2[(iq - 1).clamp(min=0)]
    dq2 = g.logq2[(iq + 2).clamp(max=nq - 1)] - lq1
    first, last = iq == 0, iq == nq - 2
    den0, den2 = torch.where(first, 1.0, dq0), torch.where(last, 1.0, dq2)
    cq = _hermite_basis((logq2 - lq0) / dq1)
    return dlx, cx, knots, dq1, first, last, den0, den2, cq


def _eval_plan(row: Tensor, drow: Tensor, plan: tuple[Any, ...]) -> Tensor:
    """:func:`_eval_subgrid` for one flavour (its grid row and derivative row) from a plan."""
    dlx, (a0, a1, a2, a3), knots, dq1, first, last, den0, den2, (b0, b1, b2, b3) = plan

    def at_q(lo: Tensor, hi: Tensor) -> Tensor:
        v0, v1 = row.index_select(0, lo), row.index_select(0, hi)
        d0, d1 = drow.index_select(0, lo) * dlx, drow.index_select(0, hi) * dlx
        return a0 * v0 + a1 * d0 + a2 * v1 + a3 * d1

    vll, vl, vh, vhh = (at_q(lo, hi) for lo, hi in knots)
    mid = (vh - vl) / dq1
    left = torch.where(first, mid, 0.5 * (mid + (vl - vll) / den0))
    right = torch.where(last, mid, 0.5 * (mid + (vhh - vh) / den2))
    return b0 * vl + b1 * (left * dq1) + b2 * vh + b3 * (right * dq1)


def _lagrange4(t: Tensor, knots: Tensor, start: Tensor) -> Tensor:
    """Weights (..., 4) of 4-point Lagrange interpolation at t on knots[start : start + 4]."""
    nodes = torch.stack([knots[start + j] for j in range(4)], dim=-1)
    w = []
    for i in range(4):
        wi = torch.ones_like(t)
        for j in range(4):
            if j != i:
                wi = wi * (t - nodes[..., j]) / (nodes[..., i] - nodes[..., j])
        w.append(wi)
    return torch.stack(w, dim=-1)


def _eval_subgrid_pythia(g: _Subgrid, fidx: Tensor, logx: Tensor, logq2: Tensor) -> Tensor:
    """Pythia 8 ``LHAGrid1``: 4-point Lagrange polynomials in ln x and ln Q (linear in ln Q for
    subgrids with < 4 knots), the 4 knots centred on the interval where possible."""
    nx, nq = g.logx.numel(), g.logq2.numel()
    ix = (torch.searchsorted(g.logx, logx.contiguous(), right=True) - 1).clamp(0, nx - 2)
    iq = (torch.searchsorted(g.logq2, logq2.contiguous(), right=True) - 1).clamp(0, nq - 2)
    m3x = (ix - 1).clamp(0, nx - 4)
    wx = _lagrange4(logx, g.logx, m3x)
    if nq < 4:
        t = (logq2 - g.logq2[iq]) / (g.logq2[iq + 1] - g.logq2[iq])
        wq, m3q, nwq = torch.stack([1 - t, t], dim=-1), iq, 2
    else:
        m3q = (iq - 1).clamp(0, nq - 4)
        wq, nwq = _lagrange4(logq2, g.logq2, m3q), 4
    out = torch.zeros_like(logx)
    for a in range(4):
        for b in range(nwq):
            out = out + wx[..., a] * wq[..., b] * g.xf[fidx, (m3x + a) * nq + m3q + b]
    return out


class GridPDF:
    """One member of an LHAPDF6 ``lhagrid1`` set: batched :math:`x f(x, Q)` and αs(Q) in torch.

    References:
        A. Buckley et al., "LHAPDF6: parton density access in the LHC precision era",
        Eur. Phys. J. C 75 (2015) 132, arXiv:1412.7420.

    Example:
        >>> pdf = load_pdf("NNPDF31_lo_as_0118")
        >>> x = torch.tensor([1e-3, 0.1], dtype=torch.float64)
        >>> pdf.xfx(21, x, torch.tensor([100.0, 100.0])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        path: Path,
        info: dict[str, object],
        alpha_s: AlphaS,
        interpolation: str = "logcubic",
    ) -> None:
        if interpolation not in ("logcubic", "pythia"):
            msg = f"interpolation must be 'logcubic' (LHAPDF) or 'pythia', got {interpolation!r}"
            raise ValueError(msg)
        self.interpolation = interpolation
        self.path = Path(path)
        self.info = info
        self.alpha_s = alpha_s
        flav, self._subgrids = _read_grid(self.path)
        self.flavours = tuple(21 if f == 0 else f for f in flav)
        self.x_min = math.exp(min(g.logx[0].item() for g in self._subgrids))
        self.x_max = math.exp(max(g.logx[-1].item() for g in self._subgrids))
        self.q_min = math.exp(0.5 * self._subgrids[0].logq2[0].item())
        self.q_max = math.exp(0.5 * self._subgrids[-1].logq2[-1].item())
        # Column of each PDG id; a missing flavour points at an appended zero row.
        nflav = len(self.flavours)
        self._col = {
            pid: self.flavours.index(pid) if pid in self.flavours else nflav
            for pid in range(-6, 23)
        }
        self._col[0] = self._col[21]
        for g in self._subgrids:
            g.xf = torch.cat([g.xf, torch.zeros_like(g.xf[:1])])
            g.dxf = torch.cat([g.dxf, torch.zeros_like(g.dxf[:1])])
        self._lut = torch.tensor([self._col.get(p, nflav) for p in range(-6, 23)])
        self._on_device: dict[torch.device, list[_Subgrid]] = {torch.device("cpu"): self._subgrids}

    def __repr__(self) -> str:
        return (
            f"GridPDF({self.path.name!r}, x in [{self.x_min:g}, {self.x_max:g}], "
            f"Q in [{self.q_min:g}, {self.q_max:g}] GeV, {self.alpha_s})"
        )

    def _grids(self, device: torch.device) -> list[_Subgrid]:
        if device not in self._on_device:
            self._on_device[device] = [g.to(device) for g in self._subgrids]
        return self._on_device[device]

    def _columns(self, pid: int | Tensor, like: Tensor) -> Tensor:
        if isinstance(pid, Tensor):
            idx = (pid.to(torch.long) + 6).clamp(0, 28)
            out = self._lut.to(like.device)[idx]
            bad = (pid < -6) | (pid > 22)
            return torch.where(bad, len(self.flavours), out).expand(like.shape)
        return torch.full(
            like.shape,
            self._col.get(int(pid), len(self.flavours)),
            dtype=torch.long,
            device=like.device,
        )

    def xfx(self, pid: int | Tensor, x: Tensor, q: Tensor | float) -> Tensor:
        r"""Momentum density :math:`x f_{pid}(x, Q)`.

        Arguments:
            pid: PDG id (21 or 0 gluon, ±1..±5 quarks; 22 if the set has a photon), int or an
                integer tensor broadcastable with x.
            x: (...) momentum fractions. q: (...) or float, factorisation scale in GeV.

        Returns:
            (...) float64, differentiable in x and q inside the grid.
        """
        if isinstance(pid, int) and self.interpolation == "logcubic":
            return self._xfx_planned(self._col.get(int(pid), len(self.flavours)), x, q)
        x = torch.as_tensor(x, dtype=torch.float64)
        q = torch.as_tensor(q, dtype=torch.float64, device=x.device)
        if isinstance(pid, Tensor):
            x, q, pid = torch.broadcast_tensors(x, q, pid.to(x.device))
        else:
            x, q = torch.broadcast_tensors(x, q)
        cols = self._columns(pid, x)
        grids = self._grids(x.device)
        logx = torch.log(x.clamp(self.x_min, self.x_max))
        logq2 = torch.log(q * q).clamp(grids[0].logq2[0], grids[-1].logq2[-1])
        out = torch.zeros_like(x)
        flat_x, flat_q, flat_c = logx.reshape(-1), logq2.reshape(-1), cols.reshape(-1)
        flat = out.reshape(-1)
        if self.interpolation == "logcubic":
            # LHAPDF: a Q on a subgrid boundary belongs to the upper subgrid.
            edges = torch.stack([g.logq2[0] for g in grids])
            which = torch.searchsorted(edges, flat_q.contiguous(), right=True) - 1
            evaluate = _eval_subgrid
        else:
            # Pythia: to the lower one; x >= x_max gives 0.
            edges = torch.stack([g.logq2[-1] for g in grids])
            which = torch.searchsorted(edges, flat_q.contiguous(), right=False)
            evaluate = _eval_subgrid_pythia
        which = which.clamp(0, len(grids) - 1)
        for k, g in enumerate(grids):
            sel = (which == k).nonzero().squeeze(-1)
            if sel.numel():
                val = evaluate(g, flat_c[sel], flat_x[sel], flat_q[sel])
                flat = flat.index_put((sel,), val)
        out = flat.reshape(x.shape)
        if self.interpolation == "pythia":
            out = torch.where(x >= self.x_max, 0.0, out)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_plan_cache", None)  # per-process scratch, not part of the PDF
        return state

    def _plan(self, x_arg: Tensor, q_arg: Tensor | float) -> tuple[Any, ...]:
        """Flavour-independent interpolation plan at (x, Q); the last one is reused while the
        same x tensor (unmodified: same object and version) and the same Q are asked for, as the
        hadronic integrand does for its 11 flavours × 2 beams. The last 2 plans are kept (with
        references to their x and Q, so their memory is not reused; ~200 bytes a point, at
        most :data:`_PLAN_CACHE_MAX_POINTS` points); never cached for inputs that require grad."""
        x = torch.as_tensor(x_arg, dtype=torch.float64)
        q = torch.as_tensor(q_arg, dtype=torch.float64, device=x.device)
        key: tuple[Any, ...] | None = None
        if (isinstance(x_arg, Tensor) and isinstance(q_arg, Tensor | float | int)
                and x_arg.numel() <= _PLAN_CACHE_MAX_POINTS
                and not (x.requires_grad or q.requires_grad)
                and not torch.is_inference_mode_enabled()):
            q_ref = q_arg if isinstance(q_arg, Tensor) else None
            q_tag = q_arg._version if isinstance(q_arg, Tensor) else float(q_arg)
            key = (x_arg, x_arg._version, q_ref, q_tag)
            for ck, cplan in getattr(self, "_plan_cache", ()):
                if ck[0] is x_arg and ck[1] == key[1] and ck[2] is q_ref and ck[3] == q_tag:
                    return cplan
        x, q = torch.broadcast_tensors(x, q)
        grids = self._grids(x.device)
        logx = torch.log(x.clamp(self.x_min, self.x_max))
        logq2 = torch.log(q * q).clamp(grids[0].logq2[0], grids[-1].logq2[-1])
        flat_x, flat_q = logx.reshape(-1), logq2.reshape(-1)
        # LHAPDF: a Q on a subgrid boundary belongs to the upper subgrid.
        edges = torch.stack([g.logq2[0] for g in grids])
        which = torch.searchsorted(edges, flat_q.contiguous(), right=True) - 1
        which = which.clamp(0, len(grids) - 1)
        parts = []
        for k, g in enumerate(grids):
            sel = (which == k).nonzero().squeeze(-1)
            if sel.numel():
                lx, lq = flat_x[sel], flat_q[sel]
                sub = _plan_subgrid(g, lx, lq) if g.logq2.numel() >= 4 else None
                parts.append((g, sel, lx, lq, sub))
        plan = (x.shape, x.device, parts)
        if key is not None:  # two entries: the integrand alternates between x1 and x2
            self._plan_cache = [(key, plan), *getattr(self, "_plan_cache", [])[:1]]
        return plan

    def _xfx_planned(self, col: int, x: Tensor, q: Tensor | float) -> Tensor:
        shape, device, parts = self._plan(x, q)
        flat = torch.zeros(shape, dtype=torch.float64, device=device).reshape(-1)
        for g, sel, lx, lq, sub in parts:
            if sub is None:
                val = _eval_subgrid(g, torch.full_like(sel, col), lx, lq)
            else:
                val = _eval_plan(g.xf[col], g.dxf[col], sub)
            flat = flat.index_put((sel,), val)
        return flat.reshape(shape)

    def xfx_all(self, x: Tensor, q: Tensor | float) -> Tensor:
        """:math:`x f` for all of :data:`PIDS` at once: (...) -> (..., 11)."""
        x = torch.as_tensor(x, dtype=torch.float64)
        pid = torch.tensor(PIDS, device=x.device)
        q = torch.as_tensor(q, dtype=torch.float64, device=x.device)
        x, q = torch.broadcast_tensors(x, q)
        return self.xfx(pid, x[..., None].expand(*x.shape, 11), q[..., None].expand(*x.shape, 11))

    def alphas(self, q: Tensor | float) -> Tensor:
        """Strong coupling αs(Q) at scale q (GeV), same shape as q."""
        return self.alpha_s(torch.as_tensor(q, dtype=torch.float64))


# ---------------------------------------------------------------- locating sets


def pdf_search_paths() -> list[Path]:
    """Directories searched for LHAPDF sets, in order: each entry of ``LHAPDF_DATA_PATH``
    (then the older ``LHAPATH``), then the ``pythia8mc`` wheel's
    ``<sys.prefix>/share/Pythia8/pdfdata`` (and ``$PYTHIA8DATA/../pdfdata``)."""
    dirs: list[Path] = []
    for var in ("LHAPDF_DATA_PATH", "LHAPATH"):
        dirs += [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]
    if os.environ.get("PYTHIA8DATA"):
        dirs.append(Path(os.environ["PYTHIA8DATA"]).parent / "pdfdata")
    dirs.append(Path(sys.prefix) / "share" / "Pythia8" / "pdfdata")
    return list(dict.fromkeys(dirs))


def find_pdf(name: str, member: int = 0) -> tuple[Path, Path | None]:
    """Locate ``<name>_<member:04d>.dat`` and its ``.info`` (None if absent).

    Each search directory is tried with the LHAPDF layout ``<dir>/<name>/<name>_0000.dat`` +
    ``<dir>/<name>/<name>.info`` and with a bare ``<dir>/<name>_0000.dat``. ``name`` may also
    be a path to a ``.dat`` file.

    Raises:
        InputFileError: the set is in none of the directories (they are listed).
    """
    direct = Path(name)
    if direct.suffix == ".dat" and direct.is_file():
        info = direct.parent / (direct.name.rsplit("_", 1)[0] + ".info")
        return direct, info if info.is_file() else None
    fname = f"{name}_{member:04d}.dat"
    tried: list[str] = []
    for d in pdf_search_paths():
        for dat, info in (
            (d / name / fname, d / name / f"{name}.info"),
            (d / fname, d / f"{name}.info"),
        ):
            tried.append(str(dat))
            if dat.is_file():
                return dat, info if info.is_file() else None
    msg = (
        f"LHAPDF set member not found; looked for {fname} in: {', '.join(tried)}. "
        "Set LHAPDF_DATA_PATH to the directory holding the set"
    )
    raise InputFileError(name, msg)


def load_pdf(
    name: str = "NNPDF31_lo_as_0118",
    member: int = 0,
    *,
    alpha_s_mz: float | None = None,
    alpha_s_order: int | None = None,
    interpolation: str = "logcubic",
) -> GridPDF:
    """Load (once; cached) one member of an LHAPDF6 set by name, see :func:`find_pdf`.

    Arguments:
        name: set name, e.g. ``"NNPDF31_lo_as_0118"``, or a path to a ``.dat`` file.
        member: member number (0 = central).
        alpha_s_mz: αs(m_Z); default from the ``.info`` (``AlphaS_MZ``), else 0.118.
        alpha_s_order: Pythia ``alphaSorder`` (0 fixed, 1 one loop, 2, 3); default
            ``AlphaS_OrderQCD + 1`` from the ``.info``, else 1 (one-loop running, right for LO
            sets such as Pythia's bare ``NNPDF31_lo_as_0118_0000.dat``, which has no ``.info``).
            With neither argument given, an ``AlphaS_Type: ipol`` table in the ``.info`` is used.
        interpolation: ``"logcubic"`` (LHAPDF 6 default) or ``"pythia"`` (Pythia 8
            ``LHAGrid1``: 4-point Lagrange in ln x, ln Q; 0 for x >= x_max), to reproduce
            Pythia's own numbers in cross-section comparisons.

    Raises:
        InputFileError: the set is not found (the message lists where it looked) or malformed.
    """
    dat, info_path = find_pdf(name, member)
    info = str(info_path) if info_path else None
    return _load_cached(str(dat.resolve()), info, alpha_s_mz, alpha_s_order, interpolation)


@functools.lru_cache(maxsize=16)
def _load_cached(
    dat: str,
    info_path: str | None,
    alpha_s_mz: float | None,
    alpha_s_order: int | None,
    interpolation: str,
) -> GridPDF:
    info = _read_info(Path(info_path) if info_path else None)
    ipol = None
    if alpha_s_mz is None and alpha_s_order is None and info.get("AlphaS_Type") == "ipol":
        qs = info.get("AlphaS_Qs", [])
        vals = info.get("AlphaS_Vals", [])
        if isinstance(qs, list) and isinstance(vals, list) and len(qs) == len(vals) > 1:
            ipol = (tuple(float(q) ** 2 for q in qs), tuple(float(v) for v in vals))
    mz_value = alpha_s_mz if alpha_s_mz is not None else info.get("AlphaS_MZ", 0.118)
    order = alpha_s_order if alpha_s_order is not None else info.get("AlphaS_OrderQCD", 0) + 1
    alpha_s = AlphaS(alpha_s_mz=float(mz_value), order=int(order), ipol=ipol)  # type: ignore[arg-type]
    return GridPDF(Path(dat), info, alpha_s, interpolation)
