r"""Likelihood scans: summed per-event log L on the θ grid, spline-interpolated −2ΔlnL, intervals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.optimize import brentq, minimize, minimize_scalar
from scipy.stats import chi2
from torch import Tensor

from unfoldmem.errors import InputFileError
from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.inference.scaleout import chunk_slices, map_chunks

__all__ = [
    "CL_68",
    "GridInterpolator",
    "Scan1D",
    "Scan2D",
    "SplineBasis",
    "delta_chi2",
    "grid_axes",
    "scan",
    "summed_log_likelihood",
]

_THETA = "tree Theta"

CL_68 = float(chi2.cdf(1.0, 1))
"""0.6827: the "1σ" confidence level."""


def delta_chi2(cl: float, ndof: int) -> float:
    """The −2ΔlnL threshold of a ``cl`` interval/region in ``ndof`` parameters (Wilks).

    1.00 / 3.84 for 68.27 % / 95 % in 1D, 2.30 / 5.99 in 2D.
    """
    return float(chi2.ppf(cl, ndof))


class SplineBasis:
    r"""Not-a-knot cubic spline on fixed knots, written as a linear map of the knot values.

    :math:`s(t) = \sum_k w_k(t)\, y_k`; the weights come from ``scipy.interpolate.CubicSpline``
    applied to the identity, so ``s`` equals scipy's spline and is differentiable in ``t``
    (torch). Not-a-knot reproduces cubics exactly, so a parabolic −2lnL is interpolated exactly.

    Arguments:
        knots: (K,) strictly increasing grid values, K ≥ 2.
    """

    def __init__(self, knots: np.ndarray | Tensor) -> None:
        knots = np.asarray(knots, dtype=np.float64)
        if knots.ndim != 1 or len(knots) < 2 or np.any(np.diff(knots) <= 0):
            msg = f"spline knots must be >= 2 strictly increasing values, got {knots}"
            raise ValueError(msg)
        self.knots_np = knots
        self.knots = torch.from_numpy(knots)
        k = len(knots)
        coef = CubicSpline(knots, np.eye(k), axis=0).c if k > 2 else None
        if coef is None:  # two knots: a straight line
            coef = np.zeros((4, 1, 2))
            coef[2, 0] = np.array([-1.0, 1.0]) / (knots[1] - knots[0])
            coef[3, 0] = np.array([1.0, 0.0])
        elif coef.shape[0] < 4:  # CubicSpline on 3 knots may return a lower-order polynomial
            coef = np.concatenate([np.zeros((4 - coef.shape[0], *coef.shape[1:])), coef])
        self.coef_np = np.ascontiguousarray(coef)
        self.coef = torch.from_numpy(self.coef_np)

    def weights_np(self, t: np.ndarray | float) -> np.ndarray:
        """Like :meth:`weights` in numpy (no autograd; quicker for the scan's root finding)."""
        t = np.asarray(t, dtype=np.float64)
        i = np.clip(np.searchsorted(self.knots_np, t, side="right") - 1, 0, len(self.knots_np) - 2)
        dt = (t - self.knots_np[i])[..., None]
        c = self.coef_np[:, i, :]
        return ((c[0] * dt + c[1]) * dt + c[2]) * dt + c[3]

    def weights(self, t: Tensor) -> Tensor:
        """(..., K) weights at points ``t`` (...,); outside the knots the end cubic extrapolates."""
        t = torch.as_tensor(t, dtype=torch.float64)
        i = torch.searchsorted(self.knots, t.detach(), right=True) - 1
        i = i.clamp(0, len(self.knots) - 2)
        dt = (t - self.knots[i])[..., None]
        c = self.coef[:, i, :]
        return ((c[0] * dt + c[1]) * dt + c[2]) * dt + c[3]


class GridInterpolator:
    """Tensor-product not-a-knot cubic spline of values on a rectilinear θ grid (torch).

    Arguments:
        axes: P arrays of knots, one per parameter.
        values: (..., n_1, ..., n_P) values on the grid; leading dims are batch (e.g. events).
    """

    def __init__(self, axes: list[np.ndarray], values: Tensor) -> None:
        self.bases = [SplineBasis(a) for a in axes]
        self.values = torch.as_tensor(values, dtype=torch.float64)
        if tuple(self.values.shape[-len(axes):]) != tuple(len(a) for a in axes):
            msg = f"values shape {tuple(self.values.shape)} does not end in the grid shape"
            raise ValueError(msg)

    def __call__(self, theta: Tensor) -> Tensor:
        """Interpolated values (...,) at ``theta`` (P,), differentiable in ``theta``."""
        out = self.values
        for d in reversed(range(len(self.bases))):
            out = (out * self.bases[d].weights(theta[d])).sum(-1)
        return out

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """(lo, hi) of the grid in each parameter."""
        return [(float(b.knots_np[0]), float(b.knots_np[-1])) for b in self.bases]


def grid_axes(theta_grid: dict[str, Tensor]) -> tuple[list[np.ndarray], np.ndarray]:
    """The axes of a rectilinear grid and, for each axis-index tuple, the flat point index.

    Returns:
        axes: P sorted unique value arrays; index: (n_1, ..., n_P) int array of grid point ids.

    Raises:
        InputFileError: the grid is not a full rectilinear product (each combination once).
    """
    names = list(theta_grid)
    values = [theta_grid[n].numpy() for n in names]
    axes = [np.unique(v) for v in values]
    shape = tuple(len(a) for a in axes)
    index = np.full(shape, -1, dtype=np.int64)
    pos = tuple(np.searchsorted(a, v) for a, v in zip(axes, values, strict=True))
    index[pos] = np.arange(len(values[0]))
    if int(np.prod(shape)) != len(values[0]) or np.any(index < 0):
        msg = (
            f"θ grid over {names} is not a full rectilinear grid: {len(values[0])} points, "
            f"axes of sizes {list(shape)} (each combination must appear exactly once)"
        )
        raise InputFileError(_THETA, msg)
    return axes, index


def _chunk_sum(args: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    log_p, log_p_err, weight = args
    return weight @ log_p, (weight**2) @ (log_p_err**2)


def summed_log_likelihood(
    lik: PerEventLikelihoods,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
) -> tuple[Tensor, Tensor]:
    r"""Weighted sum over good events of log P(x_i|θ_k), and its MC variance.

    :math:`\ln L_k = \sum_i w_i \log P_{ik}`, :math:`\mathrm{Var}_k = \sum_i w_i^2 \delta_{ik}^2`
    (events' integrals are independent). Flagged events (``flag != 0``) are left out.
    Chunks run locally or on Dask (:mod:`unfoldmem.inference.scaleout`), partial sums added in
    chunk order, so the result does not depend on the executor.

    Returns:
        lnL: (K,) float64; var: (K,) float64.
    """
    ok = lik.ok()
    lp, err, w = ok.log_p.numpy(), ok.log_p_err.numpy(), ok.weight.numpy()
    items = [(lp[s], err[s], w[s]) for s in chunk_slices(len(w), chunk_size)]
    parts = map_chunks(_chunk_sum, items, scheduler, workers, client)
    total, var = np.zeros(lik.n_points), np.zeros(lik.n_points)
    for s, v in parts:
        total, var = total + s, var + v
    return torch.from_numpy(total), torch.from_numpy(var)


def _profile(lnl_grid: np.ndarray, keep: list[int]) -> np.ndarray:
    drop = tuple(d for d in range(lnl_grid.ndim) if d not in keep)
    out = lnl_grid.max(axis=drop) if drop else lnl_grid
    return out if keep == sorted(keep) else out.T


def _interval(f: Any, xs: np.ndarray, ys: np.ndarray, x_hat: float, q: float):
    """Crossings of f = q either side of x_hat, bracketed on the tabulated (xs, ys = f(xs)) and
    refined with Brent's method; None where f stays below q up to the grid edge."""
    j0 = int(np.clip(np.searchsorted(xs, x_hat), 0, len(xs) - 1))
    out: list[float | None] = []
    for side in (-1, 1):
        idx = np.arange(j0, -1, -1) if side < 0 else np.arange(j0, len(xs))
        above = idx[ys[idx] > q]
        if len(above) == 0:
            out.append(None)
            continue
        j = int(above[0])
        a, b = (xs[j], min(xs[j + 1], x_hat)) if side < 0 else (max(xs[j - 1], x_hat), xs[j])
        if not f(a) - q < 0 < f(b) - q and not f(b) - q < 0 < f(a) - q:
            out.append(float(xs[j]))
            continue
        out.append(float(brentq(lambda x: f(x) - q, a, b, xtol=1e-12)))
    return out[0], out[1]


@dataclass
class Scan1D:
    """A 1D −2ΔlnL scan: grid points, spline, minimum and intervals (θ units).

    ``intervals[cl] = (lo, hi)``, an end is ``None`` where the curve stays below the threshold
    up to the grid edge. ``mc_error`` holds the MC-integration standard error of ``theta_hat``
    and of the interval ends from replicas of the scan (see :func:`scan`).
    """

    name: str
    theta: np.ndarray
    m2dlnl: np.ndarray
    theta_hat: float
    lnl_max: float
    intervals: dict[float, tuple[float | None, float | None]]
    mc_error: dict[str, float] = field(default_factory=dict)
    n_events: int = 0
    n_flagged: int = 0

    def curve(self, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
        """(x, −2ΔlnL) of the interpolating spline on ``n`` points across the grid."""
        x = np.linspace(self.theta[0], self.theta[-1], n)
        return x, _spline_eval(self.theta, self.m2dlnl, x)

    @property
    def sigma(self) -> float:
        """Half width of the 68 % interval (NaN if open)."""
        lo, hi = self.intervals[CL_68]
        return float("nan") if lo is None or hi is None else 0.5 * (hi - lo)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "param": self.name, "theta_hat": self.theta_hat, "sigma": self.sigma,
            "lnL_max": self.lnl_max, "n_events": self.n_events, "n_flagged": self.n_flagged,
            "intervals": {f"{cl:.4f}": list(v) for cl, v in self.intervals.items()},
            "mc_error": self.mc_error, "grid": self.theta.tolist(), "m2dlnL": self.m2dlnl.tolist(),
            "interpolation": "not-a-knot cubic spline of the summed lnL",
        }


def _spline_eval(knots: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return SplineBasis(knots).weights_np(x) @ y


def _scan1d_core(x: np.ndarray, lnl: np.ndarray, cls: tuple[float, ...],
                 basis: SplineBasis | None = None, wf: np.ndarray | None = None):
    basis = basis or SplineBasis(x)
    fine = np.linspace(x[0], x[-1], 4001)
    if wf is None:
        wf = basis.weights_np(fine)
    neg = -2.0 * (wf @ lnl)
    j = int(np.argmin(neg))
    a, b = fine[max(j - 1, 0)], fine[min(j + 1, len(fine) - 1)]

    def f(t: float) -> float:
        return float(-2.0 * (basis.weights_np(float(t)) @ lnl))

    res = minimize_scalar(f, bounds=(a, b), method="bounded",
                          options={"xatol": 1e-10 * max(1.0, abs(x[-1] - x[0]))})
    t_hat, m_min = float(res.x), float(res.fun)
    if neg[j] < m_min:  # minimum at a grid edge
        t_hat, m_min = float(fine[j]), float(neg[j])
    intervals = {cl: _interval(lambda t: f(t) - m_min, fine, neg - m_min, t_hat,
                               delta_chi2(cl, 1)) for cl in cls}
    return t_hat, m_min, intervals


@dataclass
class Scan2D:
    """A 2D −2ΔlnL scan: grid, spline surface, minimum, contours and profiled 1D intervals.

    ``contours[cl]`` is a list of (M, 2) polylines at −2ΔlnL = χ²₂ quantile (2.30, 5.99);
    ``profile_intervals[name][cl]`` the 1D profile-likelihood interval of each parameter.
    """

    names: tuple[str, str]
    axes: tuple[np.ndarray, np.ndarray]
    m2dlnl: np.ndarray
    theta_hat: tuple[float, float]
    lnl_max: float
    contours: dict[float, list[np.ndarray]]
    profile_intervals: dict[str, dict[float, tuple[float | None, float | None]]]
    mc_error: dict[str, float] = field(default_factory=dict)
    n_events: int = 0
    n_flagged: int = 0
    fine: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "params": list(self.names), "theta_hat": list(self.theta_hat),
            "lnL_max": self.lnl_max, "n_events": self.n_events, "n_flagged": self.n_flagged,
            "profile_intervals": {n: {f"{cl:.4f}": list(v) for cl, v in d.items()}
                                  for n, d in self.profile_intervals.items()},
            "contours": {f"{cl:.4f}": [c.tolist() for c in cs] for cl, cs in self.contours.items()},
            "mc_error": self.mc_error,
            "interpolation": "tensor-product not-a-knot cubic spline of the summed lnL",
        }


def _scan2d_core(axes: list[np.ndarray], lnl: np.ndarray, n_fine: int = 201):
    interp = GridInterpolator(axes, torch.from_numpy(-2.0 * lnl))
    fx, fy = (np.linspace(a[0], a[-1], n_fine) for a in axes)
    wx = interp.bases[0].weights_np(fx)
    wy = interp.bases[1].weights_np(fy)
    surf = wx @ (-2.0 * lnl) @ wy.T
    i, j = np.unravel_index(int(np.argmin(surf)), surf.shape)

    def fg(p: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(p, dtype=torch.float64, requires_grad=True)
        v = interp(t)
        (g,) = torch.autograd.grad(v, t)
        return float(v.detach()), g.numpy()

    res = minimize(fg, np.array([fx[i], fy[j]]), jac=True, method="L-BFGS-B",
                   bounds=[(a[0], a[-1]) for a in axes], options={"ftol": 1e-14, "gtol": 1e-10})
    return (float(res.x[0]), float(res.x[1])), float(res.fun), (fx, fy, surf - float(res.fun))


def scan(
    lik: PerEventLikelihoods,
    params: list[str] | None = None,
    *,
    cls: tuple[float, ...] = (CL_68, 0.95),
    n_replicas: int = 50,
    seed: int = 0,
    chunk_size: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    smooth_degree: int | None = None,
) -> Scan1D | Scan2D:
    r"""−2ΔlnL scan over one or two parameters of the grid (others profiled on the grid).

    The summed :math:`\ln L_k` (:func:`summed_log_likelihood`) is interpolated with a not-a-knot
    cubic spline (tensor product in 2D); the minimum is found on the spline, and intervals are
    where :math:`-2\Delta\ln L` crosses the χ² quantile (Wilks' theorem; 1.00 and 3.84 in 1D,
    contours at 2.30 and 5.99 in 2D). MC error: ``n_replicas`` copies of the scan with
    :math:`\ln L_k` shifted by independent Gaussians of variance :math:`\sum_i w_i^2\delta_{ik}^2`
    (errors taken uncorrelated across grid points, conservative for common random numbers).

    Arguments:
        lik: per-event likelihoods on a rectilinear grid.
        params: one or two parameter names (default: all, which must be one or two).
        smooth_degree: first replace each event's values by its least-squares polynomial of
            this degree (1-D grids; :func:`unfoldmem.inference.smoothing.smooth_grid`): for
            MC-noisy per-event values, which the spline would otherwise interpolate.

    Raises:
        InputFileError: a parameter not in the grid, or a grid that is not rectilinear.
    """
    if smooth_degree is not None:
        from unfoldmem.inference.smoothing import smooth_grid

        lik = smooth_grid(lik, smooth_degree)
    names = lik.names
    params = list(params or names)
    for p in params:
        if p not in names:
            raise InputFileError(_THETA, f"no parameter '{p}'; parameters: {names}")
    if len(params) not in (1, 2):
        msg = f"scan takes one or two parameters, got {params}; use --param to choose"
        raise InputFileError(_THETA, msg)
    axes, index = grid_axes(lik.theta_grid)
    lnl, var = summed_log_likelihood(lik, chunk_size, scheduler, workers)
    keep = [names.index(p) for p in params]
    lnl_g = _profile(lnl.numpy()[index], keep)
    sd = np.sqrt(var.numpy())[index]
    rng = np.random.default_rng(seed)
    do_mc = n_replicas > 1 and float(sd.max()) > 0
    meta = {"n_events": lik.n_events - lik.n_flagged, "n_flagged": lik.n_flagged}
    if len(params) == 1:
        x = axes[keep[0]]
        t_hat, m_min, intervals = _scan1d_core(x, lnl_g, cls)
        mc: dict[str, float] = {}
        if do_mc:
            basis = SplineBasis(x)
            wf = basis.weights_np(np.linspace(x[0], x[-1], 4001))
            reps = [_scan1d_core(x, _profile(lnl.numpy()[index] + rng.normal(0, sd), keep), cls,
                                 basis, wf) for _ in range(n_replicas)]
            mc["theta_hat"] = float(np.std([r[0] for r in reps], ddof=1))
            for cl in cls:
                for side, k in (("lo", 0), ("hi", 1)):
                    ends = [r[2][cl][k] for r in reps if r[2][cl][k] is not None]
                    if len(ends) > 1:
                        mc[f"{side}_{cl:.4f}"] = float(np.std(ends, ddof=1))
        return Scan1D(params[0], x, -2.0 * lnl_g - m_min, t_hat, -0.5 * m_min, intervals, mc,
                      **meta)
    ax2 = [axes[k] for k in keep]
    t_hat2, m_min, fine = _scan2d_core(ax2, lnl_g)
    import contourpy

    gen = contourpy.contour_generator(fine[0], fine[1], fine[2].T)
    contours = {cl: [np.asarray(c) for c in gen.lines(delta_chi2(cl, 2))] for cl in cls}
    prof: dict[str, dict[float, tuple[float | None, float | None]]] = {}
    for d, name in enumerate(params):
        xs, prof_y = fine[d], fine[2].min(axis=1 - d)
        t0 = float(xs[int(np.argmin(prof_y))])
        prof[name] = {cl: _interval(lambda t, xs=xs, y=prof_y: float(np.interp(t, xs, y)), xs,
                                    prof_y, t0, delta_chi2(cl, 1)) for cl in cls}
    mc2: dict[str, float] = {}
    if do_mc:
        reps2 = [_scan2d_core(ax2, _profile(lnl.numpy()[index] + rng.normal(0, sd), keep), 41)[0]
                 for _ in range(n_replicas)]
        for d, name in enumerate(params):
            mc2[f"theta_hat_{name}"] = float(np.std([r[d] for r in reps2], ddof=1))
    return Scan2D((params[0], params[1]), (ax2[0], ax2[1]), -2.0 * lnl_g - m_min, t_hat2,
                  -0.5 * m_min, contours, prof, mc2, fine=fine, **meta)
