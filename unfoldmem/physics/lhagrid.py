r"""LHAPDF6 ``lhagrid1`` files: reading the subgrids and interpolating one subgrid.

Interpolation follows LHAPDF 6's ``logcubic`` interpolator (Buckley et al., arXiv:1412.7420):
cubic Hermite splines in ln x then ln Q², knot derivatives from finite differences; Pythia 8's
``LHAGrid1`` 4-point Lagrange scheme is the alternative. :class:`~unfoldmem.physics.pdf.GridPDF`
chooses the subgrid and the extrapolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.errors import InputFileError

__all__ = [
    "Subgrid",
    "eval_fixed_q",
    "eval_plan",
    "eval_plan_columns",
    "eval_subgrid",
    "eval_subgrid_pythia",
    "fixed_q_columns",
    "hermite",
    "plan_subgrid",
    "read_grid",
    "read_info",
]


def hermite(t: Tensor, vl: Tensor, dl: Tensor, vh: Tensor, dh: Tensor) -> Tensor:
    """Cubic Hermite interpolation on [0, 1] with end values and (scaled) end derivatives."""
    t2 = t * t
    t3 = t2 * t
    return (
        (2 * t3 - 3 * t2 + 1) * vl
        + (t3 - 2 * t2 + t) * dl
        + (-2 * t3 + 3 * t2) * vh
        + (t3 - t2) * dh
    )





@dataclass
class Subgrid:
    logx: Tensor  # (nx,)
    logq2: Tensor  # (nq,)
    xf: Tensor  # (nflav, nx * nq), row-major in (x, Q)
    dxf: Tensor  # (nflav, nx * nq): d(xf)/d ln x at the knots

    def to(self, device: torch.device) -> Subgrid:
        return Subgrid(*(t.to(device) for t in (self.logx, self.logq2, self.xf, self.dxf)))


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


def read_info(path: Path | None) -> dict[str, object]:
    """Flat ``key: value`` lines of an LHAPDF ``.info`` file (YAML subset LHAPDF writes)."""
    if path is None or not path.is_file():
        return {}
    info: dict[str, object] = {}
    for line in path.read_text().splitlines():
        if ":" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            info[key.strip()] = _parse_value(value)
    return info


def read_grid(path: Path) -> tuple[list[int], list[Subgrid]]:
    blocks = path.read_text().split("\n---")
    flav_ref: list[int] | None = None
    subgrids: list[Subgrid] = []
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
            Subgrid(logx, torch.from_numpy(np.log(qs * qs)), xf.flatten(1), dxf.flatten(1))
        )
    if flav_ref is None:
        raise InputFileError(str(path), "no lhagrid1 subgrid found (blocks separated by '---')")
    return flav_ref, subgrids


def eval_subgrid(g: Subgrid, fidx: Tensor, logx: Tensor, logq2: Tensor) -> Tensor:
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
        return hermite(tx, v0, g.dxf[fidx, lo] * dlx, v1, g.dxf[fidx, hi] * dlx)

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
    return hermite((logq2 - lq0) / dq1, vl, left * dq1, vh, right * dq1)


def _hermite_basis(t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four coefficients of :func:`hermite` at t (same operations, so bit-identical)."""
    t2 = t * t
    t3 = t2 * t
    return 2 * t3 - 3 * t2 + 1, t3 - 2 * t2 + t, -2 * t3 + 3 * t2, t3 - t2


