r"""Log density of the detector channel's laws: detector Gaussians, resonance blocks, recoil kernel.

:func:`law_log_terms` is the density half of :class:`~unfoldmem.mem.channels.RecoChannel`:
for each law (hadronic chains at level 2, 1, 3 or 0, leptonic top block on or off) it returns the
log density of z under :meth:`~unfoldmem.mem.channels.RecoChannel.transform`, split into the
per-assignment part and the part shared by every assignment. Every term is the exact Jacobian of
the channel's map (log-p_T laws carry 1/p_T per unit p_T).

References:
    S. Brochet et al., MoMEMta, Eur. Phys. J. C 79 (2019) 126, arXiv:1805.08555
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from unfoldmem.mem.integrand import MEMIntegrand
from unfoldmem.mem.resonances import HadronicChain, LeptonicTop, NeutrinoBlock
from unfoldmem.mem.wrapped_normal import log_wrapped_normal_fast
from unfoldmem.physics.densities import log_normal

if TYPE_CHECKING:
    from unfoldmem.mem.channels import RecoChannel
    from unfoldmem.mem.context import SamplingContext

__all__ = ["COMBINE_SCALE", "chain_law", "law_log_terms", "law_masks"]

_TWO_PI = 2 * math.pi
COMBINE_SCALE = 1.2  # width of the combined jet-energy law over its Gaussian estimate


def law_masks(
    integ: MEMIntegrand,
    blocks: tuple[list[HadronicChain], NeutrinoBlock | None, LeptonicTop | None],
) -> tuple[Tensor, Tensor, bool]:
    """(n,) partons whose p_T law is the TF Gaussian, (n,) partons with TF angle laws,
    whether the recoil's η law is the per-assignment Gaussian."""
    chains, nu, _ = blocks
    others = torch.ones(integ.n, dtype=torch.bool)
    others[integ.recoil] = False
    tf_pt = others.clone()
    for c in chains:
        tf_pt[c.b] = False
        if c.c is not None:
            tf_pt[c.c] = False
    return tf_pt, others, nu is None


