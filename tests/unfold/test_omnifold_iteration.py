"""Tests of unfoldmem.unfold.omnifold_iteration: the two-step iteration, misses, divergence.

Independent references: the algebra of one OmniFold iteration with an exact binned likelihood
ratio (with a perfect detector it reduces to the data divided by the simulation's efficiency,
bin by bin, as IBU with a diagonal response: D'Agostini, NIM A362 (1995) 487), and classifiers
broken on purpose (p ∈ {0, 1}) whose weights the diagnostics must flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from unfoldmem.unfold.classifier import (
    ClassifierConfig,
    EventFeatures,
    TrainedClassifier,
    likelihood_ratio_from_p,
)
from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold
from unfoldmem.weights import WeightDiagnosticsConfig, WeightError, WeightWarning

CLF = ClassifierConfig(hidden=32, layers=2, epochs=30, batch_size=1024, lr=5e-3, seed=3)
EPS = 0.3  # Gaussian smearing of the toy


def toy(n: int, mu: float, sig: float, seed: int) -> dict[str, np.ndarray]:
    """Parton t ~ N(mu, sig), reco r = t + N(0, EPS); every event passes both levels."""
    rng = np.random.default_rng(seed)
    t = rng.normal(mu, sig, n)
    r = t + rng.normal(0.0, EPS, n)
    ok = np.ones(n, dtype=bool)
    return {"t": t, "r": r, "g": ok, "rr": ok}


def run(data: dict[str, np.ndarray], sim: dict[str, np.ndarray], **kw: Any) -> Any:
    cfg = kw.pop("config", OmniFoldConfig(iterations=3, classifier=CLF))
    return omnifold(
        EventFeatures(torch.from_numpy(data["r"][data["rr"]])),
        EventFeatures(torch.from_numpy(sim["r"])),
        EventFeatures(torch.from_numpy(sim["t"])),
        pass_reco=torch.from_numpy(sim["rr"]),
        pass_gen=torch.from_numpy(sim["g"]),
        config=cfg,
        **kw,
    )


class _Exact:
    """Exact likelihood ratio of the weighted samples on an integer feature (5 bins):
    r_b = S1_b / S0_b, the unnormalised ratio a perfect classifier learns. Iterations listed
    in ``BROKEN`` (from the seed: base + 10 k + step) output p ∈ {0, 1} instead."""

    BROKEN: tuple[int, ...] = ()

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg, self.broken = cfg, (cfg.seed - CLF.seed) // 10 in self.BROKEN
        b0, b1 = x0.globals[:, 0].long(), x1.globals[:, 0].long()
        s0 = torch.zeros(5, dtype=torch.float64).index_add_(0, b0, w0.double())
        s1 = torch.zeros(5, dtype=torch.float64).index_add_(0, b1, w1.double())
        self.r = s1 / s0.clamp_min(1e-300)

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        b = f.globals[:, 0].long()
        if self.broken:
            p = (b >= 2).double()
            return likelihood_ratio_from_p(p, self.cfg.p_clip, (1.0, 1.0), normalized)
        return self.r[b], {"n_clipped_low": 0, "n_clipped_high": 0, "n_nonfinite_p": 0,
                           "p_min": 0.0, "p_max": 1.0}


def _binned(seed: int) -> tuple[EventFeatures, EventFeatures, torch.Tensor, np.ndarray]:
    """Simulation in 5 bins with a perfect detector and efficiency 0.3-0.9 per bin (misses);
    data: reco-level bin counts of another law."""
    rng = np.random.default_rng(seed)
    sim = rng.integers(0, 5, 4000)
    eff = np.array([0.3, 0.5, 0.6, 0.8, 0.9])
    rec = rng.uniform(size=4000) < eff[sim]
    data = np.minimum(rng.poisson(2.0, 1500), 4)
    f_sim = EventFeatures(torch.from_numpy(sim.astype(np.float64))[:, None])
    f_data = EventFeatures(torch.from_numpy(data.astype(np.float64))[:, None])
    return f_data, f_sim, torch.from_numpy(rec), np.bincount(data, minlength=5)


def test_exact_ratio_unfolds_data_over_efficiency() -> None:
    """Perfect detector, exact binned ratios, misses (efficiency 0.3-0.9): after one iteration
    the unfolded content of bin b is D_b / ε̂_b exactly (ε̂_b the simulation's efficiency),
    the misses get their bin's pull (step 1b), the weights are finite and positive, and a
    second iteration changes nothing (the fixed point)."""
    f_data, f_sim, rec, d = _binned(1)
    _Exact.BROKEN = ()
    res = omnifold(f_data, f_sim, f_sim, pass_reco=rec, trainer=_Exact,
                   config=OmniFoldConfig(iterations=2, classifier=CLF))
    b = f_sim.globals[:, 0].long().numpy()
    r = rec.numpy()
    eff = np.bincount(b[r], minlength=5) / np.bincount(b, minlength=5)
    for k in (1, 2):
        got = np.bincount(b, res.weights(k).numpy(), minlength=5)
        assert np.allclose(got, d / eff, rtol=1e-10)
    assert "step1b" in res.diagnostics[0] and res.diverged == [] and res.usable_iteration == 2
    w = res.weights().numpy()
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    assert res.diagnostics[1]["mean_abs_change"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("stop", [True, False])
def test_diverging_later_iteration_is_flagged_not_used(stop: bool) -> None:
    """Iteration 2 of 3 diverges (a classifier with p ∈ {0, 1}): it is reported with its
    reasons and a WeightWarning, and the usable weights stay those of iteration 1, whether
    iterating stops there (``stop_on_divergence``) or goes on."""
    f_data, f_sim, rec, _ = _binned(2)
    _Exact.BROKEN = (2,)
    cfg = OmniFoldConfig(iterations=3, classifier=CLF, stop_on_divergence=stop)
    try:
        with pytest.warns(WeightWarning):
            res = omnifold(f_data, f_sim, f_sim, pass_reco=rec, trainer=_Exact, config=cfg)
    finally:
        _Exact.BROKEN = ()
    assert 2 in res.diverged and res.usable_iteration == 1
    assert res.diagnostics[1]["reasons"] and res.diagnostics[1]["diverged"]
    assert torch.equal(res.weights(), res.weights(1))
    assert len(res.push) == (3 if stop else 4)


class _Broken:
    """A classifier that outputs exactly 0 or 1 (a diverged training)."""

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg = cfg

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        p = (f.globals[:, 0] > 2.5).double()
        return likelihood_ratio_from_p(p, self.cfg.p_clip, (1.0, 1.0), normalized)


def test_broken_iteration_is_reported() -> None:
    """A classifier giving p ∈ {0, 1}: clipping, tiny ESS and huge share are all reported."""
    data, sim = toy(2000, 0.4, 0.9, 51), toy(2000, 0.0, 1.0, 52)
    with pytest.warns(WeightWarning):
        res = run(data, sim, trainer=_Broken)
    assert res.diverged == [1] and res.usable_iteration == 0
    d = res.diagnostics[0]
    assert (
        d["step1"]["clipping"]["n_clipped_low"] + d["step1"]["clipping"]["n_clipped_high"] == 2000
    )
    assert d["pull"]["ess_ratio"] < 0.05 and d["pull"]["max_share"] > 1e-3
    assert any("clipped" in r for r in d["reasons"])
    # the usable weights are the prior's, not the diverged iteration's
    assert torch.equal(res.weights(), res.initial_weights)
    assert len(res.push) == 2  # stopped at the diverged iteration


def test_broken_iteration_raises_with_error_policy() -> None:
    data, sim = toy(1000, 0.4, 0.9, 61), toy(1000, 0.0, 1.0, 62)
    cfg = OmniFoldConfig(
        iterations=2, classifier=CLF, diagnostics=WeightDiagnosticsConfig(on_violation="error")
    )
    with pytest.raises(WeightError, match=r"omnifold\.iter1\.pull"):
        run(data, sim, config=cfg, trainer=_Broken)


def test_unclipped_broken_classifier_gives_counted_infinities() -> None:
    data, sim = toy(1000, 0.4, 0.9, 71), toy(1000, 0.0, 1.0, 72)
    cfg = OmniFoldConfig(iterations=1, classifier=CLF.model_copy(update={"p_clip": 0.0}))
    with pytest.warns(WeightWarning, match="non-finite"):
        res = run(data, sim, config=cfg, trainer=_Broken)
    assert res.diagnostics[0]["pull"]["n_nonfinite"] > 0
    assert res.diverged == [1]


def test_bad_inputs() -> None:
    f = EventFeatures(torch.zeros(3))
    with pytest.raises(ValueError, match="sim_reco has 3"):
        omnifold(f, f, EventFeatures(torch.zeros(4)))
    with pytest.raises(ValueError, match="reco or gen"):
        omnifold(
            f,
            f,
            f,
            pass_reco=torch.zeros(3, dtype=torch.bool),
            pass_gen=torch.tensor([True, True, False]),
        )
    assert isinstance(TrainedClassifier, type)


def test_deepset_detector_features_with_fixed_parton_features_and_misses():
    """Detector level as variable-length objects, parton level as fixed features, with misses:
    each step picks the classifier its features allow (regression: the parton-level steps
    once received the deep-set configuration and failed)."""
    rng = np.random.default_rng(5)
    n_sim, n_data = 600, 400
    truth = rng.normal(size=n_sim)
    counts = rng.integers(1, 4, size=n_sim)
    objects = torch.zeros(n_sim, 3, 2)
    mask = torch.arange(3)[None, :] < torch.as_tensor(counts)[:, None]
    objects[..., 0] = torch.as_tensor(truth, dtype=torch.float32)[:, None] + 0.3 * torch.randn(n_sim, 3)
    sim_reco = EventFeatures(torch.as_tensor(counts, dtype=torch.float32), objects, mask)
    sim_gen = EventFeatures(torch.as_tensor(truth))
    data = sim_reco[torch.arange(n_data)]
    pass_reco = torch.as_tensor(rng.random(n_sim) < 0.8)
    clf = ClassifierConfig(kind="deepset", hidden=8, layers=1, latent=4, epochs=2, batch_size=256)
    res = omnifold(data, sim_reco, sim_gen, pass_reco=pass_reco,
                   config=OmniFoldConfig(iterations=1, classifier=clf))
    w = res.weights()
    assert w.shape == (n_sim,) and bool(torch.isfinite(w).all()) and bool((w > 0).all())


class _Scaled:
    """p/(1−p) = c·exp(x) with c set by the seed (a mis-calibrated classifier), recording seeds."""

    seeds: list[int] = []  # noqa: RUF012

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg, self.c = cfg, 1.0 + 0.1 * (cfg.seed % 7)
        _Scaled.seeds.append(cfg.seed)

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        r = self.c * torch.exp(f.globals[:, 0].double())
        return likelihood_ratio_from_p(r / (1 + r), 0.0, (1.0, 1.0), normalized)


def test_step_ensemble_averages_and_sum_rule_normalises() -> None:
    """step_ensemble = 3 trains three classifiers per step with distinct seeds and averages
    their ratios; the sum rule rescales each step so that Σ w0·r = Σ w1 on the training sample
    (exact identity of a likelihood ratio), so the pull's total equals the data's weight sum."""
    rng = np.random.default_rng(9)
    x = EventFeatures(torch.from_numpy(rng.normal(size=(500, 1))))
    _Scaled.seeds = []
    cfg = OmniFoldConfig(iterations=1, step_ensemble=3, push_refine=False, classifier=CLF)
    res = omnifold(x, x, x, data_weights=torch.full((500,), 2.0), config=cfg, trainer=_Scaled)
    assert len(_Scaled.seeds) == 6 and len(set(_Scaled.seeds)) == 6  # step 1 and step 2
    pull = res.pull[0].numpy()
    assert np.isclose(pull.sum(), 1000.0, rtol=1e-12)
    step1 = res.diagnostics[0]["step1"]
    # mean of c over the three seeds, times exp(x): the factor undoes exactly that mean of c
    cs = [1.0 + 0.1 * (s % 7) for s in _Scaled.seeds[:3]]
    raw = np.mean(cs) * np.exp(x.globals[:, 0].double().numpy())
    assert np.isclose(step1["sum_rule_factor"], 1000.0 / raw.sum(), rtol=1e-10)
    assert np.allclose(pull, raw * step1["sum_rule_factor"], rtol=1e-10)
    off = omnifold(x, x, x, trainer=_Scaled, config=OmniFoldConfig(
        iterations=1, sum_rule=False, push_refine=False, classifier=CLF))
    assert off.diagnostics[0]["step1"]["sum_rule_factor"] == 1.0


class _ShrunkHistogram:
    """Exact per-bin ratio of the weighted samples on an integer feature, shrunk by ALPHA
    towards 1: r = 1 + α (S1_b/S0_b − 1), a stand-in for an early-stopped classifier."""

    ALPHA = 0.6

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        b0, b1 = x0.globals[:, 0].long(), x1.globals[:, 0].long()
        s0 = torch.zeros(5, dtype=torch.float64).index_add_(0, b0, w0.double())
        s1 = torch.zeros(5, dtype=torch.float64).index_add_(0, b1, w1.double())
        self.r = 1 + self.ALPHA * (s1 / s0.clamp_min(1e-300) - 1)

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        return self.r[f.globals[:, 0].long()], {
            "n_clipped_low": 0, "n_clipped_high": 0, "n_nonfinite_p": 0, "p_min": 0.0,
            "p_max": 1.0,
        }


def test_push_refine_removes_the_step2_shrinkage() -> None:
    """Perfect detector, a classifier shrunk by α: the full push misses its pull by
    (1 − α)(1 − ω) per bin; one refinement round leaves (1 − α)² (1 − ω), i.e. the residual
    shrinks by exactly (1 − α) (algebra of the two steps, no training noise)."""
    rng = np.random.default_rng(11)
    sim = torch.from_numpy(rng.integers(0, 5, 3000).astype(np.float64))
    data = torch.from_numpy(np.minimum(rng.poisson(2.5, 2000), 4).astype(np.float64))
    f_sim, f_data = EventFeatures(sim[:, None]), EventFeatures(data[:, None])
    res = {}
    for refine in (False, True):
        cfg = OmniFoldConfig(iterations=1, sum_rule=False, push_refine=refine, classifier=CLF)
        res[refine] = omnifold(f_data, f_sim, f_sim, config=cfg, trainer=_ShrunkHistogram)
    omega = res[False].pull[0]
    assert torch.allclose(res[True].pull[0], omega)
    plain, refined = res[False].push[1] - omega, res[True].push[1] - omega
    assert float(plain.abs().max()) > 0.1
    assert torch.allclose(refined, (1 - _ShrunkHistogram.ALPHA) * plain, rtol=1e-10, atol=1e-12)
    assert "step2_refine" in res[True].diagnostics[0]
