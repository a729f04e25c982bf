"""Tests of unfoldmem/mem/weight_sums.py: running sums of importance weights."""

from __future__ import annotations

import math

import numpy as np
import torch

from unfoldmem.mem.weight_sums import WeightSums


def test_sums_in_chunks_equal_the_direct_multichannel_estimate() -> None:
    """Reference: the balance-heuristic estimate Σ_c α_c/n_c Σ w, its variance
    Σ_c α_c²/n_c Var_c[w] (unbiased sample variance) and Kish's ESS (Σw)²/Σw², computed
    directly in numpy from the same weights; the chunks are offset by 600 in log w (beyond
    float64 range) so the running log scale is exercised."""
    g = torch.Generator().manual_seed(3)
    alphas = torch.tensor([0.7, 0.3], dtype=torch.float64)
    logw = {0: torch.randn(50, 2, 1, generator=g, dtype=torch.float64),
            1: torch.randn(30, 2, 1, generator=g, dtype=torch.float64) * 2}
    acc = WeightSums(2, 2, 1, p=3, n_top=4)
    pick = torch.randint(0, 3, (80, 2), generator=g)
    rows = torch.arange(2)
    acc.add(0, rows, logw[0][:20] + 600, torch.nn.functional.one_hot(pick[:20], 3).double())
    acc.add(1, rows, logw[1] + 600, torch.nn.functional.one_hot(pick[50:], 3).double())
    acc.add(0, rows, logw[0][20:] + 600, torch.nn.functional.one_hot(pick[20:50], 3).double())
    res = acc.result(alphas)
    for b in range(2):
        w = {c: np.exp(logw[c][:, b, 0].numpy()) for c in (0, 1)}
        a = alphas.numpy()
        t1 = sum(a[c] * w[c].mean() for c in (0, 1))
        var = sum(a[c] ** 2 / len(w[c]) * w[c].var(ddof=1) for c in (0, 1))
        t2 = sum((a[c] / len(w[c])) ** 2 * (w[c] ** 2).sum() for c in (0, 1))
        scale = math.exp(float(res["shift"][b, 0]) - 600)
        assert math.isclose(float(res["t1"][b, 0]) * scale, t1, rel_tol=1e-12)
        assert math.isclose(float(res["var"][b, 0]) * scale**2, var, rel_tol=1e-10)
        assert math.isclose(float(res["ess"][b, 0]), t1**2 / t2, rel_tol=1e-12)
        pk = pick[:, b].numpy()
        per = [sum(a[c] / len(w[c]) * w[c][(pk[:50] if c == 0 else pk[50:]) == q].sum()
                   for c in (0, 1)) for q in range(3)]
        assert np.allclose(res["perm"][b, 0].numpy() * scale, per, rtol=1e-12)
    assert float(acc.n.sum()) == 160


def test_nan_weights_are_counted_and_dropped() -> None:
    """Reference: a NaN weight contributes nothing and is counted once per sample."""
    acc = WeightSums(1, 1, 1, None)
    lw = torch.tensor([[[0.0]], [[math.nan]], [[math.log(3.0)]]], dtype=torch.float64)
    acc.add(0, torch.arange(1), lw, None)
    res = acc.result(torch.ones(1, dtype=torch.float64))
    assert float(acc.nonfinite[0]) == 1
    assert math.isclose(float(res["t1"][0, 0]) * math.exp(float(res["shift"][0, 0])), 4 / 3,
                        rel_tol=1e-12)


def test_pareto_tail_is_fitted_to_the_latest_round() -> None:
    """Each round has its own proposal. Reference: a first round of 256 lognormal weights
    (σ = 1, an unadapted proposal) followed by 20 000 bounded ones (uniform on [0.2, 0.4], an
    adapted proposal): pooled, the first round's larger weights read as a heavy tail (k̂ > 0.7,
    checked with unfoldmem.pareto on the concatenation); the round's own k̂ is that of a
    bounded law (< 0). An event left out of ``new_round`` keeps its last round's tail."""
    from unfoldmem.pareto import pareto_k

    g = torch.Generator().manual_seed(4)
    first = torch.randn(256, 2, 1, generator=g, dtype=torch.float64)
    second = torch.log(0.2 + 0.2 * torch.rand(20000, 2, 1, generator=g, dtype=torch.float64))
    assert float(pareto_k(torch.cat([first, second])[:, 0, 0])) > 0.7
    acc = WeightSums(1, 2, 1, None, n_top=2000)
    acc.new_round(torch.arange(2))
    acc.add(0, torch.arange(2), first, None)
    k_first = acc.pareto_k()
    acc.new_round(torch.arange(1))  # event 1 has left after the first round
    acc.add(0, torch.arange(1), second[:, :1], None)
    k = acc.pareto_k()
    assert float(k[0, 0]) < 0.0
    # (the fit's θ grid has 80 + √width points, width set by the batch's longest tail)
    assert math.isclose(float(k[1, 0]), float(k_first[1, 0]), rel_tol=1e-3)
    assert float(acc.n_round[1]) == 256
