"""Neural importance sampling: σ from the flow agrees with analytic integrals and with VEGAS."""

from __future__ import annotations

import math

import pytest
import torch

from unfoldmem.simulate.nis import (
    SAMPLERS,
    FlowSampler,
    HypercubeFlow,
    NISConfig,
    VegasSampler,
    adapt_vegas,
    integrate,
    make_sampler,
)

DIM = 3
SMALL = NISConfig(transforms=3, hidden=(32, 32), bins=8, vegas_iterations=5, vegas_neval=2000,
                  warmup_points=4000, warmup_epochs=6, kl_steps=30, kl_batch=1000, lr=3e-3)


def _ridge() -> torch.distributions.MultivariateNormal:
    # a narrow Gaussian ridge along the cube diagonal: not separable, so VEGAS's product grid
    # cannot follow it; 0.5 ± 10 σ lies inside the cube, so ∫_cube = 1 - O(1e-20)
    cov = 0.01 * (0.1 * torch.eye(DIM, dtype=torch.float64)
                  + 0.9 * torch.ones(DIM, DIM, dtype=torch.float64))
    return torch.distributions.MultivariateNormal(torch.full((DIM,), 0.5, dtype=torch.float64), cov)


@pytest.fixture(scope="module")
def trained() -> dict:
    torch.manual_seed(0)
    mvn = _ridge()

    def f(u: torch.Tensor) -> torch.Tensor:
        return mvn.log_prob(u).exp()

    flow = make_sampler(f, DIM, "flow", SMALL)  # the default: a flow on top of the VEGAS map
    integ = adapt_vegas(f, DIM, SMALL)  # the same seed: the same grid
    return {"f": f, "integ": integ, "flow": flow, "history": flow.history}


def test_flow_and_vegas_agree_with_analytic_gaussian_integral(trained):
    """Reference: ∫ N(u; μ, Σ) du over the cube = 1 (the Gaussian lies 10 σ inside the cube).

    Both samplers estimate it within 4 of their MC errors, agree with each other within 4
    combined errors, and the flow has the higher unweighting efficiency on this non-separable
    ridge (VEGAS's grid is a product of 1D maps).
    """
    f = trained["f"]
    flow = integrate(f, DIM, trained["flow"], n=20000)
    veg = integrate(f, DIM, VegasSampler(trained["integ"], seed=5), n=20000)
    assert abs(flow.sigma - 1.0) < 4 * flow.sigma_err, flow
    assert abs(veg.sigma - 1.0) < 4 * veg.sigma_err, veg
    assert abs(flow.sigma - veg.sigma) < 4 * math.hypot(flow.sigma_err, veg.sigma_err)
    assert flow.unweighting_efficiency > veg.unweighting_efficiency
    assert flow.extra["ess_ratio"] > 2 * veg.extra["ess_ratio"]
    assert flow.precision_per_second > 0 and flow.extra["rel_err"] < 0.02


def test_training_improves_effective_sample_size(trained):
    """The on-policy effective sample size rises during forward-KL training (last vs first)."""
    ess = trained["history"]["ess_ratio"]
    assert len(ess) == SMALL.kl_steps - trained["history"]["skipped"]
    assert sum(ess[-5:]) / 5 > sum(ess[:5]) / 5


def test_hypercube_flow_is_a_normalised_density_on_the_cube():
    """Reference: a density integrates to 1 — E_uniform[q(u)] = 1 within 4 MC errors, and the
    log q returned with a sample equals log_prob re-evaluated at that sample."""
    torch.manual_seed(1)
    model = HypercubeFlow(DIM, NISConfig(transforms=2, hidden=(16,), bins=6, on_vegas=False))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a non-trivial density
        u = torch.rand(40000, DIM, dtype=torch.float64)
        q = model.log_prob(u).exp()
        us, log_q = model.sample(2000)
        again = model.log_prob(us)
    assert abs(float(q.mean()) - 1.0) < 4 * float(q.std()) / math.sqrt(len(q))
    assert ((us > 0) & (us < 1)).all()
    assert torch.allclose(log_q, again, atol=1e-6)


