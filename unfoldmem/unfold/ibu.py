r"""Iterative Bayesian unfolding (D'Agostini) of a binned observable, with efficiency and fakes.

With the weighted migration :math:`M_{ij}` (reco bin i, gen bin j, events passing both), the
parton-level yield :math:`G_j` (all events passing gen) and the reco yield :math:`D^{sim}_i`
(all events passing reco), the response is :math:`P_{ij} = M_{ij}/G_j`, the efficiency
:math:`\epsilon_j = \sum_i P_{ij}` and the fake fraction :math:`f_i = 1 - \sum_j M_{ij} /
D^{sim}_i`. Starting from the simulation's prior :math:`t^{(0)} = G`, each iteration is

.. math::
    t_j^{(k)} = \frac{1}{\epsilon_j} \sum_i \frac{P_{ij}\, t_j^{(k-1)}}
                {\sum_l P_{il}\, t_l^{(k-1)}} (1 - f_i)\, d_i .

Events passing both levels but falling outside the reco range count as inefficiency; those
outside the gen range count as fakes. All sums are weighted (negative weights allowed).
Statistical uncertainties come from a Poisson bootstrap of the data (and optionally of the
simulation, which propagates the response's own statistical error).

References:
    G. D'Agostini, "A multidimensional unfolding method based on Bayes' theorem",
    Nucl. Instrum. Meth. A362 (1995) 487.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hist
import numpy as np

from unfoldmem.histograms import Binning, band, make_axis, poisson_bootstrap, weighted_hist

__all__ = ["Response", "IBUResult", "build_response", "ibu", "unfold_ibu"]


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)


@dataclass(frozen=True)
class Response:
    """A weighted response: migration, gen and reco yields, and what follows from them.

    Attributes:
        reco_edges: (n_reco + 1,); gen_edges: (n_gen + 1,).
        migration: (n_reco, n_gen) Σw of events passing both levels.
        gen_total: (n_gen,) Σw of events passing gen (misses included).
        reco_total: (n_reco,) Σw of events passing reco (fakes included).
    """

    reco_edges: np.ndarray
    gen_edges: np.ndarray
    migration: np.ndarray
    gen_total: np.ndarray
    reco_total: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        """P(reco bin i, pass reco | gen bin j), (n_reco, n_gen); zero columns for empty gen bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            p = self.migration / self.gen_total[None, :]
        return np.where(self.gen_total[None, :] != 0, p, 0.0)

    @property
    def efficiency(self) -> np.ndarray:
        """ε_j, (n_gen,)."""
        return self.matrix.sum(axis=0)

    @property
    def fake_fraction(self) -> np.ndarray:
        """f_i, (n_reco,); zero in empty reco bins."""
        with np.errstate(invalid="ignore", divide="ignore"):
            f = 1.0 - self.migration.sum(axis=1) / self.reco_total
        return np.where(self.reco_total != 0, f, 0.0)


