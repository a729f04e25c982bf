r"""Posteriors of θ: a pyro model (priors × interpolated summed likelihood) sampled with NUTS.

Weighted events. With Monte-Carlo (sampling) weights, :math:`\exp \sum_i w_i \log P(x_i|\theta)`
is too narrow: half the events with weight 2 have the full sample's curvature, so the posterior
would be √2 too narrow (as HESSE is for the fit, :mod:`unfoldmem.inference.fit`). Whenever the
objective's weights are sampling weights (``weight_errors="sandwich"``: a weight differs from 1
and ``"hesse"`` was not asked for), the weighted log-likelihood is scaled by
:math:`\sum_i w_i / \sum_i w_i^2`, so that its total weight is the Kish effective sample size
:math:`n_{\rm eff} = (\sum w)^2/\sum w^2` (exactly √2 wider for the weight-2 half sample). This is the
"effective weights" approach discussed by Langenbruch, exact when the weights do not vary with
the score; the sandwich of the fit is the general frequentist answer. Frequency weights
(``"hesse"``) are left unscaled.

References:
    | C. Langenbruch, Eur. Phys. J. C 82 (2022) 393, arXiv:1911.01303 (Sec. 3)
    | L. Kish, *Survey Sampling*, Wiley (1965) (effective sample size)
    | T. Savitsky and D. Toth, "Bayesian estimation under informative sampling",
      Electron. J. Statist. 10 (2016) 1677, arXiv:1507.07050 (weights normalised to the
      sample size in a pseudo-posterior)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import model_validator

from unfoldmem.cards.base import StrictModel
from unfoldmem.errors import CardError
from unfoldmem.inference.fit import CallableObjective, GridObjective
from unfoldmem.inference.scaleout import single_threaded

__all__ = ["PosteriorResult", "Prior", "likelihood_scale", "parse_prior", "sample_posterior"]

_OPT = "--prior"


class Prior(StrictModel):
    """Prior of one parameter: ``uniform`` on [low, high] or ``normal`` (mean, sigma).

    A normal prior is truncated to the θ grid (the likelihood is only known there).
    """

    kind: Literal["uniform", "normal"]
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    sigma: float | None = None

    @model_validator(mode="after")
    def _check(self) -> Prior:
        if self.kind == "uniform" and (self.low is None or self.high is None or self.low >= self.high):
            msg = "a uniform prior needs low < high"
            raise ValueError(msg)
        if self.kind == "normal" and (self.mean is None or self.sigma is None or self.sigma <= 0):
            msg = "a normal prior needs mean and sigma > 0"
            raise ValueError(msg)
        return self


def parse_prior(text: str) -> tuple[str, Prior]:
    """Parse ``name=uniform:LOW:HIGH`` or ``name=normal:MEAN:SIGMA`` (the CLI's ``--prior``).

    Raises:
        CardError: naming ``--prior`` and the expected form.
    """
    form = "expected NAME=uniform:LOW:HIGH or NAME=normal:MEAN:SIGMA"
    name, _, spec = text.partition("=")
    parts = spec.split(":")
    if not name or len(parts) != 3 or parts[0] not in ("uniform", "normal"):
        raise CardError(_OPT, text, form)
    try:
        a, b = float(parts[1]), float(parts[2])
        if parts[0] == "uniform":
            return name, Prior(kind="uniform", low=a, high=b)
        return name, Prior(kind="normal", mean=a, sigma=b)
    except ValueError as exc:
        raise CardError(_OPT, text, f"{form} ({exc})") from exc


@dataclass
class PosteriorResult:
    """NUTS samples of θ and their summary (θ units); ``samples[name]`` is (chains·S,)."""

    names: list[str]
    samples: dict[str, np.ndarray]
    chains: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean, std, median, central 68 %/95 % credible intervals, ESS and split-R̂."""
        from pyro.ops.stats import effective_sample_size, split_gelman_rubin

        out = {}
        for n in self.names:
            x, ch = self.samples[n], torch.from_numpy(self.chains[n])
            q = np.quantile(x, [0.025, 0.16, 0.5, 0.84, 0.975])
            out[n] = {"mean": float(x.mean()), "std": float(x.std(ddof=1)), "median": float(q[2]),
                      "ci68": [float(q[1]), float(q[3])], "ci95": [float(q[0]), float(q[4])],
                      "ess": float(effective_sample_size(ch, 0, 1)),
                      "r_hat": float(split_gelman_rubin(ch, 0, 1))}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (samples not included)."""
        return {"params": self.names, "summary": self.summary(), **self.extra}


def _check_support(name: str, prior: Prior, lo: float, hi: float) -> tuple[float, float]:
    if prior.kind == "uniform":
        assert prior.low is not None and prior.high is not None
        if prior.low < lo - 1e-12 or prior.high > hi + 1e-12:
            raise CardError(_OPT, name, f"uniform prior [{prior.low}, {prior.high}] leaves "
                            f"the θ grid [{lo}, {hi}]; the likelihood is only known on the grid")
        return prior.low, prior.high
    return lo, hi


def likelihood_scale(objective: GridObjective | CallableObjective) -> float:
    r"""Factor on the summed ln L in the posterior: Σw/Σw² for sampling weights, else 1.

    Sampling weights are those for which the fit reports the sandwich covariance
    (``objective.weight_errors == "sandwich"``); see the module docstring.

    Raises:
        ValueError: when the weights sum to zero or less (no effective sample).
    """
    w = objective.weight
    if objective.weight_errors != "sandwich" or w is None:
        return 1.0
    w = torch.as_tensor(w, dtype=torch.float64)
    sw, sw2 = float(w.sum()), float((w * w).sum())
    if not sw > 0:
        msg = f"the event weights sum to {sw}: no posterior can be formed"
        raise ValueError(msg)
    return sw / sw2


def sample_posterior(
    objective: GridObjective | CallableObjective,
    priors: dict[str, Prior],
    *,
    num_samples: int = 1000,
    warmup: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress: bool = False,
) -> PosteriorResult:
    r"""Sample :math:`p(\theta|x) \propto \pi(\theta)\, \exp \ln L(\theta)` with NUTS (pyro).

    The pyro model draws each θ_j from its prior's support (uniform) and adds
    ``pyro.factor(ln L(θ) + log π_normal(θ))``; ln L is the interpolated summed scan or an exact
    callable, scaled by :func:`likelihood_scale` (Σw/Σw² for Monte-Carlo weights, recorded as
    ``extra["likelihood_scale"]``). Chains run one after another (seeds ``seed + c``) for split-R̂.

    Arguments:
        objective: θ (P,) → summed lnL, differentiable (:mod:`unfoldmem.inference.fit`).
        priors: one :class:`Prior` per parameter name.

    References:
        M. D. Hoffman and A. Gelman, *The No-U-Turn Sampler*, JMLR 15 (2014) 1593,
        arXiv:1111.4246.
    """
    import pyro
    import pyro.distributions as dist
    from pyro.infer import MCMC, NUTS

    names = objective.names
    missing = [n for n in names if n not in priors]
    if missing:
        raise CardError(_OPT, missing[0], f"no prior given; parameters needing one: {names}")
    bounds = objective.bounds or [(-math.inf, math.inf)] * len(names)
    supports = [_check_support(n, priors[n], *bounds[i]) for i, n in enumerate(names)]
    for n, (lo, hi) in zip(names, supports, strict=True):
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise CardError(_OPT, n, "a normal prior needs a bounded objective (θ grid)")

    scale = likelihood_scale(objective)

    def model() -> None:
        theta = torch.stack([
            pyro.sample(n, dist.Uniform(torch.tensor(lo, dtype=torch.float64),
                                        torch.tensor(hi, dtype=torch.float64)))
            for n, (lo, hi) in zip(names, supports, strict=True)
        ])
        log_prior = sum(
            -0.5 * ((theta[i] - priors[n].mean) / priors[n].sigma) ** 2
            for i, n in enumerate(names) if priors[n].kind == "normal"
        )
        pyro.factor("lnL", scale * objective(theta) + log_prior)

    chains: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for c in range(num_chains):
        pyro.set_rng_seed(seed + c)
        mcmc = MCMC(NUTS(model, adapt_step_size=True, adapt_mass_matrix=True),
                    num_samples=num_samples, warmup_steps=warmup, disable_progbar=not progress)
        with single_threaded():  # thousands of tiny tensor ops: threads only add overhead
            mcmc.run()
        for n, v in mcmc.get_samples().items():
            chains[n].append(v.detach().numpy().astype(np.float64))
    stacked = {n: np.stack(v) for n, v in chains.items()}
    return PosteriorResult(names, {n: v.ravel() for n, v in stacked.items()}, stacked,
                           {"num_samples": num_samples, "warmup": warmup, "num_chains": num_chains,
                            "seed": seed, "priors": {n: priors[n].model_dump() for n in names},
                            "likelihood_scale": scale})
