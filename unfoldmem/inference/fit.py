r"""Maximum-likelihood fits of θ: torch-autograd gradients, iminuit MIGRAD + HESSE + MINOS.

Weighted events: the estimate maximises :math:`\ln L = \sum_i w_i \log P(x_i|\theta)`. When
the weights are Monte-Carlo (sampling) weights, the inverse Hessian :math:`H^{-1}` of
:math:`-\ln L` is *not* the covariance of the estimate (half the events with weight 2 give the
full sample's curvature, so it understates the error by √2). The asymptotically correct
covariance is the sandwich

.. math:: V = H^{-1} \Big(\sum_i w_i^2\, s_i s_i^{\mathsf T}\Big) H^{-1},
    \qquad s_i = \partial_\theta \log P(x_i|\theta)\big|_{\hat\theta},

which for unit weights tends to :math:`H^{-1}` (Bartlett identity) and stays right with
negative weights. Objectives made by :func:`callable_objective` and :func:`grid_objective` use it
whenever a weight differs from 1 (``weight_errors="auto"``); ``"hesse"`` keeps :math:`H^{-1}`,
which is right when a weight counts identical copies of an event (a Poisson bootstrap).

References:
    C. Langenbruch, "Parameter uncertainties in weighted unbinned maximum likelihood fits",
    Eur. Phys. J. C 82 (2022) 393, arXiv:1911.01303 (Eq. 18; the sandwich of
    P. J. Huber, Proc. 5th Berkeley Symp. 1 (1967) 221).
"""

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
    "sandwich_covariance",
    "WEIGHT_ERRORS",
]

WEIGHT_ERRORS = ("auto", "sandwich", "hesse")
"""How weighted fits get their covariance: see the module docstring."""

PerEventFn = Callable[[Tensor], Tensor]
"""θ (P,) float64 → per-event log P(x_i|θ) (N,), differentiable in θ (the MEM's Python API)."""


@dataclass
class GridObjective:
    """Summed lnL(θ) interpolated on the grid (tensor-product not-a-knot spline); torch.

    Calling it with θ (P,) returns the scalar lnL, differentiable in θ. ``per_event`` (the
    per-event spline of the summed events) and ``weight`` (N,) are needed for
    ``weight_errors="sandwich"`` only.
    """

    names: list[str]
    interp: GridInterpolator
    per_event: GridInterpolator | None = None
    weight: Tensor | None = None
    weight_errors: str = "hesse"

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
    weight_errors: str = "hesse"

    def __call__(self, theta: Tensor) -> Tensor:
        return (self.weight * self.fn(theta)).sum()

    @property
    def bounds(self) -> list[tuple[float, float]] | None:
        """Parameter limits given by the user, or None (unbounded)."""
        return self.limits


def _resolve(weight_errors: str, weight: Tensor) -> str:
    if weight_errors not in WEIGHT_ERRORS:
        msg = f"weight_errors must be one of {WEIGHT_ERRORS}, got {weight_errors!r}"
        raise ValueError(msg)
    if weight_errors == "auto":
        return "hesse" if bool((weight == 1).all()) else "sandwich"
    return weight_errors


def grid_objective(
    lik: PerEventLikelihoods,
    weight: Tensor | None = None,
    weight_errors: str = "auto",
    smooth_degree: int | None = None,
    **sum_kwargs: Any,
) -> GridObjective:
    """The interpolated summed lnL of ``lik`` (good events), optionally with replaced weights.

    Arguments:
        lik: per-event likelihoods on a rectilinear grid.
        weight: (N,) weights replacing ``lik.weight`` (a bootstrap, say); None keeps them.
        weight_errors: ``auto`` (sandwich covariance when a weight differs from 1),
            ``sandwich`` or ``hesse`` (weights count identical events); see the module docstring.
        smooth_degree: fit each event's values by a least-squares polynomial of this degree
            first (:func:`unfoldmem.inference.smoothing.smooth_grid`; MC-noisy grids).
        sum_kwargs: chunk_size / scheduler / workers for :func:`summed_log_likelihood`.
    """
    if weight is not None:
        lik = PerEventLikelihoods(**{**lik.__dict__, "weight": weight})
    if smooth_degree is not None:
        from unfoldmem.inference.smoothing import smooth_grid

        lik = smooth_grid(lik, smooth_degree)
    axes, index = grid_axes(lik.theta_grid)
    lnl, _ = summed_log_likelihood(lik, **sum_kwargs)
    ok = lik.ok()
    mode = _resolve(weight_errors, ok.weight)
    per = GridInterpolator(axes, ok.log_p[:, torch.from_numpy(index)]) if mode == "sandwich" else None
    return GridObjective(lik.names, GridInterpolator(axes, lnl[torch.from_numpy(index)]), per,
                         ok.weight, mode)


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
    weight_errors: str = "auto",
) -> CallableObjective:
    """Summed lnL from a per-event callable; ``weight`` (N,) defaults to ones (needs n_events).

    ``weight_errors``: ``auto`` (sandwich covariance when a weight differs from 1), ``sandwich``
    or ``hesse``; see the module docstring.
    """
    if weight is None:
        if n_events is None:
            msg = "give weight or n_events"
            raise ValueError(msg)
        weight = torch.ones(n_events, dtype=torch.float64)
    w = torch.as_tensor(weight, dtype=torch.float64)
    return CallableObjective(list(names), fn, w, limits, _resolve(weight_errors, w))


