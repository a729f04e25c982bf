"""Tests of unfoldmem.unfold.ibu: D'Agostini unfolding of a Gaussian toy vs the analytic truth.

Independent references: the truth density N(mu_t, sigma_t) of the data (scipy.stats.truncnorm
with a parton-level cut), exact algebra of one IBU step on a 2×2 response, and the Poisson
bootstrap spread vs the analytic error of a mean.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from unfoldmem.histograms import chi2_ndf, weighted_hist
from unfoldmem.unfold.ibu import build_response, ibu, unfold_ibu
from unfoldmem.weights import weighted_mean_std

MU_T, SIG_T, MU_S, SIG_S, EPS = 0.4, 0.9, 0.0, 1.0, 0.3
T_CUT, R_CUT = -1.2, -1.0
GEN = np.linspace(-4.5, 4.5, 91)
RECO = np.linspace(-4.5, 4.5, 91)


def toy(n: int, mu: float, sig: float, seed: int, cuts: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = rng.normal(mu, sig, n)
    r = t + rng.normal(0.0, EPS, n)
    if cuts:
        g = t > T_CUT
        rr = (r > R_CUT) & (rng.uniform(size=n) < 0.9 - 0.05 * np.tanh(t))
        keep = g | rr
        t, r, g, rr = t[keep], r[keep], g[keep], rr[keep]
    else:
        g = rr = np.ones(n, dtype=bool)
    return {"t": t, "r": r, "g": g, "rr": rr}


def moments(counts: np.ndarray) -> tuple[float, float]:
    """Mean and width of a binned density, with Sheppard's correction h²/12 for the width."""
    c = 0.5 * (GEN[1:] + GEN[:-1])
    h = GEN[1] - GEN[0]
    m = float((c * counts).sum() / counts.sum())
    v = float((c**2 * counts).sum() / counts.sum()) - m * m - h * h / 12
    return m, math.sqrt(v)


def errors(data: dict[str, np.ndarray], sig_t: float, n_sim_eff: float) -> tuple[float, float]:
    """σ of unfolded mean/width from the data's reco spread (delta method) ⊕ simulation stats."""
    d = weighted_mean_std(data["r"][data["rr"]], np.ones(int(data["rr"].sum())))
    e_m = math.hypot(d["mean_err"], sig_t / math.sqrt(n_sim_eff))
    e_s = math.hypot(d["std"] * d["std_err"] / sig_t, sig_t / math.sqrt(2 * n_sim_eff))
    return e_m, e_s


def run(
    data: dict[str, np.ndarray],
    sim: dict[str, np.ndarray],
    w: np.ndarray | None = None,
    n_boot: int = 0,
):
    return unfold_ibu(
        data["r"][data["rr"]],
        sim["r"],
        sim["t"],
        reco_bins=RECO,
        gen_bins=GEN,
        iterations=4,
        sim_weights=w,
        pass_reco=sim["rr"],
        pass_gen=sim["g"],
        n_bootstrap=n_boot,
        seed=1,
    )


@pytest.mark.parametrize("cuts", [False, True])
def test_gaussian_toy_closes(cuts: bool) -> None:
    """Unfolded mean/width within 2σ of the analytic truth; with misses and fakes too."""
    data, sim = toy(50_000, MU_T, SIG_T, 1, cuts), toy(200_000, MU_S, SIG_S, 2, cuts)
    if cuts:
        tn = stats.truncnorm((T_CUT - MU_T) / SIG_T, np.inf, loc=MU_T, scale=SIG_T)
        mu, sig = float(tn.mean()), float(tn.std())
    else:
        mu, sig = MU_T, SIG_T
    res = run(data, sim)
    m, s = moments(res.unfolded.values())
    e_m, e_s = errors(data, sig, 200_000 / 4)  # the prior is reweighted: N_eff ≈ N/4, generous
    assert abs(m - mu) < 2 * e_m, (m, mu, e_m)
    assert abs(s - sig) < 2 * e_s, (s, sig, e_s)
    # yield: the data's parton-level count within 5 Poisson σ plus 1%
    n_gen = int(data["g"].sum())
    assert res.unfolded.values().sum() == pytest.approx(
        n_gen, abs=5 * math.sqrt(n_gen) + 0.01 * n_gen
    )
    if cuts:
        assert res.response.fake_fraction.max() > 0.05 and res.response.efficiency.min() < 0.9


