"""Fisher information by autodiff against analytic information and fitted-estimate variances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.inference.calibration import ExponentialToy, LinearGaussianToy, toy_likelihoods
from unfoldmem.inference.fisher import fisher_information, per_event_fisher, rank_events
from unfoldmem.inference.fit import callable_objective, fit, per_event_grid_function


def test_exponential_per_event_exact() -> None:
    """log P = −ln τ − t/τ: observed information 2t/τ³ − 1/τ², score² (t/τ² − 1/τ)² (calculus)."""
    toy = ExponentialToy.sample(1.5, 50, seed=1)
    tau = torch.tensor([1.3], dtype=torch.float64)
    h = per_event_fisher(toy, tau, "hessian")[:, 0, 0]
    s = per_event_fisher(toy, tau, "score")[:, 0, 0]
    t, tv = toy.t, 1.3
    torch.testing.assert_close(h, 2 * t / tv**3 - 1 / tv**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, (t / tv**2 - 1 / tv) ** 2, rtol=1e-12, atol=1e-12)
    order = rank_events(per_event_fisher(toy, tau))
    assert torch.equal(order, torch.argsort(t, descending=True))


@pytest.mark.parametrize("kind", ["hessian", "score"])
def test_exponential_expected_information(kind: str) -> None:
    """Both estimators average to I(τ) = 1/τ² per event (analytic; tolerance 4 standard errors
    of the sample mean)."""
    tau = 2.0
    toy = ExponentialToy.sample(tau, 20000, seed=2)
    per = per_event_fisher(toy, torch.tensor([tau], dtype=torch.float64), kind)[:, 0, 0]
    err = float(per.std()) / math.sqrt(len(per))
    assert abs(float(per.mean()) - 1 / tau**2) < 4 * err


def test_linear_model_information_is_design_matrix() -> None:
    """y ~ N(a + b z, s): I = ZᵀZ / s² exactly, so I⁻¹ is the least-squares covariance."""
    toy = LinearGaussianToy.sample(1.0, 2.0, 0.5, 200, seed=3)
    info = fisher_information(toy, torch.tensor([1.0, 2.0], dtype=torch.float64))
    zz = torch.stack([torch.ones(200, dtype=torch.float64), toy.z], -1)
    torch.testing.assert_close(info, zz.T @ zz / 0.25, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(torch.linalg.inv(info), toy.covariance(), rtol=1e-10, atol=1e-14)
    w = torch.linspace(0.0, 2.0, 200, dtype=torch.float64)
    infow = fisher_information(toy, torch.tensor([1.0, 2.0], dtype=torch.float64), weight=w)
    torch.testing.assert_close(infow, (zz.T * w) @ zz / 0.25, rtol=1e-12, atol=1e-9)


def test_information_from_the_interpolated_grid() -> None:
    """The per-event spline on a grid of spacing 0.02 gives the analytic summed information of the
    lifetime model to < 0.1 % (cubic-spline curvature error ~ h²)."""
    toy = ExponentialToy.sample(1.0, 500, seed=4)
    lik = toy_likelihoods(toy, {"tau": np.linspace(0.8, 1.2, 21)})
    fn = per_event_grid_function(lik)
    theta = torch.tensor([1.01], dtype=torch.float64)
    grid_info = fisher_information(fn, theta)
    exact = fisher_information(toy, theta)
    torch.testing.assert_close(grid_info, exact, rtol=1e-3, atol=0)


def _fisher_vs_variance(n_pseudo: int) -> tuple[float, float]:
    tau, n = 1.0, 100
    fits = []
    for b in range(n_pseudo):
        toy = ExponentialToy.sample(tau, n, seed=1000 + b)
        res = fit(callable_objective(toy, ["tau"], n_events=n, limits=[(0.2, 5.0)]),
                  {"tau": tau}, minos_cls=())
        fits.append(res.value("tau"))
    var = float(np.var(fits, ddof=1))
    info = fisher_information(ExponentialToy.sample(tau, 200_000, seed=1), torch.tensor([tau]))
    # expected information per event from a large sample, times n
    expected = float(info[0, 0]) / 200_000 * n
    return var * expected, math.sqrt(2 / (n_pseudo - 1))


def test_fisher_matches_fit_variance_fast() -> None:
    """Var(τ̂) over independent pseudo-experiments × autodiff I(τ) = 1 (Cramér–Rao, efficient for
    the exponential): within max(15 %, 4× the relative error of a variance from 300 samples)."""
    ratio, rel = _fisher_vs_variance(300)
    assert abs(ratio - 1) < max(0.15, 4 * rel)


@pytest.mark.slow
def test_fisher_matches_fit_variance_full() -> None:
    """As the fast test with 2000 pseudo-experiments: within 15 % (4σ of the estimate is 12.6 %)."""
    ratio, _ = _fisher_vs_variance(2000)
    assert abs(ratio - 1) < 0.15
