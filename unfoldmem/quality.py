r"""Quality of a generative model: distances between generated and true samples, each beside the
value a perfect model scores on the same sample size (a split of the truth).

Metrics per marginal: Wasserstein-1 and Kolmogorov–Smirnov distances, χ²/ndf of binned
marginals; χ²/ndf of binned pairs (correlations); a classifier two-sample test (C2ST: AUC of a
network separating generated from true events, with its bootstrap error).

References:
    D. Lopez-Paz, M. Oquab, "Revisiting classifier two-sample tests", arXiv:1610.06545.
    R. Das et al., "How to understand limitations of generative networks", arXiv:2305.16774.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from unfoldmem.histograms import chi2_ndf
from unfoldmem.unfold.classifier import ClassifierConfig, EventFeatures, train_classifier

__all__ = [
    "QualityConfig",
    "weighted_ks",
    "weighted_auc",
    "marginal_metrics",
    "c2st_auc",
    "quality_report",
    "plot_quality",
    "model_samples",
]


@dataclass
class QualityConfig:
    """How the report is computed.

    Arguments:
        bins: bins per marginal (quantiles of the truth, so every bin is populated).
        pairs: index pairs of features whose 2D binned χ² is reported; ``None``: all pairs.
        n_reference_splits: random splits of the truth that give each metric's perfect-model
            distribution.
        flag_sigma: a metric is flagged when it exceeds the reference mean by this many
            reference standard deviations (and, for the AUC, by this many bootstrap errors).
        classifier: C2ST network; small and fast by default.
        n_bootstrap: bootstrap replicas of the C2ST test set.
        seed: RNG seed for splits and bootstraps.
    """

    bins: int = 20
    pairs: list[tuple[int, int]] | None = None
    n_reference_splits: int = 5
    flag_sigma: float = 5.0
    classifier: ClassifierConfig = field(
        default_factory=lambda: ClassifierConfig(hidden=32, layers=2, epochs=30, patience=4)
    )
    n_bootstrap: int = 50
    seed: int = 0


def weighted_ks(a: np.ndarray, b: np.ndarray, wa: np.ndarray | None = None, wb: np.ndarray | None = None) -> float:
    """Kolmogorov–Smirnov distance sup |F_a − F_b| between weighted empirical CDFs."""
    wa = np.ones(len(a)) if wa is None else np.asarray(wa, dtype=float)
    wb = np.ones(len(b)) if wb is None else np.asarray(wb, dtype=float)
    grid = np.sort(np.concatenate([a, b]))

    def cdf(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        order = np.argsort(x)
        cw = np.concatenate([[0.0], np.cumsum(w[order])]) / w.sum()
        return cw[np.searchsorted(x[order], grid, side="right")]

    return float(np.max(np.abs(cdf(a, wa) - cdf(b, wb))))


def weighted_auc(score: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the weighted probability that a class-1 event outscores a
    class-0 one (ties count one half), computed from the sorted scores in O(n log n)."""
    weight = np.ones(len(score)) if weight is None else np.asarray(weight, dtype=float)
    order = np.argsort(score, kind="mergesort")
    s, y, w = score[order], label[order].astype(bool), weight[order]
    _, start = np.unique(s, return_index=True)
    w0 = np.add.reduceat(np.where(~y, w, 0.0), start)
    w1 = np.add.reduceat(np.where(y, w, 0.0), start)
    below0 = np.concatenate([[0.0], np.cumsum(w0)[:-1]])
    num = float(np.sum(w1 * (below0 + 0.5 * w0)))
    return num / (w0.sum() * w1.sum())


def _edges(truth: np.ndarray, bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(truth, np.linspace(0, 1, bins + 1)))
    edges[0], edges[-1] = -np.inf, np.inf  # overflow lands in the outer bins
    return edges


