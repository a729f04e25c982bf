"""Efficiency and acceptance corrections: formulas against direct counts, binomial MC, and closure
of the corrected truth of passing events onto the full / fiducial truth of an independent sample."""

from __future__ import annotations

import awkward as ak
import numpy as np
import pytest
import torch
from scipy.stats import chi2 as chi2_dist

from tests._support.dimuon_toy import make_toy
from unfoldmem.histograms import chi2_ndf
from unfoldmem.physics.observables import observables_for
from unfoldmem.unfold.acceptance import (
    FiducialCuts,
    correct,
    efficiencies,
    efficiency,
    fiducial_mask,
)
from unfoldmem.unfold.cinn_unfold import ObservableSamples
from unfoldmem.unfold.iterative import Simulation
from unfoldmem.unfold.report import closure, truth_histograms, truth_values, unfolded_histograms


def test_efficiency_equals_direct_weighted_count() -> None:
    """ε_i = Σ_pass w / Σ w per bin, computed by hand with a loop over events."""
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 10, 500)
    w = rng.uniform(-0.2, 2.0, 500)
    passed = rng.uniform(size=500) < 0.3 + 0.05 * x
    edges = np.linspace(0, 10, 6)
    e = efficiency(x, w, passed, edges)
    for i in range(5):
        inside = (x >= edges[i]) & (x < edges[i + 1])
        assert e.eff[i] == pytest.approx(w[inside & passed].sum() / w[inside].sum(), rel=1e-12)
    region = x < 6
    f = efficiency(x, w, passed, edges, phase_space="fiducial", region=region)
    assert np.isnan(f.eff[-1]) and f.total[-1] == 0
    assert f.eff[0] == pytest.approx(e.eff[0], rel=1e-12)


def test_binomial_error_matches_monte_carlo_spread() -> None:
    """The weighted binomial error of ε (Ullrich & Xu, arXiv:physics/0701199) equals the spread of
    ε over 400 independent pass/fail draws with the same true efficiency, within 10%."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 4, 2000)
    w = rng.uniform(0.5, 1.5, 2000)
    edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    true_eff = np.array([0.2, 0.5, 0.7, 0.9])[np.minimum(x.astype(int), 3)]
    effs, errs = [], []
    for _ in range(400):
        e = efficiency(x, w, rng.uniform(size=x.size) < true_eff, edges)
        effs.append(e.eff)
        errs.append(e.eff_err)
    spread = np.std(effs, axis=0, ddof=1)
    # the std of a std estimate from 400 draws is 1/sqrt(800) = 3.5% relative
    np.testing.assert_allclose(np.mean(errs, axis=0), spread, rtol=0.1)


def test_fiducial_mask_matches_cuts() -> None:
    """Every charged lepton must pass pt/|η|; neutrinos are never cut (hand-made momenta)."""
    p = torch.tensor([[[50.0, 30.0, 0.0, 40.0], [20.0, 0.0, 20.0, 0.0], [5.0, 5.0, 0.0, 0.0]]],
                     dtype=torch.float64).repeat(3, 1, 1)
    p[1, 0] = torch.tensor([100.0, 20.0, 0.0, 97.74], dtype=torch.float64)  # |η| ≈ 2.29
    p[2, 1] = torch.tensor([14.0, 0.0, 14.0, 0.0], dtype=torch.float64)  # pt below 15
    ids = torch.tensor([13, -13, 14])
    assert fiducial_mask(p, ids).tolist() == [True, True, False]
    assert fiducial_mask(p, ids, FiducialCuts(lepton_eta_max=2.0)).tolist() == [True, False, False]


def _perfect_unfolding(det: ak.Array, par: ak.Array, obs: tuple, cuts: FiducialCuts) -> ObservableSamples:
    """'Unfolded' samples equal to the true partons of the passing events (N = 1 sample)."""
    s = Simulation(det, par)
    mom, pdg = s.momenta()[s.pass_index], torch.tensor([13, -13])
    vals = {k: v[None] for k, v in truth_values(mom, pdg, obs).items()}
    return ObservableSamples(ak.to_numpy(det.event_id), ak.to_numpy(det.weight), vals,
                             fiducial_mask(mom, pdg, cuts).numpy()[None])


@pytest.mark.parametrize("phase_space", ["fiducial", "full"])
def test_corrected_passing_truth_closes_on_full_truth(phase_space: str) -> None:
    """Efficiency from one simulation (|η| < 2.0 acceptance, 85% efficiency), applied to the truth
    of the passing events of an independent sample, reproduces that sample's fiducial / full truth:
    the χ² of m_ll, y_ll, cos θ_CS with the reported (bootstrap ⊕ ε) errors has p-value > 0.01."""
    cuts = FiducialCuts(lepton_pt_min=0.0, lepton_eta_max=2.0)
    sim_det, sim_par = make_toy(20000, seed=21, eta_max=2.0, efficiency=0.85)
    det, par = make_toy(5000, seed=22, eta_max=2.0, efficiency=0.85)
    obs = tuple(o for o in observables_for("drell_yan") if o.name in ("m_ll", "y_ll", "cos_cs"))
    sim = Simulation(sim_det, sim_par)
    effs = efficiencies(sim.momenta(), torch.tensor([13, -13]), sim.weight,
                        ak.to_numpy(sim_par.pass_reco), obs, phase_space, cuts)
    samples = _perfect_unfolding(det, par, obs, cuts)
    h = unfolded_histograms(samples, obs, phase_space, effs, n_replicas=50)
    data = Simulation(det, par)
    truth = truth_histograms(data.momenta(), torch.tensor([13, -13]), data.weight,
                             ak.to_numpy(par.pass_reco), obs, phase_space, cuts)
    res = closure(h, truth)
    for name, c in res.items():
        if phase_space == "full" and name == "y_ll":
            # |y_ll| beyond the acceptance has ε = 0: those bins cannot be corrected
            assert c["bins_undefined"] > 0
        assert chi2_dist.sf(c["chi2"], c["ndf"]) > 0.01, (name, c)
    if phase_space == "full":
        # the correction matters: uncorrected passing events are far from the full truth
        raw = unfolded_histograms(samples, obs, "reco", n_replicas=20)["m_ll"]
        chi2, ndf = chi2_ndf((raw.values, raw.stat**2), truth["m_ll"])
        assert chi2 / ndf > 3


def test_zero_efficiency_bins_become_nan_not_filled() -> None:
    """A bin without passing simulation cannot be corrected: NaN, with finite neighbours."""
    edges = np.array([0.0, 1.0, 2.0])
    e = efficiency(np.array([0.5, 0.5, 1.5]), np.ones(3), np.array([True, False, False]), edges)
    samples = ObservableSamples(np.arange(2), np.ones(2), {"x": np.array([[0.5, 1.5]])}, None)

    class Obs:
        name, label, binning = "x", "x", edges

    h = unfolded_histograms(samples, [Obs()], "reco", n_replicas=5)["x"]
    c = correct(h, e)
    assert c.values[0] == pytest.approx(2.0) and np.isnan(c.values[1])
    assert c.phase_space == "full"