def chain_law(chain: HadronicChain, z: Tensor, c: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Law of log p_T,a of a chain: z (S, B, n, 3) angles; c, w centres/widths broadcasting
    to (..., n, 3) per assignment (picked: (S, B, n, 3); per assignment: (1 or S, B, P,
    n, 3))."""
    g = chain.gs(z)
    if c.dim() == 5:
        g = tuple(x[..., None] for x in g)
    k = chain.c if chain.c is not None else chain.a
    return chain.combine(g, c[..., chain.a, 0], w[..., chain.a, 0], c[..., chain.b, 0],
                         w[..., chain.b, 0], c[..., k, 0], w[..., k, 0])


def law_log_terms(channel: RecoChannel, z: Tensor, ctx: SamplingContext, centre: Tensor,
                  width: Tensor, used: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-assignment part (V', S, B, P') and assignment-free part (V', S, B) of log q_v(z)
    for the laws ``used`` (default: those of probability > 0 for some event).

    channel: the detector channel (its laws, blocks and the roots cached by its last
    ``transform``); z: (S, B, n, 3) (p_T GeV, η, φ); centre, width: (1 or S, B, P', n, 3),
    the Gaussians of P' assignments (all of them, or the picked one per sample)."""
    integ = ctx.integrand
    r = integ.recoil
    laws = channel.laws(integ)
    if used is None:
        used = torch.isfinite(channel.law_log_prob(ctx)).any(0)
    tf_pt, others, recoil_eta = law_masks(integ, channel.blocks(integ))
    zz = z[:, :, None]  # (S, B, 1, n, 3)
    lpt = torch.log(zz[..., 0])
    inv_phi = torch.isinf(width[..., 2])
    ww = torch.where(torch.isinf(width), 1.0, width)
    l_pt = log_normal(lpt, centre[..., 0], ww[..., 0]) - lpt
    l_ang = (log_normal(zz[..., 1], centre[..., 1], ww[..., 1])
             + torch.where(inv_phi, -math.log(_TWO_PI),
                           log_wrapped_normal_fast(zz[..., 2] - centre[..., 2], ww[..., 2])))
    chains, nu, ltop = channel.blocks(integ)
    # Partons whose p_T law is the same in every law: the detector Gaussian.
    fixed = tf_pt.clone()
    for chain in chains:
        fixed[chain.a] = False
    p_plus: Tensor | float = 0.5
    lb_on = None
    if ltop is not None:
        fixed[ltop.b] = False
        if channel._roots_of is not None and channel._roots_of[0] is z:
            xs, gs, ok = channel._roots_of[1]
        else:
            xs, gs, ok = ltop.roots(z, channel._others_sum(z, integ, ltop.b))
        p_plus = ltop.p_plus(lpt[..., 0, ltop.b], xs, gs, ok)
        part, lw_g = ltop.log_cauchy_part(lpt[..., 0, ltop.b], xs, gs, ok)
        # Per unit p_T: the log-p_T densities carry the 1/p_T Jacobian.
        lb_on = torch.logaddexp(part[..., None] - lpt[..., ltop.b],
                                lw_g[..., None] + l_pt[..., ltop.b])
    base = (torch.where(fixed, l_pt, 0.0) + torch.where(others, l_ang, 0.0)).sum(-1)
    if recoil_eta:
        base = base + log_normal(zz[..., r, 1], centre[..., r, 1], ww[..., r, 1])
    lq = torch.zeros(z.shape[:2], dtype=z.dtype)
    bal = channel._balance(z, integ)
    if nu is not None:
        lq = lq + nu.log_prob(z, bal, p_plus)
    a = torch.stack([z[..., r, 0] * torch.cos(z[..., r, 2]),
                     z[..., r, 0] * torch.sin(z[..., r, 2])], -1)
    sig = ctx.kernel_sigma
    lq = lq + (-0.5 * ((a - bal) ** 2).sum(-1) / sig**2 - torch.log(_TWO_PI * sig**2)
               + torch.log(z[..., r, 0]))
    # Hadronic chains with the top block on or off: per-assignment and free parts.
    had_terms: dict[int, tuple[Tensor, Tensor]] = {}
    for had in {h for (h, _), u in zip(laws, used.tolist(), strict=True) if u}:
        lp_h, lq_h = base, lq
        for chain in chains:
            if had == 0 or (had == 3 and chain.c is None):
                for k in (chain.a, chain.b, chain.c):
                    if k is not None:
                        lp_h = lp_h + l_pt[..., k]
                continue
            if had == 3:
                # Top mass only: c from it where s_ab lies below the top window, else c's TF.
                top = replace(chain, w_free=True)
                ok = top.top_reachable(z)[..., None]
                lp_h = (lp_h + l_pt[..., chain.a] + l_pt[..., chain.b]
                        + torch.where(ok, 0.0, l_pt[..., chain.c]))
                lq_h = lq_h + top.log_prob(z)
                continue
            ch = chain if had == 2 or chain.c is None else replace(chain, c=None)
            mean, sd = chain_law(ch, z, centre, ww)
            la = lpt[..., chain.a]
            lp_h = lp_h + log_normal(la, mean, COMBINE_SCALE * sd) - la
            if ch.c is None and chain.c is not None:
                lp_h = lp_h + l_pt[..., chain.c]
            lq_h = lq_h + ch.log_prob(z)
        had_terms[had] = (lp_h, lq_h)
    lps, lqs = [], []
    for (had, lep), u in zip(laws, used.tolist(), strict=True):
        if not u:
            continue
        lp_v, lq_v = had_terms[had]
        if ltop is not None:
            lp_v = lp_v + (lb_on if lep else l_pt[..., ltop.b])
        lps.append(lp_v)
        lqs.append(lq_v)
    return torch.stack(lps), torch.stack(lqs)
