r"""Classical MEM baseline: the same per-event integral with VEGAS on the physics change of variables.

As MoMEMta does, VEGAS integrates over the unit hypercube :math:`u \in [0,1]^{3n}` mapped to the
parton variables z by the detector channel's change of variables
(:meth:`unfoldmem.mem.channels.RecoChannel.transform`, with ``physics=True`` the resonance
blocks of :mod:`unfoldmem.mem.resonances`), and the jet–parton assignment σ is one more VEGAS
dimension (MoMEMta's permutator): :math:`\sigma = \lfloor u_0 P\rfloor` over the P valid
assignments, so

.. math:: I = \sum_\sigma \int F_\sigma(z)\,dz = \int_{[0,1]^{3n+1}}
    P\,\frac{F_\sigma(z(u))}{q_\sigma(z(u))}\,du ,

with :math:`q_\sigma` the density of the map for assignment σ. VEGAS (adaptive separable
importance sampling on top of the map) adapts for ``nitn_adapt`` iterations (discarded) and then
integrates, doubling ``neval``, until the relative error of I is below ``precision``. The
integrand is the same :class:`~unfoldmem.mem.integrand.MEMIntegrand` evaluation, batched
(``vegas.batchintegrand``); events are integrated one after the other.

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

from unfoldmem.mem.channels import RecoChannel, SamplingContext
from unfoldmem.mem.integrand import FLAG_OK, FLAG_ZERO_INTEGRAL, MEMIntegrand, RecoEvents

__all__ = ["VegasResult", "vegas_log_integral"]


@dataclass
class VegasResult:
    """Per-event VEGAS results: log I, its error, integrand evaluations used, flag (B,)."""

    log_p: torch.Tensor
    log_p_err: torch.Tensor
    n_eval: torch.Tensor
    flag: torch.Tensor


_PER_ASSIGNMENT = ("index", "valid", "isr_term", "reco_pt_sum", "pick_logp")


def _single_assignment(ctx: SamplingContext, pick: torch.Tensor) -> SamplingContext:
    """N copies of the one event of ``ctx``, copy i restricted to assignment pick[i], so the
    integrand and the map evaluate only the assignment each VEGAS point needs."""
    n = len(pick)
    prep = {k: (v[0, pick][:, None] if k in _PER_ASSIGNMENT else v.expand(n, *v.shape[1:]))
            for k, v in ctx.prep.items()}
    ev = RecoEvents(ctx.events.objects.expand(n, *ctx.events.objects.shape[1:]),
                    ctx.events.mask.expand(n, *ctx.events.mask.shape[1:]))
    return SamplingContext(ctx.integrand, ev, prep, ctx.kernel_sigma.expand(n))


def _one_event(integrand: MEMIntegrand, ctx: SamplingContext, theta: Mapping[str, Any],
               channel: RecoChannel, precision: float, neval: int, nitn_adapt: int,
               max_eval: int, seed: int) -> tuple[float, float, int]:
    import vegas

    n = integrand.n
    valid = ctx.prep["valid"][0].nonzero()[:, 0]
    n_asg = len(valid)
    extra = 1 if n_asg > 1 else 0
    dim = 3 * n + extra

    def logf(u: np.ndarray) -> torch.Tensor:
        ut = torch.from_numpy(np.ascontiguousarray(u))
        if extra:
            k = (ut[:, 0] * n_asg).long().clamp(max=n_asg - 1)
            ut = ut[:, 1:]
        else:
            k = torch.zeros(len(ut), dtype=torch.long)
        c1 = _single_assignment(ctx, valid[k])
        zero = torch.zeros(1, len(k), dtype=torch.long)
        z = channel.transform(ut.reshape(1, -1, n, 3), c1, zero)
        lq = channel.log_prob_assignment(z, c1, zero)
        rest, p, x1, x2 = integrand.log_rest(z, c1.events, c1.prep, c1.kernel_sigma)
        t = integrand.log_theta(p, x1, x2, theta)
        out = rest[..., 0] + t - lq + math.log(n_asg)
        return torch.where(torch.isnan(out), -math.inf, out)[0]

    rng = np.random.default_rng(seed)
    probe = logf(rng.random((neval, dim)))
    ref = float(probe.max())
    if not math.isfinite(ref):
        return -math.inf, math.inf, neval

    @vegas.batchintegrand
    def f(u: np.ndarray) -> np.ndarray:
        return torch.exp(logf(u) - ref).numpy()

    integ = vegas.Integrator([[0.0, 1.0]] * dim, ran_array_generator=rng.random)
    used = neval
    integ(f, nitn=nitn_adapt, neval=neval)  # adapt the grid; these iterations are discarded
    used += nitn_adapt * neval
    res = integ(f, nitn=3, neval=neval)
    used += 3 * neval
    while res.mean > 0 and res.sdev / res.mean > precision and used < max_eval:
        # Error ∝ 1/√N: ask for what should reach the target (at least double, 20 % margin).
        need = (res.sdev / res.mean / precision) ** 2 * 1.2
        neval = int(min(max(2.0, need) * neval, max_eval))
        res = integ(f, nitn=3, neval=neval)
        used += 3 * neval
    if res.mean <= 0:
        return -math.inf, math.inf, used
    return math.log(res.mean) + ref, res.sdev / res.mean, used


def vegas_log_integral(integrand: MEMIntegrand, events: RecoEvents, theta: Mapping[str, Any],
                       *, detector: Any = None, precision: float = 0.01, neval: int = 2000,
                       nitn_adapt: int = 5, max_eval: int = 4_000_000,
                       kernel_sigma: float = 10.0, reco_scale: float = 1.25,
                       physics: bool = True, seed: int = 1) -> VegasResult:
    """log ∫F dz per event at one θ with VEGAS, the assignment a VEGAS dimension (module doc).

    Arguments:
        integrand: the MEM integrand. events: B reco events. theta: one parameter point.
        detector: resolutions for the map (as :class:`~unfoldmem.mem.channels.RecoChannel`).
        precision: target relative error of each event's integral.
        neval: evaluations per VEGAS iteration to start with (raised until precise).
        nitn_adapt: adaptation iterations (discarded).
        max_eval: cap on evaluations per event.
        reco_scale, physics: the map (:class:`~unfoldmem.mem.channels.RecoChannel` options).

    Returns:
        :class:`VegasResult` with (B,) tensors.
    """
    prep_all = integrand.prepare(events)
    channel = RecoChannel(detector, scale=reco_scale, physics=physics)
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
        lg, e, used = _one_event(integrand, ctx, theta, channel, precision, neval, nitn_adapt,
                                 max_eval, seed + 7919 * i)
        n_eval[i] = used
        if not math.isfinite(lg):
            flag[i] = FLAG_ZERO_INTEGRAL
            continue
        log_p[i], err[i] = lg, e
    return VegasResult(log_p, err, n_eval, flag.to(torch.int32))
