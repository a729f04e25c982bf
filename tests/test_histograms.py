"""Tests of unfoldmem.histograms: Σw/Σw² storage, bootstrap bands, χ²/ndf."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from unfoldmem.histograms import band, chi2_ndf, poisson_bootstrap, weighted_hist


def test_sumw_sumw2_by_hand() -> None:
    h = weighted_hist([0.1, 0.2, 0.7, 5.0], [1.0, -2.0, 3.0, 4.0], bins=[0.0, 0.5, 1.0])
    assert h.values().tolist() == [-1.0, 3.0]
    assert h.variances().tolist() == [5.0, 9.0]
    assert h.values(flow=True)[-1] == 4.0  # overflow kept, not dropped


def test_regular_binning_and_bad_edges() -> None:
    h = weighted_hist(np.array([0.5]), None, bins=(4, 0.0, 2.0))
    assert h.axes[0].edges.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        weighted_hist([0.0], None, bins=[1.0, 0.0])


def test_chi2_follows_chi2_distribution() -> None:
    """Two independent Poisson histograms of one density: mean χ² = ndf (χ² law), 5σ."""
    rng = np.random.default_rng(3)
    edges = np.linspace(-3, 3, 21)
    vals = []
    for _ in range(200):
        a = weighted_hist(rng.normal(size=5000), None, edges)
        b = weighted_hist(rng.normal(size=5000), np.full(5000, 1.0), edges)
        c2, ndf = chi2_ndf(a, b)
        vals.append(c2)
    assert ndf == 20
    # the mean of 200 χ²_20 has std sqrt(2*20/200)
    assert np.mean(vals) == pytest.approx(20.0, abs=5 * np.sqrt(40 / 200) + 0.5)
    assert stats.kstest(vals, "chi2", args=(20,)).pvalue > 1e-3


def test_chi2_normalized_and_detects_shift() -> None:
    rng = np.random.default_rng(4)
    edges = np.linspace(-3, 3, 21)
    a = weighted_hist(rng.normal(0.0, 1, 20000), None, edges)
    b = weighted_hist(rng.normal(0.3, 1, 5000), None, edges)
    c2, ndf = chi2_ndf(a, b, normalize=True)
    assert ndf == 19
    assert c2 / ndf > 5


def test_bootstrap_band_matches_poisson_error() -> None:
    """Poisson bootstrap std per bin ≈ sqrt(Σw²) (sum of weights' sampling error), 5σ of MC."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=4000)
    w = rng.uniform(0.5, 1.5, 4000)
    edges = np.linspace(-2, 2, 5)
    reps = poisson_bootstrap(x.size, 300, 11)
    b = band([weighted_hist(x, w * r, edges) for r in reps])
    h = weighted_hist(x, w, edges)
    # std of 300 replicas has relative error 1/sqrt(2*299) ≈ 4%
    np.testing.assert_allclose(b.std, np.sqrt(h.variances()), rtol=5 * 0.041)
    assert b.cov.shape == (4, 4)
    assert np.all(b.low < b.mean) and np.all(b.mean < b.high)
    with pytest.raises(ValueError, match="two replicas"):
        band(np.zeros((1, 3)))
