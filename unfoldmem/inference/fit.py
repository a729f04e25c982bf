r"""Maximum-likelihood fits of θ: torch-autograd gradients, iminuit MIGRAD + HESSE + MINOS."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unfoldmem.inference.likelihood_file import PerEventLikelihoods
from unfoldmem.inference.scan import CL_68, GridInterpolator, grid_axes, summed_log_likelihood

__all__ = [
    "CallableObjective",
    "FitResult",
    "GridObjective",
    "callable_objective",
    "fit",
    "grid_objective",
    "per_event_grid_function",
]

PerEventFn = Callable[[Tensor], Tensor]
"""θ (P,) float64 → per-event log P(x_i|θ) (N,), differentiable in θ (the MEM's Python API)."""


@dataclass
class GridObjective:
    """Summed lnL(θ) interpolated on the grid (tensor-product not-a-knot spline); torch.

    Calling it with θ (P,) returns the scalar lnL, differentiable in θ.
    """

    names: list[str]
    interp: GridInterpolator

    def __call__(self, theta: Tensor) -> Tensor:
        return self.interp(theta)

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """The grid range of each parameter (fits stay inside it)."""
        return self.interp.bounds


@dataclass
class CallableObjective:
    r"""Summed lnL(θ) = Σ_i w_i log P(x_i|θ) from a per-event callable (exact, no grid)."""

    names: list[str]
    fn: PerEventFn
    weight: Tensor
    limits: list[tuple[float, float]] | None = None

    def __call__(self, theta: Tensor) -> Tensor:
        return (self.weight * self.fn(theta)).sum()

    @property
    def bounds(self) -> list[tuple[float, float]] | None:
        """Parameter limits given by the user, or None (unbounded)."""
        return self.limits


def grid_objective(
    lik: PerEventLikelihoods, weight: Tensor | None = None, **sum_kwargs: Any
) -> GridObjective:
    """The interpolated summed lnL of ``lik`` (good events), optionally with replaced weights.

    Arguments:
        lik: per-event likelihoods on a rectilinear grid.
        weight: (N,) weights replacing ``lik.weight`` (a bootstrap, say); None keeps them.
        sum_kwargs: chunk_size / scheduler / workers for :func:`summed_log_likelihood`.
    """
    if weight is not None:
        lik = PerEventLikelihoods(**{**lik.__dict__, "weight": weight})
    axes, index = grid_axes(lik.theta_grid)
    lnl, _ = summed_log_likelihood(lik, **sum_kwargs)
    return GridObjective(lik.names, GridInterpolator(axes, lnl[torch.from_numpy(index)]))


def per_event_grid_function(lik: PerEventLikelihoods) -> PerEventFn:
    """θ (P,) → (N,) per-event log P interpolated on the grid (every event, flags included)."""
    axes, index = grid_axes(lik.theta_grid)
    return GridInterpolator(axes, lik.log_p[:, torch.from_numpy(index)])


def callable_objective(
    fn: PerEventFn,
    names: list[str],
    weight: Tensor | None = None,
    limits: list[tuple[float, float]] | None = None,
    n_events: int | None = None,
) -> CallableObjective:
    """Summed lnL from a per-event callable; ``weight`` (N,) defaults to ones (needs n_events)."""
    if weight is None:
        if n_events is None:
            msg = "give weight or n_events"
            raise ValueError(msg)
        weight = torch.ones(n_events, dtype=torch.float64)
    return CallableObjective(list(names), fn, torch.as_tensor(weight, dtype=torch.float64), limits)


@dataclass
class FitResult:
    """A maximum-likelihood fit: estimate, uncertainties and correlations (θ units).

    ``errors``: HESSE (√diag of the inverse Hessian of −lnL); ``covariance_autodiff``: the inverse
    of the torch-autograd Hessian; ``minos[name][cl] = (lower, upper)`` signed profile-likelihood
    errors (lower < 0), ``None`` where MINOS failed or the bound was hit. ``valid`` is false when
    MIGRAD failed or the estimate sits on a grid edge.
    """

    names: list[str]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    covariance_autodiff: np.ndarray
    correlation: np.ndarray
    minos: dict[str, dict[float, tuple[float | None, float | None]]]
    nll_min: float
    valid: bool
    method: str
    n_calls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, name: str) -> float:
        """The estimate of ``name``."""
        return float(self.values[self.names.index(name)])

    def error(self, name: str) -> float:
        """The HESSE error of ``name``."""
        return float(self.errors[self.names.index(name)])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "method": self.method, "valid": self.valid, "nll_min": self.nll_min,
            "n_calls": self.n_calls,
            "params": {n: {"value": float(v), "hesse": float(e),
                           "minos": {f"{cl:.4f}": list(m) for cl, m in self.minos.get(n, {}).items()}}
                       for n, v, e in zip(self.names, self.values, self.errors, strict=True)},
            "covariance": self.covariance.tolist(),
            "covariance_autodiff": self.covariance_autodiff.tolist(),
            "correlation": self.correlation.tolist(),
        }