def _bin(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    i = np.searchsorted(edges, x, side="right") - 1
    return np.where((x >= edges[0]) & (x < edges[-1]), i, -1)


def _edges(bins: Binning) -> np.ndarray:
    return np.asarray(make_axis(bins).edges, dtype=np.float64)


def build_response(
    sim_reco: Any,
    sim_gen: Any,
    weights: Any | None,
    pass_reco: Any | None,
    pass_gen: Any | None,
    reco_bins: Binning,
    gen_bins: Binning,
) -> Response:
    """Weighted response from the simulation.

    Arguments:
        sim_reco, sim_gen: (n,) reco- and parton-level observable (placeholders where failed).
        weights: (n,) MC weights (any sign); None means 1.
        pass_reco, pass_gen: (n,) bool; None means all True.
        reco_bins, gen_bins: edges or ``(n, low, high)``.
    """
    r, g = _np(sim_reco), _np(sim_gen)
    n = r.size
    w = np.ones(n) if weights is None else _np(weights)
    pr = np.ones(n, bool) if pass_reco is None else _np(pass_reco, bool)
    pg = np.ones(n, bool) if pass_gen is None else _np(pass_gen, bool)
    re, ge = _edges(reco_bins), _edges(gen_bins)
    ir = np.where(pr, _bin(r, re), -1)
    ig = np.where(pg, _bin(g, ge), -1)
    nr, ng = re.size - 1, ge.size - 1
    both = (ir >= 0) & (ig >= 0)
    mig = np.zeros((nr, ng))
    np.add.at(mig, (ir[both], ig[both]), w[both])
    gen_total = np.bincount(ig[ig >= 0], weights=w[ig >= 0], minlength=ng).astype(np.float64)
    reco_total = np.bincount(ir[ir >= 0], weights=w[ir >= 0], minlength=nr).astype(np.float64)
    return Response(re, ge, mig, gen_total, reco_total)


def ibu(data: Any, response: Response, iterations: int = 4, prior: Any | None = None) -> np.ndarray:
    """D'Agostini iterations on binned data.

    Arguments:
        data: (n_reco,) measured Σw per reco bin (fakes included).
        response: from :func:`build_response`.
        iterations: number of iterations K (the regularisation).
        prior: (n_gen,) starting truth; default the simulation's ``gen_total``.

    Returns:
        (n_gen,) unfolded parton-level yields (efficiency-corrected).
    """
    if iterations < 0:
        msg = f"iterations must be >= 0, got {iterations}"
        raise ValueError(msg)
    d = _np(data) * (1.0 - response.fake_fraction)
    p = response.matrix
    eff = p.sum(axis=0)
    t = _np(response.gen_total if prior is None else prior).copy()
    for _ in range(iterations):
        folded = p @ t
        ratio = np.divide(d, folded, out=np.zeros_like(d), where=folded != 0)
        upd = t * (p.T @ ratio)
        t = np.divide(upd, eff, out=np.zeros_like(upd), where=eff != 0)
    return t


@dataclass
class IBUResult:
    """Unfolded histogram and its replicas.

    Attributes:
        unfolded: ``hist.Hist`` (gen axis, Weight storage; variances from the bootstrap, or
            zero without one).
        response: the nominal response.
        replicas: (n_bootstrap, n_gen) unfolded yields of the bootstrap replicas.
    """

    unfolded: hist.Hist
    response: Response
    replicas: np.ndarray


def unfold_ibu(
    data_reco: Any,
    sim_reco: Any,
    sim_gen: Any,
    *,
    reco_bins: Binning,
    gen_bins: Binning,
    iterations: int = 4,
    data_weights: Any | None = None,
    sim_weights: Any | None = None,
    pass_reco: Any | None = None,
    pass_gen: Any | None = None,
    n_bootstrap: int = 0,
    bootstrap_sim: bool = True,
    seed: int = 0,
    name: str = "x",
    label: str | None = None,
) -> IBUResult:
    """Bin, build the response, unfold, and bootstrap the statistical uncertainty.

    Arguments:
        data_reco: (n_data,) measured observable; data_weights: (n_data,) or None.
        sim_reco, sim_gen, sim_weights, pass_reco, pass_gen: the simulation (n_sim,).
        reco_bins, gen_bins: binnings; iterations: K.
        n_bootstrap: Poisson-bootstrap replicas (0: no uncertainty).
        bootstrap_sim: also resample the simulation (response statistical error).
        seed: bootstrap seed; name, label: gen axis.

    Returns:
        :class:`IBUResult`.
    """
    x = _np(data_reco)
    wd = np.ones(x.size) if data_weights is None else _np(data_weights)
    n_sim = _np(sim_reco).size
    ws = np.ones(n_sim) if sim_weights is None else _np(sim_weights)
    args = (sim_reco, sim_gen)
    flags = (pass_reco, pass_gen, reco_bins, gen_bins)
    resp = build_response(*args, ws, *flags)
    d = weighted_hist(x, wd, reco_bins).values()
    t = ibu(d, resp, iterations)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_bootstrap):
        db = weighted_hist(x, wd * poisson_bootstrap(x.size, 1, rng)[0], reco_bins).values()
        rb = (
            build_response(*args, ws * poisson_bootstrap(n_sim, 1, rng)[0], *flags)
            if bootstrap_sim
            else resp
        )
        reps.append(ibu(db, rb, iterations))
    replicas = np.asarray(reps).reshape(n_bootstrap, t.size)
    h = hist.Hist(make_axis(gen_bins, name, label), storage=hist.storage.Weight())
    var = band(replicas).std ** 2 if n_bootstrap >= 2 else np.zeros_like(t)
    h.view().value = t
    h.view().variance = var
    return IBUResult(h, resp, replicas)
