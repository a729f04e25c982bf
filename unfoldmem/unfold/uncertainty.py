r"""Uncertainty bands of unfolded histograms: bootstrap (statistical), model (Bayesian/ensemble), combined.

An unfolded histogram of observable :math:`O` over events :math:`e` with weights :math:`w_e` and
N posterior samples per event is :math:`h_i = \sum_e w_e\,c_{ei}` with the per-event bin
fractions :math:`c_{ei} = \frac1N\sum_s \mathbb 1[O(p^{(s)}_e) \in i]`.

* Statistical: Poisson bootstrap over events (the events of the data are resampled, their
  posterior samples travel with them): replica :math:`r` is
  :math:`h^{(r)}_i = \sum_e k_{re}\,w_e\,c_{ei}` with :math:`k_{re} \sim \text{Poisson}(1)`;
  the band is the spread over replicas. It also contains the sampling noise of the finite N.
* Model: the same histogram unfolded with each of M network members (weight draws of a
  Bayesian cINN or ensemble members), :math:`h^{(m)}_i`; the band is their spread.
* Combined: :math:`\sigma_i^2 = \sigma_{\text{stat},i}^2 + \sigma_{\text{model},i}^2
  (+ \sigma_{\text{eff},i}^2)`, the components being independent by construction (data
  resampling, network weights, simulation statistics of the efficiency).

References:
    B. Efron, Ann. Statist. 7 (1979) 1 (bootstrap); M. Bellagente et al.,
    "Understanding event-generation networks via uncertainties", SciPost Phys. 13 (2022) 003,
    arXiv:2104.04543 (Bayesian network uncertainties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hist
import numpy as np
import torch

from unfoldmem.histograms import Band, Binning, band, make_axis, poisson_bootstrap

__all__ = ["edges_of", "bin_fractions", "bootstrap_replicas", "UnfoldedHist", "unfolded_hist"]


def edges_of(binning: Binning) -> np.ndarray:
    """Bin edges (n_bins + 1,) of a binning (edges or ``(n, low, high)``)."""
    return np.asarray(make_axis(binning).edges, dtype=np.float64)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def bin_fractions(values: Any, edges: np.ndarray, sample_weight: Any | None = None) -> np.ndarray:
    """Per-event fraction of posterior samples in each bin, :math:`c_{ei}`.

    Arguments:
        values: (N, n) observable values of N samples of n events.
        edges: (n_bins + 1,) bin edges; samples outside (and NaN) count in no bin.
        sample_weight: (N, n) extra per-sample weights (e.g. a 0/1 fiducial mask, or
            per-sample efficiency weights); ``None`` means 1.

    Returns:
        (n, n_bins) float64, rows sum to at most 1 (times the sample weights).
    """
    v = _np(values)
    if v.ndim == 1:
        v = v[None]
    n_s, n = v.shape
    sw = np.ones_like(v) if sample_weight is None else _np(sample_weight).reshape(v.shape)
    idx = np.searchsorted(edges, v, side="right") - 1
    n_bins = len(edges) - 1
    ok = (idx >= 0) & (idx < n_bins) & np.isfinite(v)
    # the last edge belongs to the last bin, as in hist
    ok |= v == edges[-1]
    idx = np.where(v == edges[-1], n_bins - 1, idx)
    ev = np.broadcast_to(np.arange(n), v.shape)
    out = np.zeros(n * n_bins)
    np.add.at(out, (ev[ok] * n_bins + idx[ok]), sw[ok])
    return out.reshape(n, n_bins) / n_s


def bootstrap_replicas(
    fractions: np.ndarray, weights: Any, n_replicas: int = 100, seed: int = 0
) -> np.ndarray:
    """Poisson-bootstrap replicas :math:`h^{(r)} = (k_r \\odot w) \\cdot c`, (n_replicas, n_bins)."""
    w = _np(weights)
    k = poisson_bootstrap(len(w), n_replicas, np.random.default_rng(seed))
    return (k * w[None]) @ fractions


@dataclass
class UnfoldedHist:
    """An unfolded histogram with its uncertainty components (all per bin, same units as values).

    Attributes:
        name, label: observable name and axis label.
        edges: (n_bins + 1,).
        values: (n_bins,) central values :math:`\\sum_e w_e c_{ei}` (after any correction).
        stat: bootstrap standard deviation; model: member spread (zeros if none);
        eff: simulation-statistics error of the acceptance correction (zeros if none).
        stat_cov: (n_bins, n_bins) bootstrap covariance.
        replicas: number of bootstrap replicas; members: number of model members.
        phase_space: ``reco`` (passing events, uncorrected), ``fiducial`` or ``full``.
        member_values: (n_bins,) histogram of each member.
        sumw2: :math:`\\sum_e w_e^2 c_{ei}`, the Poisson variance a truth histogram of this
            shape would have (used for the truth side of closure tests, also in empty bins).
    """

    name: str
    label: str
    edges: np.ndarray
    values: np.ndarray
    stat: np.ndarray
    model: np.ndarray
    eff: np.ndarray
    stat_cov: np.ndarray
    replicas: int = 0
    members: int = 0
    phase_space: str = "reco"
    member_values: list[np.ndarray] = field(default_factory=list)
    sumw2: np.ndarray | None = None

    @property
    def total(self) -> np.ndarray:
        """Combined standard deviation :math:`\\sqrt{\\sigma_{stat}^2 + \\sigma_{model}^2 + \\sigma_{eff}^2}`."""
        return np.sqrt(self.stat**2 + self.model**2 + self.eff**2)

    def to_hist(self) -> hist.Hist:
        """``hist.Hist`` with Weight storage: values and total variance per bin."""
        h = hist.Hist(
            hist.axis.Variable(self.edges, name=self.name, label=self.label),
            storage=hist.storage.Weight(),
        )
        h.view().value = self.values
        h.view().variance = self.total**2
        return h

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (NaN as None)."""

        def lst(a: np.ndarray) -> list[float | None]:
            return [float(x) if np.isfinite(x) else None for x in np.asarray(a, dtype=float)]

        return {
            "name": self.name,
            "label": self.label,
            "phase_space": self.phase_space,
            "edges": lst(self.edges),
            "values": lst(self.values),
            "stat": lst(self.stat),
            "model": lst(self.model),
            "eff": lst(self.eff),
            "total": lst(self.total),
            "replicas": self.replicas,
            "members": self.members,
        }


