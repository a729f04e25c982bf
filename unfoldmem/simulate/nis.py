r"""Importance samplers of the unit hypercube for cross sections and event generation: VEGAS,
or a normalizing flow trained on top of it (:mod:`unfoldmem.simulate.nis_flow`).

Every sampler gives points u and their Jacobian J(u) = 1/q(u), so E_q[f(u) J(u)] = ∫ f;
:func:`make_sampler` builds one by name and :func:`integrate` estimates ∫ f with it.

References:
    C. Gao, J. Isaacson, C. Krause, "i-flow: High-dimensional integration and sampling with
    normalizing flows", arXiv:2001.05486.
    G. P. Lepage, "Adaptive multidimensional integration: VEGAS enhanced", arXiv:2009.05112.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import vegas
from torch import Tensor

from unfoldmem.simulate.nis_flow import (
    HypercubeFlow,
    Integrand,
    NISConfig,
    adapt_vegas,
    map_points,
    sample_weights,
    train_nis,
    vegas_weights,
)

__all__ = [
    "SAMPLERS",
    "NISConfig",
    "HypercubeFlow",
    "SamplerResult",
    "PointSampler",
    "VegasSampler",
    "FlowSampler",
    "adapt_vegas",
    "vegas_weights",
    "train_nis",
    "sample_weights",
    "summarize",
    "make_sampler",
    "on_vegas_map",
    "train_on_vegas",
    "integrate",
]

#: Names accepted by :func:`make_sampler` and :func:`integrate` (the ``--sampler`` choices).
SAMPLERS = ("vegas", "flow")


@dataclass
class SamplerResult:
    """Integral estimate and sampling quality of one sampler.

    Attributes: sigma, sigma_err (pb); unweighting_efficiency ⟨w⟩/max w; n_points used;
    seconds of evaluation + sampling; relative error per second: 1 / (rel_err² · seconds).
    """

    sigma: float
    sigma_err: float
    unweighting_efficiency: float
    n_points: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def precision_per_second(self) -> float:
        """1 / (relative error² × seconds): bigger is better, independent of n."""
        rel = self.sigma_err / abs(self.sigma)
        return 1.0 / (rel * rel * self.seconds)

def summarize(w: Tensor, seconds: float, **extra: Any) -> SamplerResult:
    """σ ± error and unweighting efficiency ⟨w⟩ / max w of importance weights ``w`` (n,)."""
    w = w.double()
    n = len(w)
    mean = float(w.mean())
    err = float(w.std(unbiased=True)) / math.sqrt(n)
    eff = mean / float(w.max()) if float(w.max()) > 0 else 0.0
    return SamplerResult(mean, err, eff, n, seconds, dict(extra))


class PointSampler:
    """Points u in the unit hypercube with their Jacobian J(u) = 1/q(u): E_q[f(u) J(u)] = ∫ f.

    The interface the cross section and the event generator share, whichever sampler is used:
    ``u, jac = sampler.sample(n)``, weights ``f(u) * jac``.
    """

    name = "base"
    dim: int
    setup_seconds: float = 0.0

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """u (n, dim) float64 and J(u) (n,) float64."""
        raise NotImplementedError


class VegasSampler(PointSampler):
    """Importance sampling through an adapted VEGAS map: y ~ U[0,1]^d, u = x(y), J = |∂x/∂y|.

    Arguments:
        integ: an adapted :class:`vegas.Integrator`; seed: seed of the uniform numbers.
    """

    name = "vegas"

    def __init__(self, integ: vegas.Integrator, seed: int = 0) -> None:
        self.integ = integ
        self.dim = integ.map.dim
        self.rng = np.random.default_rng(seed)

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """u (n, dim) float64 and J(u) (n,) float64."""
        return map_points(self.integ.map, torch.from_numpy(self.rng.random((n, self.dim))))


class FlowSampler(PointSampler):
    """Importance sampling from a trained :class:`HypercubeFlow`: y ~ q, J = 1/q(y); with a
    VEGAS map, u = x(y) and J = |∂x/∂y| / q(y) (the flow corrects VEGAS's sampler).

    Arguments:
        model: the trained flow; history: its training history (kept for reports).
        vegas_map: the adapted VEGAS map the flow was trained on top of (``None``: none).
    """

    name = "flow"

    def __init__(self, model: HypercubeFlow, history: dict[str, Any] | None = None,
                 vegas_map: vegas.AdaptiveMap | None = None) -> None:
        self.model = model
        self.dim = model.dim
        self.history = history or {}
        self.vegas_map = vegas_map

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """u (n, dim) float64 and J(u) (n,) float64."""
        y, log_q = self.model.sample(n)
        if self.vegas_map is None:
            return y, torch.exp(-log_q)
        u, jac = map_points(self.vegas_map, y)
        return u, jac * torch.exp(-log_q)


def on_vegas_map(f: Integrand, vmap: vegas.AdaptiveMap) -> Integrand:
    """The integrand seen through a VEGAS map: g(y) = f(x(y)) |∂x/∂y|, with ∫ g dy = ∫ f du."""

    def g(y: Tensor) -> Tensor:
        u, jac = map_points(vmap, y)
        return f(u) * jac

    return g


def train_on_vegas(f: Integrand, integ: vegas.Integrator,
                   config: NISConfig | None = None) -> FlowSampler:
    """Train a flow on top of an already adapted VEGAS integrator (for the event generator).

    Arguments:
        f: the integrand, u (N, dim) → (N,) ≥ 0; integ: VEGAS adapted to it.
        config: flow architecture and the KL / variance schedule (warm-up is not used).

    Returns:
        a :class:`FlowSampler` whose ``sample(n)`` gives (u, J) with E[f(u) J] = ∫ f.
    """
    cfg = dataclasses.replace(config or NISConfig(), warmup_epochs=0, on_vegas=True)
    model, history = train_nis(on_vegas_map(f, integ.map), integ.map.dim, cfg)
    return FlowSampler(model, history, integ.map)


def make_sampler(f: Integrand, dim: int, sampler: str = "flow",
                 config: NISConfig | None = None) -> PointSampler:
    """Adapt VEGAS to ``f`` and, for ``sampler="flow"``, train a flow from it.

    Arguments:
        f: the integrand, u (N, dim) → (N,) ≥ 0 (e.g. ``HadronicIntegrand.weight``, pb).
        dim: dimension of the unit hypercube (``HadronicIntegrand.dim``).
        sampler: ``"vegas"`` or ``"flow"`` (see :data:`SAMPLERS`).
        config: VEGAS adaptation, flow architecture and training schedule.

    Returns:
        a :class:`PointSampler`; its ``setup_seconds`` is the adaptation (+ training) time.

    Raises:
        ValueError: an unknown sampler name.
    """
    if sampler not in SAMPLERS:
        msg = f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}"
        raise ValueError(msg)
    config = config or NISConfig()
    t0 = time.perf_counter()
    integ = adapt_vegas(f, dim, config)
    out: PointSampler
    if sampler == "vegas":
        out = VegasSampler(integ, config.seed + 1)
    elif config.on_vegas:
        out = train_on_vegas(f, integ, config)
    else:
        model, history = train_nis(f, dim, config, integ)
        out = FlowSampler(model, history)
    out.setup_seconds = time.perf_counter() - t0
    return out


def integrate(f: Integrand, dim: int, sampler: str | PointSampler = "flow", n: int = 100000,
              config: NISConfig | None = None, chunk: int = 20000) -> SamplerResult:
    """∫ f(u) du over [0,1]^dim by importance sampling with VEGAS or a flow.

    The estimate is the mean of n independent weights f(u)·J(u) on the frozen sampler, so
    σ_err = std(w)/√n holds for both samplers and their precisions compare directly.

    Arguments:
        f: the integrand, u (N, dim) → (N,) ≥ 0 (pb for a hadronic integrand).
        dim: dimension of the unit hypercube.
        sampler: ``"vegas"``, ``"flow"`` (adapted/trained here) or a ready :class:`PointSampler`.
        n: points of the final estimate.
        config: adaptation and training settings (when a name is given).
        chunk: points per integrand call.

    Returns:
        :class:`SamplerResult`; ``seconds`` covers sampling + integrand evaluation of the n
        points; ``extra`` has ``sampler``, ``setup_seconds``, ``ess_ratio`` (effective sample
        size / n) and ``rel_err``.

    Example:
        >>> f = lambda u: 3 * u[:, 0] ** 2
        >>> cfg = NISConfig(vegas_neval=500, vegas_iterations=3, warmup_points=2000,
        ...                 warmup_epochs=2, kl_steps=5, kl_batch=500, hidden=(8,), transforms=2)
        >>> res = integrate(f, 2, "flow", n=4000, config=cfg)
        >>> abs(res.sigma - 1.0) < 5 * res.sigma_err
        True
    """
    s = make_sampler(f, dim, sampler, config) if isinstance(sampler, str) else sampler
    t0 = time.perf_counter()
    ws = []
    for i in range(0, n, chunk):
        u, jac = s.sample(min(chunk, n - i))
        with torch.no_grad():
            w = f(u) * jac
        ws.append(torch.where(torch.isfinite(w), w, 0.0))
    seconds = time.perf_counter() - t0
    w = torch.cat(ws)
    ess = float(w.sum() ** 2 / (w * w).sum() / len(w)) if float((w * w).sum()) > 0 else 0.0
    res = summarize(w, seconds, sampler=s.name, setup_seconds=s.setup_seconds, ess_ratio=ess)
    res.extra["rel_err"] = res.sigma_err / abs(res.sigma) if res.sigma else math.inf
    return res
