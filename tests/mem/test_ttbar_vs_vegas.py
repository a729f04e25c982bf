"""tt̄ → b μ⁺ν b̄ d ū with the exact transfer function: importance sampling vs VEGAS per event,
and the resonance blocks of the detector channel (exact maps with their Jacobians)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests._support.mem_events import make_tt_events, tt_setup
from unfoldmem.mem.channels import RecoChannel, SamplingContext
from unfoldmem.mem.sampling import importance_sample
from unfoldmem.mem.vegas_baseline import vegas_log_integral

torch.set_num_threads(1)


def _pulls(n: int, seed: int, precision: float) -> tuple[np.ndarray, np.ndarray]:
    """(IS − VEGAS)/σ per event and the IS weights' Pareto k̂ (n,) each."""
    _, det, integ = tt_setup()
    ev = make_tt_events(n, seed)
    chs = [RecoChannel(det, scale=1.25, physics=True), RecoChannel(det)]
    res = importance_sample(integ, ev, [{}], chs, [0.9, 0.1], precision=precision,
                            n_max=1 << 17, generator=torch.Generator().manual_seed(seed))
    vg = vegas_log_integral(integ, ev, {}, detector=det, precision=precision, neval=2000,
                            seed=seed)
    ok = (res.flag == 0) & (vg.flag == 0)
    assert int(ok.sum()) == n
    d = res.log_p[:, 0] - vg.log_p
    return (d / torch.hypot(res.log_p_err[:, 0], vg.log_p_err)).numpy(), res.pareto_k[:, 0].numpy()


