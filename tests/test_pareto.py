"""Pareto-tail shape k̂ of importance weights (unfoldmem/pareto.py).

Independent reference: weights w = U^(−ξ) with U uniform have an exact Pareto tail of shape
ξ (P(w > t) = t^(−1/ξ)); uniform weights have a bounded tail, k = −1 (generalized Pareto with
k = −1 is uniform). The spread of k̂ over 200 samples of 20 000 sets the tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from unfoldmem.pareto import K_RELIABLE, pareto_k, tail_size


@pytest.mark.parametrize("xi", [0.2, 0.5, 0.8, 1.2])
def test_recovers_the_shape_of_a_pareto_tail(xi: float) -> None:
    """Mean k̂ over 100 samples within 4 standard errors (plus the prior's pull to 0.5, at
    most 10/(M + 10) · |ξ − 0.5|) of ξ; one sample's k̂ scatters by ≲ 0.1."""
    g = torch.Generator().manual_seed(int(10 * xi))
    n = 20000
    lw = -xi * torch.log(torch.rand(100, n, generator=g, dtype=torch.float64))
    k = pareto_k(lw)
    m = tail_size(n)
    tol = 4 * float(k.std()) / math.sqrt(len(k)) + 10 / (m + 10) * abs(xi - 0.5)
    assert abs(float(k.mean()) - xi) < tol
    assert float(k.std()) < 0.12


def test_bounded_weights_have_negative_k_and_scale_is_irrelevant() -> None:
    """Uniform weights: k̂ ≈ −1 (< 0); adding a constant to the log weights changes nothing."""
    g = torch.Generator().manual_seed(3)
    lw = torch.log(torch.rand(20, 20000, generator=g, dtype=torch.float64))
    k = pareto_k(lw)
    assert (k < 0).all() and abs(float(k.mean()) + 1) < 0.1
    torch.testing.assert_close(pareto_k(lw + 700.0), k, rtol=0, atol=1e-9)


def test_largest_weights_suffice() -> None:
    """The fit reads only the tail: the top 500 of 20 000 weights with n = 20 000 give the
    same k̂ as the full sample; −inf entries (missing weights) are ignored."""
    g = torch.Generator().manual_seed(4)
    lw = -0.6 * torch.log(torch.rand(3, 20000, generator=g, dtype=torch.float64))
    top = torch.topk(lw, 500, -1).values
    torch.testing.assert_close(pareto_k(top, 20000), pareto_k(lw), rtol=0, atol=1e-12)
    padded = torch.cat([top, torch.full((3, 50), -math.inf, dtype=torch.float64)], -1)
    torch.testing.assert_close(pareto_k(padded, 20000), pareto_k(lw), rtol=0, atol=1e-12)


def test_too_few_weights_give_nan() -> None:
    """Fewer than 5 exceedances: no fit (NaN), never a made-up number; K_RELIABLE is 0.7."""
    assert torch.isnan(pareto_k(torch.tensor([0.0, 1.0, 2.0]))).all()
    assert K_RELIABLE == 0.7
