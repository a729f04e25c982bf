"""Weighted data in the cINN unfolding (issue #14): weight 2 on a random half, 10 % negative weights.

The toy and its trained cINN are those of ``tests/_support/dimuon_toy.py`` (two muons,
parametric detector, η posterior known). OmniFold's weighted and negative-weight simulations
are tested in ``tests/unfold/test_omnifold.py`` (slow), the weighted flow training in
``tests/flows/test_training.py``.

Independent references: the unweighted full sample's own unfolded histogram (a random half with
weight 2 estimates the same distribution; given the events, their difference has the exact
random-split variance Σ_e c_ei² plus the posterior-sampling noise, c_ei being event e's fraction
of samples in bin i) and the parton-level truth of the events.
"""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch

from tests._support.dimuon_toy import KW, make_toy, trained_toy
from unfoldmem.physics.observables import observables_for
from unfoldmem.unfold.cinn_unfold import unfold
from unfoldmem.unfold.iterative import Simulation
from unfoldmem.unfold.report import closure, truth_histograms, unfolded_histograms
from unfoldmem.unfold.uncertainty import bin_fractions, edges_of

OBS = observables_for("drell_yan")


N_SAMPLES = 50


def _unfold(det: ak.Array) -> tuple[object, dict]:
    model, _, lay = trained_toy()
    samples = unfold(model, det, lay, OBS, N_SAMPLES, seed=5, **KW)
    return samples, unfolded_histograms(samples, OBS, "reco", n_replicas=100, seed=1)


def _truth(det: ak.Array, par: ak.Array, weight: np.ndarray | None = None) -> dict:
    _, _, lay = trained_toy()
    sim = Simulation(det, par)
    w = sim.weight if weight is None else weight
    return truth_histograms(
        sim.momenta(), torch.tensor(lay.parton_pdg), w, ak.to_numpy(par.pass_reco), OBS, "reco"
    )


def _chi2_split(diff: np.ndarray, values: np.ndarray, binning, keep: np.ndarray) -> tuple:
    """dᵀ C⁺ d and rank C for the difference d of (weight-2 half − full) histograms.

    Given the per-event fractions c_e (n_bins,), the random split gives Cov = Σ_e c_e c_eᵀ and
    the independent posterior samples (1 + 4 k_e)/N (diag c_e − c_e c_eᵀ); adjacent bins are
    correlated (an event's samples spread over a few bins), hence the full covariance.
    """
    c = bin_fractions(values, edges_of(binning))
    m = (1 + 4 * keep.astype(np.float64))[:, None] / N_SAMPLES
    cov = c.T @ c + np.diag((m * c).sum(0)) - (m * c).T @ c
    used = np.diag(cov) > 0
    cov, d = cov[np.ix_(used, used)], diff[used]
    return float(d @ np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ d), int(
        np.linalg.matrix_rank(cov, tol=1e-10 * np.abs(cov).max(), hermitian=True))


def test_cinn_weight_two_half_matches_full() -> None:
    """1500 toy events vs a random half with weight 2: per observable, χ²/ndf < 1.5 of their
    difference with its covariance (:func:`_chi2_split`), the half's bootstrap errors
    are ≈ √2 larger (bin average in [1.25, 1.6]), and both close on the truth (χ²/ndf < 1.5)."""
    det, par = make_toy(1500, seed=13)
    keep = np.random.default_rng(3).uniform(size=len(det)) < 0.5
    half = ak.with_field(det[keep], np.full(int(keep.sum()), 2.0), "weight")
    (s_full, h_full), (s_half, h_half) = _unfold(det), _unfold(half)
    assert np.all(s_half.weight == 2.0)
    np.testing.assert_array_equal(s_full.event_id, ak.to_numpy(det.event_id))
    truth = _truth(det, par)
    for o in OBS:
        a, b = h_full[o.name], h_half[o.name]
        c2, ndf = _chi2_split(b.values - a.values, s_full.values[o.name], o.binning, keep)
        assert c2 / ndf < 1.5, (o.name, c2, ndf)
        used = a.stat > 0.05 * a.stat.max()
        ratio = float(np.mean(b.stat[used] / a.stat[used]))
        assert 1.25 < ratio < 1.6, (o.name, ratio)
    for h in (h_full, h_half):
        for name, c in closure(h, truth).items():
            assert c["chi2_ndf"] < 1.5, (name, c)


def test_cinn_ten_percent_negative_weights_close() -> None:
    """1200 events with weight 1 plus a region (η₀ = 1) drawn twice, 150 events with +1 and 150
    with −1 (cancelling in expectation; 10 % negative): the unfolded marginals close on the truth
    of the 1200 events, χ²/ndf < 1.5 with the bootstrap errors (Σ k w, negative w included)."""
    base, par = make_toy(1200, seed=14)
    plus, _ = make_toy(150, seed=15, eta_mean=1.0)
    minus, _ = make_toy(150, seed=16, eta_mean=1.0, weight=-np.ones(150))
    data = ak.concatenate([base, plus, minus])
    w = ak.to_numpy(data.weight)
    assert float((w < 0).mean()) == pytest.approx(0.10)
    _, h = _unfold(data)
    truth = _truth(base, par)
    for name, c in closure(h, truth).items():
        assert c["chi2_ndf"] < 1.5, (name, c)
