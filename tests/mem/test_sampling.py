"""Importance sampling vs deterministic quadrature on Drell–Yan with the exact detector density;
weight diagnostics of a proposal that misses the integrand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests._support.dy_quadrature import quadrature_log_integral
from tests._support.mem_events import dy_setup, make_dy_events
from unfoldmem.mem.sampling import TAIL_ROUNDS, RecoChannel, diagnose, importance_sample
from unfoldmem.weights import WeightDiagnosticsConfig, WeightWarning

torch.set_num_threads(1)




def _pulls(n_events: int, seed: int, precision: float = 0.03) -> np.ndarray:
    _, det, integ = dy_setup()
    ev, _ = make_dy_events(n_events, seed=seed)
    # The default mixture of MEMLikelihood: physics detector channel 90 %, plain 10 %.
    chs = [RecoChannel(det, scale=1.25, physics=True), RecoChannel(det)]
    res = importance_sample(integ, ev, [{}], chs, [0.9, 0.1], precision=precision,
                            n_start=256, n_max=16384, generator=torch.Generator().manual_seed(seed))
    assert (res.flag == 0).all()
    ref = np.array([quadrature_log_integral(ev[i : i + 1]) for i in range(len(ev))])
    return (res.log_p[:, 0].numpy() - ref) / res.log_p_err[:, 0].numpy()


def test_quadrature_converged() -> None:
    """The quadrature reference is stable: 48 vs 96 p_T nodes agree to 1e-4 in log (100× below
    the 1 % errors it is compared with; events at an η-region edge converge slowest)."""
    ev, _ = make_dy_events(2, seed=11)
    for i in range(2):
        q48 = quadrature_log_integral(ev[i : i + 1], 48)
        q96 = quadrature_log_integral(ev[i : i + 1], 96)
        assert abs(q48 - q96) < 1e-4


def test_is_pulls_vs_quadrature_fast() -> None:
    """IS estimate vs deterministic quadrature (reference above) on 40 DY events: pull mean
    within 4/√N of 0 and pull width within 4·(1/√(2N)) + 0.1 of 1."""
    pulls = _pulls(40, seed=2)
    n = len(pulls)
    assert abs(pulls.mean()) < 4 / math.sqrt(n)
    assert abs(pulls.std(ddof=1) - 1) < 4 / math.sqrt(2 * n) + 0.1


@pytest.mark.slow
def test_is_pulls_vs_quadrature_500() -> None:
    """Issue 10 check (≥ 500 events): over 1000 DY events the pulls have mean 0 ± 0.1 and width
    1 ± 0.1. With 500 the mean's standard error is 0.045, so ±0.1 is only 2.2σ (seed 7 gave
    0.109 there); with 1000 it is 0.032 (3.1σ). Measured: seed 7 mean 0.017 ± 0.033, width
    1.049; seed 8 0.038 ± 0.032, 1.019."""
    pulls = _pulls(1000, seed=7)
    print(f"pulls: mean {pulls.mean():.3f} width {pulls.std(ddof=1):.3f}")
    assert abs(pulls.mean()) < 0.1
    assert abs(pulls.std(ddof=1) - 1) < 0.1


def test_missed_proposal_is_reported_and_stays_unbiased() -> None:
    """A channel whose Gaussians sit 8 resolutions off (weight 0.9) is caught by the weight
    diagnostics (low ESS/N, high max share) while the mixture estimate, thanks to the 10 %
    detector channel, still agrees with the quadrature within 5 reported errors."""
    _, det, integ = dy_setup()
    ev, _ = make_dy_events(1, seed=4)
    off = torch.tensor([[0.2, 0.02, 0.0], [0.2, 0.02, 0.0]], dtype=torch.float64)
    bad = RecoChannel(det, scale=1.0, offset=off)
    res = importance_sample(integ, ev, [{}], [bad, RecoChannel(det)], [0.9, 0.1],
                            precision=0.05, n_start=2048, n_max=8192,
                            generator=torch.Generator().manual_seed(1))
    ess_ratio = float(res.ess[0, 0] / res.n_samples[0])
    assert ess_ratio < 0.05
    assert float(res.channel_share[0, 1]) > 0.5  # the fallback channel carries the estimate
    ref = quadrature_log_integral(ev)
    assert abs(float(res.log_p[0, 0]) - ref) < 5 * float(res.log_p_err[0, 0])
    cfg = WeightDiagnosticsConfig(ess_ratio_min=0.1, max_share_max=0.05)
    with pytest.warns(WeightWarning, match="ESS/N"):
        d = diagnose(res, cfg, name="mem")
    assert d["events"][0]["ess_ratio"] == pytest.approx(ess_ratio)
    assert d["n_violating"] == 1 and d["events"][0]["n_nonfinite"] == 0


def test_heavy_tailed_weights_keep_sampling_and_are_reported() -> None:
    """A proposal narrower than the detector resolution (σ_q = 0.3 σ, alone) has weights
    F/q ∝ exp(x²(1/σ_q² − 1/σ²)/2) whose tail under q is Pareto with shape
    k = 1 − σ_q²/σ² = 0.91 (infinite variance above 1/2; PSIS, Vehtari et al. 2024, §3).
    Its k̂ exceeds 0.7, so no event stops on its first small-looking error: each samples
    TAIL_ROUNDS more rounds (doubling, short of n_max: more samples cannot make an infinite
    variance finite), and the diagnostics report them; the default mixture on the same events
    keeps k̂ < 0.5 and stops at once."""
    _, det, integ = dy_setup()
    ev, _ = make_dy_events(4, seed=9)
    narrow = importance_sample(integ, ev, [{}], [RecoChannel(det, scale=0.3)], [1.0],
                               precision=0.2, n_start=4096, n_max=65536,
                               generator=torch.Generator().manual_seed(2))
    assert (narrow.pareto_k[:, 0] > 0.7).all(), narrow.pareto_k
    # at least the first round and TAIL_ROUNDS doublings, even if 20 % looked reached at once
    assert (narrow.n_samples >= 4096 * 2**TAIL_ROUNDS).all(), narrow.n_samples
    with pytest.warns(WeightWarning, match="Pareto k"):
        d = diagnose(narrow, WeightDiagnosticsConfig(ess_ratio_min=0.0, max_share_max=1.0))
    assert d["n_violating"] == 4
    chs = [RecoChannel(det, scale=1.25, physics=True), RecoChannel(det)]
    good = importance_sample(integ, ev, [{}], chs, [0.9, 0.1], precision=0.03,
                             generator=torch.Generator().manual_seed(2))
    assert (good.pareto_k[:, 0] < 0.5).all(), good.pareto_k
