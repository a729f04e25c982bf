"""Tests of unfoldmem.unfold.omnifold: Gaussian-toy closure against the analytic truth.

Independent reference: the truth density N(mu_t, sigma_t) the data were drawn from (or its
truncation to the parton-level cut, scipy.stats.truncnorm), with the statistical error of an
unfolded mean/width derived analytically from the data's reco-level spread
(delta method, see unfoldmem.weights.weighted_mean_std) plus the simulation's own error.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from unfoldmem.unfold.classifier import (
    ClassifierConfig,
    EventFeatures,
    TrainedClassifier,
    likelihood_ratio_from_p,
)
from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold, omnifold_replicas
from unfoldmem.weights import WeightDiagnosticsConfig, WeightError, WeightWarning, weighted_mean_std

MU_T, SIG_T = 0.4, 0.9  # data truth
MU_S, SIG_S = 0.0, 1.0  # simulation prior
EPS = 0.3  # Gaussian smearing
T_CUT, R_CUT = -1.2, -1.0  # parton-level and reco-level cuts (misses and fakes)

CLF = ClassifierConfig(hidden=32, layers=2, epochs=30, batch_size=1024, lr=5e-3, seed=3)
FAST = CLF.model_copy(update={"epochs": 15, "patience": 5})


def toy(n: int, mu: float, sig: float, seed: int, cuts: bool) -> dict[str, np.ndarray]:
    """Parton t ~ N(mu, sig), reco r = t + N(0, EPS); with cuts, t-dependent efficiency."""
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


def reference(cuts: bool) -> tuple[float, float]:
    """Analytic mean and width of the parton-level truth (truncated normal with cuts)."""
    if not cuts:
        return MU_T, SIG_T
    tn = stats.truncnorm((T_CUT - MU_T) / SIG_T, np.inf, loc=MU_T, scale=SIG_T)
    return float(tn.mean()), float(tn.std())


def run(
    data: dict[str, np.ndarray], sim: dict[str, np.ndarray], w: np.ndarray | None = None, **kw: Any
) -> Any:
    cfg = kw.pop("config", OmniFoldConfig(iterations=3, classifier=CLF))
    return omnifold(
        EventFeatures(torch.from_numpy(data["r"][data["rr"]])),
        EventFeatures(torch.from_numpy(sim["r"])),
        EventFeatures(torch.from_numpy(sim["t"])),
        sim_weights=None if w is None else torch.from_numpy(w),
        pass_reco=torch.from_numpy(sim["rr"]),
        pass_gen=torch.from_numpy(sim["g"]),
        config=cfg,
        **kw,
    )


def unfolded(res: Any, sim: dict[str, np.ndarray]) -> dict[str, float]:
    w = res.weights().numpy()
    return weighted_mean_std(sim["t"][sim["g"]], w[sim["g"]])


def errors(data: dict[str, np.ndarray], u: dict[str, float]) -> tuple[float, float]:
    """Statistical σ of the unfolded mean and width: data reco spread ⊕ simulation error.

    sigma_t^2 = sigma_r^2 - EPS^2, so delta sigma_t = sigma_r delta sigma_r / sigma_t.
    """
    d = weighted_mean_std(data["r"][data["rr"]], np.ones(int(data["rr"].sum())))
    s_mean = math.hypot(d["mean_err"], u["mean_err"])
    s_std = math.hypot(d["std"] * d["std_err"] / u["std"], u["std_err"])
    return s_mean, s_std


def run_ensemble(
    data: dict[str, np.ndarray], sim: dict[str, np.ndarray], w: np.ndarray | None, n: int = 4
) -> dict[str, Any]:
    """Mean weights of ``n`` OmniFold runs with different classifier seeds, and the training
    error of the unfolded mean and width: the members' spread / √n.

    The classifier's own noise is as large as the statistical errors at these sample sizes
    (unfolded mean: seed-to-seed spread 0.007 with 40k simulated events, 0.02 with 20k), so a
    closure that leaves it out fails at the 2σ level (it did, at 2.4σ and 2.5σ).
    """
    rep = omnifold_replicas(
        EventFeatures(torch.from_numpy(data["r"][data["rr"]])),
        EventFeatures(torch.from_numpy(sim["r"])),
        EventFeatures(torch.from_numpy(sim["t"])),
        n_ensemble=n,
        sim_weights=None if w is None else torch.from_numpy(w),
        pass_reco=torch.from_numpy(sim["rr"]),
        pass_gen=torch.from_numpy(sim["g"]),
        config=OmniFoldConfig(iterations=3, classifier=CLF),
    )
    g = sim["g"]
    members = [weighted_mean_std(sim["t"][g], wk.numpy()[g]) for wk in rep["ensemble"]]
    u = weighted_mean_std(sim["t"][g], rep["ensemble"].mean(0).numpy()[g])
    for key in ("mean", "std"):
        u[f"{key}_train"] = float(np.std([m[key] for m in members], ddof=1)) / math.sqrt(n)
    assert all(r.diverged == [] for r in rep["results"])
    return u


def assert_closes_ensemble(
    u: dict[str, float], data: dict[str, np.ndarray], cuts: bool, n_sigma: float = 3.0
) -> None:
    """Unfolded mean and width within ``n_sigma`` of the analytic truth, the error being the
    data's and the simulation's statistics ⊕ the training error of the ensemble mean."""
    mu, sig = reference(cuts)
    e_mean, e_std = errors(data, u)
    e_mean, e_std = math.hypot(e_mean, u["mean_train"]), math.hypot(e_std, u["std_train"])
    assert abs(u["mean"] - mu) < n_sigma * e_mean, (u, mu, e_mean)
    assert abs(u["std"] - sig) < n_sigma * e_std, (u, sig, e_std)


def assert_closes(
    res: Any, data: dict[str, np.ndarray], sim: dict[str, np.ndarray], cuts: bool
) -> None:
    mu, sig = reference(cuts)
    u = unfolded(res, sim)
    e_mean, e_std = errors(data, u)
    assert abs(u["mean"] - mu) < 2 * e_mean, (u, mu, e_mean)
    assert abs(u["std"] - sig) < 2 * e_std, (u, sig, e_std)
    w = res.weights().numpy()[sim["g"]]
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    assert res.diverged == [] and res.usable_iteration == len(res.diagnostics)


def test_gaussian_toy_closes() -> None:
    """Unfolded mean and width within 2σ of N(0.4, 0.9); the prior N(0, 1) is far outside."""
    data, sim = toy(3000, MU_T, SIG_T, 1, False), toy(6000, MU_S, SIG_S, 2, False)
    res = run(data, sim, config=OmniFoldConfig(iterations=2, classifier=FAST))
    assert_closes(res, data, sim, cuts=False)
    prior = weighted_mean_std(sim["t"], np.ones(sim["t"].size))
    assert abs(prior["mean"] - MU_T) > 10 * errors(data, prior)[0]
    # normalisation: Σ w ν_K estimates the data's parton-level yield (no misses here)
    assert float(res.weights().sum()) == pytest.approx(3000, rel=0.05)
    d = res.diagnostics[-1]
    assert d["push"]["ess_ratio"] > 0.5 and d["push"]["n_nonfinite"] == 0


@pytest.mark.slow
def test_gaussian_toy_closes_with_misses_and_fakes() -> None:
    """Same closure with a parton cut (fakes), a reco cut and efficiency < 1 (misses)."""
    data, sim = toy(20000, MU_T, SIG_T, 11, True), toy(40000, MU_S, SIG_S, 12, True)
    sim_miss, sim_fake = sim["g"] & ~sim["rr"], sim["rr"] & ~sim["g"]
    assert sim_miss.mean() > 0.1 and sim_fake.mean() > 0.005
    res = run(data, sim, config=OmniFoldConfig(iterations=4, classifier=CLF))
    assert_closes(res, data, sim, cuts=True)
    assert {"step1b", "step2b"} <= set(res.diagnostics[-1])
    # yield: Σ w ν over gen estimates the data's number of parton-level events (5σ Poisson)
    n_gen = int(data["g"].sum())
    assert float(res.weights().sum()) == pytest.approx(
        n_gen, abs=5 * math.sqrt(n_gen) + 0.03 * n_gen
    )


@pytest.mark.slow
def test_weighted_sample_matches_unweighted() -> None:
    """Half the simulation removed at random, the rest weighted 2: same answer within errors.

    Both close on the analytic truth within 3σ (statistics ⊕ ensemble training error); their
    difference, which shares the data, is within 3σ of the simulation and training errors.
    """
    data, sim = toy(20000, MU_T, SIG_T, 21, False), toy(40000, MU_S, SIG_S, 22, False)
    keep = np.random.default_rng(5).uniform(size=sim["t"].size) < 0.5
    half = {k: v[keep] for k, v in sim.items()}
    full = run_ensemble(data, sim, None)
    part = run_ensemble(data, half, np.full(int(keep.sum()), 2.0))
    assert_closes_ensemble(full, data, cuts=False)
    assert_closes_ensemble(part, data, cuts=False)
    for key in ("mean", "std"):
        err = math.hypot(
            part[f"{key}_err"], full[f"{key}_err"], part[f"{key}_train"], full[f"{key}_train"]
        )
        assert abs(part[key] - full[key]) < 3 * err, (key, part, full)
    # the weight-2 simulation has half the events: its own error is larger by ≈ √2
    assert 1.2 < part["mean_err"] / full["mean_err"] < 1.7


@pytest.mark.slow
def test_ten_percent_negative_weights_close() -> None:
    """An NLO-like sample: 10% of events in a cancelling pair (+1 and -1) still closes."""
    data, sim = toy(20000, MU_T, SIG_T, 31, False), toy(40000, MU_S, SIG_S, 32, False)
    extra = toy(4000, 0.5, 0.5, 33, False)  # a region that cancels exactly in expectation
    extra2 = toy(4000, 0.5, 0.5, 34, False)
    mix = {k: np.concatenate([sim[k], extra[k], extra2[k]]) for k in sim}
    w = np.concatenate([np.ones(40000), np.ones(4000), -np.ones(4000)])
    assert (w < 0).mean() == pytest.approx(4000 / 48000)
    res = run(data, mix, w)
    assert res.diagnostics[-1]["push"]["negative_fraction"] > 0.05  # reported, not hidden
    # closure within 3σ of statistics ⊕ the training error of a 4-seed ensemble
    assert_closes_ensemble(run_ensemble(data, mix, w), data, cuts=False)


@pytest.mark.slow
def test_replicas_give_bootstrap_spread() -> None:
    """Bootstrap spread of the unfolded mean vs the analytic data error (factor 2, 8 replicas)."""
    data, sim = toy(5000, MU_T, SIG_T, 41, False), toy(10000, MU_S, SIG_S, 42, False)
    rep = omnifold_replicas(
        EventFeatures(torch.from_numpy(data["r"])),
        EventFeatures(torch.from_numpy(sim["r"])),
        EventFeatures(torch.from_numpy(sim["t"])),
        n_ensemble=2,
        n_bootstrap=8,
        config=OmniFoldConfig(iterations=2, classifier=CLF),
    )
    assert rep["ensemble"].shape == (2, 10000) and rep["bootstrap"].shape == (8, 10000)
    means = [weighted_mean_std(sim["t"], w.numpy())["mean"] for w in rep["bootstrap"]]
    e_data = errors(data, unfolded(rep["results"][0], sim))[0]
    assert 0.4 * e_data < np.std(means, ddof=1) < 2.5 * e_data


class _Broken:
    """A classifier that outputs exactly 0 or 1 (a diverged training)."""

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg = cfg

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        p = (f.globals[:, 0] > 2.5).double()
        return likelihood_ratio_from_p(p, self.cfg.p_clip, (1.0, 1.0), normalized)


def test_broken_iteration_is_reported() -> None:
    """A classifier giving p ∈ {0, 1}: clipping, tiny ESS and huge share are all reported."""
    data, sim = toy(2000, MU_T, SIG_T, 51, False), toy(2000, MU_S, SIG_S, 52, False)
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
    data, sim = toy(1000, MU_T, SIG_T, 61, False), toy(1000, MU_S, SIG_S, 62, False)
    cfg = OmniFoldConfig(
        iterations=2, classifier=CLF, diagnostics=WeightDiagnosticsConfig(on_violation="error")
    )
    with pytest.raises(WeightError, match=r"omnifold\.iter1\.pull"):
        run(data, sim, config=cfg, trainer=_Broken)


def test_unclipped_broken_classifier_gives_counted_infinities() -> None:
    data, sim = toy(1000, MU_T, SIG_T, 71, False), toy(1000, MU_S, SIG_S, 72, False)
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
