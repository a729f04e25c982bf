r"""Top-mass calibration of the tt̄ MEM (exact transfer function): disjoint pseudo-experiments.

Pseudo-data: semileptonic tt̄ (``cards/processes/ttbar_semileptonic.yaml``) generated at
m_t = 173.5 GeV — not the card's 172.5, so nothing can silently be evaluated at the card value —
with the project's hadronic integrand (accept-reject) and the default parametric detector
*without ISR jets*, selected with one muon, no electron and exactly four jets. σ_fid(m_t) with
the same selection at every grid point (weighted samples with common random numbers, cubic
fit). Per-event log P on the m_t grid with the exact W (``ExactTransfer``), one proposal per
grid point and common random numbers
(:func:`~unfoldmem.inference.hypothesis_grid.hypothesis_grid_likelihoods`), then each event's
values replaced by a least-squares polynomial in m_t: degree 2, or 3 where the event's
residual exceeds that of its own even/odd noise replica (F-test at 1 %,
:func:`~unfoldmem.inference.smoothing.select_degree`). A spline through the noisy values reads
MC noise as curvature (pull width 3.0 at 512 samples, 1.8 at 2048).

Why no ISR: the exact W has no lost-parton term (``mem/assignments.py``: "Lost partons are not
modelled"). With the default card's ISR jets, 42 % of the selected 4-jet events are a lost quark
plus an ISR jet; the MEM treats the ISR jet as the quark, those events' log P rises towards
m_t ≈ 180 GeV, and m̂_t is biased by +2 GeV (0.65 σ) while the events with four matched jets
alone show no bias within errors. Without ISR a lost quark fails the 4-jet selection, so W is
exact for every selected event; the default card needs W to model lost partons first (#11).

Independent references: the generated m_t (bias), the standard normal (pulls (m̂ − m_t)/σ̂ of
independent pseudo-experiments: the pool is split into disjoint parts), the nominal CL
(coverage), and Cramér–Rao: the Fisher information I(m_t) by autodiff of the per-event
likelihood splines equals 1/Var(m̂_t) for an efficient estimator.
"""

from __future__ import annotations

import math
import warnings
from functools import cache

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from unfoldmem.inference.calibration import CalibrationResult, calibrate
from unfoldmem.inference.fisher import fisher_information
from unfoldmem.inference.fit import fit, grid_objective, per_event_grid_function
from unfoldmem.inference.hypothesis_grid import (
    MEMFactory,
    grid_normalisation,
    hypothesis_grid_likelihoods,
    simulate_selected,
)
from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.inference.smoothing import select_degree, smooth_grid
from unfoldmem.weights import WeightWarning

M_TRUE = 173.5
PROCESS = REPO / "cards/processes/ttbar_semileptonic.yaml"
DETECTOR = REPO / "cards/detectors/default.yaml"
N_FULL = 2048  # samples per event and grid point of the full test


def _select(out) -> torch.Tensor:
    """One muon, no electron, exactly four jets."""
    return (out.muons.count == 1) & (out.electrons.count == 0) & (out.jets.count == 4)


def _detector_without_isr():
    """The default detector card with ISR jets off (see the module docstring)."""
    from unfoldmem.cards import load_card

    return load_card(DETECTOR, "detector").without_isr()


@cache
def _likelihoods(pool: int, grid: tuple[float, ...], n_samples: int, n_norm: int,
                 seed: int, transfer: str = "exact") -> PerEventLikelihoods:
    factory = MEMFactory(PROCESS, _detector_without_isr(), transfer, config={"seed": seed})
    events, _ = simulate_selected(factory.hadronic({"m_t": M_TRUE}), factory.detector_model,
                                  pool, {"m_t": M_TRUE}, seed, _select)
    factory.normalisation = grid_normalisation(factory, "m_t", list(grid), n_norm, seed + 1,
                                               _select)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeightWarning)
        return hypothesis_grid_likelihoods(factory, events, {"m_t": list(grid)}, n_samples,
                                           seed=seed)


def _fisher_times_variance(lik: PerEventLikelihoods, cal: CalibrationResult,
                           per_pseudo: int) -> tuple[float, float]:
    """I(m_t) per pseudo-experiment × Var(m̂_t) and the relative error of a sample variance."""
    ok = lik.ok()
    info = fisher_information(per_event_grid_function(ok),
                              torch.tensor([M_TRUE], dtype=torch.float64))
    est = cal.estimates[cal.valid, 0]
    ratio = float(info[0, 0]) / ok.n_events * per_pseudo * float(np.var(est, ddof=1))
    return ratio, math.sqrt(2 / (len(est) - 1))


