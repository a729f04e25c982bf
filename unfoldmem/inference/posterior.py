r"""Posteriors of θ: a pyro model (priors × interpolated summed likelihood) sampled with NUTS."""

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

__all__ = ["PosteriorResult", "Prior", "parse_prior", "sample_posterior"]

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
    callable. Chains run one after another (seeds ``seed + c``) for split-R̂.

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
        pyro.factor("lnL", objective(theta) + log_prior)

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
                            "seed": seed, "priors": {n: priors[n].model_dump() for n in names}})