def test_untrained_flow_is_uniform_sampling():
    """Reference: with zero-initialised last layers (the on-VEGAS start) the probit-space flow
    is q(u) = 1 exactly (identity splines on a standard normal base), so ∫ 1 du = 1 with zero
    variance."""
    model = HypercubeFlow(2, NISConfig(transforms=2, hidden=(8,)))
    res = integrate(lambda u: torch.ones(len(u), dtype=torch.float64), 2, FlowSampler(model),
                    n=1000)
    assert abs(res.sigma - 1.0) < 1e-9 and res.unweighting_efficiency > 1 - 1e-9


def test_plain_cube_flow_with_vegas_warm_start_integrates_correctly():
    """Reference: ∫_0^1 ∫_0^1 6 u0 u1² du = 1 (analytic); the flow trained on the plain cube
    (VEGAS-weighted warm start, then KL) estimates it within 4 MC errors."""
    cfg = NISConfig(transforms=2, hidden=(16,), vegas_iterations=3, vegas_neval=1000,
                    warmup_points=2000, warmup_epochs=3, kl_steps=10, kl_batch=500,
                    on_vegas=False)
    res = integrate(lambda u: 6 * u[:, 0] * u[:, 1] ** 2, 2, "flow", n=10000, config=cfg)
    assert abs(res.sigma - 1.0) < 4 * res.sigma_err
    assert res.extra["sampler"] == "flow" and res.extra["setup_seconds"] > 0


def test_unknown_sampler_is_rejected():
    with pytest.raises(ValueError, match="vegas, flow"):
        make_sampler(lambda u: u[:, 0], 2, "mcmc")
    assert SAMPLERS == ("vegas", "flow")


@pytest.mark.slow
def test_drell_yan_sigma_flow_agrees_with_vegas_cross_section():
    """Reference: σ(pp → μμ, 60 < m < 120 GeV) from the independent VEGAS integration of
    unfoldmem.physics.xsec.cross_section (stratified, adaptive), within 4 combined errors."""
    from unfoldmem.cards import load_card
    from unfoldmem.physics.hadronic import integrand_from_card
    from unfoldmem.physics.xsec import cross_section

    integrand = integrand_from_card(load_card("cards/processes/drell_yan.yaml", kind="process"))
    ref = cross_section(integrand, neval=10000, nitn_adapt=5, nitn=5)
    cfg = NISConfig(transforms=3, hidden=(32, 32), warmup_points=8000, warmup_epochs=6,
                    kl_steps=40, kl_batch=1500, vegas_neval=4000, vegas_iterations=6)
    flow = integrate(integrand.weight, integrand.dim, "flow", n=20000, config=cfg)
    assert abs(flow.sigma - ref.sigma) < 4 * math.hypot(flow.sigma_err, ref.error), (flow, ref)


@pytest.mark.slow
def test_ttbar_flow_unweighting_efficiency_beats_vegas():
    """pp → tt̄ at 13 TeV: the trained flow's unweighting efficiency ⟨w⟩/max w exceeds that of
    VEGAS importance sampling with the same adapted grid and the same number of points, and both
    σ agree within 4 combined errors (reference: each other, two independent samplers)."""
    from unfoldmem.cards import load_card
    from unfoldmem.physics.hadronic import integrand_from_card

    integrand = integrand_from_card(load_card("cards/processes/ttbar.yaml", kind="process"))
    cfg = NISConfig(transforms=4, hidden=(32, 32), bins=10, vegas_neval=5000,
                    kl_steps=40, variance_steps=20, kl_batch=2000)
    flow_sampler = make_sampler(integrand.weight, integrand.dim, "flow", cfg)
    integ = adapt_vegas(integrand.weight, integrand.dim, cfg)  # the grid the flow starts from
    flow = integrate(integrand.weight, integrand.dim, flow_sampler, n=30000)
    veg = integrate(integrand.weight, integrand.dim, VegasSampler(integ, seed=1), n=30000)
    print(f"ttbar unweighting efficiency: flow {flow.unweighting_efficiency:.3f}, "
          f"VEGAS {veg.unweighting_efficiency:.3f}")
    assert abs(flow.sigma - veg.sigma) < 4 * math.hypot(flow.sigma_err, veg.sigma_err)
    assert flow.unweighting_efficiency > veg.unweighting_efficiency