def _x_step(logx_knots: Tensor, logx: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """The ln x interval of each point: knot index ix, its width and the Hermite basis there."""
    nx = logx_knots.numel()
    ix = (torch.searchsorted(logx_knots, logx.contiguous(), right=True) - 1).clamp(0, nx - 2)
    dlx = logx_knots[ix + 1] - logx_knots[ix]
    return ix, dlx, _hermite_basis((logx - logx_knots[ix]) / dlx)


def _q_step(logq2_knots: Tensor, logq2: Tensor) -> tuple[Tensor, ...]:
    """The ln Q² interval of each point and what :func:`_along_q` needs there: knot index iq,
    width dq1, first/last-interval flags, the neighbours' spacings (1 at the edges) and the
    Hermite basis."""
    nq = logq2_knots.numel()
    iq = (torch.searchsorted(logq2_knots, logq2.contiguous(), right=True) - 1).clamp(0, nq - 2)
    lq0, lq1 = logq2_knots[iq], logq2_knots[iq + 1]
    dq1 = lq1 - lq0
    dq0 = lq0 - logq2_knots[(iq - 1).clamp(min=0)]
    dq2 = logq2_knots[(iq + 2).clamp(max=nq - 1)] - lq1
    first, last = iq == 0, iq == nq - 2
    den0, den2 = torch.where(first, 1.0, dq0), torch.where(last, 1.0, dq2)
    return iq, dq1, first, last, den0, den2, _hermite_basis((logq2 - lq0) / dq1)


def plan_subgrid(g: Subgrid, logx: Tensor, logq2: Tensor) -> tuple[Any, ...]:
    """Everything of :func:`eval_subgrid` that does not depend on the flavour (knot indices,
    Hermite coefficients, Q spacings), so a plan serves all flavours at the same (x, Q)."""
    nq = g.logq2.numel()
    ix, dlx, cx = _x_step(g.logx, logx)
    iq, dq1, first, last, den0, den2, cq = _q_step(g.logq2, logq2)
    knots = []
    for j in (iq - 1, iq, iq + 1, iq + 2):
        j = j.clamp(0, nq - 1)
        knots.append((ix * nq + j, (ix + 1) * nq + j))
    return dlx, cx, knots, dq1, first, last, den0, den2, cq


def _along_q(v: list[Tensor], dq1: Tensor, first: Tensor, last: Tensor, den0: Tensor,
             den2: Tensor, b: tuple[Tensor, ...]) -> Tensor:
    """The cubic Hermite step in log Q² of :func:`eval_plan`, from the values interpolated in
    x at the four Q knots: the one expression both layouts share (bit for bit)."""
    vll, vl, vh, vhh = v
    b0, b1, b2, b3 = b
    mid = (vh - vl) / dq1
    left = torch.where(first, mid, 0.5 * (mid + (vl - vll) / den0))
    right = torch.where(last, mid, 0.5 * (mid + (vhh - vh) / den2))
    return b0 * vl + b1 * (left * dq1) + b2 * vh + b3 * (right * dq1)


def eval_plan(row: Tensor, drow: Tensor, plan: tuple[Any, ...]) -> Tensor:
    """:func:`eval_subgrid` for one flavour (its grid row and derivative row (K,), result (N,))
    or for F flavours at once (rows (F, K), result (F, N); the same elementwise operations, so
    each row equals its one-flavour result bit for bit) from a plan."""
    dlx, (a0, a1, a2, a3), knots, dq1, first, last, den0, den2, b = plan

    def at_q(lo: Tensor, hi: Tensor) -> Tensor:
        v0, v1 = row.index_select(-1, lo), row.index_select(-1, hi)
        d0, d1 = drow.index_select(-1, lo) * dlx, drow.index_select(-1, hi) * dlx
        return a0 * v0 + a1 * d0 + a2 * v1 + a3 * d1

    return _along_q([at_q(lo, hi) for lo, hi in knots], dq1, first, last, den0, den2, b)


def eval_plan_columns(cols: Tensor, dcols: Tensor, plan: tuple[Any, ...]) -> Tensor:
    """:func:`eval_plan` for F flavours laid out knot-major: grid values and derivatives
    (K, F), result (N, F). One gather fetches the F contiguous values of a knot (instead of F
    strided gathers); the elementwise operations are those of :func:`eval_plan`, so column f
    equals the one-flavour result bit for bit."""
    dlx, (a0, a1, a2, a3), knots, dq1, first, last, den0, den2, (b0, b1, b2, b3) = plan
    dlx, a0, a1, a2, a3 = (t[:, None] for t in (dlx, a0, a1, a2, a3))
    dq1, first, last, den0, den2 = (t[:, None] for t in (dq1, first, last, den0, den2))
    b = tuple(t[:, None] for t in (b0, b1, b2, b3))
    return _along_q([_along_x(cols, dcols, lo, hi, dlx, (a0, a1, a2, a3)) for lo, hi in knots],
                    dq1, first, last, den0, den2, b)


def _along_x(cols: Tensor, dcols: Tensor, lo: Tensor, hi: Tensor, dlx: Tensor,
             a: tuple[Tensor, ...]) -> Tensor:
    """The cubic Hermite step in ln x on knot-major columns (K, F) between knots lo and hi
    (N,), with the interval widths dlx and basis ``a`` (N, 1) each: (N, F)."""
    v0, v1 = cols.index_select(0, lo), cols.index_select(0, hi)
    d0, d1 = dcols.index_select(0, lo) * dlx, dcols.index_select(0, hi) * dlx
    return a[0] * v0 + a[1] * d0 + a[2] * v1 + a[3] * d1


def fixed_q_columns(g: Subgrid, logq2: float, cols: Tensor) -> tuple[Tensor, Tensor]:
    """Values and ln-x derivatives of flavours ``cols`` (F,) at one ln Q², per x knot: (nx, F)
    each. LHAPDF's Hermite step in ln Q² (:func:`_along_q`) applied to the knots themselves; as
    both steps of :func:`eval_subgrid` are linear in the knot values, interpolating these in
    ln x (:func:`eval_fixed_q`) equals it at that Q to rounding. Needs ≥ 4 Q knots."""
    nx, nq = g.logx.numel(), g.logq2.numel()
    lq = torch.tensor([logq2], dtype=g.logq2.dtype, device=g.logq2.device)
    iq, dq1, first, last, den0, den2, b = _q_step(g.logq2, lq)
    unit = torch.eye(4, dtype=g.xf.dtype, device=g.xf.device)[:, :, None]  # (4 knots, 4, 1)
    coef = [_along_q(list(unit[k]), dq1, first, last, den0, den2, b) for k in range(4)]
    xf = g.xf.index_select(0, cols).view(-1, nx, nq)
    dxf = g.dxf.index_select(0, cols).view(-1, nx, nq)
    v = torch.zeros(nx, len(cols), dtype=g.xf.dtype, device=g.xf.device)
    d = torch.zeros_like(v)
    for k, step in enumerate((-1, 0, 1, 2)):
        j = int((iq + step).clamp(0, nq - 1))
        v = v + coef[k] * xf[:, :, j].T
        d = d + coef[k] * dxf[:, :, j].T
    return v, d


def eval_fixed_q(logx_knots: Tensor, v: Tensor, d: Tensor, logx: Tensor) -> Tensor:
    """(N,) ln x -> (N, F): LHAPDF's cubic Hermite step in ln x on the columns of
    :func:`fixed_q_columns` (one step per point instead of four and the ln Q² one)."""
    ix, dlx, a = _x_step(logx_knots, logx)
    return _along_x(v, d, ix, ix + 1, dlx[:, None], tuple(t[:, None] for t in a))


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


def eval_subgrid_pythia(g: Subgrid, fidx: Tensor, logx: Tensor, logq2: Tensor) -> Tensor:
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


