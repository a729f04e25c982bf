r"""Weighted MEM fits of m_Z on Drell–Yan pseudo-data: the weight-2 half sample, negative weights.

Pseudo-data: DY μ⁺μ⁻ events generated at a known m_Z with the project's hadronic integrand and
the parametric detector (``tests.mem.test_integrand.make_dy_events``). Per-event likelihoods
come from the MEM with the exact transfer function (``ExactTransfer``, i.e.
``ParametricDetector.log_density``) and the m_Z-dependent σ_fid(θ) by |M|² reweighting, computed
once on an m_Z grid; the three fits only change the event weights:

(a) the N events with weight 1 (HESSE error);
(b) a random half (exactly N/2 events) with weight 2, the rest removed (sandwich error);
(c) an NLO-like sample with 10 % negative weights: the N events, plus M = N/8 events of a
    *different* distribution g (DY at m_Z − 1.5 GeV) with weight +1 and M further independent
    events of g with weight −1. 10 % of the N + 2M events are negative, Σw = N, and for any
    f, E[Σ w_i f(x_i)] = N E_p[f] + M E_g[f] − M E_g[f] = N E_p[f]: the weighted score has zero
    mean at the true m_Z (an unbiased estimating equation), while the events of g would pull
    the fit to lower m_Z if the negative weights did not cancel them.

Independent references: the true m_Z of the generator (closure within 3 reported σ), the
asymptotic theory of weighted ML fits (Langenbruch, EPJC 82 (2022) 393, arXiv:1911.01303):
the sandwich error of (b) is √2 × the HESSE error of (a), and since (b) is a subsample of (a),
Var(θ̂_b − θ̂_a) = σ_b² − σ_a².
"""

from __future__ import annotations

import math
import time
import warnings
from functools import cache

import numpy as np
import pytest
import torch

from tests._support.mem_events import dy_setup, make_dy_events
from unfoldmem.inference.fit import FitResult, fit, grid_objective, per_event_grid_function
from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.mem.integrand import ExactTransfer, RecoEvents
from unfoldmem.mem.likelihood import MEMConfig, MEMLikelihood
from unfoldmem.mem.normalisation import ReweightNormalisation
from unfoldmem.weights import WeightWarning

torch.set_num_threads(1)

M_TRUE = 91.6  # not the card default, so nothing can silently be evaluated at θ₀
M_G = M_TRUE - 1.5  # the distribution g of the cancelling positive/negative events
N_NORM = 20000


def _normalisation(seed: int) -> ReweightNormalisation:
    """σ_fid(m_Z) by reweighting a weighted sample at the card's θ₀; the selection is that of
    ``make_dy_events`` (two muons, no electron) simulated with the same detector."""
    had, det, _ = dy_setup()
    g = torch.Generator().manual_seed(seed)
    pt = had(torch.rand(N_NORM, had.dim, generator=g, dtype=torch.float64))
    chan = torch.multinomial(pt.channel_weights + 1e-300, 1, generator=g)[:, 0]
    out = det.simulate(pt.p_out, torch.tensor(had.process.final_state).expand(N_NORM, 2), g)
    passed = (out.muons.count == 2) & (out.electrons.count == 0)
    return ReweightNormalisation(had.process, pt.p_in, pt.p_out, chan, pt.weight / N_NORM,
                                 passed, had.full_theta())


@cache
def _likelihoods(n: int, grid: tuple[float, ...], seed: int) -> tuple[PerEventLikelihoods, float]:
    """Per-event MEM log P on the m_Z grid for n events at M_TRUE then 2·(n/8) events of g;
    returns them and the MEM wall time (s)."""
    had, det, _ = dy_setup()
    m = n // 8
    ev, _ = make_dy_events(n, seed=seed, theta={"m_z": M_TRUE})
    ex, _ = make_dy_events(2 * m, seed=seed + 1, theta={"m_z": M_G})
    events = RecoEvents(torch.cat([ev.objects, ex.objects]), torch.cat([ev.mask, ex.mask]))
    mem = MEMLikelihood(had, ExactTransfer(det), detector=det, normalisation=_normalisation(seed),
                        config=MEMConfig(precision=0.1, n_max=1024, chunk_size=32, seed=seed))
    with warnings.catch_warnings():
        # a few events with ESS/N below the diagnostic threshold: their log P errors (~0.1)
        # are common to all grid points and all three fits, so they cannot split (a), (b), (c)
        warnings.simplefilter("ignore", WeightWarning)
        t0 = time.perf_counter()
        res = mem.evaluate(events, {"m_z": list(grid)}, progress=False)
        seconds = time.perf_counter() - t0
    assert res.n_flagged == 0
    return PerEventLikelihoods(**res.fields()), seconds


