"""Polynomial smoothing of noisy per-event grids against Gaussian toys (exactly quadratic lnL)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.inference.calibration import GaussianToy, calibrate, toy_likelihoods
from unfoldmem.inference.smoothing import residual_chi2, select_degree, smooth_grid

GRID = {"m_t": np.linspace(161.5, 185.5, 9)}
S, NOISE = 8.0, 0.5  # per-event resolution (GeV) and MC noise of one log P value


@pytest.fixture(scope="module")
def noisy():
    """800 events at 173.5 GeV, N(μ, 8 GeV) each, log P on 9 points + N(0, 0.5) noise."""
    toy = GaussianToy.sample(173.5, S, 800, seed=4)
    return toy, toy_likelihoods(toy, GRID, mc_noise=NOISE, seed=5)


def test_smooth_grid_is_exact_on_polynomials() -> None:
    """Without noise a Gaussian's log P is a parabola in μ: degree 2 returns it to 1e-10, and
    a non-finite event is left as it is."""
    toy = GaussianToy.sample(173.5, S, 20, seed=1)
    lik = toy_likelihoods(toy, GRID)
    lik.log_p[3, 4] = -math.inf
    sm = smooth_grid(lik, 2)
    good = torch.arange(20) != 3
    assert torch.allclose(sm.log_p[good], lik.log_p[good], rtol=0, atol=1e-10)
    assert torch.equal(sm.log_p[3], lik.log_p[3])
    with pytest.raises(ValueError, match="degree"):
        smooth_grid(lik, 9)


def test_select_degree_by_chi2(noisy) -> None:
    """With the noise known, the pooled χ²/ndf is ≈ 1 from degree 2 on (the toy is quadratic)
    and far above 1 at degree 1, so degree 2 is chosen; with 1e-3 of the noise nothing is
    compatible below the cap."""
    _, lik = noisy
    chi2_1, ndf_1 = residual_chi2(lik, 1)
    chi2_2, ndf_2 = residual_chi2(lik, 2)
    assert chi2_1 / ndf_1 > 1.5
    assert abs(chi2_2 / ndf_2 - 1) < 4 * math.sqrt(2 / ndf_2)
    assert select_degree(lik) == 2
    assert select_degree(lik, noise=NOISE * 1e-3, max_degree=3) == 3


def test_smoothing_restores_pulls(noisy) -> None:
    """100 disjoint pseudo-experiments of 8 events: the spline through the noisy points gives
    pulls far wider than 1 (noise read as curvature); the degree-2 fit gives the exact
    Gaussian answer: bias 0, pull width 1 within 4 standard errors, every fit valid."""
    _, lik = noisy
    raw = calibrate(lik, {"m_t": 173.5}, n_pseudo=100, seed=2, disjoint=True,
                    cls=()).summary()["m_t"]
    s = calibrate(smooth_grid(lik, 2), {"m_t": 173.5}, n_pseudo=100, seed=2, disjoint=True,
                  cls=()).summary()["m_t"]
    assert raw["pull_width"] > 1.5
    assert s["n_pseudo"] == 100 and s["n_failed"] == 0
    assert abs(s["bias"]) < 4 * s["bias_err"]
    assert abs(s["pull_width"] - 1) < 4 * s["pull_width_err"]
    assert s["mean_hesse_error"] == pytest.approx(S / math.sqrt(8), rel=0.02)


def test_zero_estimate_at_an_edge_is_refitted() -> None:
    """An event whose estimate is zero (−inf, flag 3) at the two lowest grid points is fitted
    on its 7 finite points (exact parabola back) and kept; one with other flags stays out."""
    toy = GaussianToy.sample(173.5, S, 4, seed=2)
    lik = toy_likelihoods(toy, GRID)
    exact = lik.log_p.clone()
    lik.log_p[1, :2] = -math.inf
    lik.log_p[2, 0] = -math.inf
    lik.flag[1], lik.flag[2] = 3, 1
    sm = smooth_grid(lik, 2)
    assert sm.flag.tolist() == [0, 0, 1, 0]
    torch.testing.assert_close(sm.log_p[1], exact[1], rtol=0, atol=1e-9)
    assert sm.ok().n_events == 3


def test_select_degree_with_noise_replica() -> None:
    """Noise common to all grid points plus a small independent part (as with common random
    numbers): per-point errors make χ² accept degree 1, the noise replica (same noise law, no
    signal) gives the true degree 2 of the Gaussian toy."""
    toy = GaussianToy.sample(173.5, S, 800, seed=6)
    lik = toy_likelihoods(toy, GRID)
    g = torch.Generator().manual_seed(7)

    def noise() -> torch.Tensor:
        common = torch.randn(800, 1, generator=g, dtype=torch.float64)
        return 1.0 * common + 0.1 * torch.randn(800, 9, generator=g, dtype=torch.float64)

    lik.log_p += noise()
    lik.log_p_noise = noise()
    assert select_degree(lik, noise=1.0) <= 1
    assert select_degree(lik) == 2
    assert select_degree(smooth_grid(lik, 2)) == 2  # the replica is carried, values smoothed


def test_select_degree_per_event() -> None:
    """Per event against its own noise replica: events given a cubic term 30× their noise pick
    degree 3, the pure Gaussian ones degree 2 except about α = 1 % (F-test false alarms,
    at most 4 % of 400 allowed), and smooth_grid applies the per-event degrees exactly."""
    toy = GaussianToy.sample(173.5, S, 800, seed=8)
    lik = toy_likelihoods(toy, GRID)
    x = torch.from_numpy((GRID["m_t"] - 173.5) / GRID["m_t"].std())
    g = torch.Generator().manual_seed(9)
    lik.log_p[:400] += 3.0 * x**3
    lik.log_p += 0.1 * torch.randn(800, 9, generator=g, dtype=torch.float64)
    lik.log_p_noise = 0.1 * torch.randn(800, 9, generator=g, dtype=torch.float64)
    deg = select_degree(lik, per_event=True, min_degree=2, max_degree=3)
    assert (deg[:400] == 3).all()
    assert (deg[400:] == 3).mean() < 0.04 and set(deg[400:].tolist()) <= {2, 3}
    sm = smooth_grid(lik, deg)
    for i in (0, 500):
        ref = smooth_grid(lik.subset(torch.tensor([i])), int(deg[i])).log_p[0]
        torch.testing.assert_close(sm.log_p[i], ref, rtol=0, atol=1e-12)
