r"""Smooth per-event log P(θ): a least-squares polynomial through the noisy grid values.

Monte-Carlo integration noise on each grid value of log P(x_i|θ_k) makes a spline *through*
the points wrong: it interpolates the noise, so the curvature (the information) and the fitted
θ follow MC kinks (tt̄ MEM, 512 samples: pull width 3.0, Fisher × Var(θ̂) 0.4). Here each
event's K values are replaced by the least-squares polynomial of degree d in the standardised
parameter, evaluated on the grid. With d ≤ 3 the not-a-knot spline of the scans and fits
(:class:`~unfoldmem.inference.scan.SplineBasis`) reproduces that polynomial exactly, so
:func:`~unfoldmem.inference.fit.grid_objective`, :func:`~unfoldmem.inference.calibration.calibrate`
and the Fisher information all see the smooth model without further change.

The degree is a bias–variance choice. :func:`select_degree` takes the smallest d whose pooled
residual χ² (over all events, against the MC standard deviation of one grid value) is
compatible with its degrees of freedom; a degree the events' likelihood shape needs leaves a
χ² excess, while fitting MC noise does not lower χ² below its expectation. The noise is
``log_p_err`` where finite, else a (K,) standard deviation the caller measured (e.g. from two
runs with different seeds: std of the difference / √2).

Example::

    smooth = smooth_grid(lik, degree=select_degree(lik, noise=0.6))
    res = fit(grid_objective(smooth))

References:
    | least squares with a χ² goodness-of-fit test for the degree: G. Cowan, *Statistical Data
      Analysis* (1998), §7.4–7.5
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.mem.integrand import FLAG_ZERO_INTEGRAL

__all__ = ["residual_chi2", "select_degree", "smooth_grid"]


def _axis(lik: PerEventLikelihoods) -> np.ndarray:
    if len(lik.names) != 1:
        msg = f"polynomial smoothing needs a 1-D θ grid, got parameters {lik.names}"
        raise ValueError(msg)
    t = lik.theta_grid[lik.names[0]].numpy()
    return (t - t.mean()) / (t.std() if len(t) > 1 else 1.0)


def _fit(lik: PerEventLikelihoods, degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K) smoothed values, the (N,) mask of finite rows, and the (N,) mask of zero-estimate
    events (flag 3) refitted on their finite points."""
    x = _axis(lik)
    if not 0 <= degree < len(x):
        msg = f"polynomial degree must be in [0, {len(x) - 1}] for {len(x)} grid points"
        raise ValueError(msg)
    y = lik.log_p.numpy()
    fin = np.isfinite(y)
    good = fin.all(1)
    out = y.copy()
    basis = np.vander(x, degree + 1, increasing=True)  # (K, d+1)
    if good.any():
        coef, *_ = np.linalg.lstsq(basis, y[good].T, rcond=None)
        out[good] = (basis @ coef).T
    # every sample missing at a few (edge) points is a small P there, not a reason to drop
    # the event: dropping would select events on their θ-compatibility
    repair = (lik.flag.numpy() == FLAG_ZERO_INTEGRAL) & ~good & (fin.sum(1) >= degree + 2)
    for i in np.nonzero(repair)[0]:
        coef, *_ = np.linalg.lstsq(basis[fin[i]], y[i, fin[i]], rcond=None)
        out[i] = basis @ coef
    return out, good, repair


def smooth_grid(lik: PerEventLikelihoods,
                degree: int | np.ndarray | Tensor = 2) -> PerEventLikelihoods:
    """``lik`` with each event's log P replaced by its least-squares polynomial on the grid.

    Arguments:
        lik: per-event likelihoods on a 1-D grid of K > ``degree`` points.
        degree: polynomial degree in the standardised parameter (≤ 3 keeps the grid spline
            equal to the polynomial), one for all events or (N,) per event (e.g.
            :func:`select_degree` with ``per_event=True``).

    Returns:
        A new :class:`PerEventLikelihoods`. An event with a zero estimate (−inf, flag 3) at
        some points but ≥ degree + 2 finite ones is fitted on those and its flag cleared;
        other events with a non-finite value are left as they are (flag kept).
        ``log_p_err`` is kept.
    """
    degs = np.broadcast_to(np.asarray(degree, dtype=np.int64), (lik.n_events,))
    out = lik.log_p.numpy().copy()
    repair = np.zeros(lik.n_events, dtype=bool)
    for d in np.unique(degs):
        out_d, _, rep_d = _fit(lik, int(d))
        rows = degs == d
        out[rows], repair[rows] = out_d[rows], rep_d[rows]
    flag = torch.where(torch.from_numpy(repair), 0, lik.flag).to(torch.int32)
    return PerEventLikelihoods(**{**lik.__dict__, "log_p": torch.from_numpy(out), "flag": flag})


