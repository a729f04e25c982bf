r"""What the MEM proposal channels share: the sampling context of a batch, the channel protocol,
the discrete assignment draws (probabilities ``prep["pick_logp"]`` adapted by
:func:`~unfoldmem.mem.sampling.importance_sample`, else uniform over the valid assignments), and
the per-event adapted law of a channel's uniforms (:class:`UniformLaw`).

References:
    | O. Cappé, A. Guillin, J.-M. Marin, C. P. Robert, "Population Monte Carlo",
    | J. Comput. Graph. Stat. 13 (2004) 907 (adapting the proposal from weighted samples)
    | T. Hesterberg, "Weighted average importance sampling and defensive mixture
    | distributions", Technometrics 37 (1995) 185
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from unfoldmem.mem.integrand import MEMIntegrand, RecoEvents

__all__ = ["Channel", "SamplingContext", "UniformLaw", "draw_assignments", "gather_pick",
           "pick_log_prob"]

#: Samples per piece when a :class:`UniformLaw` gathers each sample's own D×D factor.
_PIECE = 8192
#: Share of a :class:`UniformLaw`'s draws that stay uniform (defensive: weights at most
#: 1/U_DEFENSIVE times those of the unadapted channel), and the prior strength, in effective
#: samples, that shrinks its fitted Gaussian towards N(0, 1) (an unadapted channel).
U_DEFENSIVE = 0.2
U_PRIOR = 20.0


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

    def sample_joint(self, n: int, ctx: SamplingContext,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(n, B, n_partons, 3) samples and (n, B) assignments drawn with them."""

    def log_prob_joint(self, z: Tensor, pick: Tensor, ctx: SamplingContext) -> Tensor:
        """(S, B) log density of (z, assignment ``pick``): per unit z, per assignment."""


def pick_log_prob(ctx: SamplingContext) -> Tensor:
    """(B, P) log probability of drawing each assignment: ``prep["pick_logp"]`` where the
    sampler has adapted it, else uniform over the event's valid assignments; −inf for padding."""
    valid = ctx.prep["valid"]
    if "pick_logp" in ctx.prep:
        return torch.where(valid, ctx.prep["pick_logp"], -math.inf)
    lv = -torch.log(valid.sum(-1, keepdim=True).clamp(min=1).double())
    return torch.where(valid, lv, -math.inf)


def draw_assignments(n: int, ctx: SamplingContext, generator: torch.Generator) -> Tensor:
    """(n, B) assignments drawn with :func:`pick_log_prob` (index 0 for events without any)."""
    lp = pick_log_prob(ctx)
    probs = torch.exp(lp) + 1e-300 * torch.isneginf(lp).all(-1, keepdim=True).double()
    return torch.multinomial(probs, n, replacement=True, generator=generator).T


def gather_pick(t: Tensor, pick: Tensor) -> Tensor:
    """t (B, P, n, 3), pick (S, B) → (S, B, n, 3)."""
    s, b = pick.shape
    return torch.gather(t[None].expand(s, *t.shape), 2,
                        pick[..., None, None, None].expand(s, b, 1, *t.shape[2:]))[:, :, 0]


