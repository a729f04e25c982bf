r"""Running sums of importance weights per channel, the multi-channel estimate and its error.

:func:`~unfoldmem.mem.sampling.importance_sample` adds each chunk of log weights
:math:`\log w = \log F - \log q` (S samples, b events, K θ points) from channel c to running
sums :math:`\sum w`, :math:`\sum w^2` and :math:`\max w` kept in a per-(event, θ) log scale (the
largest log weight so far), so weights spanning hundreds of orders of magnitude add without
overflow. From them :meth:`WeightSums.result` forms the balance-heuristic estimate
:math:`\hat I = \sum_c (\alpha_c/n_c)\sum_{i\in c} w_i`, its variance
:math:`\sum_c (\alpha_c^2/n_c)\,\widehat{\operatorname{Var}}_c[w]`, Kish's effective sample size
and the largest weight's share; the same sums split per assignment, per law and per
(assignment, law) pair give the shares that the adaptation between rounds uses
(:mod:`unfoldmem.mem.adaptation`), and the largest log weights feed the Pareto-tail fit
(:mod:`unfoldmem.pareto`).

References:
    | E. Veach, L. Guibas, "Optimally combining sampling techniques for Monte Carlo
    | rendering", SIGGRAPH 1995 (balance heuristic).
    | L. Kish, Survey Sampling, Wiley 1965 (effective sample size).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from unfoldmem.pareto import pareto_k

__all__ = ["WeightSums"]


class WeightSums:
    """Running sums Σw, Σw², max w per channel in a per-(event, θ) log scale.

    Arguments:
        c: channels. b: events. k: θ points. p: assignments (None: no per-assignment sums).
        v: laws (None: no per-law sums). n_top: how many of the largest log weights of the
        current round to keep per (event, θ) for the Pareto-tail fit. cells: also keep
        per-(assignment, law) sums.

    The Pareto tail is fitted to one round's weights (:meth:`new_round` starts one for the
    events it is given; an event that leaves keeps its last round's): every round has its own
    proposal, and pooling the weights of an unadapted first round with those of adapted later
    ones makes a spurious heavy tail (a Drell–Yan event: k̂ −0.19 … 0.28 in each round, 0.82
    pooled, so it sampled on to ``n_max`` with ESS/N 0.85).
    """

    def __init__(self, c: int, b: int, k: int, p: int | None, v: int | None = None,
                 n_top: int = 0, cells: bool = False) -> None:
        z = torch.zeros(c, b, k, dtype=torch.float64)
        # the largest log weights of the round per (event, θ), for the Pareto-tail fit
        self.top = torch.full((b, k, n_top), -math.inf, dtype=torch.float64)
        self.n_round = torch.zeros(b, dtype=torch.float64)
        self.shift = torch.full((b, k), -math.inf, dtype=torch.float64)
        self.s1, self.s2, self.wmax = z.clone(), z.clone(), z.clone()
        self.n = torch.zeros(c, b, dtype=torch.float64)
        self.nonfinite = torch.zeros(b, dtype=torch.float64)
        self.perm = None if p is None else torch.zeros(c, b, k, p, dtype=torch.float64)
        self.law = None if v is None else torch.zeros(c, b, k, v, dtype=torch.float64)
        self.cell = (None if p is None or v is None or not cells
                     else torch.zeros(c, b, k, p, v, dtype=torch.float64))

    def add(self, c: int, rows: Tensor, logw: Tensor, soft: Tensor | None,
            soft_law: Tensor | None = None, pick: Tensor | None = None) -> None:
        """logw (S, b, K) for events ``rows`` from channel c; soft (S, b, P) assignment shares,
        soft_law (S, b, V) the laws' shares of the law channel's density, pick (S, b) the
        samples' assignments (for the per-(assignment, law) shares)."""
        bad = torch.isnan(logw)
        self.nonfinite[rows] += bad.any(-1).sum(0).double()
        logw = torch.where(bad, -math.inf, logw)
        if self.top.shape[-1]:
            both = torch.cat([self.top[rows], logw.permute(1, 2, 0)], -1)
            self.top[rows] = torch.topk(both, self.top.shape[-1], -1).values
        old = self.shift[rows]
        new = torch.maximum(old, logw.amax(0))
        new_safe = torch.where(torch.isinf(new), 0.0, new)
        fac = torch.where(torch.isinf(old), 0.0, torch.exp(old - new_safe))
        self.s1[:, rows] *= fac
        self.s2[:, rows] *= fac**2
        self.wmax[:, rows] *= fac
        if self.perm is not None:
            self.perm[:, rows] *= fac[..., None]
        if self.law is not None:
            self.law[:, rows] *= fac[..., None]
        if self.cell is not None:
            self.cell[:, rows] *= fac[..., None, None]
        w = torch.exp(logw - new_safe)
        self.s1[c, rows] += w.sum(0)
        self.s2[c, rows] += (w * w).sum(0)
        self.wmax[c, rows] = torch.maximum(self.wmax[c, rows], w.amax(0))
        if self.perm is not None and soft is not None:
            self.perm[c, rows] += torch.einsum("sbk,sbp->bkp", w, soft)
        if self.law is not None and soft_law is not None:
            self.law[c, rows] += torch.einsum("sbk,sbv->bkv", w, soft_law)
        if self.cell is not None and soft_law is not None and pick is not None:
            nb, p = len(rows), self.cell.shape[3]
            flat = (torch.arange(nb) * p + pick).reshape(-1)
            src = (w[..., None] * soft_law[:, :, None]).reshape(len(flat), *w.shape[2:], -1)
            cell = self.cell[c, rows].transpose(1, 2).reshape(nb * p, *src.shape[1:])
            cell.index_add_(0, flat, src)
            self.cell[c, rows] = cell.view(nb, p, *src.shape[1:]).transpose(1, 2)
        self.n[c, rows] += logw.shape[0]
        self.n_round[rows] += logw.shape[0]
        self.shift[rows] = new

    def new_round(self, rows: Tensor) -> None:
        """Start a round for events ``rows``: their Pareto tail is fitted to its weights."""
        self.top[rows] = -math.inf
        self.n_round[rows] = 0.0

    def result(self, alphas: Tensor) -> dict[str, Tensor]:
        """Estimate from the sums with channel weights ``alphas`` (C,): ``t1`` (B, K) the
        integral over exp(``shift``), ``var`` its variance (same scale squared), ``ess``,
        ``max_share``, ``shift`` (B, K), ``share`` (C, B) each channel's share of Σ weights,
        and where kept ``perm`` (B, K, P), ``law`` (B, K, V), ``cell`` (B, K, P, V)."""
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
        if self.law is not None:
            out["law"] = (coef[..., None] * self.law).sum(0)
        if self.cell is not None:
            out["cell"] = (coef[..., None, None] * self.cell).sum(0)
        return out

    def pareto_k(self, rows: Tensor | None = None) -> Tensor:
        """(b, K) Pareto-tail shape of each event's weights in its latest round (all events by
        default): the tail of the proposal the estimate stands on last."""
        top = self.top if rows is None else self.top[rows]
        n = self.n_round if rows is None else self.n_round[rows]
        return pareto_k(top, n[:, None].expand(top.shape[:2]))
