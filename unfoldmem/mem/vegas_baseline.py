r"""Classical MEM baseline: the same per-event integral with VEGAS on the physics change of variables.

As MoMEMta does, VEGAS integrates over the unit hypercube :math:`u \in [0,1]^{3n}` mapped to the
parton variables z by the detector channel's change of variables
(:meth:`unfoldmem.mem.channels.RecoChannel.transform`, with ``physics=True`` the resonance
blocks of :mod:`unfoldmem.mem.resonances`), and the jet–parton assignment σ is one more VEGAS
dimension (MoMEMta's permutator): :math:`\sigma = \lfloor u_0 P\rfloor` over the P valid
assignments, so

.. math:: I = \sum_\sigma \int F_\sigma(z)\,dz = \int_{[0,1]^{3n+2}}
    P\,\frac{F_\sigma(z(u))}{q_\sigma(z(u))}\,du ,

with :math:`q_\sigma` the density of the map for assignment σ. The physics map reaches only
resonances within its Breit–Wigner windows (a top far off shell, as when an ISR jet takes a
lost parton's place, is outside), so a second extra dimension :math:`u_m` picks the physics map
(:math:`u_m < 1-\beta`) or the plain detector map (``physics=False``, positive everywhere) and
:math:`q_\sigma` is the mixture :math:`(1-\beta)q^{\rm phys}_\sigma + \beta
q^{\rm plain}_\sigma` at the point, whichever map drew it: the integral over :math:`u_m` is
then :math:`\int F_\sigma\,dz` exactly (multi-channel integration, as in MadEvent), and VEGAS
adapts the share of each map along :math:`u_m`. VEGAS (adaptive separable
importance sampling on top of the map) adapts for ``nitn_adapt`` iterations (discarded), then
freezes its grid and integrates, raising ``neval``, until the relative error of the pool of all
frozen iterations (weighted by their evaluations) is below ``precision``: a fixed proposal, so
the estimate is unbiased and its error honest. (Still adapting and combining iterations by
1/σ², vegas's default, was over-confident and low where the grid had starved a region: 0.17 and
0.29 below a 1 % importance-sampling result on two tt̄ events at 3.8 and 6σ.) The
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
from torch import Tensor

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


# A component of the VEGAS map: a channel, its law (None: the channel has one), its share.
_Component = tuple[RecoChannel, int | None, float]


def _map_log_prob(comps: list[_Component], z: Tensor, ctx: SamplingContext,
                  zero: Tensor) -> Tensor:
    """(1, N) log of the components' mixture density Σ_c w_c q_c(z | σ) (−inf outside all)."""
    parts = []
    for ch in {id(c[0]): c[0] for c in comps}.values():
        mine = [(law, w) for c, law, w in comps if c is ch]
        tot = sum(w for _, w in mine)
        ctx_ch = ctx
        if mine[0][0] is not None:
            lb = torch.full((len(ch.laws(ctx.integrand)),), -math.inf, dtype=torch.float64)
            for law, w in mine:
                lb[law] = math.log(w / tot)
            prep = {**ctx.prep, "law_logp": lb.expand(len(ctx.events), -1)}
            ctx_ch = SamplingContext(ctx.integrand, ctx.events, prep, ctx.kernel_sigma)
        parts.append(ch.log_prob_assignment(z, ctx_ch, zero) + math.log(tot))
    out = torch.logsumexp(torch.stack(parts), 0)
    return torch.where(torch.isnan(out), -math.inf, out)


def _components(integrand: MEMIntegrand, maps: list[tuple[RecoChannel, float]],
                off_shell_fraction: float) -> list[_Component]:
    """Split each multi-law channel's share: law 0 (every block on) 1 − ``off_shell_fraction``,
    the laws with blocks off the rest, equally."""
    comps: list[_Component] = []
    for ch, w in maps:
        n_law = len(ch.laws(integrand))
        if n_law == 1 or off_shell_fraction <= 0:
            comps.append((ch, None, w))
            continue
        comps.append((ch, 0, w * (1 - off_shell_fraction)))
        comps += [(ch, v, w * off_shell_fraction / (n_law - 1)) for v in range(1, n_law)]
    return comps