def _smooth(lik: PerEventLikelihoods) -> tuple[PerEventLikelihoods, np.ndarray]:
    """Each event's polynomial of its own degree: 2 (a maximum to fit), or 3 where the event's
    residual exceeds its noise replica's (F-test at 1 %)."""
    degree = select_degree(lik, per_event=True, min_degree=2, max_degree=3)
    return smooth_grid(lik, degree).ok(), degree


def _assert_calibrated(ok: PerEventLikelihoods, s: dict, ratio: float) -> None:
    """The issue's criteria on 800 events in 100 pseudo-experiments: bias < 0.2σ, pull width
    1.0 ± 0.1, 68 % / 95 % coverage within 3 binomial standard errors, Fisher × Var = 1 ± 0.15."""
    assert ok.n_events == 800 and s["n_pseudo"] == 100
    assert abs(s["bias_over_sigma"]) < 0.2
    assert abs(s["pull_width"] - 1) < 0.1
    for cl in (0.6827, 0.95):
        assert abs(s[f"coverage_{cl:.4f}"] - cl) < 3 * s[f"coverage_{cl:.4f}_err"]
    assert abs(ratio - 1) < 0.15


def test_ttbar_mt_calibration_small() -> None:
    """36 events at m_t = 173.5 GeV, 5 grid points over ±12 GeV, 128 samples per point.

    No event is flagged (a sample the proposal cannot produce no longer turns an event into
    NaN), every error and noise replica is finite; the smoothed fit of the whole pool lands
    within 4 HESSE errors of the generated 173.5 GeV; the events make 6 disjoint
    pseudo-experiments of 6 events, all fitted, with |bias| < 4 of its standard errors; the
    autodiff Fisher information of the smoothed per-event curves is positive."""
    grid = tuple(np.linspace(M_TRUE - 12, M_TRUE + 12, 5).tolist())
    lik = _likelihoods(36, grid, 128, 2000, seed=3)
    assert lik.n_flagged == 0 and torch.isfinite(lik.log_p).all()
    assert torch.isfinite(lik.log_p_err).all() and torch.isfinite(lik.log_p_noise).all()
    ok, degree = _smooth(lik)
    res = fit(grid_objective(ok), minos_cls=())
    assert res.valid
    assert abs(res.value("m_t") - M_TRUE) < 4 * res.error("m_t")
    cal = calibrate(ok, {"m_t": M_TRUE}, n_pseudo=6, seed=3, disjoint=True)
    s = cal.summary()["m_t"]
    assert s["n_pseudo"] == 6 and cal.n_events_mean == 6
    assert abs(s["bias"]) < 4 * s["bias_err"]
    ratio, rel = _fisher_times_variance(ok, cal, 6)
    assert ratio > 0 and rel > 0 and set(degree.tolist()) <= {2, 3}


@pytest.mark.slow
def test_ttbar_mt_calibration_full() -> None:
    """800 events at m_t = 173.5 GeV in 100 disjoint pseudo-experiments of 8 events, 9 grid
    points over ±12 GeV (±4σ of one pseudo-experiment), N_FULL samples per point, smoothed
    per-event curves: no event dropped, every pseudo-experiment fitted, bias < 0.2σ, pull
    width 1.0 ± 0.1, 68 % / 95 % coverage within 3 binomial standard errors, and Fisher
    information × Var(m̂_t) = 1 within 15 %."""
    per_pseudo = 8
    grid = tuple(np.linspace(M_TRUE - 12, M_TRUE + 12, 9).tolist())
    lik = _likelihoods(800, grid, N_FULL, 20000, seed=1)
    ok, degree = _smooth(lik)
    cal = calibrate(ok, {"m_t": M_TRUE}, n_pseudo=100, seed=1, disjoint=True)
    s = cal.summary()["m_t"]
    ratio, _ = _fisher_times_variance(ok, cal, per_pseudo)
    print(f"events per degree {np.bincount(degree).tolist()}", s, f"Fisher × Var = {ratio:.3f}")
    _assert_calibrated(ok, s, ratio)