@dataclass
class FitResult:
    """A maximum-likelihood fit: estimate, uncertainties and correlations (θ units).

    ``errors``: HESSE (√diag of the inverse Hessian of −lnL), or for weighted events with
    ``weight_errors="sandwich"`` √diag of the sandwich covariance (``extra["covariance_hesse"]``
    then keeps the uncorrected one and ``extra["error_scale"]`` the per-parameter ratio);
    ``covariance_autodiff``: the inverse of the torch-autograd Hessian (never corrected);
    ``minos[name][cl] = (lower, upper)`` signed profile-likelihood errors (lower < 0, scaled by
    ``error_scale`` for weighted events), ``None`` where MINOS failed or the bound was hit.
    ``valid`` is false when MIGRAD failed or the estimate sits on a grid edge.
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


def sandwich_covariance(
    fn: PerEventFn, weight: Tensor, theta: Tensor | np.ndarray
) -> np.ndarray:
    r"""Covariance :math:`H^{-1} (\sum_i w_i^2 s_i s_i^{\mathsf T}) H^{-1}` of a weighted ML fit.

    Arguments:
        fn: θ (P,) → (N,) per-event log P(x_i|θ), differentiable (forward mode).
        weight: (N,) event weights (any sign).
        theta: (P,) the estimate.

    Returns:
        (P, P) float64; NaN where the Hessian of −lnL is singular.
    """
    theta = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    w = torch.as_tensor(weight, dtype=torch.float64)
    with torch.no_grad():
        s = torch.func.jacfwd(fn)(theta)  # (N, P) per-event scores
    s = s.reshape(len(w), -1)
    hess = torch.autograd.functional.hessian(lambda t: -(w * fn(t)).sum(), theta)
    meat = (s * (w * w)[:, None]).T @ s
    try:
        hinv = torch.linalg.inv(hess)
    except torch.linalg.LinAlgError:
        return np.full((len(theta), len(theta)), np.nan)
    return (hinv @ meat @ hinv).numpy()


def _weighted(
    objective: GridObjective | CallableObjective, x: np.ndarray, cov: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """The covariance to report, and what to record in ``FitResult.extra``."""
    if objective.weight_errors != "sandwich":
        return cov, {"weight_errors": "hesse"}
    fn = objective.fn if isinstance(objective, CallableObjective) else objective.per_event
    if fn is None or objective.weight is None:
        msg = "weight_errors='sandwich' needs the per-event function and the weights"
        raise ValueError(msg)
    v = sandwich_covariance(fn, objective.weight, x)
    scale = np.sqrt(np.diag(v) / np.diag(cov))
    return v, {"weight_errors": "sandwich", "covariance_hesse": cov.tolist(),
               "error_scale": scale.tolist()}


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
    cov, extra = _weighted(objective, values, cov)
    if "error_scale" in extra:
        # the weighted lnL has the right shape but the wrong width: rescale its MINOS ends
        for j, n in enumerate(names):
            f = extra["error_scale"][j]
            minos[n] = {cl: (None if lo is None else lo * f, None if hi is None else hi * f)
                        for cl, (lo, hi) in minos[n].items()}
    return FitResult(names, values, np.sqrt(np.diag(cov)), cov, _autodiff_cov(objective, values),
                     _correlation(cov), minos, float(m.fval), valid, "minuit", int(m.nfcn),
                     {"at_limit": at_limit, **extra})


def _fit_lbfgs(objective: GridObjective | CallableObjective, x0: np.ndarray) -> FitResult:
    # scipy's L-BFGS-B with the autograd gradient: torch.optim would pull in torch._dynamo
    # (seconds of import) for a problem of a handful of parameters.
    from scipy.optimize import minimize

    nll, grad = _nll_and_grad(objective)
    res = minimize(lambda p: (nll(p), grad(p)), x0, jac=True, method="L-BFGS-B",
                   bounds=objective.bounds, options={"ftol": 1e-15, "gtol": 1e-9, "maxiter": 500})
    x = np.asarray(res.x, dtype=np.float64)
    hinv = _autodiff_cov(objective, x)
    valid = bool(res.success and np.all(np.isfinite(hinv)) and np.all(np.diag(hinv) > 0))
    cov, extra = _weighted(objective, x, hinv) if valid else (hinv, {"weight_errors": "hesse"})
    names = objective.names
    return FitResult(names, x, np.sqrt(np.abs(np.diag(cov))), cov, hinv, _correlation(cov),
                     {n: {} for n in names}, float(res.fun), valid, "lbfgs", int(res.nfev), extra)
