"""Likelihood scans against analytic intervals of Gaussian toys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from unfoldmem.errors import InputFileError
from unfoldmem.inference.calibration import GaussianToy, LinearGaussianToy, toy_likelihoods
from unfoldmem.inference.scan import (
    CL_68,
    Scan1D,
    Scan2D,
    SplineBasis,
    delta_chi2,
    scan,
    summed_log_likelihood,
)

S, N = 10.0, 400


@pytest.fixture(scope="module")
def gauss() -> tuple[GaussianToy, object]:
    toy = GaussianToy.sample(173.0, S, N, seed=1)
    return toy, toy_likelihoods(toy, {"m_t": np.linspace(170.0, 176.0, 13)})


def test_spline_basis_is_scipy_not_a_knot() -> None:
    """Weights · y equals scipy's CubicSpline (not-a-knot) and its derivative (autograd)."""
    x = np.array([0.0, 0.4, 1.1, 1.5, 2.3, 3.0])
    y = np.sin(x) + x**2
    ref = CubicSpline(x, y)
    t = torch.linspace(-0.2, 3.2, 57, dtype=torch.float64, requires_grad=True)
    s = SplineBasis(x).weights(t) @ torch.from_numpy(y)
    (g,) = torch.autograd.grad(s.sum(), t)
    np.testing.assert_allclose(s.detach().numpy(), ref(t.detach().numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.numpy(), ref(t.detach().numpy(), 1), rtol=1e-10, atol=1e-10)


def test_gaussian_scan_matches_analytic(gauss) -> None:
    """x_i ~ N(μ, s): −2ΔlnL = n(μ − x̄)²/s² exactly, so μ̂ = x̄ and the 68 %/95 % intervals are
    x̄ ± z s/√n with z = 1, 1.95996 (Wilks is exact for a Gaussian mean)."""
    toy, lik = gauss
    res = scan(lik)
    assert isinstance(res, Scan1D)
    xbar, sig = float(toy.x.mean()), S / math.sqrt(N)
    assert res.theta_hat == pytest.approx(xbar, abs=1e-8)
    assert res.sigma == pytest.approx(sig, rel=1e-8)
    for cl in (CL_68, 0.95):
        z = math.sqrt(delta_chi2(cl, 1))
        lo, hi = res.intervals[cl]
        assert lo == pytest.approx(xbar - z * sig, abs=1e-7)
        assert hi == pytest.approx(xbar + z * sig, abs=1e-7)
    assert res.mc_error == {}  # no MC error in the toy


def test_interval_open_at_grid_edge(gauss) -> None:
    """A grid narrower than the 95 % interval reports the open end as None."""
    toy, _ = gauss
    xbar = float(toy.x.mean())
    lik = toy_likelihoods(toy, {"m_t": np.linspace(xbar - 0.6, xbar + 1.5, 8)})
    res = scan(lik)
    assert res.intervals[0.95][0] is None and res.intervals[0.95][1] is not None
    assert res.intervals[CL_68][0] == pytest.approx(xbar - S / math.sqrt(N), abs=1e-7)


def test_flagged_events_are_excluded(gauss) -> None:
    """Events with flag != 0 drop out: same scan as the subset without them."""
    _, lik = gauss
    lik2 = lik.subset(torch.arange(lik.n_events))
    lik2.flag[:10] = 1
    lnl2, _ = summed_log_likelihood(lik2)
    lnl_ref, _ = summed_log_likelihood(lik.subset(torch.arange(10, lik.n_events)))
    assert torch.equal(lnl2, lnl_ref)
    assert scan(lik2).n_flagged == 10


def test_chunked_sum_equals_single_sum(gauss) -> None:
    """Chunking changes only the summation order: equal to 1e-12 relative."""
    _, lik = gauss
    a, va = summed_log_likelihood(lik)
    b, vb = summed_log_likelihood(lik, chunk_size=37)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(va.numpy(), vb.numpy(), rtol=1e-12, atol=0)


def test_mc_error_matches_spread_over_noise_realisations(gauss) -> None:
    """The replica MC error of μ̂ equals the spread of μ̂ over independent MC-noise realisations
    (reference: the brute-force spread; tolerance 4σ of the two standard-deviation estimates)."""
    toy, _ = gauss
    grid = {"m_t": np.linspace(170.0, 176.0, 13)}
    hats = [scan(toy_likelihoods(toy, grid, mc_noise=0.01, seed=s), n_replicas=0).theta_hat
            for s in range(30)]
    res = scan(toy_likelihoods(toy, grid, mc_noise=0.01, seed=99), n_replicas=60, seed=5)
    ratio = res.mc_error["theta_hat"] / float(np.std(hats, ddof=1))
    tol = 4 * math.sqrt(1 / (2 * 29) + 1 / (2 * 59))
    assert abs(ratio - 1) < tol
    assert res.mc_error["theta_hat"] > 0


def test_2d_contours_and_profiles_match_analytic_ellipse() -> None:
    """y ~ N(a + b z, s): lnL is exactly quadratic with covariance C = s²(ZᵀZ)⁻¹, so the
    profile 68 % intervals are θ̂ ± √C_jj and the 95 % contour is the ellipse Δᵀ C⁻¹ Δ = 5.99."""
    toy = LinearGaussianToy.sample(1.0, 2.0, 0.5, 300, seed=2)
    lik = toy_likelihoods(toy, {"a": np.linspace(0.7, 1.4, 8), "b": np.linspace(1.6, 2.3, 9)})
    res = scan(lik)
    assert isinstance(res, Scan2D)
    cov = toy.covariance().numpy()
    zz = np.stack([np.ones(300), toy.z.numpy()], -1)
    hat = np.linalg.solve(zz.T @ zz, zz.T @ toy.y.numpy())
    np.testing.assert_allclose(res.theta_hat, hat, atol=1e-7)
    for j, name in enumerate(("a", "b")):
        lo, hi = res.profile_intervals[name][CL_68]
        # the profile is tabulated on a 201-point grid: allow a fraction of its spacing
        assert lo == pytest.approx(hat[j] - math.sqrt(cov[j, j]), abs=2e-3)
        assert hi == pytest.approx(hat[j] + math.sqrt(cov[j, j]), abs=2e-3)
    (line,) = res.contours[0.95]
    d = line - hat
    q = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    np.testing.assert_allclose(q, delta_chi2(0.95, 2), rtol=5e-3)
    assert res.to_dict()["params"] == ["a", "b"]


def test_one_parameter_of_two_is_profiled() -> None:
    """Scanning 'a' alone on an (a, b) grid profiles b. With z = ±1 the estimates are
    uncorrelated (ZᵀZ = n·1), so the profile is exact even on a coarse b grid: â = ȳ and the
    68 % interval is â ± s/√n (reference: least squares with orthogonal regressors)."""
    n, s = 200, 0.5
    g = torch.Generator().manual_seed(4)
    z = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(torch.float64)
    y = 1.0 + 0.3 * z + s * torch.randn(n, generator=g, dtype=torch.float64)
    toy = LinearGaussianToy(y, z, s)
    lik = toy_likelihoods(toy, {"a": np.linspace(0.8, 1.2, 9), "b": np.linspace(0.1, 0.5, 5)})
    res = scan(lik, ["a"])
    ahat = float(y.mean())
    assert res.theta_hat == pytest.approx(ahat, abs=1e-8)
    assert res.sigma == pytest.approx(s / math.sqrt(n), rel=1e-7)
    res_b = scan(lik, ["b"])
    assert res_b.theta_hat == pytest.approx(float((y * z).mean()), abs=1e-8)


def test_user_errors() -> None:
    """Unknown parameter and non-rectilinear grids are InputFileErrors naming the problem."""
    toy = GaussianToy.sample(0.0, 1.0, 10, seed=0)
    lik = toy_likelihoods(toy, {"mu": np.linspace(-1, 1, 5)})
    with pytest.raises(InputFileError, match="no parameter 'm_t'"):
        scan(lik, ["m_t"])
    lik.theta_grid["mu"][1] = lik.theta_grid["mu"][0]
    with pytest.raises(InputFileError, match="not a full rectilinear grid"):
        scan(lik)
