"""Tests of unfoldmem.flows.spline: the fused rational-quadratic spline inverse."""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from zuko.transforms import MonotonicRQSTransform

from unfoldmem.flows.spline import _exp, rqs_inverse, spline_constants


def test_fused_spline_inverse_equals_zuko() -> None:
    """rqs_inverse (one numba loop) equals zuko's MonotonicRQSTransform(widths, heights,
    derivatives, bound 5, slope 1e-3).inv: to 1e-10 in float64 (exact exp), including points at
    the knots and outside [-5, 5] (identity); in float32 (polynomial exp) it is no further from
    the float64 result than zuko's own float32 inverse (x 1.5). Reference: zuko's transform."""
    g = torch.Generator().manual_seed(0)
    bins = 8
    params = torch.randn(4000, 3, 3 * bins - 1, generator=g, dtype=torch.float64)
    y = 3 * torch.randn(4000, 3, generator=g, dtype=torch.float64)

    def zuko_inv(dtype: torch.dtype) -> torch.Tensor:
        p = params.to(dtype)
        t = MonotonicRQSTransform(p[..., :bins], p[..., bins : 2 * bins], p[..., 2 * bins :],
                                  slope=1e-3)
        return t.inv(y.to(dtype)).double(), t.vertical.double()

    _, knots = zuko_inv(torch.float64)
    j = torch.randint(1, bins, (200, 3), generator=g)
    y[:200] = knots[:200].gather(-1, j[..., None])[..., 0]
    ref, _ = zuko_inv(torch.float64)
    got = rqs_inverse(params, y, bins, slope=1e-3)
    assert float((got - ref).abs().max()) < 1e-10
    outside = y.abs() >= 5
    assert int(outside.sum()) > 100 and bool((got[outside] == y[outside]).all())
    got32 = rqs_inverse(params.float(), y.float(), bins, slope=1e-3).double()
    zuko32 = zuko_inv(torch.float32)[0]
    assert float((got32 - ref).abs().max()) < 1.5 * float((zuko32 - ref).abs().max())


def test_polynomial_exp_accuracy() -> None:
    """The float32 polynomial exps (exp(v/8)^8 and exp(v/16)^16, degree-8 Taylor) for the bin and
    knot-derivative logits are within 1e-6 and 2e-6 relative of the exact exp over their whole
    ranges |v| <= |log 1e-3| / 2 and |log 1e-3| (zuko's bounds for the default minimum slope).
    Reference: numpy's exp in float64."""
    cst, fast = spline_constants(1e-3, 5.0, torch.float32)
    assert fast

    @numba.njit
    def apply(v: np.ndarray, cst: np.ndarray, wide: bool) -> np.ndarray:  # pragma: no cover - compiled
        out = np.empty_like(v)
        for i in range(v.shape[0]):
            out[i] = _exp(v[i], cst, True, wide)
        return out

    ls = abs(math.log(1e-3))
    for bound, wide, tol in ((ls / 2, False, 1e-6), (ls, True, 2e-6)):  # bins, knot derivatives
        v = np.linspace(-bound, bound, 20001).astype(np.float32)
        got = apply(v, cst, wide).astype(np.float64)
        assert float(np.abs(got / np.exp(v.astype(np.float64)) - 1).max()) < tol
    assert not spline_constants(1e-4, 5.0, torch.float32)[1]  # |log slope| > 7.2: libm exp