def _scores(lik: PerEventLikelihoods, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-event score s_i and curvature h_i = −∂² log P_i at m_Z = theta (grid spline)."""
    fn = per_event_grid_function(lik)
    t = torch.tensor([theta], dtype=torch.float64)
    s = torch.func.jacfwd(fn)(t)[:, 0]
    h = -torch.func.jacfwd(torch.func.jacfwd(fn))(t)[:, 0, 0]
    return s, h


def _ratio_sd(s: np.ndarray, h: np.ndarray, half: np.ndarray) -> float:
    r"""Standard deviation of ln(σ_b/σ_a) by the delta method.

    r² = σ_b²/σ_a² = Σ_H s² · Σ_all h / (Σ_H h)² with H the kept half (n events) and H̄ the rest
    (n̄): δ ln r² = δ⟨s²⟩_H/E s² − 1.5 δ⟨h⟩_H/E h + 0.5 δ⟨h⟩_H̄/E h, so
    Var ln r² = Var(s²/E s² − 1.5 h/E h)/n + 0.25 Var(h/E h)/n̄, moments from the sample.
    """
    u = s[half] ** 2 / np.mean(s**2) - 1.5 * h[half] / np.mean(h)
    v = h[~half] / np.mean(h)
    return 0.5 * math.sqrt(u.var(ddof=1) / half.sum() + 0.25 * v.var(ddof=1) / (~half).sum())


def _check(n: int, grid: tuple[float, ...], seed: int) -> dict[str, FitResult]:
    lik, seconds = _likelihoods(n, grid, seed)
    m = n // 8
    base = np.r_[np.ones(n), np.zeros(2 * m)]
    half = np.zeros(n + 2 * m, dtype=bool)
    half[np.random.default_rng(seed).permutation(n)[: n // 2]] = True
    weights = {
        "a": base,
        "b": np.where(half, 2.0, 0.0),
        "c": np.r_[np.ones(n + m), -np.ones(m)],
    }
    assert np.mean(weights["c"] < 0) == pytest.approx(0.10) and weights["c"].sum() == n
    res = {}
    for k, w in weights.items():
        # (a): zero weight = not in the sample, unit weights otherwise: HESSE is its covariance
        mode = "hesse" if k == "a" else "auto"
        res[k] = fit(grid_objective(lik, weight=torch.from_numpy(w), weight_errors=mode),
                     minos_cls=())
        assert res[k].valid
    a, b, c = (res[k].value("m_z") for k in "abc")
    ea, eb, ec = (res[k].error("m_z") for k in "abc")
    print(f"N={n}, true m_Z={M_TRUE}: (a) {a:.3f} ± {ea:.3f}  (b) {b:.3f} ± {eb:.3f}  "
          f"(c) {c:.3f} ± {ec:.3f}  MEM {seconds:.1f} s")
    assert res["a"].extra["weight_errors"] == "hesse"
    assert res["b"].extra["weight_errors"] == res["c"].extra["weight_errors"] == "sandwich"
    for k in "abc":
        assert abs(res[k].value("m_z") - M_TRUE) < 3 * res[k].error("m_z"), k
    # (b) is a subsample of (a): Var(θ̂_b − θ̂_a) = σ_b² − σ_a²
    assert eb > ea
    assert abs(b - a) < 3 * math.sqrt(eb**2 - ea**2)
    s, h = (x.numpy() for x in _scores(lik, a))
    sd = _ratio_sd(s[:n], h[:n], half[:n])
    print(f"σ_b/σ_a = {eb / ea:.3f} (√2 ± {math.sqrt(2) * sd:.3f})")
    assert abs(math.log(eb / ea / math.sqrt(2))) < 3 * sd
    # (c) − (a) = the extra events' weighted score over the curvature: its variance is
    # Σ_extra s_i²/H_c² (independent events, w² = 1), zero mean only if the −1 events cancel g
    s, h = (x.numpy() for x in _scores(lik, c))
    hc = float((weights["c"] * h).sum())
    sd_ca = math.sqrt(float((s[n:] ** 2).sum())) / hc
    print(f"θ̂_c − θ̂_a = {c - a:.3f} ± {sd_ca:.3f}")
    assert abs(c - a) < 3 * sd_ca
    return res


def test_weighted_mem_fit_small() -> None:
    """N = 200 DY events (+ 2 × 25 for the negative weights), 5 m_Z points: (a), (b), (c) close
    on the generated m_Z within 3σ, (b) agrees with (a) within 3σ of their difference and quotes
    √2 × its error within 3 delta-method standard deviations, (c) agrees with (a) within 3σ of
    the cancelling events' contribution."""
    _check(200, tuple(np.linspace(90.6, 92.6, 5)), seed=11)


@pytest.mark.slow
def test_weighted_mem_fit_large() -> None:
    """As the small test with N = 1000 events (+ 2 × 125) on 7 m_Z points, 0.2 GeV apart."""
    _check(1000, tuple(np.linspace(91.0, 92.2, 7)), seed=31)
