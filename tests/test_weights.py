"""Tests of unfoldmem.weights: Kish ESS, shares, thresholds, no silent repair."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.weights import (
    WeightDiagnosticsConfig,
    WeightError,
    WeightWarning,
    check_weights,
    weight_diagnostics,
    weighted_mean_std,
)


def test_uniform_weights_have_full_ess() -> None:
    """Kish (1965): N equal weights give N_eff = N, share 1/N."""
    d = weight_diagnostics(np.full(100, 3.0))
    assert d["ess"] == pytest.approx(100.0)
    assert d["ess_ratio"] == pytest.approx(1.0)
    assert d["max_share"] == pytest.approx(0.01)
    assert d["n_nonfinite"] == 0
    assert d["negative_fraction"] == 0.0


def test_kish_formula_by_hand_and_torch_input() -> None:
    """N_eff = (Σw)²/Σw² computed by hand for w = (1, 2, 3, -1)."""
    w = torch.tensor([1.0, 2.0, 3.0, -1.0])
    d = weight_diagnostics(w)
    assert d["ess"] == pytest.approx(25.0 / 15.0)
    assert d["max_share"] == pytest.approx(3.0 / 7.0)
    assert d["negative_fraction"] == pytest.approx(0.25)
    assert d["negative_sum_fraction"] == pytest.approx(1.0 / 7.0)


def test_nonfinite_are_counted_not_repaired() -> None:
    """NaN and inf are counted; the figures use the finite weights only (no nan_to_num)."""
    w = np.array([1.0, np.nan, np.inf, 1.0])
    d = weight_diagnostics(w)
    assert d["n_nonfinite"] == 2
    assert d["sum"] == pytest.approx(2.0)
    assert np.isnan(w[1])  # input untouched
    with pytest.raises(WeightError, match="2 non-finite"):
        check_weights(w, WeightDiagnosticsConfig(on_violation="error"), name="toy")


def test_all_nonfinite_gives_json_none() -> None:
    """Undefined figures are None, which json.dumps writes as null."""
    d = weight_diagnostics([math.nan, math.nan])
    assert d["ess"] is None and d["ess_ratio"] is None and d["max_share"] is None


def test_one_dominant_weight_warns() -> None:
    """One weight of 1e6 among 1000 ones: share ≈ 0.999, ESS ≈ 1 → warning with the figures."""
    w = np.ones(1000)
    w[0] = 1e6
    with pytest.warns(WeightWarning, match="ESS/N"):
        d = check_weights(w, name="dominant")
    assert not d["ok"]
    assert d["max_share"] > 0.99
    assert len(d["violations"]) == 2


def test_clean_weights_pass() -> None:
    d = check_weights(np.random.default_rng(1).uniform(0.5, 1.5, 1000))
    assert d["ok"] and d["violations"] == []


def test_config_refuses_unknown_key() -> None:
    with pytest.raises(ValueError, match="extra"):
        WeightDiagnosticsConfig(ess_min=0.1)  # type: ignore[call-arg]


def test_weighted_mean_std_errors_match_sampling_spread() -> None:
    """Delta-method errors vs the spread over 400 independent weighted samples (5σ of MC)."""
    rng = np.random.default_rng(7)
    means, stds, errs = [], [], []
    for _ in range(400):
        x = rng.normal(1.0, 2.0, 500)
        w = rng.exponential(1.0, 500)
        r = weighted_mean_std(x, w)
        means.append(r["mean"])
        stds.append(r["std"])
        errs.append((r["mean_err"], r["std_err"]))
    e = np.mean(errs, axis=0)
    # the std of 400 samples has relative error 1/sqrt(2*399) ≈ 3.5%
    assert np.std(means) == pytest.approx(e[0], rel=5 * 0.035)
    assert np.std(stds) == pytest.approx(e[1], rel=5 * 0.035)
    assert np.mean(means) == pytest.approx(1.0, abs=5 * e[0] / 20)