def _noise(lik: PerEventLikelihoods, noise: float | Tensor | np.ndarray | None) -> np.ndarray:
    if noise is None:
        err = lik.log_p_err.numpy()
        if not np.isfinite(err[(lik.flag == 0).numpy()]).all():
            msg = "log_p_err is not finite (fixed-sample grid): pass the MC noise explicitly"
            raise ValueError(msg)
        return err
    return np.broadcast_to(np.asarray(noise, dtype=np.float64), lik.log_p.shape)


def residual_chi2(lik: PerEventLikelihoods, degree: int,
                  noise: float | Tensor | np.ndarray | None = None) -> tuple[float, int]:
    """Pooled χ² of the degree-``degree`` fits over the good events, and its degrees of freedom.

    Arguments:
        noise: MC standard deviation of one log P value: scalar, (K,) or (N, K); None uses
            ``lik.log_p_err``.
    """
    out, good, _ = _fit(lik, degree)
    ok = good & (lik.flag == 0).numpy()
    sig = _noise(lik, noise)
    r = (lik.log_p.numpy()[ok] - out[ok]) / sig[ok]
    return float((r**2).sum()), int(ok.sum()) * (lik.log_p.shape[1] - degree - 1)


def _rss(y: np.ndarray, x: np.ndarray, degree: int) -> float:
    basis = np.vander(x, degree + 1, increasing=True)
    coef, *_ = np.linalg.lstsq(basis, y.T, rcond=None)
    return float(((y - (basis @ coef).T) ** 2).sum())


def _per_event(lik: PerEventLikelihoods, min_degree: int, max_degree: int,
               alpha: float) -> np.ndarray:
    from scipy.stats import f as f_dist

    x = _axis(lik)
    y = lik.log_p.numpy()
    r = lik.log_p_noise.numpy() if lik.log_p_noise is not None else None
    if r is None:
        msg = "per-event degrees need a noise replica (log_p_noise)"
        raise ValueError(msg)
    rows = np.isfinite(y).all(1) & np.isfinite(r).all(1)
    out = np.full(len(y), max_degree, dtype=np.int64)
    open_ = rows.copy()
    for d in range(min_degree, max_degree):
        basis = np.vander(x, d + 1, increasing=True)
        proj = basis @ np.linalg.pinv(basis)  # (K, K) least-squares hat matrix
        ry = ((y[open_] - y[open_] @ proj.T) ** 2).sum(1)
        rr = ((r[open_] - r[open_] @ proj.T) ** 2).sum(1)
        ndf = len(x) - d - 1
        accept = ry <= f_dist.ppf(1 - alpha, ndf, ndf) * np.maximum(rr, 1e-300)
        idx = np.nonzero(open_)[0]
        out[idx[accept]] = d
        open_[idx[accept]] = False
    return out


def select_degree(lik: PerEventLikelihoods, noise: float | Tensor | np.ndarray | None = None,
                  max_degree: int = 4, n_sigma: float = 3.0, *, per_event: bool = False,
                  min_degree: int = 0, alpha: float = 0.01) -> Any:
    """The smallest polynomial degree that leaves no more than MC noise in the residuals
    (``max_degree`` if none does).

    ``per_event=True`` (needs ``lik.log_p_noise``): an (N,) array, each event's smallest
    degree ≥ ``min_degree`` whose residual sum of squares over its replica's (same degree) is
    below the F(ndf, ndf) quantile 1 − ``alpha``: the event's own noise is the yardstick, so
    a shape term is kept only where that event resolves it.

    With a noise replica (``lik.log_p_noise``, e.g. from
    :func:`~unfoldmem.inference.hypothesis_grid.hypothesis_grid_likelihoods`) and ``noise``
    None: the pooled residual sum of squares of the values and of the replica, fitted alike,
    must agree within ``n_sigma`` · 2/√ndf (each is a sum of ndf squares); the replica has the
    noise's correlation across θ (common random numbers), which a per-point error misses.
    Otherwise the pooled χ² against ``noise`` / ``log_p_err`` (:func:`residual_chi2`) must be
    within ``n_sigma`` · √(2 ndf) of ndf.
    """
    top = min(max_degree, lik.log_p.shape[1] - 2)
    if per_event:
        return _per_event(lik, min_degree, top, alpha)
    if noise is None and lik.log_p_noise is not None:
        x = _axis(lik)
        y, r = lik.log_p.numpy(), lik.log_p_noise.numpy()
        rows = np.isfinite(y).all(1) & np.isfinite(r).all(1) & (lik.flag.numpy() == 0)
        for d in range(min_degree, top + 1):
            ndf = int(rows.sum()) * (len(x) - d - 1)
            if _rss(y[rows], x, d) <= _rss(r[rows], x, d) * (1 + 2 * n_sigma / math.sqrt(ndf)):
                return d
        return max_degree
    for d in range(min_degree, top + 1):
        chi2, ndf = residual_chi2(lik, d, noise)
        if chi2 <= ndf + n_sigma * math.sqrt(2 * ndf):
            return d
    return max_degree