def _nll_and_grad(objective: Callable[[Tensor], Tensor]):
    def nll(p: np.ndarray) -> float:
        with torch.no_grad():
            return float(-objective(torch.as_tensor(np.asarray(p, dtype=np.float64))))

    def grad(p: np.ndarray) -> np.ndarray:
        t = torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True)
        (g,) = torch.autograd.grad(-objective(t), t)
        return g.numpy()

    return nll, grad


def _autodiff_cov(objective: Callable[[Tensor], Tensor], x: np.ndarray) -> np.ndarray:
    hess = torch.autograd.functional.hessian(
        lambda t: -objective(t), torch.as_tensor(x, dtype=torch.float64)
    ).numpy()
    try:
        return np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return np.full_like(hess, np.nan)


def _correlation(cov: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(cov))
    return cov / np.outer(d, d)


def fit(
    objective: GridObjective | CallableObjective,
    start: dict[str, float] | None = None,
    *,
    method: str = "minuit",
    minos_cls: tuple[float, ...] = (CL_68,),
    tol: float = 1e-4,
) -> FitResult:
    r"""Maximise lnL(θ) of ``objective`` with exact gradients from torch autograd.

    ``method="minuit"``: iminuit MIGRAD with the autograd gradient, HESSE, then MINOS at each
    ``minos_cls`` (profile-likelihood intervals, errordef 0.5 for −lnL). ``method="lbfgs"``:
    L-BFGS-B with the autograd gradient; errors from the autograd Hessian only (``minos`` empty).
    Both report the autograd-Hessian covariance too.

    Arguments:
        objective: :class:`GridObjective` (interpolated scan) or :class:`CallableObjective`.
        start: initial values (default: grid centre, or 0 without bounds).
        minos_cls: confidence levels for MINOS (e.g. ``(0.6827, 0.95)``); empty skips MINOS.
    """
    names = objective.names
    bounds = objective.bounds
    x0 = np.array([
        (start or {}).get(n, 0.5 * (bounds[i][0] + bounds[i][1]) if bounds else 0.0)
        for i, n in enumerate(names)
    ], dtype=np.float64)
    if method == "lbfgs":
        return _fit_lbfgs(objective, x0)
    if method != "minuit":
        msg = f"method must be 'minuit' or 'lbfgs', got {method!r}"
        raise ValueError(msg)
    from iminuit import Minuit

    nll, grad = _nll_and_grad(objective)
    m = Minuit(nll, x0, grad=grad, name=names)
    m.errordef = Minuit.LIKELIHOOD
    m.tol = tol
    if bounds:
        m.limits = bounds
        span = np.array([b - a for a, b in bounds])
        m.errors = np.maximum(span / 20.0, 1e-8)
    m.migrad()
    m.hesse()
    # an estimate on a grid edge is not a minimum of the likelihood, only of the interpolation
    at_limit = bool(bounds) and any(
        min(v - a, b - v) < 1e-6 * (b - a) for v, (a, b) in zip(m.values, bounds, strict=True))
    valid = bool(m.valid) and not at_limit
    minos: dict[str, dict[float, tuple[float | None, float | None]]] = {n: {} for n in names}
    for cl in minos_cls if valid else ():
        try:
            m.minos(cl=cl)
        except RuntimeError:
            continue
        for n in names:
            me = m.merrors[n]
            minos[n][cl] = (float(me.lower) if me.lower_valid and not me.at_lower_limit else None,
                            float(me.upper) if me.upper_valid and not me.at_upper_limit else None)
    values = np.array(m.values, dtype=np.float64)
    cov = np.array(m.covariance, dtype=np.float64) if m.covariance is not None else np.full(
        (len(names), len(names)), np.nan)
    return FitResult(names, values, np.sqrt(np.diag(cov)), cov, _autodiff_cov(objective, values),
                     _correlation(cov), minos, float(m.fval), valid, "minuit", int(m.nfcn),
                     {"at_limit": at_limit})


def _fit_lbfgs(objective: GridObjective | CallableObjective, x0: np.ndarray) -> FitResult:
    # scipy's L-BFGS-B with the autograd gradient: torch.optim would pull in torch._dynamo
    # (seconds of import) for a problem of a handful of parameters.
    from scipy.optimize import minimize

    nll, grad = _nll_and_grad(objective)
    res = minimize(lambda p: (nll(p), grad(p)), x0, jac=True, method="L-BFGS-B",
                   bounds=objective.bounds, options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 500})
    x = np.asarray(res.x, dtype=np.float64)
    cov = _autodiff_cov(objective, x)
    valid = bool(res.success and np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0))
    names = objective.names
    return FitResult(names, x, np.sqrt(np.abs(np.diag(cov))), cov, cov, _correlation(cov),
                     {n: {} for n in names}, float(res.fun), valid, "lbfgs", int(res.nfev))