def unfolded_hist(
    name: str,
    label: str,
    edges: np.ndarray,
    fractions: np.ndarray,
    weights: Any,
    *,
    member_fractions: Sequence[np.ndarray] = (),
    n_replicas: int = 100,
    seed: int = 0,
) -> UnfoldedHist:
    """Central values, bootstrap band and model band of one observable (before acceptance).

    Arguments:
        name, label: observable.
        edges: (n_bins + 1,) bin edges.
        fractions: (n, n_bins) from :func:`bin_fractions` of the central posterior samples.
        weights: (n,) event weights (negative allowed).
        member_fractions: one (n, n_bins) per network member (Bayesian draw / ensemble member).
        n_replicas: bootstrap replicas (≥ 2).
        seed: bootstrap seed; use the same seed for every observable so replicas are shared.

    Returns:
        :class:`UnfoldedHist` with ``phase_space="reco"``.
    """
    w = _np(weights)
    values = w @ fractions
    reps = bootstrap_replicas(fractions, w, n_replicas, seed)
    b: Band = band(reps)
    members = [w @ f for f in member_fractions]
    model = (
        np.std(np.stack(members), axis=0, ddof=1) if len(members) >= 2 else np.zeros_like(values)
    )
    return UnfoldedHist(
        name,
        label,
        np.asarray(edges, dtype=np.float64),
        values,
        b.std,
        model,
        np.zeros_like(values),
        b.cov,
        n_replicas,
        len(members),
        "reco",
        members,
        (w * w) @ fractions,
    )
