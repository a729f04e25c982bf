r"""Pseudo-experiment calibration at known θ (bootstrap or disjoint parts): bias, pulls, coverage; toys."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.inference.fit import (
    CallableObjective,
    GridObjective,
    PerEventFn,
    fit,
)
from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.inference.scaleout import chunk_slices, map_chunks
from unfoldmem.inference.scan import CL_68, GridInterpolator, grid_axes

__all__ = [
    "CalibrationResult",
    "ExponentialToy",
    "GaussianToy",
    "LinearGaussianToy",
    "calibrate",
    "toy_likelihoods",
]


@dataclass
class ExponentialToy:
    r"""Decay times :math:`t_i`, :math:`\log P(t|\tau) = -\log\tau - t/\tau` (exact).

    ML estimate :math:`\hat\tau = \bar t`, Fisher information :math:`n/\tau^2` per sample.
    """

    t: Tensor

    def __call__(self, theta: Tensor) -> Tensor:
        return -torch.log(theta[0]) - self.t / theta[0]

    @classmethod
    def sample(cls, tau: float, n: int, seed: int) -> ExponentialToy:
        """n decay times at lifetime ``tau``."""
        g = torch.Generator().manual_seed(seed)
        return cls(-tau * torch.log1p(-torch.rand(n, generator=g, dtype=torch.float64)))


@dataclass
class GaussianToy:
    r"""Measurements :math:`x_i \sim N(\mu, s)`; :math:`\hat\mu = \bar x`, σ = s/√n (exact)."""

    x: Tensor
    s: float

    def __call__(self, theta: Tensor) -> Tensor:
        return -0.5 * ((self.x - theta[0]) / self.s) ** 2 - math.log(self.s * math.sqrt(2 * math.pi))

    @classmethod
    def sample(cls, mu: float, s: float, n: int, seed: int) -> GaussianToy:
        """n measurements at mean ``mu`` with resolution ``s``."""
        g = torch.Generator().manual_seed(seed)
        return cls(mu + s * torch.randn(n, generator=g, dtype=torch.float64), s)


@dataclass
class LinearGaussianToy:
    r"""Straight-line data :math:`y_i \sim N(a + b z_i, s)`: two correlated parameters (a, b).

    Covariance of (â, b̂): :math:`s^2 (Z^T Z)^{-1}` with rows :math:`(1, z_i)`; lnL is exactly
    quadratic, so −2ΔlnL contours are exact ellipses.
    """

    y: Tensor
    z: Tensor
    s: float

    def __call__(self, theta: Tensor) -> Tensor:
        r = (self.y - theta[0] - theta[1] * self.z) / self.s
        return -0.5 * r**2 - math.log(self.s * math.sqrt(2 * math.pi))

    @classmethod
    def sample(cls, a: float, b: float, s: float, n: int, seed: int) -> LinearGaussianToy:
        """n points with z ~ U(0, 2) (so â and b̂ are correlated)."""
        g = torch.Generator().manual_seed(seed)
        z = 2.0 * torch.rand(n, generator=g, dtype=torch.float64)
        return cls(a + b * z + s * torch.randn(n, generator=g, dtype=torch.float64), z, s)

    def covariance(self) -> Tensor:
        """(2, 2) exact covariance of the least-squares (= ML) estimate."""
        zz = torch.stack([torch.ones_like(self.z), self.z], -1)
        return self.s**2 * torch.linalg.inv(zz.T @ zz)


def toy_likelihoods(
    fn: PerEventFn, grid: dict[str, np.ndarray], mc_noise: float = 0.0, seed: int = 0
) -> PerEventLikelihoods:
    """Evaluate a per-event toy on the full product grid of ``grid`` (one axis per parameter).

    Arguments:
        fn: θ (P,) → (N,) exact per-event log P.
        grid: parameter name → 1D axis values; K = product of the axis lengths.
        mc_noise: standard deviation of Gaussian noise added to each log P (mimics MC error;
            ``log_p_err`` is set to it).
    """
    names = list(grid)
    mesh = np.meshgrid(*[np.asarray(grid[n], dtype=np.float64) for n in names], indexing="ij")
    pts = np.stack([m.ravel() for m in mesh], -1)
    with torch.no_grad():
        log_p = torch.stack([fn(torch.from_numpy(p)) for p in pts], -1)
    n, k = log_p.shape
    g = torch.Generator().manual_seed(seed)
    if mc_noise > 0:
        log_p = log_p + mc_noise * torch.randn(n, k, generator=g, dtype=torch.float64)
    return PerEventLikelihoods(
        theta_grid={name: torch.from_numpy(pts[:, i].copy()) for i, name in enumerate(names)},
        log_p=log_p, log_p_err=torch.full((n, k), float(mc_noise), dtype=torch.float64),
        weight=torch.ones(n, dtype=torch.float64), event_id=torch.arange(n),
        flag=torch.zeros(n, dtype=torch.int32),
    )


@dataclass
class CalibrationResult:
    """Fits of ``n_pseudo`` pseudo-experiments at known θ (arrays are (S, P), θ units)."""

    names: list[str]
    theta_true: np.ndarray
    estimates: np.ndarray
    errors: np.ndarray
    intervals: dict[float, np.ndarray]
    valid: np.ndarray
    n_events_mean: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pulls(self) -> np.ndarray:
        """(S, P) (θ̂ − θ_true)/σ̂_HESSE of the valid fits."""
        ok = self.valid
        return (self.estimates[ok] - self.theta_true) / self.errors[ok]

    def summary(self) -> dict[str, dict[str, float]]:
        """Per parameter: bias (and in units of σ), pull mean/width, coverage, each ± its error."""
        ok = self.valid
        s = int(ok.sum())
        out: dict[str, dict[str, float]] = {}
        for p, name in enumerate(self.names):
            est, pull = self.estimates[ok, p], self.pulls[:, p]
            sigma = float(np.mean(self.errors[ok, p]))
            width = float(np.std(pull, ddof=1))
            d = {
                "n_pseudo": s, "n_failed": int((~ok).sum()), "theta_true": float(self.theta_true[p]),
                "mean_estimate": float(est.mean()), "std_estimate": float(est.std(ddof=1)),
                "mean_hesse_error": sigma,
                "bias": float(est.mean() - self.theta_true[p]),
                "bias_err": float(est.std(ddof=1) / math.sqrt(s)),
                "bias_over_sigma": float((est.mean() - self.theta_true[p]) / sigma),
                "pull_mean": float(pull.mean()), "pull_mean_err": width / math.sqrt(s),
                "pull_width": width, "pull_width_err": width / math.sqrt(2 * (s - 1)),
            }
            for cl, iv in self.intervals.items():
                lo, hi = iv[ok, p, 0], iv[ok, p, 1]
                cover = (self.theta_true[p] >= lo) & (self.theta_true[p] <= hi)
                c = float(cover.mean())
                d[f"coverage_{cl:.4f}"] = c
                d[f"coverage_{cl:.4f}_err"] = math.sqrt(max(c * (1 - c), 1.0 / s) / s)
            out[name] = d
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary plus the per-pseudo-experiment estimates and errors."""
        return {"params": self.names, "theta_true": self.theta_true.tolist(),
                "n_events_mean": self.n_events_mean, "summary": self.summary(),
                "estimates": self.estimates.tolist(), "errors": self.errors.tolist(),
                "valid": self.valid.tolist(), **self.extra}


