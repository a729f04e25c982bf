"""Quality metrics: a perfect generator sits at the truth-split reference, a shifted one is flagged."""

from __future__ import annotations

import numpy as np
from scipy import stats

from unfoldmem.quality import QualityConfig, quality_report, weighted_auc, weighted_ks


def test_weighted_ks_matches_scipy_unweighted():
    """Reference: scipy.stats.ks_2samp statistic (unweighted)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(0.2, 1.0, size=400)
    assert abs(weighted_ks(a, b) - stats.ks_2samp(a, b).statistic) < 1e-12


def test_weighted_auc_matches_mann_whitney():
    """Reference: AUC = U / (n0 n1) with U the Mann–Whitney statistic (scipy)."""
    rng = np.random.default_rng(2)
    s0, s1 = rng.normal(size=200), rng.normal(0.5, 1.0, size=300)
    s0[:20] = np.round(s0[:20], 1)  # some ties
    s1[:20] = np.round(s1[:20], 1)
    u = stats.mannwhitneyu(s1, s0).statistic
    auc = weighted_auc(np.concatenate([s0, s1]), np.concatenate([np.zeros(200), np.ones(300)]))
    assert abs(auc - u / (200 * 300)) < 1e-12
    # integer weights equal duplication
    w = rng.integers(1, 4, 500).astype(float)
    score = np.concatenate([s0, s1])
    label = np.concatenate([np.zeros(200), np.ones(300)])
    dup = np.repeat(np.arange(500), w.astype(int))
    assert abs(weighted_auc(score, label, w) - weighted_auc(score[dup], label[dup])) < 1e-12


def _correlated(n, rng, shift=0.0):
    x = rng.normal(size=n)
    y = 0.6 * x + 0.8 * rng.normal(size=n)
    return np.stack([x + shift, y, np.exp(0.3 * rng.normal(size=n))], axis=1)


def test_perfect_model_not_flagged_and_shifted_model_flagged():
    rng = np.random.default_rng(3)
    truth = _correlated(4000, rng)
    config = QualityConfig(n_reference_splits=3, n_bootstrap=30)
    config.classifier.epochs = 12
    good = quality_report(_correlated(2000, rng), truth, ["x", "y", "z"], config)
    assert good["ok"], good["flags"]
    assert abs(good["model"]["auc"] - 0.5) < 5 * good["model"]["auc_err"]
    bad = quality_report(_correlated(2000, rng, shift=0.4), truth, ["x", "y", "z"], config)
    assert not bad["ok"]
    assert any(f.startswith("w1[x]") for f in bad["flags"])
    assert any(f.startswith("c2st") for f in bad["flags"])
    # a broken correlation alone shows in the pair χ²
    broken = _correlated(2000, rng)
    broken[:, 1] = rng.permutation(broken[:, 1])
    rep = quality_report(broken, truth, ["x", "y", "z"], config)
    assert any(f.startswith("pair_chi2_ndf[x,y]") for f in rep["flags"]), rep["flags"]
    assert not any(f.startswith(("w1[y]", "ks[y]")) for f in rep["flags"])


def test_trained_flow_scores_near_reference_and_better_than_broken():
    """A zuko NSF trained by maximum likelihood on the correlated toy is scored: its C2ST AUC and
    x–y pair χ² sit far closer to the truth-split reference (a perfect model on the same sample
    size) than those of the same flow with its mean shifted by 0.4 σ, which is flagged."""
    import torch
    import zuko

    torch.manual_seed(0)
    rng = np.random.default_rng(4)
    train = torch.as_tensor(_correlated(4000, rng)[:, :2], dtype=torch.float32)
    flow = zuko.flows.NSF(2, 0, transforms=2, hidden_features=(32, 32))
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(300):
        batch = train[torch.randint(0, len(train), (512,))]
        loss = -flow().log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gen = flow().sample((2000,)).double().numpy()
    truth = _correlated(4000, rng)[:, :2]
    config = QualityConfig(n_reference_splits=3, n_bootstrap=30)
    config.classifier.epochs = 12
    rep = quality_report(gen, truth, ["x", "y"], config)
    shifted = gen + np.array([0.4, 0.0])
    bad = quality_report(shifted, truth, ["x", "y"], config)
    assert not bad["ok"]
    assert rep["model"]["auc"] - 0.5 < 0.5 * (bad["model"]["auc"] - 0.5)
    assert rep["model"]["w1"][0] < 0.5 * bad["model"]["w1"][0]
    assert rep["model"]["w1"][0] < rep["reference"]["w1"]["mean"][0] + 10 * rep["reference"]["w1"]["std"][0]