def _train_slot_transfer(path, seed: int = 11):
    """The learned W of the calibration: `cards/models/transfer_ttbar_noisr.yaml` (one 4-jet
    class, residual, ``pairing: slot``) trained on 54 000 selected no-ISR events, 6000 per m_t
    run at 163.5 (×2), 168.5, 173.5 (×3), 178.5 and 183.5 (×2) GeV, jets in ΔR truth-match
    order (``TransferFlow`` does that for slot pairing). Returns the model directory."""
    from unfoldmem.cards import load_card
    from unfoldmem.flows.model_dir import build_model, data_hash, encodings_of, save_model
    from unfoldmem.flows.training import train
    from unfoldmem.flows.transfer import TransferFlow
    from unfoldmem.physics import lorentz

    factory = MEMFactory(PROCESS, _detector_without_isr(), "exact")
    objs, masks, parts = [], [], []
    for j, m in enumerate([163.5, 163.5, 168.5, 173.5, 173.5, 173.5, 178.5, 183.5, 183.5]):
        ev, p = simulate_selected(factory.hadronic({"m_t": m}), factory.detector_model, 6000,
                                  {"m_t": m}, seed + 100 * j, _select)
        objs.append(ev.objects)
        masks.append(ev.mask)
        parts.append(p)
    width = max(o.shape[1] for o in objs)
    reco = torch.cat([torch.nn.functional.pad(o, (0, 0, 0, width - o.shape[1])) for o in objs])
    mask = torch.cat([torch.nn.functional.pad(k, (0, width - k.shape[1])) for k in masks])
    v = lorentz.to_ptetaphim(torch.cat(parts))
    card = load_card(REPO / "cards/models/transfer_ttbar_noisr.yaml", "model")
    w = torch.ones(len(v), dtype=torch.float64)
    torch.manual_seed(card.training.seed)
    core = TransferFlow.from_data(v, reco, mask, w, card.transfer, card.flow, card.encoding)
    model = build_model(card, encodings_of(core))
    core.copy_pairing(model)
    res = train(model, core.prepare(v, reco, mask, w), card.training, quiet=True)
    h = data_hash({"partons": v, "reco": reco, "mask": mask, "weight": w})
    return save_model(path, model.cpu(), card, h, res, n_events=len(v))


@pytest.mark.slow
def test_ttbar_mt_calibration_learned_full(tmp_path) -> None:
    """The full calibration with the learned W (slot-paired transfer flow summed over the jet
    assignments) on the events, grid, samples and seeds of the exact-W test: bias < 0.2σ, pull
    width 1.0 ± 0.1, coverage within 3 binomial standard errors, Fisher × Var = 1 within 15 %;
    and issue #10's check against the exact W on the same events: the m_t minima of the summed
    likelihoods differ by less than the exact fit's error. Measured by the same steps run as
    scripts (examples/ttbar_mt_calibration.py --transfer MODEL --no-isr --n-samples 2048): bias
    0.17σ, pull width 1.06 ± 0.08, coverage 0.61 / 0.95, Fisher × Var 1.13 ± 0.16; exact vs
    learned m̂_t 174.06 ± 0.27 vs 174.19 ± 0.26 (at 512 samples), median |Δ log P| 0.63."""
    model_dir = _train_slot_transfer(tmp_path / "transfer")
    per_pseudo = 8
    grid = tuple(np.linspace(M_TRUE - 12, M_TRUE + 12, 9).tolist())
    lik = _likelihoods(800, grid, N_FULL, 20000, seed=1, transfer=str(model_dir))
    ok, degree = _smooth(lik)
    cal = calibrate(ok, {"m_t": M_TRUE}, n_pseudo=100, seed=1, disjoint=True)
    s = cal.summary()["m_t"]
    ratio, _ = _fisher_times_variance(ok, cal, per_pseudo)
    exact, _ = _smooth(_likelihoods(800, grid, N_FULL, 20000, seed=1))
    d = (ok.log_p - exact.log_p).abs().median(-1).values.median()
    r_learned = fit(grid_objective(ok), minos_cls=())
    r_exact = fit(grid_objective(exact), minos_cls=())
    print(f"events per degree {np.bincount(degree).tolist()}", s, f"Fisher × Var = {ratio:.3f}",
          f"median |Δ log P| {float(d):.3f}", r_learned.value("m_t"), r_exact.value("m_t"))
    _assert_calibrated(ok, s, ratio)
    assert abs(r_learned.value("m_t") - r_exact.value("m_t")) < r_exact.error("m_t")
