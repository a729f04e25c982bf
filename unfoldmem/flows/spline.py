r"""Fused inverse of zuko's monotonic rational-quadratic spline, one numba loop per row.

zuko builds a ``MonotonicRQSTransform`` object per call (softmax, cumsum, pad, gathers: ~40 tensor
passes); sampling needs only the inverse, so one compiled loop per row does it: the bounded bin
logits are exponentiated in a vectorised pass (a polynomial exp in float32), then per feature the
bin search and the root of the quadratic, with the exps of only the two knot derivatives at the
ends of the bin found.

References:
    | Neural Spline Flows (Durkan et al., 2019) https://arxiv.org/abs/1906.04032
    | zuko.transforms.MonotonicRQSTransform (the parametrisation and bounds reproduced here)
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

__all__ = ["rqs_inverse", "spline_constants", "spline_rows_inverse"]

# Fast math may reorder sums (float rounding only); no "nnan"/"ninf": |y| >= B must stay exact.
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@numba.njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy", inline="always")
def _exp(v: float, cst: np.ndarray, fast: bool, wide: bool) -> float:  # pragma: no cover - compiled
    # exp(v) as exp(v/8)^8 for |v| < 3.6 (wide: exp(v/16)^16 for |v| < 7.2) with a degree-8 Taylor
    # polynomial at |v/8| < 0.45: relative error < 1e-6 (wide: 2e-6) in float32 (tested),
    # vectorisable and without a libm call.
    if not fast:
        return math.exp(v)
    one = cst[1]
    u = v * (cst[16] if wide else cst[2])
    e = one + u * (one + u * cst[3] * (one + u * cst[4] * (one + u * cst[5] * (one + u * cst[6] * (
        one + u * cst[7] * (one + u * cst[8] * (one + u * cst[9])))))))
    e = e * e
    e = e * e
    e = e * e
    return e * e if wide else e


@numba.njit(nogil=True, cache=True, fastmath=_FAST, error_model="numpy")
def _bin_exps(src: np.ndarray, dst: np.ndarray, cst: np.ndarray, fast: bool) -> None:  # pragma: no cover
    # zuko bounds a bin logit v by v / (1 + |2 v / log slope|) before its softmax
    c, one = cst[0], cst[1]
    for j in range(dst.shape[0]):
        v = src[j]
        dst[j] = _exp(v / (one + abs(v) * c), cst, fast, False)


@numba.njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract"}, error_model="numpy")
def _spline_rows(
    p: np.ndarray, x: np.ndarray, cols: np.ndarray, bins: int, cst: np.ndarray, fast: bool
) -> None:  # pragma: no cover - compiled
    # In place x[r, cols[i]] <- inverse of zuko's MonotonicRQSTransform (bound B) with row r of
    # p laid out [widths_i (K), heights_i (K) for each i | derivatives_i (K - 1) for each i].
    f = cols.shape[0]
    m = 2 * bins * f
    e = np.empty(m, dtype=x.dtype)
    one, dc, b, zero, half, two, four = cst[1], cst[10], cst[11], cst[12], cst[13], cst[14], cst[15]
    for r in range(x.shape[0]):
        row = p[r]
        _bin_exps(row[:m], e, cst, fast)
        for i in range(f):
            y = x[r, cols[i]]
            if not (-b < y < b):  # identity outside [-B, B], as zuko
                continue
            q = i * 2 * bins
            sw = zero
            sh = zero
            for j in range(bins):
                sw += e[q + j]
                sh += e[q + bins + j]
            target = (y + b) * (half / b) * sh  # y's knot coordinate before normalising
            k = 0
            hk = zero
            wk = zero
            while k < bins - 1 and hk + e[q + bins + k] < target:
                hk += e[q + bins + k]
                wk += e[q + k]
                k += 1
            rh = two * b / sh
            rw = two * b / sw
            y0 = hk * rh - b
            y1 = (hk + e[q + bins + k]) * rh - b
            x0 = wk * rw - b
            x1 = (wk + e[q + k]) * rw - b
            # derivative logits at the bin's ends (zuko pads the outer knots' slopes with 1)
            o = m + i * (bins - 1) + k
            u0 = row[o - 1] if k > 0 else zero
            u1 = row[o] if k < bins - 1 else zero
            d0 = _exp(u0 / (one + abs(u0) * dc), cst, fast, True) if k > 0 else one
            d1 = _exp(u1 / (one + abs(u1) * dc), cst, fast, True) if k < bins - 1 else one
            dy = y1 - y0
            dx = x1 - x0
            s = dy / dx
            yy = y - y0
            t = d0 + d1 - two * s
            qa = dy * (s - d0) + yy * t
            qb = dy * d0 - yy * t
            qc = -s * yy
            z = two * qc / (-qb - math.sqrt(qb * qb - four * qa * qc))
            x[r, cols[i]] = x0 + z * dx


def spline_constants(slope: float, bound: float, dtype: torch.dtype) -> tuple[np.ndarray, bool]:
    """The kernel's constants for zuko's minimum ``slope`` and ``bound``, and whether the
    polynomial exp is used (float32, and bounded logits |v| <= |log slope| < 7.2)."""
    ls = abs(math.log(slope))
    vals = [2 / ls, 1.0, 0.125, *(1 / k for k in range(2, 9)), 1 / ls, bound, 0.0, 0.5, 2.0, 4.0,
            1 / 16]
    cst = np.array(vals, dtype=np.float32 if dtype == torch.float32 else np.float64)
    return cst, dtype == torch.float32 and ls < 7.2  # bounded derivative logits: |v| < |log slope|


def rqs_inverse(params: Tensor, y: Tensor, bins: int, slope: float = 1e-3,
                bound: float = 5.0) -> Tensor:
    r"""Inverse of zuko's ``MonotonicRQSTransform`` in one fused pass; (N, F, 3K - 1), (N, F) -> (N, F).

    ``params`` are the unconstrained (widths K, heights K, derivatives K - 1) of each feature in
    zuko's order (``unpack`` of a coupling hyper-network's output). Equals
    ``MonotonicRQSTransform(w, h, d, bound, slope).inv(y)``: in float64 to rounding, in float32
    (polynomial exp) no less accurately than zuko's own float32 inverse (tested).
    """
    n, f = y.shape
    p = torch.cat([params[..., : 2 * bins].reshape(n, -1), params[..., 2 * bins :].reshape(n, -1)], -1)
    x = y.clone(memory_format=torch.contiguous_format)
    spline_rows_inverse(p, x, torch.arange(f), bins, spline_constants(slope, bound, x.dtype))
    return x


def spline_rows_inverse(p: Tensor, x: Tensor, cols: Tensor, bins: int,
                        constants: tuple[np.ndarray, bool]) -> None:
    r"""In place ``x[:, cols]`` <- the spline inverse, for a coupling's hyper-network output p.

    Arguments:
        p: (N, (3K - 1) F) CPU rows [widths_i (K), heights_i (K) for each transformed feature i |
            derivatives_i (K - 1) for each i] (unconstrained, zuko's parametrisation).
        x: (N, D) contiguous CPU rows, changed in place; cols (F,) the transformed columns.
        constants: :func:`spline_constants` of the flow.
    """
    cst, fast = constants
    _spline_rows(p.detach().contiguous().numpy(), x.detach().numpy(), cols.numpy(), bins, cst,
                 fast)
