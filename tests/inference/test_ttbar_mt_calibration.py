r"""Top-mass calibration of the tt̄ MEM (exact transfer function): disjoint pseudo-experiments.

Pseudo-data: semileptonic tt̄ (``cards/processes/ttbar_semileptonic.yaml``) generated at
m_t = 173.5 GeV — not the card's 172.5, so nothing can silently be evaluated at the card value —
with the project's hadronic integrand (accept-reject) and the default parametric detector,
selected with one muon, no electron and exactly four jets. σ_fid(m_t) with the same selection
at every grid point (weighted samples, cubic fit). Per-event log P on the m_t grid with the
exact W (``ExactTransfer``), one proposal per grid point and common random numbers
(:func:`~unfoldmem.inference.hypothesis_grid.hypothesis_grid_likelihoods`).

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
from unfoldmem.weights import WeightWarning

M_TRUE = 173.5
PROCESS = REPO / "cards/processes/ttbar_semileptonic.yaml"
DETECTOR = REPO / "cards/detectors/default.yaml"
PULL_WIDTH_TODAY = 3.0  # measured by test_ttbar_mt_calibration_full (fails the 1.0 ± 0.1 goal)


def _select(out) -> torch.Tensor:
    """One muon, no electron, exactly four jets."""
    return (out.muons.count == 1) & (out.electrons.count == 0) & (out.jets.count == 4)


@cache
def _likelihoods(pool: int, grid: tuple[float, ...], n_samples: int, n_norm: int,
                 seed: int) -> PerEventLikelihoods:
    factory = MEMFactory(PROCESS, DETECTOR, "exact", config={"seed": seed})
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


def test_ttbar_mt_calibration_small() -> None:
    """36 events at m_t = 173.5 GeV, 5 grid points over ±12 GeV, 128 samples per point.

    At most 2 events are flagged and every other log P is finite; the fit of the whole pool
    lands within 4 × 3 HESSE errors of the generated 173.5 GeV (3: the pull width of the full
    run); the unflagged events make 5 or 6 disjoint pseudo-experiments of 6 events, all fitted,
    with |bias| < 4 of its standard errors; the autodiff Fisher information of the
    per-event splines is finite."""
    grid = tuple(np.linspace(M_TRUE - 12, M_TRUE + 12, 5).tolist())
    lik = _likelihoods(36, grid, 128, 2000, seed=3)
    # an event is flagged when a grid point's samples all miss (zero estimate): rare
    assert lik.n_flagged <= 2 and torch.isfinite(lik.ok().log_p).all()
    res = fit(grid_objective(lik), minos_cls=())
    assert res.valid
    # HESSE errors are too small by the MC noise of the MEM: pull width 3.0 measured in the
    # slow test (docs/inference.md), so closure is asked within 4 × 3 HESSE errors here
    assert abs(res.value("m_t") - M_TRUE) < 4 * PULL_WIDTH_TODAY * res.error("m_t")
    cal = calibrate(lik, {"m_t": M_TRUE}, n_pseudo=lik.ok().n_events // 6, seed=3, disjoint=True)
    s = cal.summary()["m_t"]
    assert s["n_pseudo"] >= 5 and cal.n_events_mean == 6
    assert abs(s["bias"]) < 4 * s["bias_err"]
    ratio, rel = _fisher_times_variance(lik, cal, 6)
    # finite, not necessarily positive: at 128 samples MC kinks dominate the spline curvature
    assert math.isfinite(ratio) and rel > 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue #11 open: the tt̄ MEM's Monte Carlo noise per "
                   "grid point (~0.4 in log P at 512 samples) exceeds the m_t signal of one "
                   "event (~0.3 over ±12 GeV): pull width 3.0 measured (docs/inference.md); "
                   "strict, so the marker must go once the MEM is good enough")
def test_ttbar_mt_calibration_full() -> None:
    """800 events at m_t = 173.5 GeV in 100 disjoint pseudo-experiments of 8 events, 9 grid
    points over ±12 GeV (±4σ of one pseudo-experiment), 512 samples per point: bias < 0.2σ,
    pull width 1.0 ± 0.1, 68 % / 95 % coverage within 3 binomial standard errors, and Fisher
    information × Var(m̂_t) = 1 within 15 %."""
    per_pseudo = 8
    grid = tuple(np.linspace(M_TRUE - 12, M_TRUE + 12, 9).tolist())
    lik = _likelihoods(800, grid, 512, 20000, seed=1)
    cal = calibrate(lik.ok(), {"m_t": M_TRUE}, n_pseudo=lik.ok().n_events // per_pseudo,
                    seed=1, disjoint=True)
    s = cal.summary()["m_t"]
    print(s)
    assert s["n_pseudo"] >= 98
    assert abs(s["bias_over_sigma"]) < 0.2
    assert abs(s["pull_width"] - 1) < 0.1
    for cl in (0.6827, 0.95):
        assert abs(s[f"coverage_{cl:.4f}"] - cl) < 3 * s[f"coverage_{cl:.4f}_err"]
    ratio, _ = _fisher_times_variance(lik, cal, per_pseudo)
    print(f"Fisher × Var = {ratio:.3f}")
    assert abs(ratio - 1) < 0.15
