"""OmniFold closure on tt̄ → b ℓ ν b̄ q q̄' with a reweighted truth (issue #9).

A sample from the project's generator and parametric detector (run card
``cards/runs/ttbar_small.yaml``) is split by event_id parity into a simulation half and a
"data" half. The data half's truth is reweighted by a known smooth function of the top pt
(:func:`top_pt_weight`, applied to the pair: the mean pt of the two tops), and its detector
events carry the same weights. OmniFold (detector features from
:func:`unfoldmem.unfold.features.omnifold_inputs`, misses included: ~64 % of the events fail
the selection) must recover the reweighted parton level.

Independent reference: the data half's own parton-level truth with the known weights (fast
tests), or for the χ² closure an independent 32 000-event continuation of the same generation
with the same weights (not the simulation); to show the test can fail, the un-unfolded
simulation prior is compared with the same truth and the same errors.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest

from unfoldmem.cards import load_card
from unfoldmem.histograms import weighted_hist
from unfoldmem.io import read_detector, read_partons
from unfoldmem.physics.hadronic import integrand_from_card
from unfoldmem.physics.observables import observables_for
from unfoldmem.simulate.generator import generate_file
from unfoldmem.unfold.classifier import ClassifierConfig
from unfoldmem.unfold.features import omnifold_inputs, parton_observables
from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold, omnifold_replicas
from unfoldmem.unfold.omnifold_uncertainty import (
    chi2_covariance,
    merge_sparse_bins,
    unfolded_covariance,
)
from unfoldmem.weights import WeightWarning, weighted_mean_std

ROOT = Path(__file__).resolve().parents[2]
PROCESS = "ttbar_semileptonic"
# a held-out 30 %, patience 20 and at least 10 epochs: with ~1000-3000 measured events the
# validation loss is noisy, and stopping at its first dip (step 2 did, after one epoch in every
# iteration) leaves the push under-fitted, shrunk towards the prior
CLF = ClassifierConfig(
    kind="deepset", hidden=32, layers=2, latent=16, epochs=60, batch_size=256, lr=5e-3,
    patience=20, val_fraction=0.3, seed=3, min_epochs=10,
)


def top_pt_weight(pt_had: np.ndarray, pt_lep: np.ndarray, slope: float, ref: float) -> np.ndarray:
    """w = 1 + slope · (p̄ − ref)/ref with p̄ the mean pt of the two tops (GeV); w > 0 for
    slope < 1 since p̄ ≥ 0."""
    return 1.0 + slope * (0.5 * (pt_had + pt_lep) - ref) / ref


def make_closure(
    path: Path, n_events: int, seed: int, slope: float, n_reference: int = 0
) -> dict[str, Any]:
    """Generate, split by event_id parity (odd = data), reweight the data, build the inputs.

    With ``n_reference`` the same generation continues for that many more events (event_id
    ≥ ``n_events``): an independent parton-level reference of the reweighted truth, scaled to
    the data half's number of generated events (``reference``, ``reference_w``).
    """
    run = load_card(ROOT / "cards/runs/ttbar_small.yaml", "run")
    process = load_card(run.process, "process")
    detector = load_card(run.detector, "detector")
    integrand = integrand_from_card(process, theta=run.theta)
    generate_file(path, integrand, detector, run.selection, n_events + n_reference, seed,
                  run.generator, theta=run.theta)
    ev, pa = read_detector(path), read_partons(path)
    pa_ref = pa[np.asarray(pa.event_id) >= n_events]
    pa = pa[np.asarray(pa.event_id) < n_events]
    ev = ev[np.asarray(ev.event_id) < n_events]
    is_data_p = np.asarray(pa.event_id) % 2 == 1
    is_data_e = np.asarray(ev.event_id) % 2 == 1
    _, obs = parton_observables(pa, None, PROCESS)
    ref = float(0.5 * (obs["pt_t_had"] + obs["pt_t_lep"])[is_data_p].mean())
    factor = np.ones(n_events)
    factor[np.asarray(pa.event_id)] = top_pt_weight(obs["pt_t_had"], obs["pt_t_lep"], slope, ref)
    data_ev = ev[is_data_e]
    w_data = np.asarray(data_ev.weight) * factor[np.asarray(data_ev.event_id)]
    data_ev = ak.with_field(data_ev, w_data, "weight")
    sim_pa = pa[~is_data_p]
    inp = omnifold_inputs(data_ev, ev[~is_data_e], sim_pa, kind="deepset", process=PROCESS)
    # no parton-level cut: every simulated event passes gen, so rows are the parton tree's
    assert bool(inp["pass_gen"].all()) and len(inp["sim_gen"]) == len(sim_pa)
    truth_w = (np.asarray(pa.weight) * factor[np.asarray(pa.event_id)])[is_data_p]
    out: dict[str, Any] = {}
    if n_reference:
        _, obs_ref = parton_observables(pa_ref, None, PROCESS)
        out["reference"] = obs_ref
        out["reference_w"] = (
            np.asarray(pa_ref.weight)
            * top_pt_weight(obs_ref["pt_t_had"], obs_ref["pt_t_lep"], slope, ref)
            * int(is_data_p.sum()) / len(pa_ref)
        )
    return {
        **out,
        "inp": inp,
        "truth": {k: v[is_data_p] for k, v in obs.items()},
        "truth_w": truth_w,
        "sim": {k: v[~is_data_p] for k, v in obs.items()},
        "sim_w": inp["sim_weights"].numpy(),
        # Kish effective number of measured (reco-level) data events
        "n_reco_eff": float(w_data.sum() ** 2 / (w_data**2).sum()),
    }


def run_omnifold(c: dict[str, Any], iterations: int) -> Any:
    inp = c["inp"]
    return omnifold(
        inp["data"], inp["sim_reco"], inp["sim_gen"], sim_weights=inp["sim_weights"],
        data_weights=inp["data_weights"], pass_reco=inp["pass_reco"], pass_gen=inp["pass_gen"],
        config=OmniFoldConfig(iterations=iterations, classifier=CLF),
    )


def mean_errors(c: dict[str, Any], name: str, weights: np.ndarray) -> tuple[float, dict, dict]:
    """(σ of unfolded − truth, truth summary, unfolded summary) for the mean of ``name``.

    σ = the simulation's error of the weighted mean (delta method) ⊕ the data's: the mean of the
    measured events' truth, σ_t/√n_eff,reco, which the simulation extrapolates to the misses.
    """
    truth = weighted_mean_std(c["truth"][name], c["truth_w"])
    u = weighted_mean_std(c["sim"][name], weights)
    return math.hypot(u["mean_err"], truth["std"] / math.sqrt(c["n_reco_eff"])), truth, u


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    c = make_closure(tmp_path_factory.mktemp("tt") / "tt.root", 6000, seed=7, slope=0.5)
    c["result"] = run_omnifold(c, iterations=3)
    return c


@pytest.mark.parametrize("name", ["pt_t_had", "m_tt"])
def test_ttbar_omnifold_moves_means_toward_truth(small: dict[str, Any], name: str) -> None:
    """6000 events, slope 0.5 (the data's mean top pt is 25 % above the simulation's), K = 3:
    the prior is > 5σ from the reweighted truth; the unfolded mean moved from the prior toward
    the truth by > 3σ and not beyond it by > 3σ (σ from :func:`mean_errors`).

    One training's result scatters by a few GeV between iterations; the χ² closure with an
    ensemble is the slow test below.
    """
    res = small["result"]
    assert res.diverged == [] and res.usable_iteration == 3
    sig, truth, u = mean_errors(small, name, res.weights().numpy())
    sig0, _, prior = mean_errors(small, name, small["sim_w"])
    direction = np.sign(truth["mean"] - prior["mean"])
    assert abs(truth["mean"] - prior["mean"]) > 5 * sig0
    assert direction * (u["mean"] - prior["mean"]) > 3 * sig, (u, prior, truth)
    assert direction * (u["mean"] - truth["mean"]) < 3 * sig, (u, truth)


def test_ttbar_unfolded_yield(small: dict[str, Any]) -> None:
    """Σ wν over the simulation (misses included) estimates the data's parton-level yield Σ w_truth
    within 3 × its data error Σ w_truth/√n_eff,reco; the weights stay positive and finite."""
    w = small["result"].weights().numpy()
    target = float(small["truth_w"].sum())
    assert abs(w.sum() - target) < 3 * target / math.sqrt(small["n_reco_eff"])
    assert np.all(np.isfinite(w)) and np.all(w > 0)


CHI2_OBSERVABLES = ("pt_t_had", "m_tt", "y_tt", "m_t_had", "m_t_lep", "cos_theta_star")
#: closure settings of the slow test: events, ensemble members, bootstrap replicas, iterations
N_EVENTS, N_REFERENCE, MEMBERS, BOOTSTRAP, ITERATIONS = 8000, 32000, 3, 6, 4
#: least measured simulated events per χ² bin: a bin's unfolded variance comes from its own
#: few events, and with the registry's fine tails the χ² of the exact truth reweighting (no
#: classifier) had mean χ²/ndf 1.4-1.8 instead of 1 (docs/omnifold.md, "tt̄ closure")
N_MIN_BIN = 25


def closure_chi2(path: Path, seed: int) -> dict[str, tuple[float, float, int]]:
    """(χ² unfolded, χ² prior, ndf) per observable against the reweighted truth, with the
    reported full covariance (:func:`unfoldmem.unfold.omnifold_uncertainty.unfolded_covariance`:
    an ensemble of ``MEMBERS`` classifier trainings, ``BOOTSTRAP`` replicas resampling data and
    simulation) ⊕ the reference's Σw², in the registry's bins merged until each holds
    ≥ ``N_MIN_BIN`` measured simulated events (chosen from the simulation, not the truth).

    The truth is the independent reference of the same generation (32 000 events, 8× the data
    half): the data half's own truth shares its events with the measured data, so
    unfolded − truth has a smaller variance than the two errors added, and a χ² against it
    would be too lenient.
    """
    c = make_closure(path, N_EVENTS, seed=seed, slope=0.5, n_reference=N_REFERENCE)
    inp = c["inp"]
    # a diverging replica warns (WeightWarning); it is counted and left out below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WeightWarning)
        rep = omnifold_replicas(
            inp["data"], inp["sim_reco"], inp["sim_gen"], n_ensemble=MEMBERS,
            n_bootstrap=BOOTSTRAP, seed=2, sim_weights=inp["sim_weights"],
            data_weights=inp["data_weights"], pass_reco=inp["pass_reco"],
            pass_gen=inp["pass_gen"],
            config=OmniFoldConfig(iterations=ITERATIONS, classifier=CLF),
        )
    # as the CLI: a replica that diverged is reported and left out (at most one tolerated)
    ok = np.array([not r.diverged for r in rep["results"]])
    assert (~ok).sum() <= 1, [r.diverged for r in rep["results"]]
    assert not caught or not ok.all(), [str(w.message) for w in caught]
    members = rep["ensemble"].numpy()[ok[:MEMBERS]]
    boot = rep["bootstrap"].numpy()[ok[MEMBERS:]]
    passed = inp["pass_reco"].numpy()
    report = {}
    for name in CHI2_OBSERVABLES:
        o = next(o for o in observables_for(PROCESS) if o.name == name)
        x = c["sim"][name]
        bins = merge_sparse_bins(x[passed], o.binning, N_MIN_BIN)
        u = unfolded_covariance(x, members, boot, bins, passed)
        truth = weighted_hist(c["reference"][name], c["reference_w"], bins)
        unf = chi2_covariance(u.values, u.covariance, truth.values(), truth.variances())
        prior = weighted_hist(x, c["sim_w"], bins).values()
        pri = chi2_covariance(prior, u.covariance, truth.values(), truth.variances())
        report[name] = (unf[0], pri[0], unf[1])
    return report


#: pseudo-experiments of the χ² closure: the first three sample seeds tried (11, 7, 23) and the
#: next two (5, 13), fixed before their results were seen; none is chosen or dropped for passing
CLOSURE_SEEDS = (11, 7, 23, 5, 13)


@pytest.fixture(scope="module")
def closure_reports(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[int, dict[str, tuple[float, float, int]]]:
    return {s: closure_chi2(tmp_path_factory.mktemp(f"tt{s}") / "tt.root", s)
            for s in CLOSURE_SEEDS}


@pytest.mark.slow
def test_ttbar_unfolded_marginals_chi2(
    closure_reports: dict[int, dict[str, tuple[float, float, int]]],
) -> None:
    """Issue #9: every unfolded marginal has χ²/ndf < 1.5 against the reweighted truth with the
    reported uncertainties (:func:`closure_chi2`), the χ² taken over five independent
    pseudo-experiments (Σχ²/Σndf: one χ² test of the five samples, 40 000 generated events),
    while the prior fails the top pt and m_tt with the same errors (pooled; the top pt, whose
    truth is shifted, in every sample).

    Why pooled: the criterion χ²/ndf < 1.5 on a single sample of this size is a coin toss even
    for the exact answer. The simulation reweighted with the *true* weight function (no
    classifier; 160 toys, 6 replicas, merged bins, the same reference size; docs/omnifold.md,
    "Pooled over pseudo-experiments") has P(χ²/ndf > 1.5) = 0.09-0.16 per observable and
    passes all six observables in only 51 % of the toys; the mean over five toys passes all six
    in 94 %. A method bias is coherent across samples, so the pooled χ² is more sensitive to
    it than any single sample's (the prior: pooled top pt χ²/ndf ≥ 2). Per sample: 8000 events
    (4000 simulated, ~1450 measured data events), slope 0.5, K = 4; every sample's numbers are
    printed and listed in docs/omnifold.md.
    """
    reports = closure_reports
    for seed, rep in reports.items():
        print(f"seed {seed} (chi2 unfolded, chi2 prior, ndf):", rep)
    pooled = {}
    for name in CHI2_OBSERVABLES:
        ndf = sum(rep[name][2] for rep in reports.values())
        pooled[name] = (sum(rep[name][0] for rep in reports.values()) / ndf,
                        sum(rep[name][1] for rep in reports.values()) / ndf)
    print("pooled chi2/ndf (unfolded, prior):", pooled)
    for name in ("pt_t_had", "m_tt"):
        assert pooled[name][1] > 1.5, (name, pooled)
    # every sample sees the shifted top pt: its prior fails there on its own
    for seed, rep in reports.items():
        assert rep["pt_t_had"][1] > 1.5 * rep["pt_t_had"][2], (seed, rep["pt_t_had"])
    for name in CHI2_OBSERVABLES:
        assert pooled[name][0] < 1.5, (name, pooled)