def _one_event(integrand: MEMIntegrand, ctx: SamplingContext, theta: Mapping[str, Any],
               comps: list[_Component], precision: float, neval: int,
               nitn_adapt: int, max_eval: int, seed: int,
               freeze: bool = True, alpha: float = 0.5,
               beta: float = 0.75) -> tuple[float, float, int]:
    import vegas

    n = integrand.n
    valid = ctx.prep["valid"][0].nonzero()[:, 0]
    n_asg = len(valid)
    extra = 1 if n_asg > 1 else 0
    n_map = 1 if len(comps) > 1 else 0
    dim = 3 * n + extra + n_map
    cum = torch.tensor([w for *_, w in comps], dtype=torch.float64).cumsum(0)[:-1]

    def logf(u: np.ndarray) -> torch.Tensor:
        ut = torch.from_numpy(np.ascontiguousarray(u))
        which = torch.zeros(len(ut), dtype=torch.long)
        if n_map:
            which = (ut[:, 0:1] >= cum).sum(-1)
            ut = ut[:, 1:]
        if extra:
            k = (ut[:, 0] * n_asg).long().clamp(max=n_asg - 1)
            ut = ut[:, 1:]
        else:
            k = torch.zeros(len(ut), dtype=torch.long)
        out = torch.full((len(ut),), -math.inf, dtype=torch.float64)
        for m, (channel, law, _) in enumerate(comps):
            sel = (which == m).nonzero()[:, 0]
            if not len(sel):
                continue
            c1 = _single_assignment(ctx, valid[k[sel]])
            zero = torch.zeros(1, len(sel), dtype=torch.long)
            lt = None if law is None else torch.full((1, len(sel)), law, dtype=torch.long)
            z = channel.transform(ut[sel].reshape(1, -1, n, 3), c1, zero, lt)
            # The density of the mixture of components, not of the one that drew z: the
            # integrand over the extra uniform then integrates to ∫F dz whatever covers z.
            lq = _map_log_prob(comps, z, c1, zero)
            rest, p, x1, x2 = integrand.log_rest(z, c1.events, c1.prep, c1.kernel_sigma)
            t = integrand.log_theta(p, x1, x2, theta)
            o = (rest[..., 0] + t - lq + math.log(n_asg))[0]
            out[sel] = torch.where(torch.isnan(o), -math.inf, o)
        return out

    rng = np.random.default_rng(seed)
    probe = logf(rng.random((neval, dim)))
    ref = float(probe.max())
    if not math.isfinite(ref):
        return -math.inf, math.inf, neval

    @vegas.batchintegrand
    def f(u: np.ndarray) -> np.ndarray:
        return torch.exp(logf(u) - ref).numpy()

    integ = vegas.Integrator([[0.0, 1.0]] * dim, ran_array_generator=rng.random, alpha=alpha,
                             beta=beta)
    used = neval
    integ(f, nitn=nitn_adapt, neval=neval)  # adapt the grid; these iterations are discarded
    used += nitn_adapt * neval
    if not freeze:
        res = integ(f, nitn=3, neval=neval)
        used += 3 * neval
        while res.mean > 0 and res.sdev / res.mean > precision and used < max_eval:
            # Error ∝ 1/√N: ask for what should reach the target (at least double, 20 % margin).
            need = (res.sdev / res.mean / precision) ** 2 * 1.2
            neval = int(min(max(2.0, need) * neval, max_eval))
            res = integ(f, nitn=3, neval=neval)
            used += 3 * neval
        mean, sdev = res.mean, res.sdev
    else:
        # Frozen grid: every further point is importance sampling from one fixed density, so
        # the pooled mean (weights ∝ evaluations, not 1/σ², which favours the iterations that
        # missed a region) is unbiased and its error honest; each call adds to the pool.
        tot = var = n_pool = 0.0
        mean = sdev = 0.0
        while n_pool == 0 or (mean > 0 and sdev / mean > precision and used < max_eval):
            if n_pool:
                # Error ∝ 1/√N: what should reach the target (20 % margin), within max_eval.
                need = (sdev / mean / precision) ** 2 * 1.2 * n_pool - n_pool
                neval = int(min(max(need / 3, neval), (max_eval - used) / 3))
                if neval < 1:
                    break
            res = integ(f, nitn=3, neval=neval, adapt=False)
            n_new = 3.0 * neval
            used += 3 * neval
            tot += n_new * res.mean
            var += n_new**2 * res.sdev**2
            n_pool += n_new
            mean, sdev = tot / n_pool, math.sqrt(var) / n_pool
    if mean <= 0:
        return -math.inf, math.inf, used
    return math.log(mean) + ref, sdev / mean, used


