"""Tests of unfoldmem.unfold.omnifold_replicas: the classifier-seed ensemble and the bootstrap.

Independent references: the moments of Poisson(1) counts (mean 1, variance 1; Efron's Poisson
bootstrap) and exact reproducibility of seeded pseudo-random streams.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from unfoldmem.unfold.classifier import EventFeatures, likelihood_ratio_from_p
from unfoldmem.unfold.omnifold import OmniFoldConfig, omnifold_replicas
from unfoldmem.weights import WeightWarning


class _Const:
    """A classifier returning p = 1/2: the likelihood ratio is the class-sum ratio only."""

    def __init__(self, x0: Any, x1: Any, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg, self.sums = cfg, (float(w0.sum()), float(w1.sum()))

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        p = torch.full((len(f),), 0.5, dtype=torch.float64)
        return likelihood_ratio_from_p(p, self.cfg.p_clip, self.sums, normalized)


def test_bootstrap_resamples_the_simulation() -> None:
    """Ensemble members keep the simulation's weights; bootstrap replicas multiply them by
    Poisson(1) counts (mean 1, variance 1 over 3000 events within 5σ), unless switched off."""
    rng = np.random.default_rng(5)
    n = 3000
    f = EventFeatures(torch.from_numpy(rng.normal(size=(n, 1))))
    cfg = OmniFoldConfig(iterations=1)
    rep = omnifold_replicas(f, f, f, n_ensemble=2, n_bootstrap=2, config=cfg, trainer=_Const)
    assert all(torch.equal(r.initial_weights, torch.ones(n)) for r in rep["results"][:2])
    for r in rep["results"][2:]:
        c = r.initial_weights.numpy()
        assert np.all(c == np.round(c)) and abs(c.mean() - 1) < 5 / np.sqrt(n)
        assert abs(c.var() - 1) < 5 * np.sqrt(2 / n)
    off = omnifold_replicas(f, f, f, n_ensemble=1, n_bootstrap=1, bootstrap_sim=False,
                            config=cfg, trainer=_Const)
    assert torch.equal(off["results"][1].initial_weights, torch.ones(n))


class _Noisy:
    """Ratio exp(a·x) with a = 0.3 + 0.05·(a draw seeded by the classifier seed): a stand-in
    for the training noise, deterministic given the seed; records every seed it is given.
    Seeds in ``BROKEN`` output p ∈ {0, 1} (a diverged training)."""

    seeds: list[int] = []  # noqa: RUF012
    BROKEN: frozenset[int] = frozenset()

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg, self.sums = cfg, (float(w0.sum()), float(w1.sum()))
        self.a = 0.3 + 0.05 * np.random.default_rng(cfg.seed).normal()
        _Noisy.seeds.append(cfg.seed)

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        x = f.globals[:, 0].double()
        if self.cfg.seed in self.BROKEN:
            p = (x > 0).double()
        else:
            r = torch.exp(self.a * x)
            p = r / (1 + r)
        return likelihood_ratio_from_p(p, self.cfg.p_clip, self.sums, normalized)


def _features(n: int, seed: int) -> EventFeatures:
    return EventFeatures(torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 1))))


def test_replicas_are_reproducible_under_a_seed() -> None:
    """The same seed gives identical ensemble and bootstrap weights; another seed gives other
    bootstrap counts but the same ensemble (its members differ only by classifier seeds);
    every replica trains with its own classifier seeds."""
    data, sim = _features(800, 1), _features(1000, 2)
    cfg = OmniFoldConfig(iterations=2, push_refine=False)
    kw = {"n_ensemble": 2, "n_bootstrap": 3, "config": cfg, "trainer": _Noisy}
    _Noisy.seeds = []
    a = omnifold_replicas(data, sim, sim, seed=4, **kw)
    n_per_run = len(_Noisy.seeds) // 5
    per_replica = [set(_Noisy.seeds[i * n_per_run:(i + 1) * n_per_run]) for i in range(5)]
    assert all(not (p & q) for i, p in enumerate(per_replica) for q in per_replica[i + 1:])
    b = omnifold_replicas(data, sim, sim, seed=4, **kw)
    c = omnifold_replicas(data, sim, sim, seed=5, **kw)
    assert a["ensemble"].shape == (2, 1000) and a["bootstrap"].shape == (3, 1000)
    assert torch.equal(a["ensemble"], b["ensemble"]) and torch.equal(a["bootstrap"], b["bootstrap"])
    assert torch.equal(a["ensemble"], c["ensemble"])
    assert not torch.equal(a["bootstrap"], c["bootstrap"])
    # training noise: the two members differ
    assert not torch.allclose(a["ensemble"][0], a["ensemble"][1])


def test_diverged_replica_is_flagged_and_keeps_its_usable_weights() -> None:
    """A replica whose first step-1 classifier diverges is marked (``diverged == [1]``) and
    carries the prior weights (its own Poisson counts, ν = 1), ready to be left out of a
    spread; the other replicas are unaffected."""
    data, sim = _features(800, 3), _features(1000, 4)
    cfg = OmniFoldConfig(iterations=2, push_refine=False)
    # replica i uses classifier seed base + 1000 (i + 1); step 1 of iteration 1 adds 11
    bad = cfg.classifier.seed + 1000 * 3 + 11
    _Noisy.BROKEN = frozenset({bad})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WeightWarning)
            rep = omnifold_replicas(data, sim, sim, n_ensemble=1, n_bootstrap=2, seed=1,
                                    config=cfg, trainer=_Noisy)
    finally:
        _Noisy.BROKEN = frozenset()
    assert caught
    flags = [r.diverged for r in rep["results"]]
    assert flags == [[], [], [1]]
    bad_rep = rep["results"][2]
    assert bad_rep.usable_iteration == 0
    assert torch.equal(rep["bootstrap"][1], bad_rep.initial_weights)
    assert not torch.equal(rep["bootstrap"][0], rep["results"][1].initial_weights)
