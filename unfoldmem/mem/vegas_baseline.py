r"""Classical MEM baseline: the same per-event integral with VEGAS, one integral per assignment.

As MoMEMta and MadWeight do, each jet–parton assignment σ is integrated separately over the
unit hypercube :math:`u \in [0,1]^{3n}`, mapped to the parton variables z by the transfer-function
(detector-driven) map of :meth:`unfoldmem.mem.sampling.RecoChannel.transform` centred on the
objects of σ, so that

.. math:: I_\sigma = \int_{[0,1]^{3n}} \frac{F_\sigma(z(u))}{q_\sigma(z(u))}\,du,\qquad
    I = \sum_\sigma I_\sigma,\qquad \delta I^2 = \sum_\sigma \delta I_\sigma^2,

and VEGAS (adaptive, separable importance sampling on top of the map) refines the grid until the
relative error of I is below ``precision``.

References:
    | G. P. Lepage, "A new algorithm for adaptive multidimensional integration",
    | J. Comput. Phys. 27 (1978) 192; the ``vegas`` package, https://vegas.readthedocs.io
    | S. Brochet et al., MoMEMta, Eur. Phys. J. C 79 (2019) 126, arXiv:1805.08555
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unfoldmem.mem.integrand import FLAG_OK, FLAG_ZERO_INTEGRAL, MEMIntegrand, RecoEvents
from unfoldmem.mem.sampling import RecoChannel, SamplingContext

__all__ = ["VegasResult", "vegas_log_integral"]


@dataclass
class VegasResult:
    """Per-event VEGAS results: log I, its error, integrand evaluations used, flag (B,)."""

    log_p: torch.Tensor
    log_p_err: torch.Tensor
    n_eval: torch.Tensor
    flag: torch.Tensor


def _one_assignment(integrand: MEMIntegrand, ctx: SamplingContext, k: int, theta: Mapping[str, Any],
                    channel: RecoChannel, precision: float, neval: int, max_eval: int,
                    seed: int) -> tuple[float, float, int]:
    import vegas

    prep = dict(ctx.prep)
    only = torch.zeros_like(prep["valid"])
    only[0, k] = True
    prep["valid"] = only
    c1 = SamplingContext(integrand, ctx.events, prep, ctx.kernel_sigma)
    dim = 3 * integrand.n

    def logf(u: np.ndarray) -> torch.Tensor:
        ut = torch.from_numpy(np.ascontiguousarray(u)).view(-1, 1, integrand.n, 3)
        pick = torch.full(ut.shape[:2], k, dtype=torch.long)
        z = channel.transform(ut, c1, pick)
        lq = channel.log_prob(z, c1)
        rest, p, x1, x2 = integrand.log_rest(z, c1.events, c1.prep, c1.kernel_sigma)
        t = integrand.log_theta(p, x1, x2, theta)
        out = rest[..., k] + t - lq
        return torch.where(torch.isnan(out), -math.inf, out)[:, 0]

    rng = np.random.default_rng(seed)
    probe = logf(rng.random((2048, dim)))
    ref = float(probe.max())
    if not math.isfinite(ref):
        return -math.inf, math.inf, 2048

    @vegas.batchintegrand
    def f(u: np.ndarray) -> np.ndarray:
        return torch.exp(logf(u) - ref).numpy()

    integ = vegas.Integrator([[0.0, 1.0]] * dim, ran_array_generator=rng.random)
    used = 2048
    integ(f, nitn=4, neval=neval)  # adapt the grid; these iterations are discarded
    used += 4 * neval
    res = integ(f, nitn=5, neval=neval)
    used += 5 * neval
    while res.mean > 0 and res.sdev / res.mean > precision and used < max_eval:
        neval *= 2
        res = integ(f, nitn=5, neval=neval)
        used += 5 * neval
    if res.mean <= 0:
        return -math.inf, math.inf, used
    return math.log(res.mean) + ref, res.sdev / res.mean, used


def vegas_log_integral(integrand: MEMIntegrand, events: RecoEvents, theta: Mapping[str, Any],
                       *, detector: Any = None, precision: float = 0.01, neval: int = 2000,
                       max_eval: int = 2_000_000, kernel_sigma: float = 10.0,
                       reco_scale: float = 1.5, seed: int = 1) -> VegasResult:
    """log ∫F dz per event at one θ with VEGAS, summed over assignments (see module doc).

    Arguments:
        integrand: the MEM integrand. events: B reco events. theta: one parameter point.
        detector: resolutions for the map (as :class:`~unfoldmem.mem.sampling.RecoChannel`).
        precision: target relative error of each event's integral.
        neval: evaluations per VEGAS iteration to start with (doubled until precise).
        max_eval: cap on evaluations per assignment.

    Returns:
        :class:`VegasResult` with (B,) tensors.
    """
    prep_all = integrand.prepare(events)
    channel = RecoChannel(detector, scale=reco_scale)
    b = len(events)
    log_p = torch.full((b,), -math.inf, dtype=torch.float64)
    err = torch.full((b,), math.inf, dtype=torch.float64)
    n_eval = torch.zeros(b, dtype=torch.long)
    flag = prep_all["flag"].clone()
    for i in range(b):
        if flag[i] != FLAG_OK:
            continue
        prep = {k: v[i : i + 1] for k, v in prep_all.items()}
        ctx = SamplingContext(integrand, events[i : i + 1], prep,
                              torch.tensor([kernel_sigma], dtype=torch.float64))
        parts = []
        for k in prep["valid"][0].nonzero()[:, 0].tolist():
            parts.append(_one_assignment(integrand, ctx, k, theta, channel,
                                         precision, neval, max_eval, seed + 7919 * i + k))
        logs = torch.tensor([q[0] for q in parts], dtype=torch.float64)
        n_eval[i] = sum(q[2] for q in parts)
        total = torch.logsumexp(logs, 0)
        if not torch.isfinite(total):
            flag[i] = FLAG_ZERO_INTEGRAL
            continue
        var = sum(math.exp(2 * (lg - float(total))) * e**2 for lg, e, _ in parts
                  if math.isfinite(lg))
        log_p[i], err[i] = total, math.sqrt(var)
    return VegasResult(log_p, err, n_eval, flag.to(torch.int32))
