"""Pseudo-experiment calibration on toys whose fits have known bias 0 and pull width 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unfoldmem.inference.calibration import (
    ExponentialToy,
    GaussianToy,
    calibrate,
    toy_likelihoods,
)
from unfoldmem.inference.fit import callable_objective
from unfoldmem.inference.scan import CL_68


def _check(summary: dict, s: int, lam: float, bias_max: float | None = None) -> None:
    """Bias, pull mean, width and coverage within 4 standard errors for s pseudo-experiments.

    Pseudo-experiments share events at rate λ, which adds ~√λ σ scatter to the mean estimate
    (see calibrate's docstring), and the lifetime pull has an O(1/√n) skew."""
    assert summary["n_pseudo"] == s and summary["n_failed"] == 0
    tol_mean = 4 * math.sqrt(1 / s + lam)
    assert abs(summary["bias_over_sigma"]) < (bias_max or tol_mean)
    assert abs(summary["pull_mean"]) < tol_mean + 0.05
    assert abs(summary["pull_width"] - 1) < max(4 / math.sqrt(2 * (s - 1)), 0.1 if bias_max else 0)
    for cl in (CL_68, 0.95):
        c = summary[f"coverage_{cl:.4f}"]
        assert abs(c - cl) < 4 * math.sqrt(cl * (1 - cl) / s) + 1 / s


@pytest.fixture(scope="module")
def lifetime_pool():
    """Decay times at τ = 1 (ML estimate t̄ unbiased, σ = τ/√n) on a grid of 29 points."""
    toy = ExponentialToy.sample(1.0, 50_000, seed=11)
    return toy_likelihoods(toy, {"tau": np.linspace(0.7, 1.4, 29)})


def test_lifetime_grid_calibration_fast(lifetime_pool) -> None:
    """100 pseudo-experiments of ~500 events from the grid: bias, pulls and coverage agree with
    the exact answer (bias 0, width 1, nominal coverage) within their statistical errors."""
    res = calibrate(lifetime_pool, {"tau": 1.0}, n_pseudo=100, n_events=500, seed=1)
    summ = res.summary()["tau"]
    _check(summ, 100, 500 / 50_000)
    assert summ["mean_hesse_error"] == pytest.approx(1 / math.sqrt(500), rel=0.05)
    assert abs(res.n_events_mean - 500) < 4 * math.sqrt(500 / 100)


def test_gaussian_callable_calibration_fast() -> None:
    """Exact callable likelihood (no grid), Gaussian mean: same checks, 60 pseudo-experiments."""
    toy = GaussianToy.sample(173.0, 10.0, 20_000, seed=5)
    obj = callable_objective(toy, ["m_t"], n_events=20_000)
    res = calibrate(obj, {"m_t": 173.0}, n_pseudo=60, n_events=200, seed=2)
    _check(res.summary()["m_t"], 60, 200 / 20_000)
    assert res.extra["method"] == "minuit"


def test_results_do_not_depend_on_chunking(lifetime_pool) -> None:
    """Seeds are spawned per pseudo-experiment: chunked and unchunked runs are identical."""
    a = calibrate(lifetime_pool, {"tau": 1.0}, n_pseudo=6, n_events=300, seed=3)
    b = calibrate(lifetime_pool, {"tau": 1.0}, n_pseudo=6, n_events=300, seed=3, chunk_size=4)
    np.testing.assert_array_equal(a.estimates, b.estimates)
    np.testing.assert_array_equal(a.intervals[0.95], b.intervals[0.95])
    assert a.to_dict()["summary"] == b.to_dict()["summary"]


def test_missing_true_value(lifetime_pool) -> None:
    """Every parameter needs a true value."""
    with pytest.raises(ValueError, match="tau"):
        calibrate(lifetime_pool, {"m_t": 1.0}, n_pseudo=2)


@pytest.mark.slow
def test_lifetime_grid_calibration_full() -> None:
    """400 pseudo-experiments, λ = 1/1000: bias < 0.2 σ and pull width 1.0 ± 0.1 (issue 11)."""
    toy = ExponentialToy.sample(1.0, 400_000, seed=12)
    lik = toy_likelihoods(toy, {"tau": np.linspace(0.7, 1.4, 29)})
    res = calibrate(lik, {"tau": 1.0}, n_pseudo=400, n_events=400, seed=4)
    _check(res.summary()["tau"], 400, 1e-3, bias_max=0.2)


@pytest.mark.slow
def test_lifetime_callable_calibration_full() -> None:
    """Exact lifetime likelihood (callable), 400 pseudo-experiments: bias < 0.2 σ, width 1 ± 0.1."""
    toy = ExponentialToy.sample(1.0, 400_000, seed=13)
    obj = callable_objective(toy, ["tau"], n_events=400_000, limits=[(0.5, 2.0)])
    res = calibrate(obj, {"tau": 1.0}, n_pseudo=400, n_events=400, seed=5)
    _check(res.summary()["tau"], 400, 1e-3, bias_max=0.2)
