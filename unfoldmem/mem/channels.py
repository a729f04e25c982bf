r"""Proposal channels of the MEM importance sampling: the detector channel and the cINN posterior.

:class:`RecoChannel` samples every visible parton around the reco object of a random
assignment with the detector resolution, in :math:`(\log p_T, \eta, \phi)`; with
``physics=True`` it is the MoMEMta-style change of variables: the energies fixed by narrow
propagators come from their Breit–Wigner masses (:mod:`unfoldmem.mem.resonances`), the
neutrino's η from the leptonic W mass, a visible recoil's measurement is combined with its
partner's (Drell–Yan), and the assignment is drawn with adaptable probabilities
(``prep["pick_logp"]``, see :func:`~unfoldmem.mem.sampling.importance_sample`). For tt̄ the
channel is a mixture of laws with the hadronic chain and the leptonic top block on or off
(:meth:`RecoChannel.laws`, probabilities ``prep["law_logp"]``), so events whose top is far off
shell (a lost parton replaced by an ISR jet) are covered too. Every map is exact and its
Jacobian is in :meth:`RecoChannel.log_prob` (the terms of each law:
:mod:`unfoldmem.mem.reco_density`). :class:`CINNChannel`
(:mod:`unfoldmem.mem.cinn_channel`, re-exported here) is the cINN posterior q(p | x). Both give
the density of z alone (summed over assignments) and of the pair (z, assignment) that the
sampler draws (:mod:`unfoldmem.mem.context`).

References:
    | S. Brochet et al., MoMEMta, Eur. Phys. J. C 79 (2019) 126, arXiv:1805.08555
    | A. Butter et al., SciPost Phys. 15 (2023) 094, https://arxiv.org/abs/2210.00019
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from unfoldmem.mem.balance import balance, combine_two_body, others_sum
from unfoldmem.mem.cinn_channel import CINNChannel
from unfoldmem.mem.context import (
    Channel,
    SamplingContext,
    draw_assignments,
    gather_pick,
    pick_log_prob,
)
from unfoldmem.mem.integrand import MEMIntegrand, build_assignments
from unfoldmem.mem.reco_density import COMBINE_SCALE, chain_law, law_log_terms
from unfoldmem.mem.resonances import HadronicChain, LeptonicTop, NeutrinoBlock, find_blocks
from unfoldmem.physics import lorentz
from unfoldmem.simulate.detector import ParametricDetector

__all__ = ["CINNChannel", "Channel", "RecoChannel", "SamplingContext", "draw_assignments",
           "pick_log_prob"]

_TWO_PI = 2 * math.pi
_Blocks = tuple[list[HadronicChain], NeutrinoBlock | None, LeptonicTop | None]


class RecoChannel:
    r"""Detector-driven channel: Gaussians around the reco objects of a random assignment.

    Visible parton i of assignment σ: :math:`\log p_T \sim \mathcal N(\log p_T^{\rm reco},
    k\,r)`, :math:`\eta \sim \mathcal N(\eta^{\rm reco}, k\,s_\eta)`, φ wrapped normal
    (:math:`k\,s_\phi`), with r, s_η, s_φ the detector resolutions (relative energy/pt,
    angles) and k = ``scale``; σ drawn with probabilities ``prep["pick_logp"]`` (default
    uniform over the event's valid assignments). Invisible partons: :math:`\log p_T \sim
    \mathcal N(\log 40, 1)`, :math:`\eta \sim \mathcal N(0, 2)`, φ uniform; the recoil's
    (p_T, φ) is drawn from the balance kernel h and its η as its kind. With ``physics=True``
    the resonance blocks of :func:`~unfoldmem.mem.resonances.find_blocks` replace the p_T laws
    of W/top daughters and the neutrino's η law, and a visible recoil's reco (p_T, φ) is
    combined with its partner's (two-body final states). The density is positive everywhere
    (``physics=False``), so mixing this channel in keeps the estimate unbiased.

    Arguments:
        detector: for the resolutions (None: 15 % in p_T, 0.05 in η and φ).
        scale: width factor k over the resolution.
        offset: (n, 3) shift of the centres in (log pt, eta, phi) (diagnostic tests).
        physics: use the resonance blocks and the two-body combination (see above).
    """

    def __init__(self, detector: ParametricDetector | None = None, scale: float = 1.5,
                 offset: Tensor | None = None, physics: bool = False) -> None:
        self.detector, self.scale, self.offset = detector, scale, offset
        self.physics = physics
        self._blocks: dict[int, _Blocks] = {}
        # The leptonic-top roots of the last z this channel produced: they depend only on
        # coordinates that transform leaves untouched after finding them, and log_prob at
        # the same z (identity) needs them again.
        self._roots_of: tuple[Tensor, tuple[Tensor, Tensor, Tensor]] | None = None
        # The centres and widths of the last context: sample-independent, and every draw and
        # density of a round (several per chunk) asks for them again.
        self._centres_of: tuple[SamplingContext, tuple[Tensor, Tensor, Tensor]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The caches hold the last batch of samples: not worth shipping to Dask workers.
        return {**self.__dict__, "_roots_of": None, "_centres_of": None}

    def blocks(self, integrand: MEMIntegrand) -> _Blocks:
        """The resonance blocks used for ``integrand`` (none unless ``physics``)."""
        if not self.physics:
            return [], None, None
        key = id(integrand)
        if key not in self._blocks:
            self._blocks[key] = find_blocks(integrand)
        return self._blocks[key]

    def _centres(self, ctx: SamplingContext) -> tuple[Tensor, Tensor, Tensor]:
        """centres (B, P, n, 3) in (log pt, eta, phi), widths (B, P, n, 3), valid (B, P)."""
        cached = getattr(self, "_centres_of", None)
        if cached is not None and cached[0] is ctx:
            return cached[1]
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
        if self.physics and n == 2:
            centre, width = self._combine_two_body(centre, width, inv, integ.recoil)
        if self.offset is not None:
            centre = centre + self.offset
        self._centres_of = (ctx, (centre, width, valid))
        return centre, width, valid

    # The balance helpers live in mem.balance; these names are the channel's (tests use them).
    _combine_two_body = staticmethod(combine_two_body)
    _others_sum = staticmethod(others_sum)
    _balance = staticmethod(balance)

    def _reference(self, ctx: SamplingContext, idx: Tensor) -> Tensor:
        """(B, P, n) reco slot each parton's Gaussian is centred on (−1: broad)."""
        if "index" in ctx.prep:
            return idx
        # Learned transfer: no explicit assignment; centre visible partons of each type on the
        # reco objects of that type in pt order (jets ↔ jet partons in process order).
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

    @staticmethod
    def _pick_logp(ctx: SamplingContext) -> Tensor:
        return pick_log_prob(ctx)

    def sample(self, n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
        """(n, B, n_partons, 3) samples (pt, eta, phi)."""
        return self.sample_joint(n, ctx, generator)[0]

    def sample_joint(self, n: int, ctx: SamplingContext,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, B, n_partons, 3) samples and the (n, B) assignments they were drawn around."""
        pick = draw_assignments(n, ctx, generator)
        law = self.draw_laws(n, ctx, generator, pick)
        u = torch.rand(n, len(ctx.events), ctx.integrand.n, 3, generator=generator,
                       dtype=torch.float64)
        return self.transform(u, ctx, pick, law), pick

    def draw_laws(self, n: int, ctx: SamplingContext, generator: torch.Generator,
                  pick: Tensor | None = None) -> Tensor | None:
        """(n, B) laws drawn with :meth:`law_log_prob`, or given the assignments ``pick``
        (n, B) with :meth:`law_log_prob_pick` where ``prep["law_logp_pick"]`` is set (None:
        law 0 only)."""
        if len(self.laws(ctx.integrand)) < 2:
            return None
        if "law_logp_pick" in ctx.prep and pick is not None:
            cdf = torch.cumsum(torch.exp(self.law_log_prob_pick(ctx, pick)), 0)  # (V, n, B)
            u = torch.rand(n, len(ctx.events), generator=generator, dtype=torch.float64)
            return (u * cdf[-1] >= cdf).sum(0).clamp(max=cdf.shape[0] - 1)
        if "law_logp" in ctx.prep or "law_logp_pick" in ctx.prep:
            probs = torch.exp(self.law_log_prob(ctx))
            return torch.multinomial(probs, n, replacement=True, generator=generator).T
        return None

    def transform(self, u: Tensor, ctx: SamplingContext, pick: Tensor,
                  law: Tensor | None = None) -> Tensor:
        r"""Map uniforms u (S, B, n, 3) ∈ (0,1) to z for assignments ``pick`` (S, B) and laws
        ``law`` (S, B) (indices into :meth:`laws`; None: law 0, all blocks on).

        Gaussian coordinates are :math:`c + w\,\Phi^{-1}(u)` (φ then wrapped), a uniform φ is
        :math:`2\pi u - \pi`; resonance blocks use u[b, 0], u[c, 0] and the neutrino's u[ν, 1];
        the recoil's :math:`\vec a = \text{balance} + \sigma_h \Phi^{-1}(u_{r,0}, u_{r,2})`.
        The density of z is :meth:`log_prob` (for one assignment when ``ctx`` allows only that
        one): the VEGAS baseline integrates in these u.
        """
        centre, width, _ = self._centres(ctx)
        c, w = gather_pick(centre, pick), gather_pick(width, pick)
        uc = u.clamp(1e-15, 1 - 1e-15)
        eps = torch.special.ndtri(uc)
        finite_w = torch.where(torch.isinf(w), 1.0, w)
        z = c + finite_w * eps
        phi = torch.where(torch.isinf(w[..., 2]), _TWO_PI * uc[..., 2] - math.pi, lorentz.delta_phi(z[..., 2], 0.0))
        z = torch.stack([torch.exp(z[..., 0]), z[..., 1], phi], -1)
        integ = ctx.integrand
        chains, nu, ltop = self.blocks(integ)
        had, lep_on = self._law_flags(integ, law, pick)
        for chain in chains:
            # Hadronic level 2: W and top masses; 1: W mass only; 3: top mass only (a, b from
            # detector Gaussians); 0: detector Gaussians.
            z_new = self._chain_transform(chain, z, c, finite_w, eps, uc)
            if chain.c is not None and bool((had == 1).any()):
                z_w = self._chain_transform(replace(chain, c=None), z, c, finite_w, eps, uc)
                z_new = torch.where((had == 1)[..., None, None], z_w, z_new)
            gauss = had == 0
            if chain.c is not None and bool((had == 3).any()):
                z_t = replace(chain, w_free=True).transform(z, uc)
                z_new = torch.where((had == 3)[..., None, None], z_t, z_new)
            elif chain.c is None:
                gauss = gauss | (had == 3)
            z = torch.where(gauss[..., None, None], z, z_new)
        if ltop is not None:
            roots = ltop.roots(z, self._others_sum(z, integ, ltop.b))
            xs, gs, ok = roots
            x = ltop.sample_x(uc[..., ltop.b, 0], c[..., ltop.b, 0], finite_w[..., ltop.b, 0],
                              xs, gs, ok)
            # Law without the leptonic top: the b's p_T keeps its detector Gaussian.
            x = torch.where(lep_on, x, torch.log(z[..., ltop.b, 0]))
            z = z.clone()
            z[..., ltop.b, 0] = torch.exp(x)
            p_plus: Tensor | float = ltop.p_plus(x, xs, gs, ok)
        else:
            p_plus = 0.5
        r = integ.recoil
        bal = self._balance(z, integ)
        a = bal + ctx.kernel_sigma[:, None] * eps[..., r, :][..., [0, 2]]
        z = z.clone()
        z[..., r, 0] = torch.linalg.vector_norm(a, dim=-1)
        z[..., r, 2] = torch.atan2(a[..., 1], a[..., 0])
        if nu is not None:
            eta_nu = nu.eta(z, bal, uc[..., r, 1], p_plus)
            z = z.clone()
            z[..., r, 1] = eta_nu
        self._roots_of = (z, roots) if ltop is not None else None
        return z

    def _chain_transform(self, chain: HadronicChain, z: Tensor, c: Tensor, w: Tensor,
                         eps: Tensor, uc: Tensor) -> Tensor:
        """z with p_T of a from the chain's combined law and of b (and c) from its masses."""
        mean, sd = chain_law(chain, z, c, w)
        z = z.clone()
        z[..., chain.a, 0] = torch.exp(mean + COMBINE_SCALE * sd * eps[..., chain.a, 0])
        return chain.transform(z, uc)

    def laws(self, integrand: MEMIntegrand) -> list[tuple[bool, bool]]:
        """The channel's laws (hadronic level, leptonic top block on); law 0 = all blocks on.

        Hadronic level 2: the chains' W and top masses fix p_T of b and c; 1: the W mass only
        (c from its detector Gaussian); 3: the top mass only (a, b from their detector
        Gaussians, c from the top mass: a top on shell whose W is far off shell, as when a
        jet from elsewhere takes a W daughter's place); 0: no chain (a, b, c from their
        detector Gaussians).
        A parton lost from acceptance whose place an ISR jet takes leaves a top (or a W) far
        off shell, where the blocks put no samples; the laws with a block off cover it. One law
        when the process has no block (Drell–Yan, W)."""
        chains, _, ltop = self.blocks(integrand)
        had = [2, 1, 0, 3] if any(ch.c is not None for ch in chains) else [2, 0] if chains else [2]
        lep = [True, False] if ltop is not None else [True]
        return [(h, lp) for lp in lep for h in had]

    def law_log_prob(self, ctx: SamplingContext) -> Tensor:
        """(B, V) log probability of each law: the marginal Σ_σ π(σ) β_v(σ) of
        ``prep["law_logp_pick"]`` where the sampler adapts the laws per assignment, else
        ``prep["law_logp"]`` (adapted per event) where present, else law 0 only."""
        v = len(self.laws(ctx.integrand))
        if "law_logp_pick" in ctx.prep:
            return torch.logsumexp(ctx.prep["law_logp_pick"][..., :v]
                                   + self._pick_logp(ctx)[..., None], 1)
        if "law_logp" in ctx.prep:
            return ctx.prep["law_logp"][:, :v]
        out = torch.full((len(ctx.events), v), -math.inf, dtype=torch.float64)
        out[:, 0] = 0.0
        return out

    def law_log_prob_pick(self, ctx: SamplingContext, pick: Tensor) -> Tensor:
        """(V, S, B) log probability β_v(σ) of each law given the assignments ``pick`` (S, B):
        ``prep["law_logp_pick"]`` (B, P, V) where the sampler adapts the laws per assignment,
        else :meth:`law_log_prob` for every assignment."""
        v = len(self.laws(ctx.integrand))
        s, b = pick.shape
        if "law_logp_pick" in ctx.prep:
            t = ctx.prep["law_logp_pick"][..., :v]
            g = torch.gather(t[None].expand(s, *t.shape), 2,
                             pick[..., None, None].expand(s, b, 1, v))[:, :, 0]
            return g.permute(2, 0, 1)
        return self.law_log_prob(ctx).T[:, None].expand(v, s, b)

    def _law_table(self, ctx: SamplingContext) -> Tensor:
        """(V, B, P) log β_v(σ) for every assignment σ."""
        if "law_logp_pick" in ctx.prep:
            v = len(self.laws(ctx.integrand))
            return ctx.prep["law_logp_pick"][..., :v].permute(2, 0, 1)
        return self.law_log_prob(ctx).T[..., None]

    def _law_flags(self, integ: MEMIntegrand, law: Tensor | None,
                   like: Tensor) -> tuple[Tensor, Tensor]:
        """(S, B) hadronic level and leptonic top block on, for laws ``law``."""
        if law is None:
            return (torch.full(like.shape, 2, dtype=torch.long),
                    torch.ones(like.shape, dtype=torch.bool))
        flags = torch.tensor(self.laws(integ), dtype=torch.long)  # (V, 2)
        return flags[law, 0], flags[law, 1].bool()

    def log_prob(self, z: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density of the channel at z (S, B, n, 3), summed over assignments and
        laws."""
        centre, width, _ = self._centres(ctx)
        used = torch.isfinite(self.law_log_prob(ctx)).any(0)
        lp, rest = self._log_terms(z, ctx, centre[None], width[None], used)  # (V', S, B, P)
        lpl = self._pick_logp(ctx)[None] + self._law_table(ctx)[used]  # (V', B, P)
        return self._sum_laws(torch.logsumexp(lp + lpl[:, None], -1) + rest)

    def log_prob_assignment(self, z: Tensor, ctx: SamplingContext, pick: Tensor) -> Tensor:
        """(S, B) log density of z given the assignment ``pick`` (S, B): only the picked
        assignment's Gaussians are evaluated."""
        lb = self.law_log_prob_pick(ctx, pick)
        used = torch.isfinite(lb).flatten(1).any(1)
        return self._sum_laws(self._law_terms(z, ctx, pick, used) + lb[used])

    def log_prob_joint(self, z: Tensor, pick: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density of (z, pick): log π(pick) + log q(z | pick)."""
        return torch.logsumexp(self.law_log_prob_joint(z, pick, ctx), 0)

    def law_log_prob_joint(self, z: Tensor, pick: Tensor, ctx: SamplingContext) -> Tensor:
        """(V, S, B) log of law v's part of the density of (z, pick): log π(pick) + log β_v
        + log q_v(z | pick); −inf for laws of probability 0."""
        lpi = torch.gather(self._pick_logp(ctx)[None].expand(len(pick), -1, -1), -1,
                           pick[..., None])[..., 0]
        lb = self.law_log_prob_pick(ctx, pick)  # (V, S, B)
        out = torch.full((lb.shape[0], *z.shape[:2]), -math.inf, dtype=z.dtype)
        used = torch.isfinite(lb).flatten(1).any(1)
        out[used] = self._law_terms(z, ctx, pick, used) + lb[used] + lpi
        return torch.where(torch.isnan(out), -math.inf, out)

    def _law_terms(self, z: Tensor, ctx: SamplingContext, pick: Tensor,
                   used: Tensor | None = None) -> Tensor:
        """(V', S, B) log q_v(z | pick) of the laws ``used`` (default: those of probability >
        0 for some event)."""
        centre, width, _ = self._centres(ctx)
        c, w = gather_pick(centre, pick)[:, :, None], gather_pick(width, pick)[:, :, None]
        lp, rest = self._log_terms(z, ctx, c, w, used)
        return lp[..., 0] + rest

    @staticmethod
    def _sum_laws(lv: Tensor) -> Tensor:
        """logsumexp over laws of lv (V', S, B) (log β included) → (S, B), NaN → −inf."""
        out = torch.logsumexp(torch.where(torch.isnan(lv), -math.inf, lv), 0)
        return torch.where(torch.isnan(out), -math.inf, out)

    def _log_terms(self, z: Tensor, ctx: SamplingContext, centre: Tensor, width: Tensor,
                   used: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-assignment part (V', S, B, P') and assignment-free part (V', S, B) of log q_v(z)
        (:func:`~unfoldmem.mem.reco_density.law_log_terms`)."""
        return law_log_terms(self, z, ctx, centre, width, used)
