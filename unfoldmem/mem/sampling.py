r"""Multi-channel importance sampling of the MEM integral: cINN proposal + detector-driven channel.

For each event the integral :math:`I(\theta) = \int F(z;\theta)\,dz` (see
:mod:`unfoldmem.mem.integrand`) is estimated with proposal channels :math:`q_c(z)` mixed with
weights :math:`\alpha_c`, :math:`n_c = \alpha_c n` samples from each, and the balance heuristic

.. math:: \hat I = \sum_c \frac{\alpha_c}{n_c}\sum_{i \in c}\frac{F(z_i)}{q(z_i)},\qquad
    q = \sum_c \alpha_c q_c,\qquad
    \operatorname{Var}\hat I = \sum_c \frac{\alpha_c^2}{n_c}\operatorname{Var}_{q_c}\!\Big[\frac{F}{q}\Big],

which is unbiased wherever *any* channel has support (Veach & Guibas 1995). The channels are
the cINN posterior :math:`q(p\mid x)` (:class:`CINNChannel`) and a detector-driven channel
(:class:`RecoChannel`: Gaussians around the assigned reco objects, uniform over assignments,
broad for invisible partons, the recoil from the kernel) whose support is all of z. The same
samples serve every θ of the grid (correlated errors, smooth scans). The error of
:math:`\log\hat I` is :math:`\sigma_{\hat I}/\hat I` (delta method); samples are added per event,
doubling, until it is below ``precision`` at every θ or ``n_max`` is reached.

References:
    | E. Veach, L. Guibas, "Optimally combining sampling techniques for Monte Carlo
    | rendering", SIGGRAPH 1995 (balance heuristic).
    | A. Butter et al., SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from unfoldmem.mem.integrand import (
    FLAG_OK,
    FLAG_ZERO_INTEGRAL,
    MEMIntegrand,
    RecoEvents,
)
from unfoldmem.physics import lorentz
from unfoldmem.simulate.detector import ParametricDetector
from unfoldmem.weights import WeightDiagnosticsConfig, WeightError, WeightWarning

__all__ = ["CINNChannel", "Channel", "ISResult", "RecoChannel", "SamplingContext", "diagnose",
           "importance_sample"]

log = logging.getLogger(__name__)

_TWO_PI = 2 * math.pi


@dataclass
class SamplingContext:
    """What a channel sees of a batch of B events."""

    integrand: MEMIntegrand
    events: RecoEvents
    prep: Mapping[str, Tensor]
    kernel_sigma: Tensor  # (B,) GeV

    def subset(self, rows: Tensor) -> SamplingContext:
        """The context of the events ``rows`` (bool (B,) or indices)."""
        prep = {k: v[rows] for k, v in self.prep.items()}
        return SamplingContext(self.integrand, self.events[rows], prep, self.kernel_sigma[rows])


class Channel(Protocol):
    """An importance-sampling channel over z = (pt, eta, phi) of the n outgoing partons."""

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3) samples."""

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density per unit (pt, eta, phi) of every parton."""


def _log_normal(x: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    return -0.5 * ((x - mu) / s) ** 2 - torch.log(s) - 0.5 * math.log(_TWO_PI)


def _log_wrapped_normal(x: Tensor, mu: Tensor, s: Tensor) -> Tensor:
    d = torch.remainder(x - mu + math.pi, _TWO_PI) - math.pi
    k = torch.tensor([-_TWO_PI, 0.0, _TWO_PI], dtype=x.dtype)
    return torch.logsumexp(_log_normal(d[..., None] + k, torch.zeros(()), s[..., None]), -1)


def _wrap(phi: Tensor) -> Tensor:
    return torch.remainder(phi + math.pi, _TWO_PI) - math.pi


class RecoChannel:
    r"""Detector-driven channel: Gaussians around the reco objects of a random assignment.

    Visible parton i of assignment σ: :math:`\log p_T \sim \mathcal N(\log p_T^{\rm reco},
    k\,r)`, :math:`\eta \sim \mathcal N(\eta^{\rm reco}, k\,s_\eta)`, φ wrapped normal
    (:math:`k\,s_\phi`), with r, s_η, s_φ the detector resolutions (relative energy/pt,
    angles) and k = ``scale``; σ uniform over the event's valid assignments. Invisible
    partons: :math:`\log p_T \sim \mathcal N(\log 40, 1)`, :math:`\eta \sim \mathcal N(0, 2)`,
    φ uniform; the recoil's (p_T, φ) is drawn from the balance kernel h and its η as its kind.
    The density is positive everywhere, so mixing this channel in keeps the estimate unbiased.

    Arguments:
        detector: for the resolutions (None: 15 % in p_T, 0.05 in η and φ).
        scale: width factor k over the resolution.
        offset: (n, 3) shift of the centres in (log pt, eta, phi) (diagnostic tests).
    """

    def __init__(self, detector: ParametricDetector | None = None, scale: float = 1.5,
                 offset: Tensor | None = None) -> None:
        self.detector, self.scale, self.offset = detector, scale, offset

    def _centres(self, ctx: SamplingContext) -> tuple[Tensor, Tensor, Tensor]:
        """centres (B, P, n, 3) in (log pt, eta, phi), widths (B, P, n, 3), valid (B, P)."""
        integ = ctx.integrand
        obj = torch.where(ctx.events.mask[..., None], ctx.events.objects, 1.0)
        valid = ctx.prep["valid"]
        b, p = valid.shape
        n = integ.n
        idx = ctx.prep.get("index", torch.full((b, p, n), -1, dtype=torch.long))
        ref = self._reference(ctx, idx)
        g = torch.gather(obj[:, None].expand(b, p, *obj.shape[1:]), 2,
                         ref.clamp(min=0)[..., None].expand(b, p, n, 7))
        centre = torch.stack([torch.log(g[..., 0].clamp(min=1e-3)), g[..., 1], g[..., 2]], -1)
        width = self._widths(g, integ.pdg)
        inv = (ref < 0)
        centre = torch.where(inv[..., None], torch.tensor([math.log(40.0), 0.0, 0.0]), centre)
        width = torch.where(inv[..., None], torch.tensor([1.0, 2.0, math.inf]), width)
        if self.offset is not None:
            centre = centre + self.offset
        return centre, width, valid

    def _reference(self, ctx: SamplingContext, idx: Tensor) -> Tensor:
        """(B, P, n) reco slot each parton's Gaussian is centred on (−1: broad)."""
        if "index" in ctx.prep:
            return idx
        # Learned transfer: no explicit assignment; centre visible partons of each type on the
        # reco objects of that type in pt order (jets ↔ jet partons in process order).
        from unfoldmem.mem.integrand import build_assignments

        asg = build_assignments(ctx.events, ctx.integrand.process.final_state, "exact")
        return asg.index[:, :1].expand_as(idx)

    def _widths(self, g: Tensor, pdg: Tensor) -> Tensor:
        k = self.scale
        if self.detector is None:
            w = torch.tensor([0.15, 0.05, 0.05], dtype=torch.float64)
            return (k * w).expand(*g.shape[:-1], 3).clone()
        det = self.detector
        pt, eta, phi = g[..., 0].clamp(min=1.0), g[..., 1], g[..., 2]
        v = lorentz.from_ptetaphim(torch.stack([pt, eta, phi, torch.zeros_like(pt)], -1))
        q = det._params(v, pdg.expand(pt.shape))
        rel = (q["sigma"] / q["x"]).clamp(min=1e-3, max=1.0)
        return k * torch.stack([rel, q["s_eta"].clamp(min=1e-4), q["s_phi"].clamp(min=1e-4)], -1)

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3) samples (pt, eta, phi)."""
        valid = ctx.prep["valid"]
        probs = valid.double() + 1e-300 * (~valid.any(-1, keepdim=True)).double()
        pick = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, B)
        u = torch.rand(n, len(ctx.events), ctx.integrand.n, 3, generator=generator,
                       dtype=torch.float64)
        return self.transform(u, ctx, pick)

    def transform(self, u: Tensor, ctx: SamplingContext, pick: Tensor) -> Tensor:
        r"""Map uniforms u (S, B, n, 3) ∈ (0,1) to z for assignments ``pick`` (S, B).

        Gaussian coordinates are :math:`c + w\,\Phi^{-1}(u)` (φ then wrapped), a uniform φ is
        :math:`2\pi u - \pi`; the recoil's :math:`\vec a = \text{balance} + \sigma_h
        \Phi^{-1}(u_{r,0}, u_{r,2})`. The density of z is :meth:`log_prob` (for one assignment
        when ``ctx`` allows only that one): the VEGAS baseline integrates in these u.
        """
        centre, width, _ = self._centres(ctx)
        n, b = pick.shape
        c = torch.gather(centre[None].expand(n, *centre.shape), 2,
                         pick[..., None, None, None].expand(n, b, 1, *centre.shape[2:]))[:, :, 0]
        w = torch.gather(width[None].expand(n, *width.shape), 2,
                         pick[..., None, None, None].expand(n, b, 1, *width.shape[2:]))[:, :, 0]
        uc = u.clamp(1e-15, 1 - 1e-15)
        eps = torch.special.ndtri(uc)
        finite_w = torch.where(torch.isinf(w), 1.0, w)
        z = c + finite_w * eps
        phi = torch.where(torch.isinf(w[..., 2]), _TWO_PI * uc[..., 2] - math.pi, _wrap(z[..., 2]))
        z = torch.stack([torch.exp(z[..., 0]), z[..., 1], phi], -1)
        integ = ctx.integrand
        r = integ.recoil
        p = lorentz.from_ptetaphim(torch.cat([z, integ.masses.expand(z.shape[:-1])[..., None]], -1))
        others = torch.ones(integ.n, dtype=torch.bool)
        others[r] = False
        bal = -p[..., others, 1:3].sum(-2)
        a = bal + ctx.kernel_sigma[:, None] * eps[..., r, :][..., [0, 2]]
        z = z.clone()
        z[..., r, 0] = torch.linalg.vector_norm(a, dim=-1)
        z[..., r, 2] = torch.atan2(a[..., 1], a[..., 0])
        return z

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density of the channel at z (S, B, n, 3)."""
        integ = ctx.integrand
        r = integ.recoil
        centre, width, valid = self._centres(ctx)
        zz = z[:, :, None]  # (S, B, 1, n, 3)
        lpt = torch.log(zz[..., 0])
        inv_phi = torch.isinf(width[..., 2])
        ww = torch.where(torch.isinf(width), 1.0, width)
        lp = (_log_normal(lpt, centre[..., 0], ww[..., 0]) - lpt
              + _log_normal(zz[..., 1], centre[..., 1], ww[..., 1])
              + torch.where(inv_phi, -math.log(_TWO_PI),
                            _log_wrapped_normal(zz[..., 2], centre[..., 2], ww[..., 2])))
        others = torch.ones(integ.n, dtype=torch.bool)
        others[r] = False
        # Recoil: only its eta from the per-parton law; (pt, phi) from the balance kernel.
        eta_r = _log_normal(zz[..., r, 1], centre[..., r, 1], ww[..., r, 1])
        lp = lp[..., others].sum(-1) + eta_r
        n_valid = valid.sum(-1).clamp(min=1)
        lp = torch.where(valid[None], lp, -math.inf)
        lq = torch.logsumexp(lp, -1) - torch.log(n_valid.double())
        pz = lorentz.from_ptetaphim(torch.cat([z, integ.masses.expand(z.shape[:-1])[..., None]], -1))
        bal = -pz[..., others, 1:3].sum(-2)
        a = torch.stack([z[..., r, 0] * torch.cos(z[..., r, 2]),
                         z[..., r, 0] * torch.sin(z[..., r, 2])], -1)
        sig = ctx.kernel_sigma
        lh = (-0.5 * ((a - bal) ** 2).sum(-1) / sig**2 - torch.log(_TWO_PI * sig**2)
              + torch.log(z[..., r, 0]))
        out = lq + lh
        return torch.where(torch.isnan(out), -math.inf, out)


class CINNChannel:
    """The cINN posterior q(p | x) as a channel (:class:`~unfoldmem.flows.cinn.CINN`).

    Arguments:
        model: trained cINN whose parton objects are the process final state (``order`` maps
            process partons to the model's objects).
        order: (n,) model object index of each process parton (default identity).
        masses: (n_model,) masses put back for :meth:`log_prob` (default: the model's fixed).
    """

    def __init__(self, model: Any, order: Sequence[int] | None = None) -> None:
        self.model = model.eval()
        self.order = None if order is None else torch.as_tensor(order, dtype=torch.long)

    def _idx(self, n: int) -> Tensor:
        return torch.arange(n) if self.order is None else self.order

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3); the flow uses torch's global RNG, re-seeded from ``generator``."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            v = self.model.sample_partons(n, ctx.events.objects, ctx.events.mask)
        return v[..., self._idx(ctx.integrand.n), :3].to(torch.float64)

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log q(z | x) per unit (pt, eta, phi)."""
        s, b, n, _ = z.shape
        enc = self.model.parton_encoding
        n_model = enc.n_objects
        v = enc.fixed_mass.to(torch.float64).expand(s, b, n_model)[..., None].repeat(1, 1, 1, 4)
        v[..., self._idx(n), :3] = z
        v[..., 3] = enc.fixed_mass.to(torch.float64)
        obj = ctx.events.objects.expand(s, *ctx.events.objects.shape).reshape(s * b, -1, 7)
        msk = ctx.events.mask.expand(s, *ctx.events.mask.shape).reshape(s * b, -1)
        with torch.no_grad():
            lq = self.model.log_prob_partons(v.reshape(s * b, n_model, 4), obj, msk).view(s, b)
        return torch.where(torch.isnan(lq), -math.inf, lq.double())


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


class _Acc:
    """Running sums Σw, Σw², max w per channel in a per-(event, θ) log scale."""

    def __init__(self, c: int, b: int, k: int, p: int | None) -> None:
        z = torch.zeros(c, b, k, dtype=torch.float64)
        self.shift = torch.full((b, k), -math.inf, dtype=torch.float64)
        self.s1, self.s2, self.wmax = z.clone(), z.clone(), z.clone()
        self.n = torch.zeros(c, b, dtype=torch.float64)
        self.nonfinite = torch.zeros(b, dtype=torch.float64)
        self.perm = None if p is None else torch.zeros(c, b, k, p, dtype=torch.float64)

    def add(self, c: int, rows: Tensor, logw: Tensor, soft: Tensor | None) -> None:
        """logw (S, b, K) for events ``rows`` from channel c; soft (S, b, P) assignment shares."""
        bad = torch.isnan(logw)
        self.nonfinite[rows] += bad.any(-1).sum(0).double()
        logw = torch.where(bad, -math.inf, logw)
        old = self.shift[rows]
        new = torch.maximum(old, logw.amax(0))
        new_safe = torch.where(torch.isinf(new), 0.0, new)
        fac = torch.where(torch.isinf(old), 0.0, torch.exp(old - new_safe))
        self.s1[:, rows] *= fac
        self.s2[:, rows] *= fac**2
        self.wmax[:, rows] *= fac
        if self.perm is not None:
            self.perm[:, rows] *= fac[..., None]
        w = torch.exp(logw - new_safe)
        self.s1[c, rows] += w.sum(0)
        self.s2[c, rows] += (w * w).sum(0)
        self.wmax[c, rows] = torch.maximum(self.wmax[c, rows], w.amax(0))
        if self.perm is not None and soft is not None:
            self.perm[c, rows] += torch.einsum("sbk,sbp->bkp", w, soft)
        self.n[c, rows] += logw.shape[0]
        self.shift[rows] = new

    def result(self, alphas: Tensor) -> dict[str, Tensor]:
        n = self.n.clamp(min=1)[..., None]  # (C, B, 1)
        a = alphas[:, None, None]
        coef = a / n
        t1 = (coef * self.s1).sum(0)
        t2 = (coef**2 * self.s2).sum(0)
        mean_c = self.s1 / n
        var_c = (self.s2 / n - mean_c**2).clamp(min=0) * n / (n - 1).clamp(min=1)
        var = (a**2 / n * var_c).sum(0)
        vmax = (coef * self.wmax).amax(0)
        out = {"t1": t1, "var": var, "ess": torch.where(t2 > 0, t1**2 / t2, 0.0),
               "max_share": torch.where(t1 > 0, vmax / t1, 1.0), "shift": self.shift,
               "share": (coef * self.s1).sum(-1) / (coef * self.s1).sum((0, 2)).clamp(min=1e-300)}
        if self.perm is not None:
            out["perm"] = (coef[..., None] * self.perm).sum(0)
        return out


def _allocate(n: int, alphas: Tensor) -> list[int]:
    counts = [max(2, round(float(a) * n)) if a > 0 else 0 for a in alphas]
    return counts


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
        batch_limit: cap on S × B × P elements evaluated at once (memory).

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
    acc = _Acc(len(channels), b, k, p if per_permutation else None)
    flag = prep["flag"].clone()
    active = flag == FLAG_OK
    n_round = n_start
    total = 0
    while bool(active.any()) and total < n_max:
        rows = active.nonzero()[:, 0]
        ctx = ctx_all.subset(rows)
        per_chunk = max(1, batch_limit // max(1, len(rows) * max(p, 1) * integrand.n))
        for c, n_c in enumerate(_allocate(n_round, alphas_t)):
            done = 0
            while done < n_c:
                m = min(per_chunk, n_c - done)
                z = channels[c].sample(m, ctx, generator)
                lq = torch.logsumexp(torch.stack(
                    [ch.log_prob(z, ctx) + math.log(float(a)) if a > 0 else
                     torch.full(z.shape[:2], -math.inf, dtype=torch.float64)
                     for ch, a in zip(channels, alphas_t, strict=True)]), 0)
                rest, pout, x1, x2 = integrand.log_rest(z, ctx.events, ctx.prep, ctx.kernel_sigma)
                rest_tot = torch.logsumexp(rest, -1)
                with torch.no_grad():
                    tk = torch.stack([integrand.log_theta(pout, x1, x2, th) for th in thetas], -1)
                logw = rest_tot[..., None] + tk - lq[..., None]
                # A sample the mixture cannot produce (q = 0) carries no weight.
                logw = torch.where(torch.isneginf(lq)[..., None], -math.inf, logw)
                soft = None
                if per_permutation:
                    safe = torch.where(torch.isinf(rest_tot), 0.0, rest_tot)
                    soft = torch.where(torch.isinf(rest_tot)[..., None], 0.0,
                                       torch.exp(rest - safe[..., None]))
                acc.add(c, rows, logw, soft)
                done += m
        total += n_round
        res = acc.result(alphas_t)
        t1 = res["t1"][rows]
        rel = torch.sqrt(res["var"][rows]) / t1
        reached = (t1 > 0).all(-1) & (rel <= precision).all(-1)
        zero = (t1 <= 0).all(-1) & (total >= 4 * n_start)
        flag[rows[zero]] = FLAG_ZERO_INTEGRAL
        active[rows[reached | zero]] = False
        n_round = total  # doubling
        n_round = min(n_round, n_max - total)
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
                    acc.nonfinite, flag, perm, res["share"].T.contiguous())



def diagnose(result: ISResult, config: WeightDiagnosticsConfig | None = None, *,
             name: str = "mem", theta_index: int = 0) -> dict[str, Any]:
    """Weight diagnostics of every event's importance weights (issue 14), for ``summary.json``.

    Per event: ``n`` samples, ``n_nonfinite`` (NaN weights met and dropped), Kish ``ess`` and
    ``ess_ratio``, ``max_share``, ``flag``. An event crossing a threshold of ``config`` is
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
             "max_share": float(result.max_share[b, theta_index]), "flag": int(result.flag[b])}
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