def _pseudo_chunk(args: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    source, weight, lam, seeds, cls, method, start = args
    p = len(source.names)
    est, err = np.full((len(seeds), p), np.nan), np.full((len(seeds), p), np.nan)
    iv = np.full((len(cls), len(seeds), p, 2), np.nan)
    valid = np.zeros(len(seeds), dtype=bool)
    nev = np.zeros(len(seeds))
    for j, s in enumerate(seeds):
        if isinstance(s, np.ndarray):  # a disjoint part: its events, each once
            w = np.zeros_like(weight)
            w[s] = weight[s]
        else:
            w = weight * np.random.default_rng(s).poisson(lam, size=len(weight))
        nev[j] = w.sum()
        if isinstance(source, CallableObjective):
            obj = CallableObjective(source.names, source.fn, torch.from_numpy(w), source.limits)
        else:
            obj = GridObjective(source.names, GridInterpolator(source.axes, torch.from_numpy(
                np.tensordot(w, source.log_p, axes=1))))
        res = fit(obj, start, method=method, minos_cls=cls)
        est[j], err[j], valid[j] = res.values, res.errors, res.valid and np.all(res.errors > 0)
        bounds = obj.bounds or [(-np.inf, np.inf)] * p
        for c, cl in enumerate(cls):
            for q, name in enumerate(source.names):
                lo, hi = res.minos[name].get(cl, (None, None))
                # an end MINOS could not place lies at the grid edge (open interval)
                iv[c, j, q] = (bounds[q][0] if lo is None else est[j, q] + lo,
                               bounds[q][1] if hi is None else est[j, q] + hi)
    return est, err, iv, valid, nev


@dataclass
class _GridSource:
    names: list[str]
    axes: list[np.ndarray]
    log_p: np.ndarray  # (N, n_1, ..., n_P) good events only


def calibrate(
    source: PerEventLikelihoods | CallableObjective,
    theta_true: dict[str, float],
    n_pseudo: int = 200,
    n_events: float | None = None,
    *,
    seed: int = 0,
    cls: tuple[float, ...] = (CL_68, 0.95),
    method: str = "minuit",
    chunk_size: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    disjoint: bool = False,
) -> CalibrationResult:
    r"""Fit ``n_pseudo`` Poisson-bootstrap pseudo-experiments of a sample simulated at θ_true.

    Pseudo-experiment b reweights event i by :math:`w_i\,k_{ib}`, :math:`k_{ib}\sim
    \mathrm{Poisson}(\lambda)`, :math:`\lambda = n_\text{events}/N` (default 1/10 of the
    sample). Keep λ small: pseudo-experiments share events, which correlates them at
    :math:`\approx\lambda`, so the mean estimate scatters around θ_true by about
    :math:`\sigma\sqrt{\lambda + 1/n_\text{pseudo}}`. Each pseudo is fitted (:func:`fit`, HESSE
    errors for pulls, MINOS at ``cls`` for coverage); seeds are spawned per pseudo-experiment,
    so results do not depend on chunking or on the Dask executor.

    ``disjoint=True`` instead splits a seeded permutation of the (good) events into
    ``n_pseudo`` parts of equal size (``n_events`` is then ignored; the remainder is unused):
    the pseudo-experiments are independent, so the mean estimate scatters by
    :math:`\sigma/\sqrt{n_\text{pseudo}}` only, and the pool's own fluctuation cannot fake a
    bias.

    Arguments:
        source: per-event likelihoods on a grid (interpolated fits) or an exact callable.
        theta_true: the θ the events were simulated at.
        n_events: expected events per pseudo-experiment.

    References:
        B. Efron, *Bootstrap methods*, Ann. Statist. 7 (1979) 1; Poisson bootstrap:
        Hanley & MacGibbon, Comput. Meth. Prog. Biomed. 83 (2006) 57.
    """
    names = source.names
    missing = [n for n in names if n not in theta_true]
    if missing:
        msg = f"theta_true needs a value for each parameter {names}; missing {missing}"
        raise ValueError(msg)
    if isinstance(source, PerEventLikelihoods):
        ok = source.ok()
        axes, index = grid_axes(ok.theta_grid)
        src: Any = _GridSource(names, axes, ok.log_p.numpy()[:, index])
        weight = ok.weight.numpy()
    else:
        src, weight = source, source.weight.numpy()
    lam = (0.1 * len(weight) if n_events is None else n_events) / len(weight)
    seeds: list[Any] = list(np.random.SeedSequence(seed).spawn(n_pseudo))
    if disjoint:
        size = len(weight) // n_pseudo
        if size < 1:
            msg = f"disjoint calibration: {len(weight)} events cannot make {n_pseudo} parts"
            raise ValueError(msg)
        perm = np.random.default_rng(seed).permutation(len(weight))
        seeds = [np.sort(perm[j * size : (j + 1) * size]) for j in range(n_pseudo)]
        lam = size / len(weight)
    # the grid centre starts grid fits; an unbounded callable starts at θ_true
    start = None if isinstance(source, PerEventLikelihoods) else dict(theta_true)
    items = [(src, weight, lam, seeds[s], cls, method, start)
             for s in chunk_slices(n_pseudo, chunk_size)]
    parts = map_chunks(_pseudo_chunk, items, scheduler, workers, client)
    est, err, iv, valid, nev = (np.concatenate([pt[i] for pt in parts], axis=1 if i == 2 else 0)
                                for i in range(5))
    return CalibrationResult(names, np.array([theta_true[n] for n in names]), est, err,
                             {cl: iv[c] for c, cl in enumerate(cls)}, valid, float(nev.mean()),
                             {"lambda": lam, "seed": seed, "method": method,
                              "disjoint": disjoint})
