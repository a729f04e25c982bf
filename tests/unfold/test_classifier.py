"""Tests of unfoldmem.unfold.classifier: likelihood ratios against analytic density ratios."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.unfold.classifier import (
    ClassifierConfig,
    EventFeatures,
    likelihood_ratio_from_p,
    train_classifier,
)
from unfoldmem.weights import weighted_mean_std

FAST = ClassifierConfig(hidden=32, layers=2, epochs=30, batch_size=2048, lr=1e-2, seed=1)


def _gauss(n: int, mu: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(mu, 1.0, n))


def test_gaussian_ratio_matches_analytic() -> None:
    """N(0.5,1)/N(0,1) = exp(0.5 x - 1/8) (exact ratio of normal densities)."""
    x0, x1 = _gauss(6000, 0.0, 1), _gauss(6000, 0.5, 2)
    clf = train_classifier(EventFeatures(x0), EventFeatures(x1), config=FAST)
    grid = torch.linspace(-1.5, 2.0, 15, dtype=torch.float64)
    lr, rep = clf.likelihood_ratio(EventFeatures(grid))
    exact = torch.exp(0.5 * grid - 0.125)
    # a 6000-event classifier is good to ~10% in the bulk
    np.testing.assert_allclose(lr.numpy(), exact.numpy(), rtol=0.15)
    assert rep["n_clipped_low"] == rep["n_clipped_high"] == 0
    # reweighting sample 0 reproduces sample 1's mean within 4 sigma of the weighted estimate
    w, _ = clf.likelihood_ratio(EventFeatures(x0))
    m = weighted_mean_std(x0, w)
    assert abs(m["mean"] - 0.5) < 4 * math.hypot(m["mean_err"], 1 / math.sqrt(6000))
    assert torch.all(torch.isfinite(w)) and torch.all(w > 0)


def test_weighted_sample_equals_reweighted_truth() -> None:
    """Sample 1 = sample 0 weighted by exp(0.5x-1/8): the classifier must return those weights."""
    x0 = _gauss(6000, 0.0, 3)
    x1 = _gauss(6000, 0.0, 4)
    w1 = torch.exp(0.5 * x1 - 0.125)
    clf = train_classifier(EventFeatures(x0), EventFeatures(x1), None, w1, FAST)
    grid = torch.linspace(-1.5, 1.5, 13, dtype=torch.float64)
    lr, _ = clf.likelihood_ratio(EventFeatures(grid))
    np.testing.assert_allclose(lr.numpy(), torch.exp(0.5 * grid - 0.125).numpy(), rtol=0.2)
    # unnormalised ratio carries Σw1/Σw0
    lru, _ = clf.likelihood_ratio(EventFeatures(grid), normalized=False)
    np.testing.assert_allclose(lru.numpy(), lr.numpy() * float(w1.sum()) / 6000, rtol=1e-12)


def _objects(n: int, lam: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    k = np.minimum(rng.poisson(lam, n), 8)
    mask = np.arange(8)[None, :] < k[:, None]
    obj = rng.exponential(1.0, (n, 8, 2)) * mask[..., None]
    return torch.from_numpy(obj), torch.from_numpy(mask), k


def test_deepset_learns_multiplicity_ratio() -> None:
    """Objects i.i.d., multiplicity Poisson(3) vs Poisson(2): ratio = e^{-1} (3/2)^k exactly."""
    o0, m0, _ = _objects(4000, 2.0, 5)
    o1, m1, _ = _objects(4000, 3.0, 6)
    g0, g1 = torch.zeros(4000, 1), torch.zeros(4000, 1)
    cfg = FAST.model_copy(update={"kind": "deepset", "epochs": 20})
    clf = train_classifier(EventFeatures(g0, o0, m0), EventFeatures(g1, o1, m1), config=cfg)
    ks = np.arange(1, 5)
    mask = torch.from_numpy(np.arange(8)[None, :] < ks[:, None])
    obj = torch.ones(4, 8, 2) * mask[..., None]
    lr, _ = clf.likelihood_ratio(EventFeatures(torch.zeros(4, 1), obj, mask))
    exact = np.exp(-1.0) * 1.5**ks
    np.testing.assert_allclose(lr.numpy(), exact, rtol=0.2)


def test_clipping_is_reported_and_unclipped_gives_inf() -> None:
    p = torch.tensor([0.0, 1.0, 0.5, float("nan")], dtype=torch.float64)
    w, rep = likelihood_ratio_from_p(p, 1e-6, (1.0, 1.0))
    assert rep == {
        "n_clipped_low": 1,
        "n_clipped_high": 1,
        "n_nonfinite_p": 1,
        "p_min": 0.0,
        "p_max": 1.0,
    }
    assert w[1] == pytest.approx((1 - 1e-6) / 1e-6)
    assert torch.isnan(w[3])  # not repaired
    w0, _ = likelihood_ratio_from_p(p, 0.0, (1.0, 1.0))
    assert torch.isinf(w0[1])


def test_seeded_training_is_reproducible() -> None:
    x0, x1 = _gauss(1000, 0.0, 1), _gauss(1000, 0.5, 2)
    cfg = FAST.model_copy(update={"epochs": 3})
    a = train_classifier(EventFeatures(x0), EventFeatures(x1), config=cfg)
    b = train_classifier(EventFeatures(x0), EventFeatures(x1), config=cfg)
    f = EventFeatures(x0[:50])
    assert torch.equal(a.predict_proba(f), b.predict_proba(f))
    assert len(a.history["val_loss"]) <= 3


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="together"):
        EventFeatures(torch.zeros(3, 1), torch.zeros(3, 2, 1), None)
    with pytest.raises(ValueError, match="positive"):
        train_classifier(
            EventFeatures(torch.zeros(3)), EventFeatures(torch.ones(3)), torch.zeros(3), None, FAST
        )
    # one weight per event: a misaligned weight vector would silently train on wrong weights
    with pytest.raises(ValueError, match=r"w0 must have one weight per event, shape \(3,\)"):
        train_classifier(
            EventFeatures(torch.zeros(3)), EventFeatures(torch.ones(3)), torch.ones(4), None, FAST
        )


def test_min_epochs_excludes_early_states() -> None:
    """Identical samples (true ratio 1, so the validation loss is pure noise and its minimum can
    be any epoch): with ``min_epochs`` = 6 no state before epoch 6 is kept and at least 6 epochs
    run; with patience 1 and no ``min_epochs`` the training stops within 2 epochs of its best."""
    x = EventFeatures(_gauss(800, 0.0, 5))
    cfg = FAST.model_copy(update={"epochs": 12, "patience": 1})
    a = train_classifier(x, x, config=cfg.model_copy(update={"min_epochs": 6}))
    assert a.history["best_epoch"] >= 5 and len(a.history["val_loss"]) >= 6
    b = train_classifier(x, x, config=cfg)
    assert len(b.history["val_loss"]) <= b.history["best_epoch"] + 2