class UniformLaw:
    r"""Per-event adapted law of a channel's uniforms, population Monte Carlo style.

    A channel that maps uniforms u ∈ (0,1)^D to z with law v (:meth:`RecoChannel.transform`;
    density q(z) of z when u is uniform and v ~ β) is sampled with u from

    .. math:: h_{bv}(u) = \lambda + (1-\lambda)\,
        \frac{\mathcal N(\epsilon;\mu_{bv},\Sigma_{bv})}{\prod_d\varphi(\epsilon_d)},
        \qquad \epsilon = \Phi^{-1}(u),

    with λ = U_DEFENSIVE and (μ_bv, Σ_bv) the weighted mean and covariance of ε over event b's
    samples of law v so far (weights F/(q h), shrunk towards (0, 1) with U_PRIOR effective
    samples). Since Σ_v β_v (the map of law v applied to uniform u) has density q, a sample's
    weight F/q divided by h_bv(u) stays unbiased for any h fixed before the round's draws
    (:func:`~unfoldmem.mem.sampling.importance_sample` refits between rounds); with the other
    channels' densities this is the balance heuristic with the partition of unity taken from
    the unadapted q.

    Arguments:
        b: events. d: dimension of u (3 × partons). v: laws of the channel.
    """

    def __init__(self, b: int, d: int, v: int = 1) -> None:
        f64 = torch.float64
        self.d, self.v = d, v
        self.mu = torch.zeros(b, v, d, dtype=f64)
        self.chol = torch.eye(d, dtype=f64).expand(b, v, d, d).clone()
        self.linv = self.chol.clone()  # chol⁻¹
        self.logdet = torch.zeros(b, v, dtype=f64)  # log det chol
        self.fitted = torch.zeros(b, v, dtype=torch.bool)
        self.shift = torch.full((b,), -math.inf, dtype=f64)
        self.s0, self.s00 = torch.zeros(b, v, dtype=f64), torch.zeros(b, v, dtype=f64)
        self.s1, self.s2 = torch.zeros(b, v, d, dtype=f64), torch.zeros(b, v, d, d, dtype=f64)

    @staticmethod
    def _law(law: Tensor | None, n: int, b: int) -> Tensor:
        return torch.zeros(n, b, dtype=torch.long) if law is None else law

    def _flat(self, rows: Tensor, law: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-sample cell index (n·b,) into the flattened (b·v) cells of events ``rows``, and
        their μ (b·v, D), Cholesky factors (b·v, D, D) and inverse factors (b·v, D, D)."""
        b = len(rows)
        cell = (torch.arange(b) * self.v + law).reshape(-1)
        d = self.d
        return (cell, self.mu[rows].reshape(b * self.v, d),
                self.chol[rows].reshape(b * self.v, d, d), self.linv[rows].reshape(-1, d, d))

    def draw(self, n: int, rows: Tensor, law: Tensor | None,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """u (n, b, D) for the events ``rows`` with laws ``law`` (n, b), and log h(u) (n, b)."""
        b = len(rows)
        law = self._law(law, n, b)
        u = torch.rand(n, b, self.d, generator=generator, dtype=torch.float64)
        fit = torch.gather(self.fitted[rows][None].expand(n, b, self.v), 2, law[..., None])[..., 0]
        if not bool(fit.any()):
            return u, torch.zeros(n, b, dtype=torch.float64)
        keep = torch.rand(n, b, generator=generator, dtype=torch.float64) < U_DEFENSIVE
        xi = torch.randn(n, b, self.d, generator=generator, dtype=torch.float64).view(n * b, -1)
        eps = torch.zeros_like(xi)
        cell, mu, chol, _ = self._flat(rows, law)
        need = (fit & ~keep).reshape(-1).nonzero()[:, 0]
        # Each sample's own cell's factor, gathered in pieces (memory: _PIECE D×D matrices).
        for s in range(0, len(need), _PIECE):
            i = need[s:s + _PIECE]
            c = cell[i]
            eps[i] = mu[c] + torch.einsum("mij,mj->mi", chol[c], xi[i])
        u = torch.where((keep | ~fit)[..., None], u, torch.special.ndtr(eps.view(n, b, -1)))
        return u, self.log_density(u, rows, law)

    def log_density(self, u: Tensor, rows: Tensor, law: Tensor | None) -> Tensor:
        """log h(u) (n, b) of u (n, b, D) drawn with laws ``law`` for the events ``rows``."""
        n, b = u.shape[:2]
        law = self._law(law, n, b)
        eps = torch.special.ndtri(u.clamp(1e-15, 1 - 1e-15))
        fit = torch.gather(self.fitted[rows][None].expand(n, b, self.v), 2, law[..., None])[..., 0]
        lg = torch.zeros(n * b, dtype=torch.float64)
        ef = eps.view(n * b, -1)
        cell, mu, _, linv = self._flat(rows, law)
        logdet = self.logdet[rows].reshape(-1)
        need = fit.reshape(-1).nonzero()[:, 0]
        for s in range(0, len(need), _PIECE):
            i = need[s:s + _PIECE]
            c = cell[i]
            y = torch.einsum("mij,mj->mi", linv[c], ef[i] - mu[c])
            lg[i] = -0.5 * (y**2).sum(-1) - logdet[c]
        lg = lg.view(n, b) + 0.5 * (eps**2).sum(-1)
        lh = torch.logaddexp(torch.full_like(lg, math.log(U_DEFENSIVE)),
                             math.log(1 - U_DEFENSIVE) + lg)
        return torch.where(fit, lh, 0.0)

    def add(self, rows: Tensor, u: Tensor, law: Tensor | None, logw: Tensor) -> None:
        """Accumulate the weighted moments of ε = Φ⁻¹(u) (n, b, D) per law, log weights (n, b)."""
        n, b = u.shape[:2]
        d, v = self.d, self.v
        law = self._law(law, n, b)
        logw = torch.where(torch.isfinite(logw), logw, -math.inf)
        old = self.shift[rows]
        new = torch.maximum(old, logw.amax(0))
        safe = torch.where(torch.isinf(new), 0.0, new)
        fac = torch.where(torch.isinf(old), 0.0, torch.exp(old - safe))[:, None]
        w = torch.exp(logw - safe).reshape(-1)
        eps = torch.special.ndtri(u.clamp(1e-15, 1 - 1e-15)).view(n * b, -1)
        cell = (torch.arange(b) * v + law).reshape(-1)
        s0 = (self.s0[rows] * fac).reshape(-1).index_add(0, cell, w)
        s00 = (self.s00[rows] * fac**2).reshape(-1).index_add(0, cell, w * w)
        we = eps * w[:, None]
        s1 = (self.s1[rows] * fac[..., None]).reshape(-1, d).index_add(0, cell, we)
        s2 = (self.s2[rows] * fac[..., None, None]).reshape(-1, d, d)
        for s in range(0, n * b, _PIECE):
            sl = slice(s, s + _PIECE)
            s2.index_add_(0, cell[sl], we[sl, :, None] * eps[sl, None, :])
        self.s0[rows], self.s00[rows] = s0.view(b, v), s00.view(b, v)
        self.s1[rows], self.s2[rows] = s1.view(b, v, d), s2.view(b, v, d, d)
        self.shift[rows] = new

    def refit(self) -> None:
        """(μ, Σ) of every event and law from the accumulated moments (identity where none)."""
        ok = self.s0 > 0
        s0 = torch.where(ok, self.s0, 1.0)
        ess = torch.where(ok, self.s0**2 / torch.where(ok, self.s00, 1.0), 0.0)
        mean = self.s1 / s0[..., None]
        cov = self.s2 / s0[..., None, None] - mean[..., :, None] * mean[..., None, :]
        a = (ess / (ess + U_PRIOR))[..., None]
        eye = torch.eye(self.d, dtype=torch.float64)
        mu = a * mean
        sig = a[..., None] * cov + (1 - a[..., None]) * eye + 1e-6 * eye
        chol, info = torch.linalg.cholesky_ex(sig)
        good = ok & (info == 0) & torch.isfinite(chol).all(-1).all(-1) & torch.isfinite(mu).all(-1)
        self.mu = torch.where(good[..., None], mu, 0.0)
        self.chol = torch.where(good[..., None, None], chol, eye)
        self.linv = torch.linalg.solve_triangular(self.chol, eye.expand_as(self.chol).clone(),
                                                  upper=False)
        self.logdet = torch.log(torch.diagonal(self.chol, dim1=-2, dim2=-1)).sum(-1)
        self.fitted = self.fitted | good