def test_resonance_map_density_is_its_jacobian() -> None:
    """The physics channel's log q(z(u)) for one assignment equals −log|det ∂z/∂u| of its map
    (autograd Jacobian, the independent reference) up to the other branches' small tails,
    which can only add density (the mixture parts ε → 1e-12)."""
    _, det, integ = tt_setup()
    ev = make_tt_events(1, seed=3)
    prep = integ.prepare(ev)
    prep = {k: v[:, :1] if k in ("index", "valid", "isr_term") else v for k, v in prep.items()}
    ctx = SamplingContext(integ, ev, prep, torch.full((1,), 10.0, dtype=torch.float64))
    ch = RecoChannel(det, scale=1.0, physics=True)
    chains, nu, ltop = ch.blocks(integ)
    assert len(chains) == 1 and chains[0].c == 3 and nu is not None and ltop is not None
    nu.eps, nu.edge_min, nu.edge_max, nu.top_share, ltop.eps = (1e-12,) * 5
    g = torch.Generator().manual_seed(5)
    pick = torch.zeros(1, 1, dtype=torch.long)
    diffs = []
    for _ in range(6):
        u = torch.rand(18, generator=g, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(
            lambda uu: ch.transform(uu.view(1, 1, 6, 3), ctx, pick).reshape(-1), u)
        z = ch.transform(u.view(1, 1, 6, 3), ctx, pick)
        diffs.append(float(ch.log_prob(z, ctx)) + float(torch.linalg.slogdet(jac)[1]))
    diffs_t = torch.tensor(diffs)
    assert (diffs_t > -1e-6).all()
    assert float(diffs_t.median()) < 0.05


def test_joint_channel_density_sums_to_the_marginal() -> None:
    """The physics channel's density of (z, σ) summed over the 24 assignments σ equals its
    density of z (the all-assignment mixture, evaluated independently), and draws of (z, σ)
    have σ distributed as π (uniform here: 24 × 4000 draws, 5σ binomial band)."""
    _, det, integ = tt_setup()
    ev = make_tt_events(2, seed=3)
    prep = integ.prepare(ev)
    ctx = SamplingContext(integ, ev, prep, torch.full((2,), 10.0, dtype=torch.float64))
    ch = RecoChannel(det, scale=1.1, physics=True)
    z, pick = ch.sample_joint(64, ctx, torch.Generator().manual_seed(4))
    joint = torch.stack([ch.log_prob_joint(z, torch.full_like(pick, k), ctx) for k in range(24)])
    torch.testing.assert_close(torch.logsumexp(joint, 0), ch.log_prob(z, ctx), rtol=0, atol=1e-9)
    _, pick = ch.sample_joint(4000, ctx, torch.Generator().manual_seed(5))
    counts = torch.stack([(pick == k).sum(0) for k in range(24)]).double()
    band = 5 * math.sqrt(4000 * (1 / 24) * (23 / 24))
    assert ((counts - 4000 / 24).abs() < band).all()


def _bw_grid(m: float, g: float, lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    """s nodes uniform in the Breit–Wigner angle (dense on the peak), (n, ...) GeV²."""
    t0, t1 = torch.atan((lo - m * m) / (m * g)), torch.atan((hi - m * m) / (m * g))
    f = torch.linspace(1e-9, 1 - 1e-9, n, dtype=torch.float64).view(-1, *([1] * lo.dim()))
    return m * m + m * g * torch.tan(t0 + f * (t1 - t0))


def test_resonance_block_densities_integrate_to_one() -> None:
    """Numerical quadrature (trapezoid on peak-adapted grids, the independent reference): the
    neutrino block's density of η_ν integrates to 1 for fixed other partons, and the hadronic
    chain's joint density of (p_T,b, p_T,c) integrates to 1 (inner p_T,c, outer p_T,b)."""
    _, det, integ = tt_setup()
    ev = make_tt_events(1, seed=3)
    prep = integ.prepare(ev)
    ctx = SamplingContext(integ, ev, prep, torch.full((1,), 10.0, dtype=torch.float64))
    ch = RecoChannel(det, scale=1.0, physics=True)
    (chain,), nu, _ = ch.blocks(integ)
    z0 = ch.sample(2, ctx, torch.Generator().manual_seed(2))[:, 0]  # (2, 6, 3)
    for zi in z0:
        bal = ch._balance(zi[None], integ)[0]
        # η_ν: the BW branches are narrow in η near the reachable minimum; a fine uniform grid.
        eta = torch.linspace(-10, 10, 100001, dtype=torch.float64)
        z = zi.expand(len(eta), 6, 3).clone()
        z[:, nu.nu, 1] = eta
        dens = torch.exp(nu.log_prob(z, bal.expand(len(eta), 2)))
        assert abs(float(torch.trapezoid(dens, eta)) - 1) < 2e-3
        # chain: p_T,b from s1 nodes, p_T,c from s2 nodes per p_T,b.
        lo1, hi1, top_lo = chain._ranges(zi[chain.a, 0:1])
        g_ab, g_ac, g_bc = chain.gs(zi[None])
        s1 = _bw_grid(chain.m_w, chain.g_w, lo1, hi1, 601)[:, 0]  # (n1,)
        pt_b = s1 / (2 * zi[chain.a, 0] * g_ab)
        hi2 = torch.full_like(s1, (chain.m_t + chain.cut * chain.g_t) ** 2)
        s2 = _bw_grid(chain.m_t, chain.g_t, torch.maximum(s1, top_lo), hi2, 601)  # (n2, n1)
        pt_c = (s2 - s1) / (2 * (zi[chain.a, 0] * g_ac + pt_b * g_bc))
        z = zi.expand(*s2.shape, 6, 3).clone()
        z[..., chain.b, 0] = pt_b
        z[..., chain.c, 0] = pt_c
        inner = torch.trapezoid(torch.exp(chain.log_prob(z)), pt_c, dim=0)
        assert abs(float(torch.trapezoid(inner, pt_b)) - 1) < 2e-3


@pytest.mark.slow
def test_ttbar_is_agrees_with_vegas_few() -> None:
    """3 tt̄ events at 5 %: importance sampling and VEGAS (independent adaptive integrator on
    the same integrand) agree within 4 combined standard errors per event (≈ 5 min)."""
    pulls, _ = _pulls(3, seed=11, precision=0.05)
    assert np.abs(pulls).max() < 4


@pytest.mark.slow
def test_ttbar_is_agrees_with_vegas_30() -> None:
    """Issue 10: on 30 tt̄ events at 5 % the pulls (IS − VEGAS)/σ have mean within 3/√N of 0
    and width within 3/√(2(N−1)) + 0.1 of 1, over the events whose IS error is reliable
    (Pareto k̂ ≤ 0.7; at most 3 of 30 are not: they are reported, not compared) (≈ 10 min on
    one core, mostly VEGAS on the two unreliable events). Measured 2026-11-27 (session 6):
    mean −0.34, width 1.32 over 28 events; largest pulls −3.6 (event 9: a starved W-daughter
    swap partner), 2.5, 2.3; k̂ 2.7 on event 25 (log P ≈ −300) and 0.73 on event 5; with the
    swap partners pooled (adaptation.pooled_with_partners): mean −0.01, width 1.10 over 29
    events, event 9 −0.8. Before the top-mass-only law, the joint
    (assignment, law) adaptation and VEGAS's frozen grid it failed: −5.5 on event 4 (IS missed
    30 % of the integral), 3.4 on event 27 (VEGAS 0.17 low with a too small error)."""
    pulls, k = _pulls(30, seed=5, precision=0.05)
    reliable = ~(k > 0.7)
    assert int((~reliable).sum()) <= 3, k
    pulls = pulls[reliable]
    n = len(pulls)
    print(f"pulls: mean {pulls.mean():.3f} width {pulls.std(ddof=1):.3f}", np.round(pulls, 2))
    assert abs(pulls.mean()) < 3 / math.sqrt(n)
    assert abs(pulls.std(ddof=1) - 1) < 3 / math.sqrt(2 * (n - 1)) + 0.1


def test_every_law_is_a_normalised_density_of_the_mixture_sampler() -> None:
    """Laws with resonance blocks off (the sampler adapts their probabilities per event): for
    z drawn from the channel with all eight laws mixed (and a non-uniform assignment law),
    E[q_v(z, σ)/q(z, σ)] = 1 for every law v. That holds only if each law's density is
    normalised and q is the density the sampler draws from (the reference: ∫ q_v = 1; the
    ratio is at most 1/β_v, so the tolerance is 5 standard errors of the sample mean)."""
    _, det, integ = tt_setup()
    ev = make_tt_events(2, seed=3)
    prep = integ.prepare(ev)
    ch = RecoChannel(det, scale=1.1, physics=True)
    laws = ch.laws(integ)
    assert len(laws) == 8 and laws[0] == (2, True) and laws[3] == (3, True)
    beta = torch.tensor([0.25, 0.1, 0.15, 0.15, 0.1, 0.1, 0.05, 0.1], dtype=torch.float64)
    prep["law_logp"] = torch.log(beta).expand(2, 8).clone()
    pick = torch.rand(2, prep["valid"].shape[1], generator=torch.Generator().manual_seed(1))
    prep["pick_logp"] = torch.log_softmax(3 * pick.double(), -1)
    ctx = SamplingContext(integ, ev, prep, torch.full((2,), 10.0, dtype=torch.float64))
    z, pk = ch.sample_joint(6000, ctx, torch.Generator().manual_seed(6))
    lv = ch.law_log_prob_joint(z, pk, ctx)  # (V, S, B), includes log β_v
    lq = torch.logsumexp(lv, 0)
    torch.testing.assert_close(lq, ch.log_prob_joint(z, pk, ctx), rtol=0, atol=1e-12)
    # A Cauchy tail can overflow p_T to inf (integrand 0 there, mass ~1e-4): ratio 0.
    ratio = torch.exp(lv - torch.log(beta)[:, None, None] - lq).nan_to_num(0.0)
    assert float((~torch.isfinite(lq)).double().mean()) < 1e-3
    mean, se = ratio.mean(1), ratio.std(1) / math.sqrt(ratio.shape[1])
    assert ((mean - 1).abs() < 5 * se + 1e-3).all(), (mean, se)


def test_laws_given_the_assignment_are_what_the_sampler_draws() -> None:
    """Laws drawn given the assignment (``prep["law_logp_pick"]``, β_v(σ), as the sampler
    adapts them per (assignment, law)): for (z, σ) drawn from the channel,
    E[π(σ) q_v(z | σ)/q(z, σ)] = 1 for every law v (each law's density is normalised for every
    σ and q is the density the sampler draws from: the reference ∫ q_v = 1, 5 standard errors
    of the mean); the laws drawn for a fixed σ follow β(σ) (5σ binomial band); and the density
    of z summed over σ from the joint densities equals :meth:`RecoChannel.log_prob`."""
    _, det, integ = tt_setup()
    ev = make_tt_events(2, seed=3)
    prep = integ.prepare(ev)
    ch = RecoChannel(det, scale=1.1, physics=True)
    g = torch.Generator().manual_seed(8)
    prep["pick_logp"] = torch.log_softmax(3 * torch.rand(2, 24, generator=g).double(), -1)
    prep["law_logp_pick"] = torch.log_softmax(2 * torch.rand(2, 24, 8, generator=g).double(), -1)
    ctx = SamplingContext(integ, ev, prep, torch.full((2,), 10.0, dtype=torch.float64))
    z, pk = ch.sample_joint(6000, ctx, torch.Generator().manual_seed(6))
    lv = ch.law_log_prob_joint(z, pk, ctx)  # (V, S, B), includes log β_v(σ)
    lq = torch.logsumexp(lv, 0)
    ratio = torch.exp(lv - ch.law_log_prob_pick(ctx, pk) - lq).nan_to_num(0.0)
    assert float((~torch.isfinite(lq)).double().mean()) < 1e-3
    mean, se = ratio.mean(1), ratio.std(1) / math.sqrt(ratio.shape[1])
    assert ((mean - 1).abs() < 5 * se + 1e-3).all(), (mean, se)
    pick = torch.full((20000, 2), 5, dtype=torch.long)
    law = ch.draw_laws(20000, ctx, torch.Generator().manual_seed(9), pick)
    beta = torch.exp(prep["law_logp_pick"][:, 5])  # (B, V)
    counts = torch.stack([(law == v).sum(0) for v in range(8)], -1).double()
    assert ((counts - 20000 * beta).abs() < 5 * torch.sqrt(20000 * beta * (1 - beta))).all()
    joint = torch.stack([ch.log_prob_joint(z[:64], torch.full_like(pk[:64], k), ctx)
                         for k in range(24)])
    torch.testing.assert_close(torch.logsumexp(joint, 0), ch.log_prob(z[:64], ctx), rtol=0,
                               atol=1e-9)
