r"""Multi-channel importance sampling of the MEM integral: cINN proposal + detector-driven channel.

For each event the integral :math:`I(\theta) = \int F(z;\theta)\,dz` (see
:mod:`unfoldmem.mem.integrand`) is estimated with proposal channels :math:`q_c(z)` mixed with
weights :math:`\alpha_c`, :math:`n_c = \alpha_c n` samples from each, and the balance heuristic

.. math:: \hat I = \sum_c \frac{\alpha_c}{n_c}\sum_{i \in c}\frac{F(z_i)}{q(z_i)},\qquad
    q = \sum_c \alpha_c q_c,\qquad
    \operatorname{Var}\hat I = \sum_c \frac{\alpha_c^2}{n_c}\operatorname{Var}_{q_c}\!\Big[\frac{F}{q}\Big],

which is unbiased wherever *any* channel has support (Veach & Guibas 1995). The jet–parton
assignment σ is sampled as a discrete variable together with z: the integrand is
:math:`F(z,\sigma)` (one assignment's transfer function, :meth:`MEMIntegrand.log_rest` with
``pick``) and every channel's density is that of the pair,
:math:`q_c(z,\sigma) = \pi(\sigma)\,q_c(z\mid\sigma)` (the cINN: :math:`\pi(\sigma)q(z)`), so a
sample costs one assignment, as a VEGAS point does, instead of all P (24 for tt̄ with four
jets); :math:`\sum_\sigma\int F(z,\sigma)dz` is the MEM integral. The channels
(:mod:`unfoldmem.mem.channels`) are the cINN posterior :math:`q(p\mid x)`, the MoMEMta-style
detector channel with resonance blocks, and the plain detector channel whose support is all of
z. The same samples serve every θ of the grid (correlated errors, smooth scans). The error of
:math:`\log\hat I` is :math:`\sigma_{\hat I}/\hat I` (delta method). All events of a batch are
sampled together in rounds; events that reach ``precision`` at every θ leave, the next round
is what the median remaining event needs (at most doubling), up to ``n_max``; between rounds
the assignment probabilities and the physics channel's law probabilities (resonance blocks on
or off) adapt to their estimated shares, and the uniforms that drive the physics channel's map
are drawn from a per-event law fitted to the weighted samples so far
(:class:`~unfoldmem.mem.context.UniformLaw`, population Monte Carlo with a defensive uniform
share). Each round's proposal is fixed before its draws, so every round and their pool are
unbiased.
The weights' running sums, the estimate and its error are
:class:`~unfoldmem.mem.weight_sums.WeightSums`.

References:
    | E. Veach, L. Guibas, "Optimally combining sampling techniques for Monte Carlo
    | rendering", SIGGRAPH 1995 (balance heuristic).
    | A. Butter et al., SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
    | R. Kleiss, R. Pittau, Comput. Phys. Commun. 83 (1994) 141 (multi-channel adaptation).
    | O. Cappé et al., J. Comput. Graph. Stat. 13 (2004) 907 (population Monte Carlo).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.adaptation import (
    adapted_cells,
    adapted_laws,
    adapted_pick,
    start_laws,
    swap_partners,
)
from unfoldmem.mem.channels import Channel, CINNChannel, RecoChannel, SamplingContext
from unfoldmem.mem.context import UniformLaw, draw_assignments
from unfoldmem.mem.integrand import (
    FLAG_OK,
    FLAG_ZERO_INTEGRAL,
    MEMIntegrand,
    RecoEvents,
)
from unfoldmem.mem.weight_sums import WeightSums
from unfoldmem.pareto import K_RELIABLE, tail_size
from unfoldmem.weights import WeightDiagnosticsConfig, WeightError, WeightWarning

__all__ = ["CINNChannel", "Channel", "ISResult", "RecoChannel", "SamplingContext", "diagnose",
           "importance_sample"]

log = logging.getLogger(__name__)

_TWO_PI = 2 * math.pi
#: The next round gives every active event what this quantile of them needs: sized for the
#: slowest one, a chunk's smooth events (Drell–Yan) drew ~2× the samples their ESS/N needed;
#: the slower events simply go on in the next round (each round stays unbiased).
ROUND_QUANTILE = 0.5
#: Rounds an event whose error reached the target goes on sampling while its last round's
#: weights have Pareto k̂ > 0.7 (each at most doubling its samples); it is then reported.
TAIL_ROUNDS = 2


@dataclass
class ISResult:
    """Per-event results of :func:`importance_sample` (B events, K θ points, P assignments).

    Arguments:
        log_p: (B, K) log of the integral (pb × W units), −inf for flagged events.
        log_p_err: (B, K) delta-method standard error of ``log_p`` (inf when flagged).
        ess: (B, K) Kish effective sample size of the importance weights.
        max_share: (B, K) largest weight's share of the sum.
        n_samples: (B,) samples used. n_nonfinite: (B,) NaN weights met (reported, dropped).
        flag: (B,) int32 (:data:`unfoldmem.mem.integrand.FLAGS`).
        log_p_perm: (B, K, P) per-assignment log integrals, or None; −inf for padding.
        channel_share: (B, C) fraction of Σ weights from each channel.
        pareto_k: (B, K) shape k̂ of the upper tail of the weights of the event's last round
            (:mod:`unfoldmem.pareto`; each round has its own proposal); above 0.7
            ``log_p_err`` is not to be trusted (NaN: too few weights for a fit).
    """

    log_p: Tensor
    log_p_err: Tensor
    ess: Tensor
    max_share: Tensor
    n_samples: Tensor
    n_nonfinite: Tensor
    flag: Tensor
    log_p_perm: Tensor | None
    channel_share: Tensor
    pareto_k: Tensor | None = None


def _allocate(n: int, alphas: Tensor) -> list[int]:
    counts = [max(2, round(float(a) * n)) if a > 0 else 0 for a in alphas]
    return counts


def _w_swap_partners(channels: Sequence[Channel], integrand: MEMIntegrand,
                     prep: Mapping[str, Tensor]) -> list[Tensor]:
    """The assignments' W-daughter-swap partners (:func:`~unfoldmem.mem.adaptation.
    swap_partners`) for the hadronic chains of the first physics channel ([] without one)."""
    for ch in channels:
        if getattr(ch, "physics", False) and "index" in prep:
            chains = ch.blocks(integrand)[0]
            return swap_partners(prep["index"], prep["valid"], [(c.a, c.b) for c in chains])
    return []


def importance_sample(
    integrand: MEMIntegrand,
    events: RecoEvents,
    thetas: Sequence[Mapping[str, Any]],
    channels: Sequence[Channel],
    alphas: Sequence[float] | None = None,
    *,
    precision: float = 0.01,
    n_start: int = 256,
    n_max: int = 16384,
    kernel_sigma: Tensor | float = 10.0,
    per_permutation: bool = False,
    generator: torch.Generator | None = None,
    batch_limit: int = 2_000_000,
    adapt_assignments: bool = True,
    adapt_laws: bool = True,
    adapt_proposal: bool = True,
    laws_per_assignment: bool = True,
) -> ISResult:
    r"""Estimate :math:`\log\int F(z;\theta_k)dz` for every event and θ point.

    Arguments:
        integrand: the :class:`~unfoldmem.mem.integrand.MEMIntegrand`.
        events: B reco events. thetas: K parameter dicts (a θ grid).
        channels: proposal channels; alphas: their mixture weights (default equal).
        precision: target relative error (= error of log P) at every θ.
        n_start, n_max: first and largest number of samples per event (doubling).
        kernel_sigma: (B,) or scalar recoil-kernel width, GeV.
        per_permutation: also return the per-assignment integrals.
        generator: random numbers (seeded by the caller).
        batch_limit: cap on 8 S × B × n elements evaluated at once (memory).
        adapt_assignments: after each round, draw assignments (channels that read
            ``prep["pick_logp"]``) with probability (1 − PICK_FLOOR) × their estimated share
            of the integral + PICK_FLOOR × uniform (multi-channel adaptation, Kleiss &
            Pittau 1994); every round stays an unbiased estimate, so pooling them is unbiased.
            Assignments that differ by swapping a hadronic W's daughters share PARTNER_SHARE
            of their probabilities (:func:`~unfoldmem.mem.adaptation.pooled_with_partners`).
        adapt_laws: channels with several laws (:meth:`RecoChannel.laws`, resonance blocks on
            or off) draw them per event with probabilities ``prep["law_logp"]``: LAW_START in
            the first round, then (1 − LAW_FLOOR) × each law's estimated share of the
            integral + LAW_FLOOR × uniform (fixed within a round, so every round stays
            unbiased). False: law 0 only (every block on).
        laws_per_assignment: with both adaptations on and several assignments, adapt the
            (assignment, law) pairs jointly instead: probability (1 − CELL_FLOOR) × the pair's
            estimated share + CELL_FLOOR × uniform over the valid pairs, the law then drawn
            given the assignment (``prep["law_logp_pick"]``). An assignment whose weight sits
            in one law only (e.g. a hadronic W off shell with its top on shell: the top-mass
            law) then gets that law, and every pair keeps a floor, so a region the first
            rounds missed still gets samples.
        adapt_proposal: draw the uniforms of the first physics detector channel from a
            per-event :class:`~unfoldmem.mem.context.UniformLaw` refitted after each round
            to the weighted samples so far (a defensive share stays uniform); its samples'
            weights are divided by the law's density, which keeps every round unbiased.

    Returns:
        :class:`ISResult`.
    """
    generator = generator or torch.Generator().manual_seed(0)
    b = len(events)
    k = len(thetas)
    alphas_t = torch.as_tensor(alphas if alphas is not None else [1.0] * len(channels),
                               dtype=torch.float64)
    alphas_t = alphas_t / alphas_t.sum()
    prep = integrand.prepare(events)
    sig = torch.as_tensor(kernel_sigma, dtype=torch.float64).expand(b).clone()
    ctx_all = SamplingContext(integrand, events, prep, sig)
    p = prep["valid"].shape[1]
    track = per_permutation or (adapt_assignments and p > 1)
    n_laws = [len(ch.laws(integrand)) if hasattr(ch, "laws") else 1 for ch in channels]
    v = max(n_laws)
    if adapt_laws and v > 1:
        prep["law_logp"] = start_laws(b, v)
    law_chs = {i for i, nv in enumerate(n_laws) if nv == v and adapt_laws and v > 1}
    cells = bool(law_chs) and laws_per_assignment and adapt_assignments and p > 1
    if cells:
        prep["law_logp_pick"] = prep["law_logp"][:, None].expand(b, p, v).clone()
    partners = _w_swap_partners(channels, integrand, prep) if p > 1 else []
    acc = WeightSums(len(channels), b, k, p if track else None, v if law_chs else None,
                     n_top=tail_size(n_max) + 1, cells=cells)
    u_ch = next((i for i, ch in enumerate(channels) if getattr(ch, "physics", False)), None)
    ulaw = None
    if adapt_proposal and u_ch is not None:
        nv = len(channels[u_ch].laws(integrand)) if "law_logp" in prep else 1
        ulaw = UniformLaw(b, 3 * integrand.n, nv)
    flag = prep["flag"].clone()
    active = flag == FLAG_OK
    held = torch.zeros(b, dtype=torch.long)  # rounds each event went on for a heavy tail
    n_round = n_start
    total = 0
    while bool(active.any()) and total < n_max:
        rows = active.nonzero()[:, 0]
        acc.new_round(rows)
        ctx = ctx_all.subset(rows)
        per_chunk = max(1, batch_limit // max(1, len(rows) * integrand.n * 8))
        for c, n_c in enumerate(_allocate(n_round, alphas_t)):
            done = 0
            while done < n_c:
                m = min(per_chunk, n_c - done)
                # (z, assignment) drawn jointly: the integrand and every channel density are
                # evaluated for the drawn assignment only (see module doc).
                lh = None
                if ulaw is not None and c == u_ch:
                    ch = channels[c]
                    pick = draw_assignments(m, ctx, generator)
                    law = ch.draw_laws(m, ctx, generator, pick)
                    u, lh = ulaw.draw(m, rows, law, generator)
                    z = ch.transform(u.view(m, len(rows), integrand.n, 3), ctx, pick, law)
                else:
                    z, pick = channels[c].sample_joint(m, ctx, generator)
                parts, soft_law = [], None
                for i, (ch, a) in enumerate(zip(channels, alphas_t, strict=True)):
                    if a <= 0:
                        parts.append(torch.full(z.shape[:2], -math.inf, dtype=torch.float64))
                    elif i in law_chs:
                        lv = ch.law_log_prob_joint(z, pick, ctx)  # (V, S, b)
                        lqc = torch.logsumexp(lv, 0)
                        if soft_law is None:
                            soft_law = torch.exp(lv - lqc).nan_to_num(0.0).permute(1, 2, 0)
                        parts.append(lqc + math.log(float(a)))
                    else:
                        parts.append(ch.log_prob_joint(z, pick, ctx) + math.log(float(a)))
                lq = torch.logsumexp(torch.stack(parts), 0)
                rest, pout, x1, x2 = integrand.log_rest(z, ctx.events, ctx.prep,
                                                        ctx.kernel_sigma, pick)
                with torch.no_grad():
                    tk = torch.stack([integrand.log_theta(pout, x1, x2, th) for th in thetas], -1)
                logw = rest[..., None] + tk - lq[..., None]
                # A sample the mixture cannot produce (q = 0) carries no weight.
                logw = torch.where(torch.isneginf(lq)[..., None], -math.inf, logw)
                if lh is not None:
                    logw = logw - lh[..., None]
                    ulaw.add(rows, u, law, logw[..., 0])
                soft = None
                if track:
                    soft = torch.nn.functional.one_hot(pick, p).double()
                acc.add(c, rows, logw, soft, soft_law, pick)
                done += m
        total += n_round
        res = acc.result(alphas_t)
        t1 = res["t1"][rows]
        rel = torch.sqrt(res["var"][rows]) / t1
        reached = (t1 > 0).all(-1) & (rel <= precision).all(-1)
        if bool(reached.any()):
            # A small error is believed only if the round's weights have a finite-variance
            # tail (PSIS diagnostic, unfoldmem.pareto); a heavy-tailed event samples on for at
            # most TAIL_ROUNDS more rounds, since more samples cannot make an infinite
            # variance finite, and k̂ also exceeds 0.7 on bounded but skewed weights.
            cand = rows[reached]
            heavy = (acc.pareto_k(cand) > K_RELIABLE).any(-1)
            held[cand[heavy]] += 1
            reached[reached.clone()] = ~heavy | (held[cand] > TAIL_ROUNDS)
        zero = (t1 <= 0).all(-1) & (total >= 4 * n_start)
        flag[rows[zero]] = FLAG_ZERO_INTEGRAL
        active[rows[reached | zero]] = False
        if cells:
            prep["pick_logp"], prep["law_logp_pick"] = adapted_cells(
                res["cell"], prep["valid"], prep.get("pick_logp"), prep["law_logp_pick"],
                partners)
        elif adapt_assignments and p > 1:
            prep["pick_logp"] = adapted_pick(res["perm"], prep["valid"], partners)
        if law_chs:
            prep["law_logp"] = adapted_laws(res["law"], prep["law_logp"])
        if ulaw is not None:
            ulaw.refit()
        # Next round: what the median active event needs by 1/√n scaling (10 % margin), at
        # most doubling; events that reach the target leave, so rounds stay vectorised.
        still = ~(reached | zero)
        need = (rel[still] / precision) ** 2 * total * 1.1 - total
        need = torch.where(rel[still] <= precision, float(total), need)  # heavy tail: double
        need = need[torch.isfinite(need)]
        want = int(torch.quantile(need, ROUND_QUANTILE)) if need.numel() else total
        n_round = min(max(want, n_start // 2, 2 * len(channels)), total, n_max - total)
    res = acc.result(alphas_t)
    t1, var = res["t1"], res["var"]
    pos = t1 > 0
    log_p = torch.where(pos, torch.log(torch.where(pos, t1, 1.0)) + res["shift"], -math.inf)
    err = torch.where(pos, torch.sqrt(var) / torch.where(pos, t1, 1.0), math.inf)
    ok = flag == FLAG_OK
    flag = torch.where(ok & ~pos.any(-1), FLAG_ZERO_INTEGRAL, flag).to(torch.int32)
    bad = flag != FLAG_OK
    log_p = torch.where(bad[:, None], -math.inf, log_p)
    err = torch.where(bad[:, None], math.inf, err)
    perm = None
    if per_permutation:
        pr = res["perm"]
        perm = torch.where(pr > 0, torch.log(torch.where(pr > 0, pr, 1.0)) + res["shift"][..., None],
                           -math.inf)
        perm = torch.where(bad[:, None, None], -math.inf, perm)
    return ISResult(log_p, err, res["ess"], res["max_share"], acc.n.sum(0),
                    acc.nonfinite, flag, perm, res["share"].T.contiguous(),
                    torch.where(bad[:, None], math.nan, acc.pareto_k()))



def diagnose(result: ISResult, config: WeightDiagnosticsConfig | None = None, *,
             name: str = "mem", theta_index: int = 0) -> dict[str, Any]:
    """Weight diagnostics of every event's importance weights (issue 14), for ``summary.json``.

    Per event: ``n`` samples, ``n_nonfinite`` (NaN weights met and dropped), Kish ``ess`` and
    ``ess_ratio``, ``max_share``, ``pareto_k`` (above :data:`~unfoldmem.pareto.K_RELIABLE`
    the reported error is unreliable: a violation too), ``flag``. An event crossing a
    threshold of ``config`` is
    logged and warned about (:class:`~unfoldmem.weights.WeightWarning`) or raises
    :class:`~unfoldmem.weights.WeightError`, as :func:`unfoldmem.weights.check_weights` does.

    Arguments:
        result: :func:`importance_sample` output. theta_index: which θ point to report.

    Returns:
        dict with ``name``, ``events`` (list of per-event dicts), ``n_violating``, ``violations``.
    """
    config = config or WeightDiagnosticsConfig()
    events, violations = [], []
    for b in range(result.log_p.shape[0]):
        n = float(result.n_samples[b])
        ess = float(result.ess[b, theta_index])
        d = {"n": int(n), "n_nonfinite": int(result.n_nonfinite[b]), "ess": ess,
             "ess_ratio": ess / n if n else 0.0,
             "max_share": float(result.max_share[b, theta_index]), "flag": int(result.flag[b]),
             "pareto_k": (None if result.pareto_k is None
                          or math.isnan(float(result.pareto_k[b, theta_index]))
                          else float(result.pareto_k[b, theta_index]))}
        events.append(d)
        if d["flag"]:
            continue
        v = []
        if d["n_nonfinite"]:
            v.append(f"{d['n_nonfinite']} non-finite weight(s) of {d['n']}")
        if d["ess_ratio"] < config.ess_ratio_min:
            v.append(f"ESS/N = {d['ess_ratio']:.3g} < ess_ratio_min = {config.ess_ratio_min:g}")
        if d["max_share"] > config.max_share_max:
            v.append(f"max share = {d['max_share']:.3g} > max_share_max = {config.max_share_max:g}")
        if d["pareto_k"] is not None and d["pareto_k"] > K_RELIABLE:
            v.append(f"Pareto k = {d['pareto_k']:.2f} > {K_RELIABLE}: heavy-tailed weights, "
                     "the error of log P is unreliable")
        if v:
            violations.append(f"{name}.event{b}: " + "; ".join(v))
    out = {"name": name, "events": events, "n_violating": len(violations),
           "violations": violations}
    if violations:
        msg = f"{len(violations)} event(s) with poor importance weights; " + violations[0]
        log.warning(msg)
        if config.on_violation == "error":
            raise WeightError(msg)
        warnings.warn(msg, WeightWarning, stacklevel=2)
    return out