def test_bootstrap_error_and_chi2_vs_truth() -> None:
    """Bootstrap σ of the unfolded mean vs the analytic one (factor 2) and χ²/ndf vs truth < 1.5."""
    data, sim = toy(20_000, MU_T, SIG_T, 3, False), toy(100_000, MU_S, SIG_S, 4, False)
    res = run(data, sim, n_boot=20)
    means = [moments(r)[0] for r in res.replicas]
    e_m, _ = errors(data, SIG_T, 100_000 / 4)
    assert 0.5 * e_m < np.std(means, ddof=1) < 2 * e_m
    truth = weighted_hist(data["t"], None, GEN)
    c2, ndf = chi2_ndf(res.unfolded[5:-5], truth[5:-5])
    assert c2 / ndf < 1.5, (c2, ndf)


def test_weighted_and_negative_weights_give_same_answer() -> None:
    """Half the sim removed and weight 2; or a cancelling ±1 region (10% negative): same result."""
    data, sim = toy(20_000, MU_T, SIG_T, 5, False), toy(100_000, MU_S, SIG_S, 6, False)
    base = moments(run(data, sim).unfolded.values())
    keep = np.random.default_rng(7).uniform(size=100_000) < 0.5
    half = {k: v[keep] for k, v in sim.items()}
    m2 = moments(run(data, half, np.full(int(keep.sum()), 2.0)).unfolded.values())
    a, b = toy(6_000, 0.5, 0.5, 8, False), toy(6_000, 0.5, 0.5, 9, False)
    mix = {k: np.concatenate([sim[k], a[k], b[k]]) for k in sim}
    w = np.concatenate([np.ones(100_000), np.ones(6_000), -np.ones(6_000)])
    m3 = moments(run(data, mix, w).unfolded.values())
    e_m, e_s = errors(data, SIG_T, 50_000 / 4)
    for m in (m2, m3):
        assert abs(m[0] - base[0]) < 2 * e_m and abs(m[1] - base[1]) < 2 * e_s
        assert abs(m[0] - MU_T) < 2 * e_m and abs(m[1] - SIG_T) < 2 * e_s


def test_one_step_by_hand() -> None:
    """Bayes' theorem on a 2×2 response (D'Agostini 1995, Eq. 4), computed by hand."""
    # events: (reco bin, gen bin, weight)
    reco = np.array([0.5, 0.5, 1.5, 1.5, 0.5])
    gen = np.array([0.5, 1.5, 1.5, 1.5, 0.5])
    resp = build_response(reco, gen, None, None, None, [0, 1, 2], [0, 1, 2])
    np.testing.assert_allclose(resp.matrix, [[1.0, 1 / 3], [0.0, 2 / 3]])
    t = ibu([3.0, 1.0], resp, iterations=1)
    # prior (2, 3): P(j=0|i=0) = 2/(2+1) → t0 = 3*2/3 = 2; t1 = 3*1/3 + 1 = 2
    np.testing.assert_allclose(t, [2.0, 2.0])
    np.testing.assert_allclose(ibu([3.0, 1.0], resp, iterations=0), [2.0, 3.0])
    with pytest.raises(ValueError, match="iterations"):
        ibu([1.0, 1.0], resp, iterations=-1)


def test_efficiency_and_fakes_by_hand() -> None:
    reco = np.array([0.5, 0.5, 9.0, 0.5])
    gen = np.array([0.5, 0.5, 0.5, 9.0])
    pr = np.array([True, False, True, True])
    resp = build_response(reco, gen, [1.0, 1.0, 1.0, 2.0], pr, None, [0, 1], [0, 1])
    # gen bin: 3 events (one missed, one reco out of range): ε = 1/3
    assert resp.efficiency.tolist() == pytest.approx([1 / 3])
    # reco bin: weight 1 matched + weight 2 with gen out of range: fake fraction 2/3
    assert resp.fake_fraction.tolist() == pytest.approx([2 / 3])
