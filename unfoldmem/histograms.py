r"""Weighted histograms (Σw, Σw²) with hist, bootstrap bands and χ²/ndf between histograms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import hist
import numpy as np
import torch

__all__ = [
    "Binning",
    "make_axis",
    "weighted_hist",
    "poisson_bootstrap",
    "Band",
    "band",
    "chi2_ndf",
]

Binning = Sequence[float] | np.ndarray | tuple[int, float, float]
"""Bin edges (increasing sequence) or ``(n_bins, low, high)`` for regular bins."""


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def make_axis(bins: Binning, name: str = "x", label: str | None = None) -> hist.axis.AxesMixin:
    """A hist axis from edges or ``(n, low, high)``; flows are kept (nothing is silently lost)."""
    label = label or name
    if isinstance(bins, tuple) and len(bins) == 3 and isinstance(bins[0], int | np.integer):
        n, lo, hi = bins
        return hist.axis.Regular(int(n), float(lo), float(hi), name=name, label=label)
    edges = _np(bins)
    if edges.size < 2 or np.any(np.diff(edges) <= 0):
        msg = f"bin edges must be at least two strictly increasing numbers, got {edges!r}"
        raise ValueError(msg)
    return hist.axis.Variable(edges, name=name, label=label)


def weighted_hist(
    values: Any,
    weights: Any | None = None,
    bins: Binning = (40, -4.0, 4.0),
    *,
    name: str = "x",
    label: str | None = None,
) -> hist.Hist:
    """Fill a 1D histogram with Weight storage (sum of w and sum of w² per bin).

    Arguments:
        values: (n,) observable values (units of the observable, e.g. GeV).
        weights: (n,) event weights (negative allowed); ``None`` means 1 each.
        bins: edges or ``(n_bins, low, high)``.
        name, label: axis name and plot label.

    Returns:
        ``hist.Hist`` whose ``.values()`` are Σw and ``.variances()`` Σw² per bin.

    Example:
        >>> h = weighted_hist([0.5, 0.5, 1.5], [1.0, 2.0, 3.0], bins=[0.0, 1.0, 2.0])
        >>> h.values().tolist(), h.variances().tolist()
        ([3.0, 3.0], [5.0, 9.0])
    """
    x = _np(values)
    w = np.ones_like(x) if weights is None else _np(weights)
    if w.shape != x.shape:
        msg = f"values have shape {x.shape} but weights {w.shape}"
        raise ValueError(msg)
    h = hist.Hist(make_axis(bins, name, label), storage=hist.storage.Weight())
    h.fill(x, weight=w)
    return h


def poisson_bootstrap(
    n_events: int, n_replicas: int, generator: np.random.Generator | int | None = None
) -> np.ndarray:
    """Poisson(1) multiplicities per event and replica: the bootstrap for weighted samples.

    Multiplying event weights by these gives independent-looking resamples that keep event
    identities, so the same replica can be applied to every observable at once.

    References:
        B. Efron, *Ann. Statist.* 7 (1979) 1; Poisson bootstrap as in
        H. Hanley, B. MacGibbon, *Comput. Methods Programs Biomed.* 83 (2006) 57.

    Returns:
        (n_replicas, n_events) float64 array of non-negative integers.
    """
    rng = np.random.default_rng(generator)
    return rng.poisson(1.0, size=(n_replicas, n_events)).astype(np.float64)


@dataclass(frozen=True)
class Band:
    """Per-bin spread of replica histograms (bootstrap, ensemble).

    Attributes:
        mean, std: (n_bins,) mean and standard deviation over replicas.
        low, high: (n_bins,) 16th and 84th percentiles.
        cov: (n_bins, n_bins) covariance over replicas.
    """

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    cov: np.ndarray


def band(replicas: Sequence[hist.Hist] | np.ndarray) -> Band:
    """Spread of replica histograms: mean, std, 68% interval and covariance per bin.

    Arguments:
        replicas: list of histograms with the same axis, or a (n_replicas, n_bins) array.
    """
    if isinstance(replicas, np.ndarray):
        arr = np.asarray(replicas, dtype=np.float64)
    else:
        arr = np.stack([np.asarray(h.values(), dtype=np.float64) for h in replicas])
    if arr.ndim != 2 or arr.shape[0] < 2:
        msg = f"need at least two replicas of shape (n_replicas, n_bins), got {arr.shape}"
        raise ValueError(msg)
    lo, hi = np.percentile(arr, [15.865, 84.135], axis=0)
    return Band(
        mean=arr.mean(axis=0),
        std=arr.std(axis=0, ddof=1),
        low=lo,
        high=hi,
        cov=np.atleast_2d(np.cov(arr, rowvar=False)),
    )


def _vals_vars(h: hist.Hist | tuple[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(h, tuple):
        return _np(h[0]), _np(h[1])
    var = h.variances()
    if var is None:
        msg = "histogram has no variances: fill it with Weight storage (weighted_hist)"
        raise ValueError(msg)
    return np.asarray(h.values(), dtype=np.float64), np.asarray(var, dtype=np.float64)


def chi2_ndf(
    h1: hist.Hist | tuple[Any, Any],
    h2: hist.Hist | tuple[Any, Any],
    *,
    normalize: bool = False,
    ndf_reduction: int = 0,
) -> tuple[float, int]:
    """χ² between two histograms with independent per-bin errors, and its degrees of freedom.

    :math:`\\chi^2 = \\sum_i (a_i - b_i)^2 / (\\sigma_{a,i}^2 + \\sigma_{b,i}^2)` over bins where
    the summed variance is positive. With ``normalize`` both are scaled to unit sum first
    (variances scaled by the square; the normalisation's own correlation is neglected) and
    one degree of freedom is removed.

    Arguments:
        h1, h2: ``hist.Hist`` with Weight storage, or ``(values, variances)`` pairs.
        normalize: compare shapes only.
        ndf_reduction: further degrees of freedom to remove (fitted parameters).

    Returns:
        ``(chi2, ndf)``.
    """
    a, va = _vals_vars(h1)
    b, vb = _vals_vars(h2)
    if a.shape != b.shape:
        msg = f"histograms have different binnings: {a.shape} vs {b.shape}"
        raise ValueError(msg)
    if normalize:
        sa, sb = a.sum(), b.sum()
        a, va, b, vb = a / sa, va / sa**2, b / sb, vb / sb**2
    var = va + vb
    used = var > 0
    chi2 = float(((a[used] - b[used]) ** 2 / var[used]).sum())
    ndf = int(used.sum()) - ndf_reduction - int(normalize)
    return chi2, ndf
