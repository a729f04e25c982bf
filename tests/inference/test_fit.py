"""Maximum-likelihood fits against closed-form estimates and uncertainties of toy models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from unfoldmem.inference.calibration import (
    ExponentialToy,
    GaussianToy,
    LinearGaussianToy,
    toy_likelihoods,
)
from unfoldmem.inference.fit import callable_objective, fit, grid_objective
from unfoldmem.inference.scan import CL_68


@pytest.mark.parametrize("method", ["minuit", "lbfgs"])
def test_gaussian_mean_exact(method: str) -> None:
    """x_i ~ N(μ, s): μ̂ = x̄, σ = s/√n; MINOS = ±σ (parabolic lnL) — closed form."""
    toy = GaussianToy.sample(173.0, 10.0, 400, seed=1)
    res = fit(callable_objective(toy, ["m_t"], n_events=400), {"m_t": 170.0}, method=method)
    assert res.valid and res.method == method
    assert res.value("m_t") == pytest.approx(float(toy.x.mean()), abs=1e-4)
    assert res.error("m_t") == pytest.approx(0.5, rel=1e-4)
    assert res.covariance_autodiff[0, 0] == pytest.approx(0.25, rel=1e-8)
    if method == "minuit":
        lo, hi = res.minos["m_t"][CL_68]
        assert lo == pytest.approx(-0.5, rel=1e-4) and hi == pytest.approx(0.5, rel=1e-4)


def test_exponential_lifetime_minos_vs_analytic_profile() -> None:
    """Exponential decays: τ̂ = t̄, HESSE σ = τ̂/√n, and MINOS ends solve
    2n[ln(τ/τ̂) + τ̂/τ − 1] = 1 (the exact −2ΔlnL of the lifetime model)."""
    n = 150
    toy = ExponentialToy.sample(2.0, n, seed=7)
    tbar = float(toy.t.mean())
    res = fit(callable_objective(toy, ["tau"], n_events=n, limits=[(0.5, 5.0)]),
              minos_cls=(CL_68, 0.95))
    assert res.value("tau") == pytest.approx(tbar, rel=1e-5)
    assert res.error("tau") == pytest.approx(tbar / math.sqrt(n), rel=1e-3)

    def m2dlnl(tau: float) -> float:
        return 2 * n * (math.log(tau / tbar) + tbar / tau - 1)

    for cl, q in ((CL_68, 1.0), (0.95, 3.841458820694124)):
        lo = brentq(lambda t, q=q: m2dlnl(t) - q, 0.5, tbar) - tbar
        hi = brentq(lambda t, q=q: m2dlnl(t) - q, tbar, 5.0) - tbar
        assert res.minos["tau"][cl][0] == pytest.approx(lo, rel=2e-3)
        assert res.minos["tau"][cl][1] == pytest.approx(hi, rel=2e-3)
    assert hi > -lo  # the lifetime interval is asymmetric


@pytest.mark.parametrize("source", ["callable", "grid"])
def test_two_parameter_covariance_and_correlation(source: str) -> None:
    """Straight line y ~ N(a + b z, s): covariance s²(ZᵀZ)⁻¹ and estimate (ZᵀZ)⁻¹Zᵀy
    (least squares, exact); on the grid, the spline reproduces the quadratic lnL exactly."""
    toy = LinearGaussianToy.sample(1.0, 2.0, 0.5, 300, seed=2)
    if source == "callable":
        obj = callable_objective(toy, ["a", "b"], n_events=300)
        start = {"a": 0.8, "b": 2.2}
    else:
        lik = toy_likelihoods(toy, {"a": np.linspace(0.7, 1.4, 8), "b": np.linspace(1.6, 2.3, 9)})
        obj, start = grid_objective(lik), None
    res = fit(obj, start)
    zz = np.stack([np.ones(300), toy.z.numpy()], -1)
    hat = np.linalg.solve(zz.T @ zz, zz.T @ toy.y.numpy())
    cov = toy.covariance().numpy()
    np.testing.assert_allclose(res.values, hat, atol=2e-4 * math.sqrt(cov[0, 0]) * 50)
    np.testing.assert_allclose(res.covariance, cov, rtol=2e-3)
    np.testing.assert_allclose(res.covariance_autodiff, cov, rtol=1e-6)
    rho = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    assert res.correlation[0, 1] == pytest.approx(rho, abs=2e-3)
    assert rho < -0.5  # the toy is built to be strongly correlated
    for j, name in enumerate(("a", "b")):
        lo, hi = res.minos[name][CL_68]
        assert -lo == pytest.approx(math.sqrt(cov[j, j]), rel=2e-3)
        assert hi == pytest.approx(math.sqrt(cov[j, j]), rel=2e-3)
    d = res.to_dict()
    assert set(d["params"]) == {"a", "b"} and len(d["correlation"]) == 2


def test_estimate_on_grid_edge_is_not_valid() -> None:
    """A likelihood still rising at the grid edge gives valid=False (no interior minimum)."""
    toy = GaussianToy.sample(173.0, 10.0, 400, seed=1)
    lik = toy_likelihoods(toy, {"m_t": np.linspace(165.0, 170.0, 11)})
    res = fit(grid_objective(lik))
    assert not res.valid and res.extra["at_limit"]
    assert res.value("m_t") == pytest.approx(170.0, abs=1e-3)


def test_unknown_method() -> None:
    """A typo in method is refused."""
    toy = GaussianToy.sample(0.0, 1.0, 10, seed=1)
    with pytest.raises(ValueError, match="minuit"):
        fit(callable_objective(toy, ["mu"], weight=torch.ones(10)), method="scipy")