def _hist(x: np.ndarray, w: np.ndarray, edges: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(edges, list):
        h, *_ = np.histogram2d(x[:, 0], x[:, 1], bins=edges, weights=w)
        h2, *_ = np.histogram2d(x[:, 0], x[:, 1], bins=edges, weights=w**2)
        return h.ravel(), h2.ravel()
    h, _ = np.histogram(x, bins=edges, weights=w)
    h2, _ = np.histogram(x, bins=edges, weights=w**2)
    return h, h2


def marginal_metrics(
    gen: np.ndarray, truth: np.ndarray, config: QualityConfig,
    w_gen: np.ndarray | None = None, w_truth: np.ndarray | None = None,
) -> dict[str, Any]:
    """W1, KS and binned χ²/ndf per feature, and binned χ²/ndf per feature pair.

    Arguments:
        gen: (n, d) generated events; truth: (m, d) true events (same feature order).
        w_gen, w_truth: event weights (``None``: 1).
    """
    w_gen = np.ones(len(gen)) if w_gen is None else np.asarray(w_gen, dtype=float)
    w_truth = np.ones(len(truth)) if w_truth is None else np.asarray(w_truth, dtype=float)
    d = truth.shape[1]
    out: dict[str, Any] = {"w1": [], "ks": [], "chi2_ndf": [], "pair_chi2_ndf": {}}
    for j in range(d):
        out["w1"].append(float(stats.wasserstein_distance(gen[:, j], truth[:, j], w_gen, w_truth)))
        out["ks"].append(weighted_ks(gen[:, j], truth[:, j], w_gen, w_truth))
        edges = _edges(truth[:, j], config.bins)
        c2, ndf = chi2_ndf(_hist(gen[:, j], w_gen, edges), _hist(truth[:, j], w_truth, edges), normalize=True)
        out["chi2_ndf"].append(c2 / max(ndf, 1))
    pairs = config.pairs if config.pairs is not None else [(i, j) for i in range(d) for j in range(i + 1, d)]
    nb = max(int(np.sqrt(config.bins * 2)), 3)
    for i, j in pairs:
        edges = [_edges(truth[:, i], nb), _edges(truth[:, j], nb)]
        c2, ndf = chi2_ndf(
            _hist(gen[:, [i, j]], w_gen, edges), _hist(truth[:, [i, j]], w_truth, edges), normalize=True
        )
        out["pair_chi2_ndf"][f"{i},{j}"] = c2 / max(ndf, 1)
    return out


def c2st_auc(
    gen: np.ndarray, truth: np.ndarray, config: QualityConfig,
    w_gen: np.ndarray | None = None, w_truth: np.ndarray | None = None,
) -> dict[str, float]:
    """Classifier two-sample test: AUC on a held-out half and its bootstrap standard error.

    A perfect generator gives 0.5; the network is trained on the other half of each sample.
    """
    rng = np.random.default_rng(config.seed)
    w_gen = np.ones(len(gen)) if w_gen is None else np.asarray(w_gen, dtype=float)
    w_truth = np.ones(len(truth)) if w_truth is None else np.asarray(w_truth, dtype=float)
    ig, it = rng.permutation(len(gen)), rng.permutation(len(truth))
    tg, eg = ig[: len(ig) // 2], ig[len(ig) // 2 :]
    tt, et = it[: len(it) // 2], it[len(it) // 2 :]
    clf = train_classifier(
        EventFeatures(torch.as_tensor(truth[tt])), EventFeatures(torch.as_tensor(gen[tg])),
        torch.as_tensor(w_truth[tt]), torch.as_tensor(w_gen[tg]), config.classifier,
    )
    score = clf.predict_proba(EventFeatures(torch.as_tensor(np.concatenate([truth[et], gen[eg]])))).numpy()
    label = np.concatenate([np.zeros(len(et)), np.ones(len(eg))])
    w = np.concatenate([w_truth[et] / w_truth[et].sum(), w_gen[eg] / w_gen[eg].sum()])
    auc = weighted_auc(score, label, w)
    boots = []
    for _ in range(config.n_bootstrap):
        k = rng.integers(0, len(score), len(score))
        if label[k].min() == label[k].max():
            continue
        boots.append(weighted_auc(score[k], label[k], w[k]))
    return {"auc": auc, "auc_err": float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")}


def quality_report(
    gen: np.ndarray, truth: np.ndarray, names: list[str] | None = None,
    config: QualityConfig | None = None,
    w_gen: np.ndarray | None = None, w_truth: np.ndarray | None = None,
) -> dict[str, Any]:
    """All metrics for generated vs true events, with the perfect-model reference and flags.

    The reference splits the truth into two halves of the sizes compared (``n_reference_splits``
    times) and scores one against the other: what a perfect model would score on this sample
    size. A metric is flagged when it exceeds the reference mean by ``flag_sigma`` reference
    standard deviations.

    Arguments:
        gen: (n, d) generated events; truth: (m, d) true events, m ≥ 2 so it can be split.
        names: feature names (default ``x0, x1, ...``).

    Returns:
        JSON-ready dict: ``{"features", "model": {...}, "reference": {...}, "flags": [...]}``.
    """
    config = config or QualityConfig()
    gen, truth = np.asarray(gen, dtype=float), np.asarray(truth, dtype=float)
    names = names or [f"x{i}" for i in range(truth.shape[1])]
    w_gen = np.ones(len(gen)) if w_gen is None else np.asarray(w_gen, dtype=float)
    w_truth = np.ones(len(truth)) if w_truth is None else np.asarray(w_truth, dtype=float)
    rng = np.random.default_rng(config.seed + 1)
    # compare half the truth with the generated sample so both comparisons use the same sizes
    b = rng.permutation(len(truth))[len(truth) // 2 :]
    model = marginal_metrics(gen, truth[b], config, w_gen, w_truth[b])
    model.update(c2st_auc(gen, truth[b], config, w_gen, w_truth[b]))
    refs = []
    for k in range(config.n_reference_splits):
        perm = np.random.default_rng(config.seed + 100 + k).permutation(len(truth))
        ra, rb = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        ref = marginal_metrics(truth[ra], truth[rb], config, w_truth[ra], w_truth[rb])
        if k == 0:
            ref.update(c2st_auc(truth[ra], truth[rb], config, w_truth[ra], w_truth[rb]))
        refs.append(ref)
    reference: dict[str, Any] = {}
    flags: list[str] = []
    for key in ("w1", "ks", "chi2_ndf"):
        vals = np.array([r[key] for r in refs])
        mean, std = vals.mean(axis=0), vals.std(axis=0, ddof=1) if len(refs) > 1 else np.zeros(vals.shape[1])
        reference[key] = {"mean": mean.tolist(), "std": std.tolist()}
        for j, name in enumerate(names):
            if model[key][j] > mean[j] + config.flag_sigma * max(std[j], 1e-12):
                flags.append(f"{key}[{name}] = {model[key][j]:.4g} vs perfect {mean[j]:.4g} ± {std[j]:.2g}")
    pair_ref = {p: [r["pair_chi2_ndf"][p] for r in refs] for p in model["pair_chi2_ndf"]}
    reference["pair_chi2_ndf"] = {p: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1))} for p, v in pair_ref.items()}
    for p, v in model["pair_chi2_ndf"].items():
        r = reference["pair_chi2_ndf"][p]
        if v > r["mean"] + config.flag_sigma * max(r["std"], 1e-12):
            i, j = (int(s) for s in p.split(","))
            flags.append(f"pair_chi2_ndf[{names[i]},{names[j]}] = {v:.3g} vs perfect {r['mean']:.3g} ± {r['std']:.2g}")
    reference["auc"] = refs[0]["auc"]
    reference["auc_err"] = refs[0]["auc_err"]
    err = np.hypot(model["auc_err"], reference["auc_err"])
    if model["auc"] - 0.5 > config.flag_sigma * err:
        flags.append(f"c2st auc = {model['auc']:.4f} ± {model['auc_err']:.4f} (perfect 0.5)")
    def _named(p: str) -> str:
        i, j = (int(k) for k in p.split(","))
        return f"{names[i]},{names[j]}"

    model["pair_chi2_ndf"] = {_named(p): v for p, v in model["pair_chi2_ndf"].items()}
    reference["pair_chi2_ndf"] = {_named(p): v for p, v in reference["pair_chi2_ndf"].items()}
    return {"features": names, "n_generated": len(gen), "n_truth": len(b), "model": model,
            "reference": reference, "flags": flags, "ok": not flags}


def plot_quality(gen: np.ndarray, truth: np.ndarray, names: list[str], path: str,
                 bins: int = 40) -> None:
    """Marginals of generated vs true events, one panel per feature, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = len(names)
    fig, axes = plt.subplots(1, d, figsize=(3.2 * d, 3.0), squeeze=False)
    for j, ax in enumerate(axes[0]):
        lo, hi = np.quantile(truth[:, j], [0.005, 0.995])
        edges = np.linspace(lo, hi, bins + 1)
        ax.hist(truth[:, j], bins=edges, histtype="step", density=True, label="truth", color="k")
        ax.hist(gen[:, j], bins=edges, histtype="step", density=True, label="generated", color="C1")
        ax.set_xlabel(names[j])
    axes[0][0].legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _drop_constant(x: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # 1e-3 as ObjectEncoding's mass tolerance: massless partons rebuilt from (E, p) jitter
    keep = np.ptp(truth, axis=0) > 1e-3
    return x[:, keep], truth[:, keep], [n for n, k in zip(names, keep, strict=True) if k]


def _object_features(v: np.ndarray, prefix: str) -> tuple[np.ndarray, list[str]]:
    """(n, k, 4) (pt, eta, phi, m) → (n, 4k) columns and names ``{prefix}{i}_{pt,eta,phi,m}``."""
    names = [f"{prefix}{i}_{c}" for i in range(v.shape[1]) for c in ("pt", "eta", "phi", "m")]
    return v.reshape(len(v), -1), names


def _system(v: torch.Tensor) -> np.ndarray:
    """m and pt (GeV) of the sum of the objects (n, k, 4) (pt, eta, phi, m) → (n, 2)."""
    from unfoldmem.physics import lorentz

    p = lorentz.from_ptetaphim(v.double()).sum(-2)
    return torch.stack([lorentz.mass(p), lorentz.pt(p)], -1).numpy()


def _compact(reco: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` valid objects of each event in slot order: (n, S, 7) → (n, count, 4)."""
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :count]
    return torch.gather(reco[..., :4], 1, order[..., None].expand(-1, -1, 4))


def model_samples(
    model: torch.nn.Module, events: Any, partons: Any, n_samples: int = 1,
    max_events: int | None = None, seed: int = 0, max_jets: int = 8, max_leptons: int = 2,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Generated and true feature tables of a trained cINN or transfer flow on simulated events.

    cINN: partons sampled given each event's reco objects vs the true partons (pt, eta, phi,
    m per parton and the m, pt of the parton system: m_tt vs pt_tt for tt̄). Transfer flow:
    reco objects sampled given the true partons vs the simulated reco (jet count; pt, eta, phi,
    m of the fixed objects and the leading jets of the lowest multiplicity class). Constant
    features (MET eta, fixed masses) are dropped.

    Arguments:
        model: a CINN or TransferFlow (the first member of an ensemble, the posterior-mean
            network of a Bayesian model).
        events: detector records (``Events`` tree); partons: parton records (``Partons``).
        n_samples: generated samples per event.
        max_events: use at most this many passing events (the first ones).
        seed: torch seed of the sampling.
        max_jets, max_leptons: the padded reco layout of the model card.

    Returns:
        gen (n·n_samples, d), truth (n, d), names (d,), w_gen, w_truth (event weights).
    """
    from unfoldmem.flows.cinn import CINN
    from unfoldmem.flows.encoding import pad_reco, parton_objects
    from unfoldmem.flows.export import exportable_members
    from unfoldmem.flows.transfer import TransferFlow, jet_count
    from unfoldmem.unfold.iterative import Simulation

    net = exportable_members(model)[0][1].eval()
    sim = Simulation(events, partons)
    idx = np.arange(len(events)) if max_events is None else np.arange(min(max_events, len(events)))
    ev = events[idx]
    pv = partons[sim.pass_index[idx]]
    reco, mask = pad_reco(ev, max_jets=max_jets, max_leptons=max_leptons)
    true_partons = parton_objects(pv)
    w = np.asarray(pv.weight, dtype=float)
    torch.manual_seed(seed)
    with torch.no_grad():
        if isinstance(net, CINN):
            gen_p = net.sample_partons(n_samples, reco, mask).reshape(-1, *true_partons.shape[1:])
            g, names = _object_features(gen_p.numpy(), "p")
            t, _ = _object_features(true_partons.numpy(), "p")
            g = np.concatenate([g, _system(gen_p)], 1)
            t = np.concatenate([t, _system(true_partons)], 1)
            names += ["m_system", "pt_system"]
        elif isinstance(net, TransferFlow):
            count = int(net.fixed_types.shape[0]) + net.multiplicities[0]
            sampled = net(true_partons).sample((n_samples,))
            sampled = sampled.reshape(-1, *sampled.shape[2:])
            smask = sampled[..., 0] > 0
            g, names = _object_features(_compact(sampled, smask, count).numpy(), "o")
            t, _ = _object_features(_compact(reco, mask, count).numpy(), "o")
            g = np.concatenate([jet_count(sampled, smask).numpy()[:, None], g], 1)
            t = np.concatenate([jet_count(reco, mask).numpy()[:, None], t], 1)
            names = ["n_jets", *names]
        else:
            msg = f"cannot score a {type(net).__name__}; expected a CINN or TransferFlow"
            raise TypeError(msg)
    g, t, names = _drop_constant(g, t, names)
    return g, t, names, np.tile(w, n_samples), w
