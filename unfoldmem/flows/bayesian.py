r"""Model uncertainty of flows: variational Bayesian weights (zuko) or deep ensembles.

Both wrappers take any model of this package (:class:`~unfoldmem.flows.cinn.CINN`,
:class:`~unfoldmem.flows.transfer.TransferFlow`, a zuko flow with ``nll``) and give

* ``nll(batch)`` / ``penalty()`` for :func:`unfoldmem.flows.training.train` (the Bayesian one
  minimises the ELBO: expected NLL plus KL(q(w) ‖ prior) / N);
* ``members(k)``: k models drawn from the weight posterior (or the k ensemble members);
* ``forward(*args)``: the distribution of one member, the zuko habit;
* :func:`spread`: per-event mean and standard deviation of any function of a member, e.g. the
  log-density of each event, which is the model uncertainty.

References:
    | Weight Uncertainty in Neural Networks (Blundell et al., 2015) https://arxiv.org/abs/1505.05424
    | Understanding Event-Generation Networks via Uncertainties (Bellagente et al., 2021)
    | https://arxiv.org/abs/2104.04543
    | Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles
    | (Lakshminarayanan et al., 2017) https://arxiv.org/abs/1612.01474

Example:
    >>> from unfoldmem.flows.cinn import CouplingNSF
    >>> from unfoldmem.cards.model import FlowConfig
    >>> class Toy(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.flow = CouplingNSF(2, 0, FlowConfig(transforms=1, hidden=[4]))
    ...     def forward(self):
    ...         return self.flow()
    >>> bnn = BayesianFlow(Toy())
    >>> x = torch.randn(10, 2)
    >>> mean, std, _ = spread(bnn, lambda m: m().log_prob(x), 8)
    >>> mean.shape, bool((std > 0).all())
    (torch.Size([10]), True)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from zuko.bayesian import BayesianModel

__all__ = ["BayesianFlow", "DeepEnsemble", "spread"]


class BayesianFlow(nn.Module):
    r"""Variational Bayesian version of a model via :class:`zuko.bayesian.BayesianModel`.

    Every parameter becomes a Gaussian :math:`q(w) = \mathcal N(\mu, \sigma^2)`; buffers
    (encoding statistics) stay fixed. The base module's own parameters are frozen copies.

    Arguments:
        base: a model (with ``nll`` to be trainable).
        prior_var: variance of the Gaussian prior on every weight.
        init_logvar: initial log-variance of the posterior.
        members: default number of weight draws for :meth:`members`.
    """

    def __init__(self, base: nn.Module, prior_var: float = 1.0, init_logvar: float = -9.0,
                 members: int = 10) -> None:
        super().__init__()
        self.bayes = BayesianModel(base, init_logvar=init_logvar)
        for p in self.bayes.base.parameters():
            p.requires_grad_(False)
        self.prior_var = float(prior_var)
        self.n_members = int(members)

    @property
    def base(self) -> nn.Module:
        """The wrapped architecture (its own parameters are not the posterior)."""
        return self.bayes.base

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-event NLL under one weight draw (reparameterised, so gradients reach μ and σ)."""
        with self.bayes.reparameterize() as model:
            return model.nll(batch)

    def penalty(self) -> Tensor:
        """KL(q(w) ‖ N(0, prior_var)); training divides it by the number of events."""
        return self.bayes.kl_divergence(self.prior_var)

    def members(self, k: int | None = None) -> Iterator[nn.Module]:
        """Yield k models with weights drawn from the posterior (valid inside the loop body)."""
        for _ in range(k or self.n_members):
            with torch.no_grad(), self.bayes.reparameterize() as model:
                yield model

    def sample_model(self) -> nn.Module:
        """A standalone copy of the base model with one posterior draw of the weights."""
        return self.bayes.sample_model()

    def mean_model(self) -> nn.Module:
        """A standalone copy with the posterior-mean weights (the 'MAP-like' model)."""
        model = copy.deepcopy(self.bayes.base)
        model.load_state_dict({k.replace("-", "."): v for k, v in self.bayes.means.items()},
                              strict=False)
        return model

    def forward(self, *args: Any, **kwargs: Any) -> Distribution:
        """The distribution of one posterior draw, e.g. ``bnn(reco, mask).log_prob(x)``."""
        return self.sample_model()(*args, **kwargs)


class DeepEnsemble(nn.Module):
    """K independently initialised copies of a model trained side by side.

    Arguments:
        factory: builds one member (call it under different seeds: each call must differ).
        k: number of members.
    """

    def __init__(self, factory: Callable[[], nn.Module], k: int = 5) -> None:
        super().__init__()
        self.ensemble = nn.ModuleList(factory() for _ in range(k))

    def nll(self, batch: dict[str, Tensor]) -> Tensor:
        """Sum of the members' NLLs: each member's gradient is its own maximum likelihood."""
        return torch.stack([m.nll(batch) for m in self.ensemble]).sum(0)

    def members(self, k: int | None = None) -> Iterator[nn.Module]:
        """Yield the first k members (all by default)."""
        yield from list(self.ensemble)[: k or len(self.ensemble)]

    def forward(self, *args: Any, **kwargs: Any) -> Distribution:
        """The distribution of one member chosen at random (torch's RNG, so seeds hold)."""
        i = int(torch.randint(len(self.ensemble), ()))
        return self.ensemble[i](*args, **kwargs)


@torch.no_grad()
def spread(model: BayesianFlow | DeepEnsemble, fn: Callable[[nn.Module], Tensor],
           k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-event mean and standard deviation of ``fn(member)`` over members.

    Arguments:
        model: a :class:`BayesianFlow` or :class:`DeepEnsemble`.
        fn: maps one member to a tensor (...), e.g. ``lambda m: m(c).log_prob(x)``.
        k: number of members (weight draws).

    Returns:
        mean (...), std (...) (unbiased, over members), all values (k, ...).
    """
    values = torch.stack([fn(m) for m in model.members(k)])
    return values.mean(0), values.std(0), values
