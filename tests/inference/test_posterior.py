"""NUTS posteriors against conjugate Gaussian posteriors (closed form)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unfoldmem.errors import CardError
from unfoldmem.inference.calibration import GaussianToy, toy_likelihoods
from unfoldmem.inference.fit import grid_objective
from unfoldmem.inference.posterior import (
    Prior,
    likelihood_scale,
    parse_prior,
    sample_posterior,
)

S, N = 10.0, 400


@pytest.fixture(scope="module")
def gauss():
    toy = GaussianToy.sample(173.0, S, N, seed=1)
    return toy, grid_objective(toy_likelihoods(toy, {"m_t": np.linspace(169.0, 177.0, 17)}))


def _close(summ: dict, mean: float, sd: float) -> None:
    ess = summ["ess"]
    assert ess > 100
    # MC error of a posterior mean is sd/√ESS; of a standard deviation about sd/√(2 ESS)
    assert abs(summ["mean"] - mean) < 4 * sd / math.sqrt(ess)
    assert abs(summ["std"] - sd) < 4 * sd / math.sqrt(2 * ess)
    assert summ["ci68"][0] < mean < summ["ci68"][1] and summ["r_hat"] < 1.1


def test_flat_prior_gives_the_likelihood(gauss) -> None:
    """Uniform prior ≫ σ: posterior N(x̄, s/√n) (flat prior × Gaussian likelihood)."""
    toy, obj = gauss
    post = sample_posterior(obj, {"m_t": Prior(kind="uniform", low=169.0, high=177.0)},
                            num_samples=400, warmup=200, num_chains=1, seed=1)
    _close(post.summary()["m_t"], float(toy.x.mean()), S / math.sqrt(N))
    assert post.samples["m_t"].shape == (400,) and post.chains["m_t"].shape == (1, 400)


def test_normal_prior_is_conjugate(gauss) -> None:
    """Normal prior N(μ0, τ0) × Gaussian likelihood: posterior precision 1/τ0² + n/s², mean the
    precision-weighted average (conjugate normal, Gelman et al., BDA3 §2.5)."""
    toy, obj = gauss
    mu0, tau0 = 171.0, 0.5
    prec = 1 / tau0**2 + N / S**2
    mean = (mu0 / tau0**2 + float(toy.x.mean()) * N / S**2) / prec
    post = sample_posterior(obj, {"m_t": Prior(kind="normal", mean=mu0, sigma=tau0)},
                            num_samples=400, warmup=200, num_chains=1, seed=2)
    _close(post.summary()["m_t"], mean, 1 / math.sqrt(prec))
    assert post.to_dict()["priors"]["m_t"]["kind"] == "normal"


def test_parse_prior() -> None:
    """The CLI forms parse; bad ones are CardErrors naming --prior and the form expected."""
    assert parse_prior("m_t=uniform:170:176") == ("m_t", Prior(kind="uniform", low=170, high=176))
    assert parse_prior("m_t=normal:173:1.5")[1].sigma == 1.5
    for bad in ("m_t", "m_t=flat:1:2", "m_t=uniform:176:170", "m_t=normal:1:x"):
        with pytest.raises(CardError, match="--prior"):
            parse_prior(bad)


def test_prior_outside_grid_and_missing_prior(gauss) -> None:
    """A uniform prior beyond the θ grid, or a parameter without prior, is refused."""
    _, obj = gauss
    with pytest.raises(CardError, match=r"leaves the θ grid \[169.0, 177.0\]"):
        sample_posterior(obj, {"m_t": Prior(kind="uniform", low=160, high=176)})
    with pytest.raises(CardError, match="no prior given"):
        sample_posterior(obj, {})


def test_weight_two_half_sample_widens_by_sqrt2(gauss) -> None:
    """A random half with weight 2 (Monte-Carlo weights): the lnL is scaled by Σw/Σw² = 1/2, so
    the posterior is the closed-form N(weighted mean, s/√n_half) of the n_half kept events
    (conjugate normal, flat prior; Kish effective sample size), ≈ √2 × the full sample's width;
    the unscaled weighted likelihood would give the full sample's width s/√N."""
    toy, _ = gauss
    keep = np.random.default_rng(4).uniform(size=N) < 0.5
    w = torch.from_numpy(np.where(keep, 2.0, 0.0))
    n_half = int(keep.sum())
    obj = grid_objective(toy_likelihoods(toy, {"m_t": np.linspace(169.0, 177.0, 17)}), weight=w)
    assert likelihood_scale(obj) == pytest.approx(0.5)
    post = sample_posterior(obj, {"m_t": Prior(kind="uniform", low=169.0, high=177.0)},
                            num_samples=400, warmup=200, num_chains=1, seed=3)
    summ = post.summary()["m_t"]
    _close(summ, float(toy.x[torch.from_numpy(keep)].mean()), S / math.sqrt(n_half))
    assert post.to_dict()["likelihood_scale"] == pytest.approx(0.5)
    # √2 × the full width, within the MC error of the width and the binomial spread of n_half
    tol = 4 / math.sqrt(2 * summ["ess"]) + 4 * 0.5 / math.sqrt(N)
    assert abs(summ["std"] / (S / math.sqrt(N)) / math.sqrt(2) - 1) < tol


def test_likelihood_scale_frequency_and_unit_weights(gauss) -> None:
    """Unit weights and frequency weights (weight_errors='hesse') leave ln L unscaled;
    weights summing to ≤ 0 are refused."""
    toy, obj = gauss
    assert likelihood_scale(obj) == 1.0
    lik = toy_likelihoods(toy, {"m_t": np.linspace(169.0, 177.0, 17)})
    w = torch.full((N,), 2.0, dtype=torch.float64)
    assert likelihood_scale(grid_objective(lik, weight=w, weight_errors="hesse")) == 1.0
    assert likelihood_scale(grid_objective(lik, weight=w)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sum to"):
        likelihood_scale(grid_objective(lik, weight=-w))
