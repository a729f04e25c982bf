"""Weighted maximum-likelihood fits: the weight-2 half sample, negative weights, sandwich errors.

Independent references: the closed-form weighted estimates of the Gaussian mean
(μ̂ = Σwx/Σw, V = Σw²(x−μ̂)²/(Σw)², Langenbruch, EPJC 82 (2022) 393, Eq. 18) and the spread of
the estimates over independent pseudo-experiments (the definition of a standard error).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.inference.calibration import ExponentialToy, GaussianToy, toy_likelihoods
from unfoldmem.inference.fit import callable_objective, fit, grid_objective
from unfoldmem.inference.scan import CL_68

MU, S = 173.0, 10.0


def _half(n: int, seed: int) -> torch.Tensor:
    """Weight 2 for a random half of n events, 0 (removed) for the others."""
    keep = np.random.default_rng(seed).uniform(size=n) < 0.5
    return torch.from_numpy(np.where(keep, 2.0, 0.0))


def _objective(source: str, toy: GaussianToy, w: torch.Tensor):
    if source == "callable":
        return callable_objective(toy, ["m_t"], weight=w), {"m_t": 170.0}
    lik = toy_likelihoods(toy, {"m_t": np.linspace(171.0, 175.0, 9)})
    return grid_objective(lik, weight=w), None


@pytest.mark.parametrize("source", ["callable", "grid"])
def test_weight_two_half_sample_matches_full(source: str) -> None:
    """Gaussian mean from N = 4000 events vs a random half with weight 2: the estimate is the
    weighted mean and the error the closed-form sandwich √(Σw²(x−μ̂)²)/Σw, ≈ √2 × the full
    sample's; the two estimates agree within 4 σ of their difference (the half is a subset, so
    Var(μ̂_half − μ̂_full) = σ_half² − σ_full²)."""
    n = 4000
    toy = GaussianToy.sample(MU, S, n, seed=3)
    x = toy.x.numpy()
    full = fit(*_objective(source, toy, torch.ones(n, dtype=torch.float64)))
    w = _half(n, seed=4)
    half = fit(*_objective(source, toy, w))
    wn = w.numpy()
    mu_w = float((wn * x).sum() / wn.sum())
    sig_w = math.sqrt(float((wn**2 * (x - mu_w) ** 2).sum())) / wn.sum()
    rtol = 1e-6 if source == "callable" else 1e-3  # the spline of a quadratic lnL is exact
    assert half.value("m_t") == pytest.approx(mu_w, abs=1e-3 * sig_w)
    assert half.error("m_t") == pytest.approx(sig_w, rel=rtol)
    assert half.extra["weight_errors"] == "sandwich" and full.extra["weight_errors"] == "hesse"
    # the Hessian alone sees Σw = N events: it would claim the full sample's error
    assert half.extra["covariance_hesse"][0][0] == pytest.approx(S**2 / wn.sum(), rel=1e-3)
    assert full.error("m_t") == pytest.approx(S / math.sqrt(n), rel=1e-3)
    # √2 within 4 × the relative error of an empirical width from 2000 events
    ratio = half.error("m_t") / full.error("m_t")
    assert abs(ratio / math.sqrt(2) - 1) < 4 / math.sqrt(2 * wn.astype(bool).sum())
    diff_sigma = math.sqrt(half.error("m_t") ** 2 - full.error("m_t") ** 2)
    assert abs(half.value("m_t") - full.value("m_t")) < 4 * diff_sigma
    if source == "callable":  # MINOS ends scaled to the sandwich width
        lo, hi = half.minos["m_t"][CL_68]
        assert -lo == pytest.approx(sig_w, rel=1e-4) and hi == pytest.approx(sig_w, rel=1e-4)


def _pulls(n_pseudo: int, weights: str) -> tuple[np.ndarray, np.ndarray]:
    """(τ̂ − τ)/σ with sandwich and with Hessian errors over independent lifetime samples."""
    tau, n = 2.0, 200
    sand, hess = [], []
    for b in range(n_pseudo):
        if weights == "half2":
            toy = ExponentialToy.sample(tau, n, seed=500 + b)
            w = _half(n, seed=5000 + b)
        else:  # 10 % negative: a region added twice with +1 and −1 (cancels in expectation)
            base = ExponentialToy.sample(tau, n, seed=500 + b).t
            extra = ExponentialToy.sample(4.0, 2 * n // 8, seed=9000 + b).t
            toy = ExponentialToy(torch.cat([base, extra]))
            w = torch.cat([torch.ones(n + n // 8), -torch.ones(n // 8)]).double()
            assert float((w < 0).double().mean()) == pytest.approx(0.10)
        res = fit(callable_objective(toy, ["tau"], weight=w, limits=[(0.3, 8.0)]), minos_cls=())
        assert res.valid
        d = res.value("tau") - tau
        sand.append(d / res.error("tau"))
        hess.append(d / math.sqrt(res.covariance_autodiff[0, 0]))
    return np.array(sand), np.array(hess)


@pytest.mark.parametrize("weights", ["half2", "negative"])
def test_sandwich_errors_cover(weights: str) -> None:
    """Pulls over 300 pseudo-experiments (lifetime fit, 200 events): with the sandwich error
    mean 0 and width 1 within 4 standard errors (1/√M and 1/√(2(M−1)), plus 5 % for the
    O(1/n) bias of the error itself); the uncorrected Hessian error is too small (pull width
    ≈ √2 for weight 2, > 1 for the cancelling negative weights)."""
    m = 300
    sand, hess = _pulls(m, weights)
    assert abs(sand.mean()) < 4 / math.sqrt(m)
    assert abs(sand.std(ddof=1) - 1) < 4 / math.sqrt(2 * (m - 1)) + 0.05
    assert hess.std(ddof=1) > 1 + 4 / math.sqrt(2 * (m - 1))


def test_hesse_option_keeps_frequency_weights() -> None:
    """weight_errors='hesse' (a weight counts identical events, e.g. a bootstrap): the error is
    the inverse Hessian, i.e. that of the sample with each event repeated w times (closed form
    s/√Σw); unknown options are refused."""
    toy = GaussianToy.sample(MU, S, 500, seed=8)
    w = torch.from_numpy(np.random.default_rng(2).poisson(1.0, 500).astype(np.float64))
    res = fit(callable_objective(toy, ["m_t"], weight=w, weight_errors="hesse"), {"m_t": 170.0})
    assert res.error("m_t") == pytest.approx(S / math.sqrt(float(w.sum())), rel=1e-4)
    assert res.extra["weight_errors"] == "hesse"
    with pytest.raises(ValueError, match="weight_errors must be one of"):
        callable_objective(toy, ["m_t"], weight=w, weight_errors="sumw2")