def vegas_log_integral(integrand: MEMIntegrand, events: RecoEvents, theta: Mapping[str, Any],
                       *, detector: Any = None, precision: float = 0.01, neval: int = 2000,
                       nitn_adapt: int = 5, max_eval: int = 4_000_000,
                       kernel_sigma: float = 10.0, reco_scale: float = 1.25,
                       physics: bool = True, plain_fraction: float = 0.1,
                       plain_scale: float = 1.5, off_shell_fraction: float = 0.3,
                       freeze: bool = True, alpha: float = 0.5, beta: float = 0.75,
                       seed: int = 1) -> VegasResult:
    """log ∫F dz per event at one θ with VEGAS, the assignment and the map VEGAS dimensions
    (module doc).

    Arguments:
        integrand: the MEM integrand. events: B reco events. theta: one parameter point.
        detector: resolutions for the map (as :class:`~unfoldmem.mem.channels.RecoChannel`).
        precision: target relative error of each event's integral.
        neval: evaluations per VEGAS iteration to start with (raised until precise).
        nitn_adapt: adaptation iterations (discarded).
        max_eval: cap on evaluations per event.
        reco_scale, physics: the map (:class:`~unfoldmem.mem.channels.RecoChannel` options).
        plain_fraction: with ``physics``, the share of the extra uniform that picks the plain
            detector map (width factor ``plain_scale``), whose support is everything; 0: the
            physics map alone, whose support misses far off-shell resonances (biased low on
            events with a lost parton).
        off_shell_fraction: the share of the physics map given (equally) to its laws with
            resonance blocks off (:meth:`~unfoldmem.mem.channels.RecoChannel.laws`; tt̄),
            which cover far off-shell tops near the reco objects.
        freeze: after the ``nitn_adapt`` adaptation iterations, keep the grid fixed and pool
            every later iteration, weighted by its evaluations (unbiased, honest error); False:
            the last 3 iterations only, still adapting, combined by vegas's 1/σ² weights
            (biased low and over-confident where the grid has starved a region).
        alpha, beta: vegas's damping of the grid's and of the strata's adaptation (its
            defaults 0.5 and 0.75; smaller adapts less, starving fewer regions).

    Returns:
        :class:`VegasResult` with (B,) tensors.
    """
    prep_all = integrand.prepare(events)
    maps = [(RecoChannel(detector, scale=reco_scale, physics=physics), 1.0)]
    if physics and plain_fraction > 0:
        maps = [(maps[0][0], 1.0 - plain_fraction),
                (RecoChannel(detector, scale=plain_scale), plain_fraction)]
    comps = _components(integrand, maps, off_shell_fraction if physics else 0.0)
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
        lg, e, used = _one_event(integrand, ctx, theta, comps, precision, neval, nitn_adapt,
                                 max_eval, seed + 7919 * i, freeze, alpha, beta)
        n_eval[i] = used
        if not math.isfinite(lg):
            flag[i] = FLAG_ZERO_INTEGRAL
            continue
        log_p[i], err[i] = lg, e
    return VegasResult(log_p, err, n_eval, flag.to(torch.int32))
