"""Tests of unfoldmem.unfold.omnifold_step: one classifier step, its sum rule and weight checks.

Independent references: the exact sum rule of a likelihood ratio,
:math:`\\sum_0 w_0 L = \\sum_1 w_1` over the training samples (Cranmer et al.,
arXiv:1506.02169), the analytic ratio of two normal densities, and weighted means computed by
hand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from unfoldmem.unfold.classifier import (
    ClassifierConfig,
    EventFeatures,
    likelihood_ratio_from_p,
    train_classifier,
)
from unfoldmem.unfold.omnifold_config import OmniFoldConfig
from unfoldmem.unfold.omnifold_step import check_step_weights, mean_shift, n_clipped, ratio_step
from unfoldmem.weights import WeightDiagnosticsConfig, WeightError, WeightWarning

CLF = ClassifierConfig(hidden=16, layers=2, epochs=8, batch_size=512, lr=1e-2, seed=4)


class _Exp:
    """p/(1−p) = c·exp(x) with c set by the seed (a mis-calibrated classifier), clipping p < 0.2."""

    def __init__(self, x0: EventFeatures, x1: EventFeatures, w0: Any, w1: Any, cfg: Any) -> None:
        self.cfg, self.c = cfg, 1.0 + 0.1 * (cfg.seed % 7)
        self.history = {"best_epoch": cfg.seed % 3, "val_loss": [0.7, 0.6, 0.5]}

    def likelihood_ratio(self, f: EventFeatures, *, normalized: bool = True) -> Any:
        r = self.c * torch.exp(f.globals[:, 0].double())
        return likelihood_ratio_from_p(r / (1 + r), 0.2, (1.0, 1.0), normalized)


def _gauss(n: int, mu: float, seed: int) -> EventFeatures:
    return EventFeatures(torch.from_numpy(np.random.default_rng(seed).normal(mu, 1.0, n)))


def test_sum_rule_holds_exactly_and_is_recorded() -> None:
    """After the factor, Σ_0 w0·r(x0) = Σ_1 w1 to rounding (the exact identity of a likelihood
    ratio), also when the ratio is applied to other events; the record carries the sizes, the
    factor, the summed clip counts and each model's best epoch and validation loss."""
    x0, x1, other = _gauss(400, 0.0, 1), _gauss(300, 0.5, 2), _gauss(50, 0.2, 3)
    w0 = torch.from_numpy(np.random.default_rng(4).uniform(0.5, 1.5, 400))
    w1 = torch.full((300,), 2.0, dtype=torch.float64)
    cfg = CLF.model_copy(update={"p_clip": 0.2})
    rec: dict[str, Any] = {}
    r0 = ratio_step("s", _Exp, x0, w0, x1, w1, x0, cfg, rec, n_models=2)
    assert float((w0 * r0).sum()) == pytest.approx(600.0, rel=1e-12)
    s = rec["s"]
    assert s["n_train"] == [400, 300] and len(s["best_epoch"]) == 2 and len(s["val_loss"]) == 2
    # the two models' ratios c_j·exp(x), p clipped to [0.2, 0.8] ⇔ ratio clipped to [1/4, 4]
    ex = np.exp(x0.globals[:, 0].double().numpy())
    per = [(1 + 0.1 * (sd % 7)) * ex for sd in (4, 4 + 100_003)]
    raw = np.mean([np.clip(r, 0.25, 4.0) for r in per], axis=0)
    assert s["sum_rule_factor"] == pytest.approx(600.0 / float((w0.numpy() * raw).sum()), rel=1e-6)
    assert np.allclose(r0.numpy(), raw * s["sum_rule_factor"], rtol=1e-6)
    assert s["clipping"]["n_clipped_low"] == sum(int((r < 0.25).sum()) for r in per) > 0
    assert n_clipped(s) == sum(int(((r < 0.25) | (r > 4)).sum()) for r in per)
    rec2: dict[str, Any] = {}
    r_other = ratio_step("o", _Exp, x0, w0, x1, w1, other, cfg, rec2, n_models=2)
    assert rec2["o"]["sum_rule_factor"] == pytest.approx(s["sum_rule_factor"], rel=1e-12)
    assert r_other.shape == (50,)
    rec3: dict[str, Any] = {}
    ratio_step("n", _Exp, x0, w0, x1, w1, x0, cfg, rec3, sum_rule=False)
    assert rec3["n"]["sum_rule_factor"] == 1.0 and rec3["n"]["best_epoch"] == 4 % 3


def test_trained_step_ratio_is_finite_positive_and_close_to_analytic() -> None:
    """A real classifier step, N(0,1) → N(0.5,1) with 2000 events each: every ratio is finite
    and positive, and at the bulk (|x| < 1) it is within 25 % of the exact
    exp(0.5x − 1/8) (a loose bound for 8 epochs: the test is of the plumbing and sign, the
    calibration is tested in test_classifier.py)."""
    x0, x1 = _gauss(2000, 0.0, 5), _gauss(2000, 0.5, 6)
    w = torch.ones(2000, dtype=torch.float64)
    grid = EventFeatures(torch.linspace(-1.0, 1.0, 9, dtype=torch.float64))
    r = ratio_step("s", train_classifier, x0, w, x1, w, grid, CLF, {})
    exact = torch.exp(0.5 * grid.globals[:, 0].double() - 0.125)
    assert bool(torch.isfinite(r).all()) and bool((r > 0).all())
    assert float((r / exact - 1).abs().max()) < 0.25


def test_check_step_weights_flags_clipping_and_low_ess() -> None:
    """Healthy weights give no reason; clipping above clip_fraction_max and a weight that holds
    most of the sum (ESS/N ≪ ess_ratio_min, max share) each add a reason and warn; with
    the error policy the same weights raise a WeightError naming the step."""
    cfg = OmniFoldConfig()
    ok = torch.from_numpy(np.random.default_rng(7).uniform(0.8, 1.2, 1000))
    reasons: list[str] = []
    d = check_step_weights("omnifold.iter1.pull", ok, 0, 1000, cfg, reasons)
    assert reasons == [] and d["clipped_fraction"] == 0.0 and d["ess_ratio"] > 0.95
    with pytest.warns(WeightWarning, match="clipped"):
        check_step_weights("omnifold.iter1.pull", ok, 5, 1000, cfg, reasons)
    assert len(reasons) == 1 and "omnifold.iter1.pull" in reasons[0]
    spike = ok.clone()
    spike[0] = 1e6
    reasons = []
    with pytest.warns(WeightWarning):
        check_step_weights("omnifold.iter2.push", spike, 0, 1000, cfg, reasons)
    assert any("ESS/N" in r for r in reasons) and any("max share" in r for r in reasons)
    strict = OmniFoldConfig(diagnostics=WeightDiagnosticsConfig(on_violation="error"))
    with pytest.raises(WeightError, match=r"iter2\.push"):
        check_step_weights("omnifold.iter2.push", spike, 0, 1000, strict, [])


def test_mean_shift_in_units_of_the_reference_width() -> None:
    """x = (0, 1, 2, 3) with weights a = (0, 0, 1, 1) and b = (1, 1, 1, 1): <x>_a = 2.5,
    <x>_b = 1.5, σ_b = √1.25, so the shift is 1/√1.25; the largest column counts."""
    x = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    a = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    b = torch.ones(4, dtype=torch.float64)
    assert mean_shift(x, a, b) == pytest.approx(1 / np.sqrt(1.25), rel=1e-12)
    assert mean_shift(x, b, b) == 0.0
